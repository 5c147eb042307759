"""A hand-written pruned forward: the reference the engine is tested against.

Layers before a stage run on every row still present (optionally under a dense 4-D mask), each stage keeps the
non-visual rows and the kept visual rows (optionally after merging dropped rows into kept ones), later layers run
on the short sequence with the original positions, and greedy decoding continues one past the last prompt
position. Works for every family's decoder: 3-D M-RoPE (Qwen-VL), 1-D RoPE (the others), and Qwen3-VL's deepstack
features, added after the first layers to the visual rows still present.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache


@dataclass
class Prompt:
    """What the decoder of a model gets for one prompt (batch 1)."""

    embeds: torch.Tensor  # (1, S, D)
    pos: torch.Tensor  # (3, 1, S) for M-RoPE, (1, S) otherwise
    visual: torch.Tensor  # (S,) bool
    next_pos: int  # the position of the first decoded token
    deepstack: list[torch.Tensor] | None = None  # Qwen3-VL: features added after layer i, one row per visual token
    deepstack_rows: torch.Tensor | None = None  # (S,) bool: the rows those features belong to


def decoder_prompt(model, tm, inputs, visual) -> Prompt:
    """What the unpatched model hands its decoder `tm` for one prompt: embeddings, positions (0..S-1 where it
    passes none), deepstack inputs; `visual` are the rows the engine may prune, defined by the caller."""
    seen = {}

    def grab(mod, args, kwargs):
        seen.update(kwargs)

    h = tm.register_forward_pre_hook(grab, with_kwargs=True)
    with torch.no_grad():
        model(**inputs)
        embeds = seen.get("inputs_embeds")
        if embeds is None:  # a plain LM embeds its ids inside the decoder
            embeds = tm.embed_tokens(seen["input_ids"])
    h.remove()
    seq = embeds.shape[1]
    pos = seen.get("position_ids")
    if pos is None:
        pos, next_pos = torch.arange(seq)[None], seq
    else:
        pos = pos[1:] if pos.shape[0] == 4 else pos  # Qwen passes the text positions first
        next_pos = int(pos[:, 0, -1].max()) + 1
    rows = seen.get("visual_pos_masks")
    return Prompt(embeds, pos, visual, next_pos, seen.get("deepstack_visual_embeds"),
                  None if rows is None else rows[0])


def qwen_prompt(model, inputs) -> Prompt:
    """inputs_embeds and 3-D position ids that the unpatched Qwen-VL hands to its decoder."""
    return decoder_prompt(model, model.model.language_model, inputs, inputs["mm_token_type_ids"][0] != 0)


def llama_prompt(model, ids, span) -> Prompt:
    seq = ids.shape[1]
    visual = torch.zeros(seq, dtype=torch.bool)
    visual[span.start : span.start + span.n_tokens] = True
    with torch.no_grad():
        embeds = model.model.embed_tokens(ids)
    return Prompt(embeds, torch.arange(seq)[None], visual, seq)


def _decode_pos(prompt: Prompt, p: int) -> torch.Tensor:
    return torch.full((3, 1, 1), p) if prompt.pos.dim() == 3 else torch.full((1, 1), p)


def staged_forward(model, tm, prompt: Prompt, stages, n_decode, shallow_mask=None, merge=None, mask_until=None):
    """(logits per step, greedy tokens, cache).

    stages: [(layer, kept original positions)], layers increasing. shallow_mask: the 4-D attention mask of the
    layers before `mask_until` (default: the first stage), or a function of the current rows' original positions
    that returns it. merge: {layer: fn(h (S_cur, D), rows (S_cur,)) -> h}, applied at that stage before the gather.
    """
    seq = prompt.embeds.shape[1]
    cache = DynamicCache(config=tm.config)
    stage_at = dict(stages)
    first = stages[0][0] if stages else len(tm.layers)
    mask_until = first if mask_until is None else mask_until
    deepstack = prompt.deepstack or []
    if deepstack:  # row -> index among the rows the deepstack features belong to
        ds_index = torch.cumsum(prompt.deepstack_rows.long(), 0) - 1
    with torch.no_grad():
        h = prompt.embeds
        cos, sin = tm.rotary_emb(h, prompt.pos)
        rows = torch.arange(seq)
        for i, lay in enumerate(tm.layers):
            if i in stage_at:
                if merge and i in merge:
                    h = merge[i](h[0], rows)[None]
                keep = ~prompt.visual[rows] | torch.isin(rows, stage_at[i])
                h, cos, sin, rows = h[:, keep], cos[:, keep], sin[:, keep], rows[keep]
            mask = shallow_mask if i < mask_until else None
            if callable(mask):
                mask = mask(rows)
            h = lay(h, attention_mask=mask, position_embeddings=(cos, sin), cache=cache, use_cache=True)
            if i < len(deepstack):  # as Qwen3VLTextModel._deepstack_process, on the rows still present
                v = prompt.deepstack_rows[rows]
                h = h.clone()
                h[0, v] = h[0, v] + deepstack[i][ds_index[rows[v]]]
        logits = [model.lm_head(tm.norm(h))]
        token = logits[-1][:, -1].argmax(-1)
        tokens = [int(token)]
        for t in range(n_decode - 1):
            h = tm.embed_tokens(token)[:, None]
            cos, sin = tm.rotary_emb(h, _decode_pos(prompt, prompt.next_pos + t))
            for lay in tm.layers:
                h = lay(h, attention_mask=None, position_embeddings=(cos, sin), cache=cache, use_cache=True)
            logits.append(model.lm_head(tm.norm(h)))
            token = logits[-1][:, -1].argmax(-1)
            tokens.append(int(token))
    return logits, tokens, cache


def pruned_forward(model, inputs, keep_positions, layer, n_decode, shallow_mask=None):
    """One stage on a tiny Qwen-VL: (logits per step, greedy tokens, cache)."""
    prompt = qwen_prompt(model, inputs)
    return staged_forward(model, model.model.language_model, prompt, [(layer, keep_positions)], n_decode,
                          shallow_mask)


def staged_forward_1d(model, tm, embeds, visual, stages, n_decode, shallow_mask=None):
    """`staged_forward` for a decoder with 1-D positions 0..S-1 (LLaVA, InternVL, SmolVLM): decoding at S, S+1..."""
    seq = embeds.shape[1]
    prompt = Prompt(embeds, torch.arange(seq)[None], visual, seq)
    return staged_forward(model, tm, prompt, stages, n_decode, shallow_mask)


def run_pruned(model, inputs, method, n_decode, **apply_kwargs):
    """(prefill logits, stats, generate output with per-step logits) of the engine under `method`."""
    import sharp_vlm as sv

    with sv.apply(model, method, **apply_kwargs) as handle, torch.no_grad():
        prefill = model(**inputs).logits
        stats = handle.last_stats
        # no end-of-sequence stop: the oracle decodes exactly n_decode tokens whatever they are
        out = model.generate(**inputs, max_new_tokens=n_decode, do_sample=False, output_logits=True,
                             return_dict_in_generate=True, eos_token_id=None, pad_token_id=0)
    return prefill, stats, out


def assert_matches(prefill, out, logits, tokens, n_decode):
    """The engine's prefill logits, greedy tokens and per-step decode logits equal the oracle's."""
    assert prefill.shape == logits[0].shape
    assert (prefill - logits[0]).abs().max() < 1e-5
    assert out.sequences[0, -n_decode:].tolist() == tokens
    for step, (a, b) in enumerate(zip(out.logits, logits, strict=True)):
        assert (a - b[:, -1]).abs().max() < 1e-4, f"decode step {step}"


def forward_logits(model, inputs):
    """The model's logits for one call, without gradients."""
    with torch.no_grad():
        return model(**inputs).logits


def greedy(model, inputs, n=6, **kw):
    """`n` greedily generated tokens after the prompt (the whole sequence, or generate's output with `kw`)."""
    with torch.no_grad():
        return model.generate(**inputs, max_new_tokens=n, do_sample=False, **kw)


def decoder_input(model, tm, inputs) -> torch.Tensor:
    """inputs_embeds the unpatched model hands its decoder `tm` for these inputs."""
    return decoder_prompt(model, tm, inputs, None).embeds


def check_against_oracle(model, tm, inputs, method, visual, n_decode=4):
    """The engine under `method` picks only `visual` rows and equals `staged_forward` on the stages it ran, at
    prefill and for `n_decode` greedy steps. Returns the call's stats."""
    prefill, stats, out = run_pruned(model, inputs, method, n_decode)
    stages = [(s.layer, s.kept_positions[0]) for s in stats.stages]
    for _, kept in stages:
        assert bool(visual[kept].all())
    logits, tokens, _ = staged_forward(model, tm, decoder_prompt(model, tm, inputs, visual), stages, n_decode)
    assert_matches(prefill, out, logits, tokens, n_decode)
    return stats
