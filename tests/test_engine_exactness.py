"""Removing the patch restores the model exactly; two patched models do not interfere. (Keep-everything equals
unpatched and a saved checkpoint prunes the same, per family: tests/test_adapter_exactness.py.)"""

from __future__ import annotations

import pytest
import torch

import sharp_vlm as sv
from oracle import forward_logits


def test_remove_restores_model(qwen):
    model, inputs = qwen
    ref = forward_logits(model, inputs)
    hooks_before = _hook_count(model)
    handle = sv.apply(model, sv.FastV(retain=0.25, layer=2))
    pruned = forward_logits(model, inputs)
    assert pruned.shape[1] < ref.shape[1]
    assert "generate" in model.__dict__
    handle.remove()
    assert "generate" not in model.__dict__
    assert _hook_count(model) == hooks_before
    assert torch.equal(forward_logits(model, inputs), ref)
    with sv.apply(model, sv.FastV(retain=0.25, layer=2)):
        pass
    assert torch.equal(forward_logits(model, inputs), ref)
    handle.remove()  # a second remove is a no-op


def test_patching_twice_is_refused(qwen):
    model, _ = qwen
    with sv.apply(model, sv.FastV(retain=0.5)):
        with pytest.raises(sv.ConfigError, match="already has a pruning method"):
            sv.apply(model, sv.FastV(retain=0.5))


def _hook_count(model):
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


def test_two_models_do_not_interfere():
    from sharp_vlm.testing import tiny_qwen_vl, tiny_video_inputs

    a, b = tiny_qwen_vl("qwen2_5_vl", seed=1), tiny_qwen_vl("qwen2_5_vl", seed=2)
    xa, xb = tiny_video_inputs(a, seed=3).as_kwargs(), tiny_video_inputs(b, seed=4).as_kwargs()
    with sv.apply(a, sv.FastV(retain=0.25, layer=2)):
        alone_a = forward_logits(a, xa)
    with sv.apply(b, sv.UniformPrune(retain=0.5, layer=1)):
        alone_b = forward_logits(b, xb)
    with sv.apply(a, sv.FastV(retain=0.25, layer=2)) as ha, sv.apply(b, sv.UniformPrune(retain=0.5, layer=1)) as hb:
        out_a, out_b = forward_logits(a, xa), forward_logits(b, xb)
        with torch.no_grad():
            gen_b = b.generate(**xb, max_new_tokens=4, do_sample=False)
        out_a2 = forward_logits(a, xa)
    assert torch.equal(out_a, alone_a) and torch.equal(out_a2, alone_a)
    assert torch.equal(out_b, alone_b)
    assert ha.last_stats.stages[0].n_kept == [32]
    assert hb.last_stats.stages[0].n_kept == [64] and gen_b.shape[1] == xb["input_ids"].shape[1] + 4
