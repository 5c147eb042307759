"""The engine equals a hand-written pruned forward; FastV equals an eager-attention reference."""

from __future__ import annotations

import pytest
import torch

import sharp_vlm as sv
from oracle import pruned_forward
from sharp_vlm.models.factory import tiny_qwen_vl, tiny_video_inputs


@pytest.mark.parametrize("layer", [1, 2, 3])
def test_engine_matches_oracle(qwen, layer):
    model, inputs = qwen
    with sv.apply(model, sv.FastV(retain=0.2, layer=layer)) as handle, torch.no_grad():
        prefill = model(**inputs).logits
        kept = handle.last_stats.stages[0].kept_positions[0]
        out = model.generate(**inputs, max_new_tokens=5, do_sample=False, output_logits=True,
                             return_dict_in_generate=True)
    logits, tokens, _ = pruned_forward(model, inputs, kept, layer, n_decode=5)
    assert prefill.shape == logits[0].shape
    assert (prefill - logits[0]).abs().max() < 1e-5
    assert out.sequences[0, -5:].tolist() == tokens
    for step, (a, b) in enumerate(zip(out.logits, logits, strict=True)):
        assert (a - b[:, -1]).abs().max() < 1e-4, f"decode step {step}"


def test_stage_at_layer_zero_matches_oracle(qwen):
    model, inputs = qwen
    with sv.apply(model, sv.UniformPrune(retain=0.25, layer=0)) as handle, torch.no_grad():
        prefill = model(**inputs).logits
        kept = handle.last_stats.stages[0].kept_positions[0]
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    logits, tokens, _ = pruned_forward(model, inputs, kept, 0, n_decode=4)
    assert (prefill - logits[0]).abs().max() < 1e-5
    assert out[0, -4:].tolist() == tokens


@pytest.mark.parametrize("trim", [False, True])
def test_kv_cache_lengths_and_decode_positions(qwen, trim):
    model, inputs = qwen
    seq = inputs["input_ids"].shape[1]
    seen = []

    def grab(mod, args, kwargs):
        seen.append(kwargs["position_embeddings"][0][:, -1].clone())

    last = model.model.language_model.layers[-1]
    h = last.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            model.generate(**inputs, max_new_tokens=4, do_sample=False)
            ref_pos = seen[1:]
            seen.clear()
            with sv.apply(model, sv.FastV(retain=0.25, layer=2), trim_kv=trim):
                out = model.generate(**inputs, max_new_tokens=4, do_sample=False, return_dict_in_generate=True)
            pruned_pos = seen[1:]
    finally:
        h.remove()
    # decode positions (as RoPE angles handed to the layers) equal the unpruned model's
    assert len(ref_pos) == len(pruned_pos) == 3
    for a, b in zip(ref_pos, pruned_pos, strict=True):
        assert torch.equal(a, b)
    cache = out.cache if hasattr(out, "cache") and out.cache is not None else out.past_key_values
    lengths = [cache.layers[i].keys.shape[-2] for i in range(4)]
    kept = seq - 128 + 32
    decoded = 3  # the last generated token is not fed back
    shallow = kept if trim else seq
    assert lengths == [shallow + decoded] * 2 + [kept + decoded] * 2


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
@pytest.mark.parametrize("layer", [1, 2])
def test_fastv_matches_eager_attention_reference(family, layer):
    sdpa = tiny_qwen_vl(family, seed=5)
    eager = tiny_qwen_vl(family, seed=5, attn_implementation="eager")
    for a, b in zip(sdpa.state_dict().values(), eager.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    inputs = tiny_video_inputs(sdpa, frames=16, seed=6).as_kwargs()
    with torch.no_grad():
        att = eager(**inputs, output_attentions=True).attentions[layer]  # (1, H, S, S)
    vis = torch.nonzero(inputs["mm_token_type_ids"][0]).flatten()
    ref_scores = att[0, :, -1, vis].mean(0)
    budget = round(0.3 * vis.numel())
    ref = torch.sort(torch.topk(ref_scores, budget).indices).values
    for model in (sdpa, eager):
        with sv.apply(model, sv.FastV(retain=0.3, layer=layer)) as handle, torch.no_grad():
            model(**inputs)
        assert torch.equal(handle.last_stats.stages[0].kept[0], ref)
