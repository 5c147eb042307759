"""A left-padded batch gives what each sample gives alone; beams and several return sequences prune each as its
source prompt. (FastV, ShaRP and a schedule in a batch, per family: tests/test_adapter_exactness.py; batches of
different videos: tests/test_batch_videos.py.)"""

from __future__ import annotations

import pytest
import torch

import sharp_vlm as sv
from cases import BY_NAME, assert_batch_equals_one_by_one, left_pad, model_and_inputs
from sharp_vlm.testing import tiny_llava_inputs, tiny_llava_onevision


@pytest.mark.parametrize("cfg", [sv.NoPrune(), sv.FastV(retain=0.3, layer=1, query="text"),
                                 sv.UniformPrune(retain=0.5, layer=0),
                                 sv.ShaRP(retain=0.25, layer=2, mask="local", debias="off")])
def test_batched_equals_one_by_one(cfg):
    """Options beyond the per-family suite's (FastV, ShaRP's defaults, a schedule on every family): a text query,
    a local segment mask. One by one ShaRP's shallow layers run the block-wise segment kernel, the padded batch a
    dense mask."""
    case = BY_NAME["qwen2_5_vl"]
    model, _ = model_and_inputs(case.name)
    assert_batch_equals_one_by_one(case, model, case.samples(model), cfg, n=5)


def test_llava_batch_of_different_frame_counts_is_refused_before_the_tower_runs():
    """LLaVA-OneVision stacks a batch's videos into one tensor: different frame counts cannot batch."""
    model = tiny_llava_onevision(seed=0)
    calls = []
    model.model.vision_tower.register_forward_hook(lambda *a: calls.append(1))
    batch = left_pad([tiny_llava_inputs(model, frames=8, seed=1), tiny_llava_inputs(model, frames=4, seed=2)])
    with sv.apply(model, sv.FastV(retain=0.25)), torch.no_grad():
        with pytest.raises(sv.InputError, match="same frame count"):
            model.generate(**batch, max_new_tokens=2)
        assert not calls
        model.generate(**tiny_llava_inputs(model, frames=4, seed=2), max_new_tokens=2)  # the handle still serves
    assert calls


@pytest.mark.parametrize("how", [{"num_beams": 2}, {"num_return_sequences": 2, "do_sample": True, "top_k": 5}])
def test_user_runs_beam_search_or_several_return_sequences(qwen25, how):
    model, inputs = qwen25
    kw = dict(max_new_tokens=3, **how)
    kw.setdefault("do_sample", False)
    with torch.no_grad():
        torch.manual_seed(0)
        ref = model.generate(**inputs, **kw)
        with sv.apply(model, sv.FastV(retain=1.0, layer=2)):
            torch.manual_seed(0)
            same = model.generate(**inputs, **kw)
        with sv.apply(model, sv.FastV(retain=0.25, layer=2)) as handle:
            model(**inputs)
            alone = handle.last_stats.stages[0].kept[0]
            model.generate(**inputs, **kw)
    assert torch.equal(same, ref)
    stage = handle.last_stats.stages[0]
    assert len(stage.kept) == 2  # each beam / sequence pruned as its source sample
    for kept in stage.kept:
        assert torch.equal(kept, alone)
