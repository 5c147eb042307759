"""Removing the patch restores the model exactly; two patched models do not interfere; a saved checkpoint prunes the
same. (Keep-everything equals unpatched, per family: tests/test_adapter_exactness.py.)"""

from __future__ import annotations

import pytest
import torch

import sharp_vlm as sv


def _logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def test_remove_restores_model(qwen):
    model, inputs = qwen
    ref = _logits(model, inputs)
    hooks_before = _hook_count(model)
    handle = sv.apply(model, sv.FastV(retain=0.25, layer=2))
    pruned = _logits(model, inputs)
    assert pruned.shape[1] < ref.shape[1]
    assert "generate" in model.__dict__
    handle.remove()
    assert "generate" not in model.__dict__
    assert _hook_count(model) == hooks_before
    assert torch.equal(_logits(model, inputs), ref)
    with sv.apply(model, sv.FastV(retain=0.25, layer=2)):
        pass
    assert torch.equal(_logits(model, inputs), ref)
    handle.remove()  # a second remove is a no-op


def test_patching_twice_is_refused(qwen):
    model, _ = qwen
    with sv.apply(model, sv.FastV(retain=0.5)):
        with pytest.raises(sv.ConfigError, match="already has a pruning method"):
            sv.apply(model, sv.FastV(retain=0.5))


def _hook_count(model):
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


def test_two_models_do_not_interfere():
    from sharp_vlm.models.factory import tiny_qwen_vl, tiny_video_inputs

    a, b = tiny_qwen_vl("qwen2_5_vl", seed=1), tiny_qwen_vl("qwen2_5_vl", seed=2)
    xa, xb = tiny_video_inputs(a, seed=3).as_kwargs(), tiny_video_inputs(b, seed=4).as_kwargs()
    with sv.apply(a, sv.FastV(retain=0.25, layer=2)):
        alone_a = _logits(a, xa)
    with sv.apply(b, sv.UniformPrune(retain=0.5, layer=1)):
        alone_b = _logits(b, xb)
    with sv.apply(a, sv.FastV(retain=0.25, layer=2)) as ha, sv.apply(b, sv.UniformPrune(retain=0.5, layer=1)) as hb:
        out_a, out_b = _logits(a, xa), _logits(b, xb)
        with torch.no_grad():
            gen_b = b.generate(**xb, max_new_tokens=4, do_sample=False)
        out_a2 = _logits(a, xa)
    assert torch.equal(out_a, alone_a) and torch.equal(out_a2, alone_a)
    assert torch.equal(out_b, alone_b)
    assert ha.last_stats.stages[0].n_kept == [32]
    assert hb.last_stats.stages[0].n_kept == [64] and gen_b.shape[1] == xb["input_ids"].shape[1] + 4


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_a_saved_checkpoint_loads_and_prunes_the_same(tmp_path, family):
    from transformers import AutoModelForImageTextToText

    from sharp_vlm.models.factory import tiny_qwen_vl, tiny_video_inputs

    model = tiny_qwen_vl(family, seed=13)
    inputs = tiny_video_inputs(model, seed=14).as_kwargs()
    model.save_pretrained(tmp_path)
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path, local_files_only=True).eval()
    assert type(loaded) is type(model)
    runs = []
    for m in (model, loaded):
        with sv.apply(m, sv.ShaRP(retain=0.2, layer=2)) as h:
            runs.append((_logits(m, inputs), h.last_stats.stages[0].kept[0]))
    assert torch.equal(runs[0][1], runs[1][1])
    assert (runs[0][0] - runs[1][0]).abs().max() < 1e-5
