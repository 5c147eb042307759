"""ShaRP after a pre-LLM stage and merging stages against a hand-written pruned forward. (Two-stage schedules with
their cache lengths, per family: tests/test_adapter_exactness.py.)"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

import sharp_vlm as sv
from oracle import assert_matches, llama_prompt, qwen_prompt, run_pruned, staged_forward
from sharp_vlm.core.masks import segment_allowed
from sharp_vlm.core.select import uniform_indices
from sharp_vlm.testing import tiny_llama

SPAN = sv.VideoSpan(start=6, n_frames=16, tokens_per_frame=8)
def _llama_case():
    model = tiny_llama(seed=7)
    ids = torch.randint(3, 120, (1, SPAN.start + SPAN.n_tokens + 9), generator=torch.Generator().manual_seed(3))
    return model, {"input_ids": ids}, llama_prompt(model, ids, SPAN), model.model, SPAN


def test_schedule_with_sharp_after_a_pre_llm_stage(qwen25):
    """ShaRP (forward-scope segment mask, per-request reference pass) after a layer-0 stage, against the oracle
    with the dense segment mask over the rows the first stage left."""
    model, inputs = qwen25
    prompt = qwen_prompt(model, inputs)
    method = sv.Schedule([sv.UniformPrune(retain=0.5, layer=0), sv.ShaRP(retain=0.2, layer=2)])
    prefill, stats, out = run_pruned(model, inputs, method, 4)
    vis = torch.nonzero(prompt.visual).flatten()
    seg_full = torch.full((prompt.visual.numel(),), -1)
    seg_full[vis] = torch.arange(vis.numel()) // 16  # 4 x 4 tokens per temporal patch

    def shallow(rows):
        return segment_allowed(seg_full[rows], "bidirectional")[None, None]

    stages = [(s.layer, s.kept_positions[0]) for s in stats.stages]
    logits, tokens, _ = staged_forward(model, model.model.language_model, prompt, stages, 4, shallow_mask=shallow,
                                       mask_until=2)
    assert_matches(prefill, out, logits, tokens, 4)
    assert stats.stages[1].costs.reference_flops > 0 and stats.stages[1].samples[0].bias is not None


@dataclass
class MergeIntoNearest(sv.StageMethod):
    """Keep evenly spaced tokens per frame; average each dropped token into its most similar kept token of the
    same frame (cosine of the hidden states entering the stage)."""

    allow_layer_zero = True
    scores_attention = False

    def select(self, view):
        keep = uniform_indices(view.layout.frame_ids, view.budget)
        dropped = torch.ones(view.n_visual, dtype=torch.bool)
        dropped[keep] = False
        src = torch.nonzero(dropped).flatten()
        f = torch.nn.functional.normalize(view.hidden.float(), dim=-1)
        sim = f[src] @ f[keep].T
        same = view.layout.frame_ids[src][:, None] == view.layout.frame_ids[keep][None, :]
        target = keep[sim.masked_fill(~same, -2).argmax(dim=1)]
        return sv.Selection(keep, sv.Merge(src, target))


def _merge_by_hand(visual_pos, frame_of, kept_pos):
    """For the oracle: average each dropped visual row into its most similar kept row of the same frame."""

    def merge(h, rows):
        out = h.clone()
        pos = rows.tolist()
        index = {p: i for i, p in enumerate(pos)}
        groups: dict[int, list[int]] = {}
        for p in visual_pos.tolist():
            if p in index and p not in set(kept_pos.tolist()):
                best, best_sim = None, None
                for k in kept_pos.tolist():
                    if frame_of[k] != frame_of[p]:
                        continue
                    a, b = h[index[p]].float(), h[index[k]].float()
                    sim = float(a @ b / (a.norm() * b.norm()))
                    if best_sim is None or sim > best_sim:
                        best, best_sim = k, sim
                groups.setdefault(best, []).append(index[p])
        for k, members in groups.items():
            rows_k = [index[k]] + members
            out[index[k]] = h[rows_k].float().mean(0).to(h.dtype)
        return out

    return merge


@pytest.mark.parametrize("layer", [0, 2])
def test_merge_selection_matches_hand_written_merge(layer):
    model, inputs, prompt, tm, span = _llama_case()
    prefill, stats, out = run_pruned(model, inputs, MergeIntoNearest(retain=0.25, layer=layer), 4, span=span)
    st = stats.stages[0]
    assert st.n_merged == [SPAN.n_tokens - st.n_kept[0]]
    vis_pos = torch.arange(SPAN.start, SPAN.start + SPAN.n_tokens)
    frame_of = {int(p): (int(p) - SPAN.start) // SPAN.tokens_per_frame for p in vis_pos}
    merge = {layer: _merge_by_hand(vis_pos, frame_of, st.kept_positions[0])}
    logits, tokens, _ = staged_forward(model, tm, prompt, [(layer, st.kept_positions[0])], 4, merge=merge)
    assert_matches(prefill, out, logits, tokens, 4)
    # merging changes the result: the same kept set without the merge gives other logits
    plain, _, _ = staged_forward(model, tm, prompt, [(layer, st.kept_positions[0])], 1)
    assert (plain[0] - prefill).abs().max() > 1e-4


def test_merge_before_a_debiased_stage_is_replayed_in_the_reference_pass():
    model, inputs, prompt, tm, span = _llama_case()
    method = sv.Schedule([MergeIntoNearest(retain=0.5, layer=0), sv.ShaRP(retain=0.25, layer=2, mask="off")])

    def reference(embeds, layouts, call):  # an affine map of the input: merging commutes with it
        return embeds * 0.5 + 1.0

    seen = []
    with sv.apply(model, method, span=span, reference=reference) as handle, torch.no_grad():
        # registered after the engine's hook: it sees what layer 0 really gets, after the layer-0 stage
        hook = tm.layers[0].register_forward_pre_hook(lambda m, a: seen.append(a[0]))
        try:
            model(**inputs)
        finally:
            hook.remove()
    real, ref = seen  # the prefill and the reference pass, after the same layer-0 merge and gather
    kept0 = handle.last_stats.stages[0].kept_positions[0]
    assert handle.last_stats.stages[0].n_merged[0] > 0
    assert real.shape == ref.shape == (1, prompt.embeds.shape[1] - SPAN.n_tokens + kept0.numel(), 64)
    assert torch.allclose(ref, real * 0.5 + 1.0, atol=1e-5)
    # the merge changed the kept rows: they are not the plain embeddings any more
    rows = ~prompt.visual | torch.isin(torch.arange(prompt.embeds.shape[1]), kept0)
    assert not torch.allclose(real, prompt.embeds[:, rows], atol=1e-4)


@pytest.mark.parametrize("positions", ["original", "contiguous"])
def test_trim_kv_after_a_stage_before_the_decoder(positions):
    """trim_kv trims the layers before the first in-decoder stage to what that stage kept, also when a stage
    before the decoder already shortened them."""
    from cases import BY_NAME, model_and_inputs

    case = BY_NAME["llama_span"]
    model, inputs = model_and_inputs("llama_span")
    method = sv.Schedule([sv.DivPrune(retain=0.5, positions=positions), sv.FastV(retain=0.25, layer=2)])
    gen = dict(max_new_tokens=3, do_sample=False, output_logits=True, return_dict_in_generate=True,
               eos_token_id=None, pad_token_id=0)
    runs = {}
    for trim in (False, True):
        with case.apply(model, method, trim_kv=trim) as h, torch.no_grad():
            runs[trim] = model.generate(**inputs, **gen)
        kept = h.last_stats.stages[-1].n_kept[0]
    seq = inputs["input_ids"].shape[1]
    short = seq - case.n_visual + kept
    after_first = seq - case.n_visual + sv.keep_count(0.5, case.n_visual)
    lengths = {t: [layer.keys.shape[-2] for layer in out.past_key_values.layers] for t, out in runs.items()}
    assert lengths[False] == [after_first + 2] * 2 + [short + 2] * 2
    assert lengths[True] == [short + 2] * 4
    # the first token comes from the prefill: trimming changes only what later tokens attend to
    assert torch.equal(runs[True].logits[0], runs[False].logits[0])
