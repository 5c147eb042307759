"""The vision tower's attention as a method sees it (`SampleView.vision_attention` / `vision_keys`), against the
tower's own eager `output_attentions` and keys, pooled onto the decoder's tokens by hand."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

import sharp_vlm as sv
from sharp_vlm.errors import InputError, UnsupportedModelError
from sharp_vlm.methods.base import PreLLMMethod, SampleView
from sharp_vlm.testing import tiny_internvl, tiny_llava_inputs, tiny_llava_onevision, tiny_qwen_vl, tiny_video_inputs
from tower import FAMILIES, groups_of_four


@dataclass
class Recorder(PreLLMMethod):
    """Keeps the most attended tokens and remembers what it was shown."""

    reads_vision = True
    query: str = "cls"

    def select(self, view: SampleView) -> torch.Tensor:
        seen = getattr(self, "seen", [])
        seen.append((view.vision_attention(self.query), view.vision_keys()))
        self.seen = seen
        return view.top(view.vision_attention(self.query))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("query", ["cls", "mean"])
def test_the_method_sees_the_towers_own_attention(family, query):
    model, inputs, (received, cls, keys) = FAMILIES[family]("sdpa")
    method = Recorder(retain=0.5, query=query)
    with sv.apply(model, method), torch.no_grad():
        model(**inputs)
    got, got_keys = method.seen[0]
    want = cls if query == "cls" and cls is not None else received
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(got_keys, keys, rtol=1e-4, atol=1e-5)


def test_internvl_groups_follow_the_pixel_shuffle():
    """The oracle's 2x2 blocks are the patches the model's pixel shuffle joins into one token."""
    model = tiny_internvl()
    side = 8
    index = torch.arange(side * side, dtype=torch.float32).reshape(1, side, side, 1)
    joined = model.model.pixel_shuffle(index, scale_factor=model.config.downsample_ratio).reshape(-1, 4)
    got = groups_of_four(torch.arange(side * side, dtype=torch.float32)[None])
    torch.testing.assert_close(joined.mean(1), got)


def test_batch_of_two_videos_each_sees_its_own_frames():
    model = tiny_llava_onevision(attn_implementation="eager")
    one = tiny_llava_inputs(model, frames=4, seed=0)
    two = tiny_llava_inputs(model, frames=4, seed=1)
    batch = {k: torch.cat([one[k], two[k]]) for k in one}
    seen = []
    for inputs in (one, two, batch):
        method = Recorder(retain=0.5)
        with sv.apply(model, method), torch.no_grad():
            model(**inputs)
        seen.append([s[0] for s in method.seen])
    torch.testing.assert_close(seen[2][0], seen[0][0])
    torch.testing.assert_close(seen[2][1], seen[1][0])


def test_family_without_tower_attention_is_refused_at_apply():
    model = tiny_qwen_vl("qwen2_5_vl")
    with pytest.raises(UnsupportedModelError, match="vision tower's attention"):
        sv.apply(model, Recorder())


def test_images_beside_the_video_are_refused_before_a_wrong_answer():
    model = tiny_llava_onevision()
    inputs = tiny_llava_inputs(model, frames=2, image_sizes=((16, 16),))
    with sv.apply(model, Recorder(retain=0.5)), pytest.raises(InputError, match="video frames only"):
        model(**inputs)


def test_reference_pass_tower_runs_are_not_captured():
    """A stacked ShaRP stage runs black frames through the tower after the capture stopped."""
    model = tiny_llava_onevision(attn_implementation="eager")
    inputs = tiny_llava_inputs(model, frames=4)
    method = Recorder(retain=0.5)
    sched = sv.Schedule([method, sv.ShaRP(retain=0.25, layer=2)])
    with sv.apply(model, sched), torch.no_grad():
        model(**inputs)
        first = method.seen[-1][0]
        model(**inputs)
    torch.testing.assert_close(method.seen[-1][0], first)


def test_qwen_inputs_still_run_other_methods():
    model = tiny_qwen_vl("qwen2_5_vl")
    inputs = tiny_video_inputs(model, frames=4, height=16, width=16).as_kwargs()
    with sv.apply(model, sv.DivPrune(retain=0.5)), torch.no_grad():
        model(**inputs)


def test_a_declared_span_without_a_tower_is_refused_and_one_with_a_tower_runs():
    from sharp_vlm.testing import tiny_llama

    model = tiny_llama()
    span = sv.VideoSpan(2, 4, 8)
    with pytest.raises(UnsupportedModelError, match="tower="):
        sv.apply(model, sv.VisionZip(retain=0.25), span=span)
    received = torch.rand(32, generator=torch.Generator().manual_seed(0))
    tower = sv.TowerFeatures(received, None, torch.randn(32, 4))
    ids = torch.randint(0, 100, (1, 40))
    method = Recorder(retain=0.25, query="mean")
    with sv.apply(model, method, span=sv.VideoSpan(2, 4, 8, tower=tower)), torch.no_grad():
        model(input_ids=ids)
    assert torch.equal(method.seen[0][0], received)
    with pytest.raises(sv.ConfigError, match="32 tokens"):
        sv.VideoSpan(2, 4, 8, tower=sv.TowerFeatures(received[:5], None, torch.randn(5, 4)))


def test_beams_repeat_each_prompt_s_tower_attention():
    """generate() encodes the video once per prompt, then repeats the prompt for beams: every beam row ranks by
    its prompt's attention, and keeps what the prompt keeps alone."""
    model = tiny_llava_onevision()
    inputs = tiny_llava_inputs(model, frames=4)
    with sv.apply(model, sv.VisionZip(retain=0.5)) as handle, torch.no_grad():
        model(**inputs)
        alone = handle.last_stats.stages[0].kept[0]
        model.generate(**inputs, max_new_tokens=2, num_beams=2, do_sample=False)
        beams = handle.last_stats.stages[0].kept
    assert len(beams) == 2 and all(torch.equal(k, alone) for k in beams)
