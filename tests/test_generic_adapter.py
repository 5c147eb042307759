"""Any decoder-only LM with a declared video span is pruned like a Video LLM."""

from __future__ import annotations

import pytest
import torch

import sharp_vlm as sv
from sharp_vlm.testing import tiny_llama

SPAN = sv.VideoSpan(start=6, n_frames=16, tokens_per_frame=8)


def _ids(seed=0, length=6 + 128 + 10):
    return torch.randint(3, 120, (1, length), generator=torch.Generator().manual_seed(seed))


def test_keep_everything_equals_unpatched():
    model = tiny_llama()
    ids = _ids()
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        ref_gen = model.generate(input_ids=ids, max_new_tokens=6, do_sample=False)
        with sv.apply(model, sv.FastV(retain=1.0, layer=2), span=SPAN):
            out = model(input_ids=ids).logits
            gen = model.generate(input_ids=ids, max_new_tokens=6, do_sample=False)
    assert (out - ref).abs().max() <= 1e-5
    assert torch.equal(gen, ref_gen)


def test_cache_and_no_cache_agree_and_span_can_change():
    model = tiny_llama(seed=4)
    with sv.apply(model, sv.FastV(retain=0.25, layer=1), span=SPAN) as handle, torch.no_grad():
        a = model.generate(input_ids=_ids(2), max_new_tokens=6, do_sample=False)
        b = model.generate(input_ids=_ids(2), max_new_tokens=6, do_sample=False, use_cache=False)
        assert torch.equal(a, b)
        handle.span = sv.VideoSpan(start=2, n_frames=4, tokens_per_frame=8)
        model(input_ids=_ids(2, length=50))
        assert handle.last_stats.n_visual == [32]
        assert handle.last_stats.stages[0].n_kept == [8]


def _tiny_decoder(family: str, attn: str):
    from transformers import AutoConfig, AutoModelForCausalLM

    extra = {
        "qwen3": {"head_dim": 16},
        "mistral": {"sliding_window": None},
        "phi": {"partial_rotary_factor": 0.5, "qk_layernorm": True},  # partial rotary, per-head LayerNorms
        "phi3": {"partial_rotary_factor": 0.5},  # fused qkv, partial rotary
        "cohere": {"use_qk_norm": True},  # interleaved rotary
    }.get(family, {})
    cfg = AutoConfig.for_model(
        family, vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, pad_token_id=0, bos_token_id=1, eos_token_id=2, **extra,
    )
    cfg._attn_implementation = attn
    torch.manual_seed(11)
    return AutoModelForCausalLM.from_config(cfg).eval()



@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "qwen3", "phi", "phi3", "olmo2", "cohere"])
def test_fastv_matches_eager_reference_on_each_decoder_family(family):
    sdpa, eager = _tiny_decoder(family, "sdpa"), _tiny_decoder(family, "eager")
    eager.load_state_dict(sdpa.state_dict())
    ids = _ids(seed=5)
    with torch.no_grad():
        att = eager(input_ids=ids, output_attentions=True).attentions
    vis = torch.arange(SPAN.start, SPAN.start + SPAN.n_tokens)
    # the authors' rule ranks with the attention of layer K-1; attention_layer="stage" with layer K's own
    for rule, source in (("previous", 1), ("stage", 2)):
        ref = torch.sort(torch.topk(att[source][0, :, -1, vis].mean(0), 13).indices).values
        for model in (sdpa, eager):
            with sv.apply(model, sv.FastV(retain=0.1, layer=2, attention_layer=rule), span=SPAN) as handle, \
                    torch.no_grad():
                model(input_ids=ids)
            assert torch.equal(handle.last_stats.stages[0].kept[0], ref), rule
            assert handle.last_stats.stages[0].kept_positions[0].tolist() == (ref + SPAN.start).tolist()
    with sv.apply(sdpa, sv.FastV(retain=1.0, layer=2), span=SPAN), torch.no_grad():
        out = sdpa(input_ids=ids).logits
    with torch.no_grad():
        assert (out - sdpa(input_ids=ids).logits).abs().max() <= 1e-5


def test_right_padded_batch_scores_with_the_last_real_token():
    model = tiny_llama(seed=9)
    a, b = _ids(seed=1), _ids(seed=2, length=6 + 128 + 6)
    width = a.shape[1]
    batch = torch.cat([a, torch.cat([b, torch.zeros(1, width - b.shape[1], dtype=torch.long)], 1)])
    mask = torch.ones_like(batch)
    mask[1, b.shape[1]:] = 0
    kept = []
    with sv.apply(model, sv.FastV(retain=0.25, layer=2), span=SPAN) as handle, torch.no_grad():
        for x in (a, b):
            model(input_ids=x)
            kept.append(handle.last_stats.stages[0].kept[0])
        model(input_ids=batch, attention_mask=mask)
    assert torch.equal(handle.last_stats.stages[0].kept[0], kept[0])
    assert torch.equal(handle.last_stats.stages[0].kept[1], kept[1])


def test_user_decodes_a_padded_batch_on_a_sliding_window_decoder_longer_than_the_window():
    """The cache of a sliding-window layer keeps only its last keys: the decode masks follow it (keeping every
    token, the patched model equals the unpatched one; pruning runs)."""
    model = _tiny_decoder("mistral", "sdpa")
    model.config.sliding_window = 32
    ids = torch.randint(3, 120, (2, SPAN.start + SPAN.n_tokens + 9), generator=torch.Generator().manual_seed(0))
    ids[0, :2] = 0
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    gen = dict(max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True,
               eos_token_id=None, pad_token_id=0)
    with torch.no_grad():
        ref = model.generate(input_ids=ids, attention_mask=mask, **gen)
    with sv.apply(model, sv.FastV(retain=1.0, layer=2), span=SPAN), torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, **gen)
    for a, b in zip(out.logits, ref.logits, strict=True):
        assert (a - b).abs().max() < 1e-4
    with sv.apply(model, sv.FastV(retain=0.25, layer=2), span=SPAN), torch.no_grad():
        pruned = model.generate(input_ids=ids, attention_mask=mask, **gen)
    assert pruned.sequences.shape == ref.sequences.shape
