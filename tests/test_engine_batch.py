"""A left-padded batch gives what each sample gives alone."""

from __future__ import annotations

import pytest
import torch
from torch.nn.functional import pad

import sharp_vlm as sv
from sharp_vlm.models.factory import tiny_qwen_vl, tiny_video_inputs


def _left_pad(samples):
    width = max(x["input_ids"].shape[1] for x in samples)
    out = {k: torch.cat([pad(x[k], (width - x[k].shape[1], 0)) for x in samples])
           for k in ("input_ids", "mm_token_type_ids", "attention_mask")}
    out["pixel_values_videos"] = torch.cat([x["pixel_values_videos"] for x in samples])
    out["video_grid_thw"] = torch.cat([x["video_grid_thw"] for x in samples])
    return out


@pytest.fixture(scope="module")
def model():
    return tiny_qwen_vl("qwen2_5_vl", seed=11)


@pytest.mark.parametrize("cfg", [sv.NoPrune(), sv.FastV(retain=0.25, layer=2), sv.FastV(retain=0.3, layer=1, query="text"),
                                 sv.UniformPrune(retain=0.5, layer=0), sv.ShaRP(retain=0.25, layer=2),
                                 sv.ShaRP(retain=0.25, layer=2, mask="local", debias="off")])
def test_batched_equals_one_by_one(model, cfg):
    # ShaRP: one by one the shallow layers run the block-wise segment kernel, the padded batch a dense mask
    samples = [tiny_video_inputs(model, seed=1, question=7).as_kwargs(),
               tiny_video_inputs(model, seed=2, question=3).as_kwargs()]
    batch = _left_pad(samples)
    gen = dict(max_new_tokens=5, do_sample=False, output_logits=True, return_dict_in_generate=True)
    with sv.apply(model, cfg) as handle, torch.no_grad():
        singles, kept = [], []
        for x in samples:
            singles.append(model.generate(**x, **gen))
            kept.append([s.kept[0] for s in handle.last_stats.stages])
        both = model.generate(**batch, **gen)
        kept_both = [[s.kept[b] for s in handle.last_stats.stages] for b in range(2)]
    for b, single in enumerate(singles):
        assert both.sequences[b, -5:].tolist() == single.sequences[0, -5:].tolist()
        for step, (lb, ls) in enumerate(zip(both.logits, single.logits, strict=True)):
            assert (lb[b] - ls[0]).abs().max() < 1e-4, f"sample {b} step {step}"
        for kb, ks in zip(kept_both[b], kept[b], strict=True):
            assert torch.equal(kb, ks)


def test_batch_of_different_video_sizes_is_refused(model):
    a = tiny_video_inputs(model, frames=16, seed=1).as_kwargs()
    b = tiny_video_inputs(model, frames=8, seed=2).as_kwargs()
    with sv.apply(model, sv.FastV(retain=0.25)), torch.no_grad():
        with pytest.raises(sv.InputError, match="different token counts"):
            model(**_left_pad([a, b]))


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
