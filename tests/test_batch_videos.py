"""A batch of different videos (different frame counts and sizes, so different visual-token counts and grids)
gives, for every method and stacked schedules, what each video gives alone: kept sets, logits, greedy tokens.

Samples that keep different counts after a stage are padded on the left to the longest (engine/rows.py); one
video of each batch is so short that its budget is one token.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

import pytest
import torch
from torch import nn

import sharp_vlm as sv
from cases import left_pad
from sharp_vlm.core.layout import VisualItem, VisualLayout
from sharp_vlm.core.selection import Selection
from sharp_vlm.engine.rows import PrefillRows
from sharp_vlm.eval.runner import reply_from_answer
from sharp_vlm.methods.base import registered
from sharp_vlm.methods.experimental import ShaRPLab
from sharp_vlm.pipeline import VideoQA
from sharp_vlm.testing import (
    save_tiny_checkpoint,
    tiny_internvl,
    tiny_internvl_inputs,
    tiny_qwen_vl,
    tiny_video_inputs,
)
from sharp_vlm.video.decode import Frames

RETAIN = 0.03  # the shortest video of each batch (32 tokens) keeps one token

METHODS: dict[str, Callable[[], sv.Method]] = {  # each method, its in-LLM layers moved into the 4-layer decoders
    "fastv": lambda: sv.FastV(retain=RETAIN, layer=2),
    "sharp": lambda: sv.ShaRP(retain=RETAIN, layer=2),
    "sharp_lab": lambda: ShaRPLab(retain=RETAIN, layer=2, fill="score"),
    "sharp_lab_rope_only": lambda: ShaRPLab(retain=RETAIN, layer=2, debias="rope_only"),  # content-free keys
    "pdrop": lambda: sv.PDrop(retain=RETAIN, layers=[1, 2, 3]),
    "framefusion": lambda: sv.FrameFusion(retain=RETAIN, merge_retains=[0.6, 0.3]),
    "divprune": lambda: sv.DivPrune(retain=RETAIN),
    "vidcom2": lambda: sv.VidCom2(retain=RETAIN),
    "fastvid": lambda: sv.FastVID(retain=RETAIN),
    "dycoke": lambda: sv.DyCoke(retain=RETAIN, dp_layer=2),
    "downsample": lambda: sv.Downsample(retain=RETAIN, mode="pool"),
    "random": lambda: sv.RandomPrune(retain=RETAIN, layer=1),
    "uniform": lambda: sv.UniformPrune(retain=RETAIN, layer=0),
    "schedule": lambda: sv.Schedule([sv.UniformPrune(retain=0.5, layer=0), sv.ShaRP(retain=RETAIN, layer=2)]),
    "fastv1+fastv3": lambda: sv.Schedule([sv.FastV(retain=0.5, layer=1), sv.FastV(retain=RETAIN, layer=3)]),
}
TOWER = {  # these read the vision tower's attention: InternVL exposes it, Qwen-VL does not
    "visionzip": lambda: sv.VisionZip(retain=RETAIN),
    "holitom": lambda: sv.HoliTom(retain=RETAIN, merge_layer=2),
    "flashvid": lambda: sv.FlashVID(retain=RETAIN, prune_layer=3, min_segments=1),
}


def test_every_method_is_batched():
    assert set(registered()) - {"none"} <= set(METHODS) | set(TOWER)


@cache
def qwen(attn: str = "sdpa") -> tuple[nn.Module, list[dict[str, Any]]]:
    """Qwen2.5-VL: 128, 192 and 32 visual tokens (8 x 4x4, 4 x 8x6, 2 x 4x4 merged patches)."""
    model = tiny_qwen_vl("qwen2_5_vl", layers=4, seed=0, attn_implementation=attn)
    return model, [tiny_video_inputs(model, frames=16, seed=1, question=7).as_kwargs(),
                   tiny_video_inputs(model, frames=8, height=32, width=24, seed=2, question=3).as_kwargs(),
                   tiny_video_inputs(model, frames=4, seed=3, question=5).as_kwargs()]


@cache
def internvl() -> tuple[nn.Module, list[dict[str, Any]]]:
    """InternVL3: videos of 8, 3 and 2 frames of 16 tokens (one frame would read as an image)."""
    model = tiny_internvl("qwen2", seed=0)
    return model, [tiny_internvl_inputs(model, (("video", 8),), prefix=5, seed=1),
                   tiny_internvl_inputs(model, (("video", 3),), prefix=9, seed=2),
                   tiny_internvl_inputs(model, (("video", 2),), prefix=3, seed=3)]


def assert_batched_equals_alone(model: nn.Module, samples: list[dict[str, Any]], method: sv.Method, n: int = 3,
                                **apply_kwargs: Any) -> sv.CallStats:
    gen = dict(max_new_tokens=n, do_sample=False, output_logits=True, return_dict_in_generate=True)
    with sv.apply(model, method, **apply_kwargs) as handle, torch.no_grad():
        alone, kept = [], []
        for x in samples:
            alone.append(model.generate(**x, **gen))
            kept.append([s.kept[0] for s in handle.last_stats.stages])
        both = model.generate(**left_pad(samples), **gen)
        stats = handle.last_stats
    for b, one in enumerate(alone):
        assert both.sequences[b, -n:].tolist() == one.sequences[0, -n:].tolist(), f"sample {b}"
        for step, (lb, lo) in enumerate(zip(both.logits, one.logits, strict=True)):
            assert (lb[b] - lo[0]).abs().max() < 1e-4, f"sample {b} step {step}"
        for stage, k in zip(stats.stages, kept[b], strict=True):
            assert torch.equal(stage.kept[b], k), f"sample {b} at {stage.label}"
    return stats


@pytest.mark.parametrize("name", list(METHODS))
@pytest.mark.parametrize("family", ["qwen2_5_vl", "internvl"])
def test_batch_of_different_videos_equals_one_by_one(family, name):
    model, samples = qwen() if family == "qwen2_5_vl" else internvl()
    stats = assert_batched_equals_alone(model, samples, METHODS[name]())
    assert stats.n_visual == ([128, 192, 32] if family == "qwen2_5_vl" else [128, 48, 32])
    assert stats.stages[-1].n_kept == [sv.keep_count(RETAIN, n) for n in stats.n_visual]
    assert stats.stages[-1].n_kept[2] == 1


@pytest.mark.parametrize("name", list(TOWER))
def test_tower_methods_batch_different_videos(name):
    model, samples = internvl()
    assert_batched_equals_alone(model, samples, TOWER[name]())


@pytest.mark.parametrize("name", ["fastv", "sharp", "fastv1+fastv3"])
def test_eager_attention_and_trimmed_kv(name):
    """Eager attention takes the additive mask; trim_kv drops the shallow layers' pruned keys, padding included."""
    model, samples = qwen("eager")
    assert_batched_equals_alone(model, samples, METHODS[name]())
    assert_batched_equals_alone(model, samples, METHODS[name](), trim_kv=True)


def test_padding_rows_are_laid_out_and_never_keys_queries_or_candidates():
    """Two stages on hand-made rows: the sample that keeps fewer rows gets padding in front, copies of its first
    row; they are not valid keys, not query rows, and the next stage lays the padding out anew."""
    # sample 0: 2 text, 6 visual, 2 text; sample 1: 1 left-padding row, 1 text, 4 visual, 3 text (10 rows each)
    lay0 = VisualLayout.from_grid(torch.arange(2, 8), [VisualItem("video", 0, 2, 1, 3)])
    lay1 = VisualLayout.from_grid(torch.arange(2, 6), [VisualItem("video", 0, 2, 1, 2)])
    key_valid = torch.ones(2, 10, dtype=torch.bool)
    key_valid[1, 0] = False
    rows = PrefillRows.start([lay0, lay1], key_valid, torch.tensor([9, 9]))
    rows.apply([Selection(torch.tensor([0, 5])), Selection(torch.tensor([1, 2, 3]))], torch.device("cpu"))
    # sample 0 keeps 6 rows, sample 1 keeps 9: three padding rows copy sample 0's first row
    assert rows.rows.tolist() == [[0, 0, 0, 0, 1, 2, 7, 8, 9], [0, 1, 3, 4, 5, 6, 7, 8, 9]]
    assert rows.pad.tolist() == [[True] * 3 + [False] * 6, [False] * 9]
    assert rows.valid().tolist() == [[False] * 3 + [True] * 6, [False] + [True] * 8]
    assert [r.tolist() for r in rows.visual_rows] == [[5, 6], [2, 3, 4]]
    assert [o.tolist() for o in rows.visual_orig] == [[0, 5], [1, 2, 3]]
    assert [t.tolist() for t in rows.query_rows("text", [lay0, lay1])] == [[7, 8], [5, 6, 7, 8]]
    assert [t.tolist() for t in rows.query_rows("last", [lay0, lay1])] == [[8], [8]]
    # a second stage: sample 0's padding is dropped; now sample 1 keeps more, sample 0 gets one padding row
    rows.apply([Selection(torch.tensor([0, 1])), Selection(torch.tensor([2]))], torch.device("cpu"))
    assert rows.rows.tolist() == [[0, 0, 1, 2, 7, 8, 9], [0, 1, 5, 6, 7, 8, 9]]
    assert rows.pad.tolist() == [[True] + [False] * 6, [False] * 7]
    assert [r.tolist() for r in rows.visual_rows] == [[3, 4], [2]]
    assert [o.tolist() for o in rows.visual_orig] == [[0, 5], [3]]


def test_padding_rows_are_never_kept_or_scored_in_a_model():
    model, samples = qwen()
    with sv.apply(model, sv.FastV(retain=RETAIN, layer=2)) as handle, torch.no_grad():
        model(**left_pad(samples))
    stage = handle.last_stats.stages[0]
    for b, n in enumerate([128, 192, 32]):
        scores = handle.last_stats.stages[0].samples[b].raw_scores
        assert scores.shape == (n,) and torch.isfinite(scores).all() and scores.sum() > 0
        assert stage.kept_positions[b].tolist() == sorted(set(stage.kept_positions[b].tolist()))


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_prompts_of_one_length_with_different_videos(attn):
    """No prompt padding (the model's causal default, no mask), yet the stage pads the sample that keeps fewer."""
    model, _ = qwen(attn)
    samples = [tiny_video_inputs(model, frames=16, seed=1, question=7).as_kwargs(),  # 128 visual + 7 text
               tiny_video_inputs(model, frames=8, seed=2, question=71).as_kwargs()]  # 64 visual + 71 text
    assert samples[0]["input_ids"].shape == samples[1]["input_ids"].shape
    stats = assert_batched_equals_alone(model, samples, sv.FastV(retain=0.1, layer=2))
    assert stats.stages[0].n_kept == [13, 6]


# ---------------------------------------------------------------- VideoQA.answer_batch on saved checkpoints
def _frames(n: int, height: int, width: int, seed: int) -> Frames:
    pixels = torch.randint(0, 256, (n, height, width, 3), generator=torch.Generator().manual_seed(seed),
                           dtype=torch.uint8)
    return Frames(pixels, [i / 2 for i in range(n)], list(range(n)), 2.0, n)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("batch")
    return {f: VideoQA.from_pretrained(save_tiny_checkpoint(f, root / f), dtype="float32")
            for f in ("qwen2_5_vl", "smolvlm", "llava_onevision")}


@pytest.mark.parametrize("family", ["qwen2_5_vl", "smolvlm"])
@pytest.mark.parametrize("method", [None, "sharp", "divprune"])
def test_answer_batch_equals_answer(saved, family, method):
    """Videos of different lengths and sizes, questions of different lengths: each answer (text, kept tokens,
    counts, FLOPs) is the one `answer` gives alone."""
    qa = saved[family]
    videos = [_frames(8, 48, 64, 1), _frames(4, 64, 40, 2), _frames(6, 32, 32, 3)]
    questions = ["What happens?", "Which colour is the car on the left of the road?", "Who?"]
    kw = dict(frames=8, method=method, retain=0.25, layer=2 if method == "sharp" else None, max_new_tokens=4)
    batch = qa.answer_batch(videos, questions, **kw)
    assert len({a.n_visual for a in batch}) > 1  # the videos give different token counts
    for i, (video, question) in enumerate(zip(videos, questions, strict=True)):
        alone = qa.answer(video, question, **kw)
        got = batch[i]
        assert (got.text, got.n_visual, got.n_kept, got.flops, got.new_tokens) == (
            alone.text, alone.n_visual, alone.n_kept, alone.flops, alone.new_tokens)
        assert reply_from_answer(got).flops == reply_from_answer(alone).flops  # scoring, reference: its own
        assert torch.equal(got.kept, alone.kept) and got.index == i and got.batch_size == 3
        if method is not None:
            assert [s["n_kept"] for s in got.summary()["stages"]] == [s["n_kept"] for s in alone.summary()["stages"]]


def test_answer_batch_groups_what_the_family_cannot_batch(saved):
    """LLaVA-OneVision stacks a batch's videos: videos of another frame count go in their own batch, the answers
    in the order given and each as alone; the processor refuses to stack them, before the model runs."""
    qa = saved["llava_onevision"]
    videos = [_frames(8, 48, 64, 1), _frames(4, 48, 64, 2), _frames(8, 64, 40, 3)]
    questions = ["What?", "Who?", "Who is it?"]
    kw = dict(frames=8, method="fastv", retain=0.25, max_new_tokens=2)
    answers = qa.answer_batch(videos, questions, **kw)
    assert [a.batch_size for a in answers] == [2, 1, 2] and [a.index for a in answers] == [0, 0, 1]
    for video, question, got in zip(videos, questions, answers, strict=True):
        alone = qa.answer(video, question, **kw)
        assert (got.text, got.n_visual, got.n_kept) == (alone.text, alone.n_visual, alone.n_kept)
    prepared = [qa.prepare(v, q, frames=8) for v, q in zip(videos, questions, strict=True)]
    with pytest.raises(sv.InputError, match="same number of frames"):
        qa.processor.batch(prepared, pad_id=0)
    with pytest.raises(sv.ConfigError, match="one of each per video"):
        qa.answer_batch(videos[:1], questions)
