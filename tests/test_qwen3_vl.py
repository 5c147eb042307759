"""What is Qwen3-VL's own on the engine (dense and MoE; the shared exactness suite is tests/test_adapter_exactness.py):
deepstack on the kept rows, in the oracle and in ShaRP's reference pass, layouts against the processor's rules, a
save/load round trip, and a release that renamed the deepstack inputs. Tiny random-weight models, no downloads."""

from __future__ import annotations

import math
import re
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

import sharp_vlm as sv
from cases import model_and_inputs
from oracle import decoder_prompt, forward_logits, staged_forward
from sharp_vlm.core.layout import VisualItem
from sharp_vlm.engine.segment_attention import RUNS_KWARG
from sharp_vlm.models.qwen3_vl import Qwen3VLAdapter
from sharp_vlm.testing.qwen3_vl import frame_timestamps, tiny_qwen3_vl

N_VIS = 64  # 4 temporal patches x 4 x 4 merged tokens (8 frames at 16 x 16 px)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def dense():
    """The shared suite's Qwen3-VL case: 4 layers, deepstack after layers 0-2, an 8-frame video."""
    return model_and_inputs("qwen3_vl")


def _hooks(model):
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


# ---------------------------------------------------------------- deepstack on the kept rows
def _prompt(model, inputs):
    return decoder_prompt(model, model.model.language_model, inputs, inputs["mm_token_type_ids"][0] != 0)


def test_oracle_sees_deepstack_on_the_kept_rows(dense):
    """The oracle adds the deepstack features of the kept rows after layers 0-2 and matches the engine; ignoring
    them after a stage, or adding them at the wrong rows, would not."""
    model, inputs = dense
    tm = model.model.language_model
    with sv.apply(model, sv.FastV(retain=0.25, layer=1)) as handle:
        prefill = forward_logits(model, inputs)
        kept = handle.last_stats.stages[0].kept_positions[0]
    prompt = _prompt(model, inputs)
    right, _, _ = staged_forward(model, tm, prompt, [(1, kept)], n_decode=1)
    assert (prefill - right[0]).abs().max() < 1e-5
    shifted = replace(prompt, deepstack=[torch.roll(d, 1, 0) for d in prompt.deepstack])
    wrong, _, _ = staged_forward(model, tm, shifted, [(1, kept)], n_decode=1)
    assert (prefill - wrong[0]).abs().max() > 1e-3


def test_remove_restores_model(dense):  # the deepstack shadow goes with the hooks
    model, inputs = dense
    ref = forward_logits(model, inputs)
    hooks = _hooks(model)
    with sv.apply(model, sv.ShaRP(retain=0.2, layer=2)):
        assert forward_logits(model, inputs).shape[1] < ref.shape[1]
    assert _hooks(model) == hooks
    assert "_deepstack_process" not in model.model.language_model.__dict__
    assert torch.equal(forward_logits(model, inputs), ref)


# ---------------------------------------------------------------- ShaRP and its reference pass
def test_sharp_defaults_reference_pass(dense):
    """ShaRP (defaults: layer 2, segment mask, reference debias): the reference pass gets the real positions and
    masks, black frames at the visual rows, and the black frames' deepstack after layer 0 as the model adds it."""
    model, inputs = dense
    calls, raw0 = [], []
    layers = model.model.language_model.layers
    # registered before the engine's: sees layer 0's own output, before the deepstack addition
    raw_hook = layers[0].register_forward_hook(lambda m, a, out: raw0.append(out))
    with sv.apply(model, sv.ShaRP()) as handle, torch.no_grad():
        hooks = [
            raw_hook,
            layers[0].register_forward_pre_hook(
                lambda m, a, k: calls.append((0, a[0], k["position_embeddings"], k.get(RUNS_KWARG))),
                with_kwargs=True),
            layers[1].register_forward_pre_hook(lambda m, a, k: calls.append((1, a[0], None, None)),
                                                with_kwargs=True),
        ]
        try:
            model(**inputs)
        finally:
            for h in hooks:
                h.remove()
    assert handle.last_stats.stages[0].n_kept == [round(0.1 * N_VIS)]
    (_, real_h, real_pe, real_runs), (_, real_h1, _, _), (_, ref_h, ref_pe, ref_runs), (_, ref_h1, _, _) = calls
    assert real_h.shape == ref_h.shape
    assert torch.equal(real_pe[0], ref_pe[0]) and torch.equal(real_pe[1], ref_pe[1])
    assert real_runs is not None and real_runs == ref_runs
    assert sum(seg for _, _, seg in real_runs.runs) == 4  # one segment per temporal patch, timestamps are text
    vis = inputs["mm_token_type_ids"][0] != 0
    assert torch.equal(real_h[0, ~vis], ref_h[0, ~vis])
    assert not torch.allclose(real_h[0, vis], ref_h[0, vis])
    # black frames: the video's features and its deepstack features, through the model's own vision tower
    vc = model.config.vision_config
    grid = inputs["video_grid_thw"]
    pixels = torch.full((int(grid.prod()), vc.in_channels * vc.temporal_patch_size * vc.patch_size**2), -1.0)
    with torch.no_grad():
        black = model.model.get_video_features(pixels, grid, return_dict=True)
    assert torch.allclose(ref_h[0, vis], torch.cat(black.pooler_output), atol=1e-6)
    expected = raw0[1].clone()
    expected[0, vis] += torch.cat(black.deepstack_features[0])
    assert torch.allclose(ref_h1, expected, atol=1e-6)
    assert (ref_h1 - raw0[1]).abs().max() > 1e-3  # the deepstack addition is not a no-op
    # the real pass got the real deepstack: the model's own features, not the black ones
    real_ds = _prompt(model, inputs).deepstack[0]
    assert torch.allclose(real_h1[0, vis] - raw0[0][0, vis], real_ds, atol=1e-6)


def test_sharp_after_a_layer_zero_stage_runs_on_the_kept_rows(dense):
    """After a layer-0 stage the reference pass runs on the kept rows: black deepstack goes to those rows only."""
    model, inputs = dense
    cfg = sv.Schedule([sv.UniformPrune(retain=0.5, layer=0), sv.ShaRP(retain=0.2, layer=2)])
    hooks = _hooks(model)
    layers = model.model.language_model.layers
    into1, raw0 = [], []
    with sv.apply(model, cfg) as handle:
        grab = [layers[0].register_forward_hook(lambda m, a, out: raw0.append(out)),
                layers[1].register_forward_pre_hook(lambda m, a: into1.append(a[0]))]
        try:
            out = forward_logits(model, inputs)
        finally:
            for h in grab:
                h.remove()
        with torch.no_grad():
            gen = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    stages = handle.last_stats.stages
    assert [s.n_kept for s in stages] == [[32], [13]]
    assert out.shape[1] == inputs["input_ids"].shape[1] - N_VIS + 13
    assert gen.shape[1] == inputs["input_ids"].shape[1] + 3
    assert _hooks(model) == hooks
    # the reference pass (second call of layer 0): raw output + the black deepstack of the kept visual rows
    vis = inputs["mm_token_type_ids"][0] != 0
    rows = torch.nonzero(~vis | torch.isin(torch.arange(vis.numel()), stages[0].kept_positions[0])).flatten()
    kept_vis = vis[rows]
    assert raw0[1].shape[1] == rows.numel() == into1[1].shape[1]
    vc = model.config.vision_config
    grid = inputs["video_grid_thw"]
    pixels = torch.full((int(grid.prod()), vc.in_channels * vc.temporal_patch_size * vc.patch_size**2), -1.0)
    with torch.no_grad():
        ds0 = torch.cat(model.model.get_video_features(pixels, grid, return_dict=True).deepstack_features[0])
    expected = raw0[1].clone()
    expected[0, kept_vis] += ds0[(torch.cumsum(vis.long(), 0) - 1)[rows[kept_vis]]]
    assert torch.allclose(into1[1], expected, atol=1e-6)


# ---------------------------------------------------------------- layouts against the processor's rules
SPECIAL = {"<|vision_start|>": -5, "<|vision_end|>": -6, "<|video_pad|>": -4, "<|image_pad|>": -3}


def _tokens(text: str, vocab: int) -> torch.Tensor:
    """A stand-in tokenizer: the special tokens by id, every other character an ordinary text id."""
    ids = []
    for piece in re.split("(" + "|".join(re.escape(s) for s in SPECIAL) + ")", text):
        if piece in SPECIAL:
            ids.append(vocab + SPECIAL[piece])
        else:
            ids += [3 + ord(c) % (vocab - 11) for c in piece]
    return torch.tensor(ids)


def _processor_video(frames: int, height: int, width: int, fps: float, min_pixels: int, max_pixels: int):
    """(video_grid_thw, placeholder text) as Qwen3-VL's video processor and processor make them."""
    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor, smart_resize
    from transformers.video_utils import VideoMetadata

    vp = Qwen3VLVideoProcessor(patch_size=2, merge_size=2, temporal_patch_size=2)
    h, w = smart_resize(frames, height, width, temporal_factor=2, factor=4, min_pixels=min_pixels,
                        max_pixels=max_pixels)
    # the processor's own frame padding and patchify (resize and normalisation need torchvision; skipped)
    out = vp._preprocess([torch.rand(frames, 3, h, w)], do_resize=False, size=None, resample=None,
                         do_rescale=False, rescale_factor=1.0, do_normalize=False, image_mean=None, image_std=None,
                         patch_size=2, temporal_patch_size=2, merge_size=2, cap_pixels_per_frame=False,
                         return_tensors="pt")
    grid = out["video_grid_thw"]
    fake = SimpleNamespace(
        video_processor=vp, video_token="<|video_pad|>", vision_start_token="<|vision_start|>",
        vision_end_token="<|vision_end|>",
        _calculate_timestamps=lambda *a: Qwen3VLProcessor._calculate_timestamps(None, *a),
    )
    meta = VideoMetadata(total_num_frames=frames, fps=fps, frames_indices=list(range(frames)))
    text = Qwen3VLProcessor.replace_video_token(fake, {"video_grid_thw": grid, "video_metadata": [meta]}, 0)
    return grid, (h, w), text, out["pixel_values_videos"]


@pytest.fixture(scope="module")
def layout_model():
    return tiny_qwen3_vl(layers=1, deepstack=(0,))


@pytest.mark.parametrize("frames,height,width", [(4, 16, 16), (7, 24, 40), (10, 18, 50), (2, 64, 16), (16, 8, 8)])
def test_layouts_follow_the_processor(layout_model, frames, height, width):
    model = layout_model
    vocab = model.config.text_config.vocab_size
    grid, (h, w), text, pixels = _processor_video(frames, height, width, fps=2.0, min_pixels=4096,
                                                  max_pixels=6 * 32 * 32)
    t = math.ceil(frames / 2)  # frames padded to whole temporal patches
    assert grid.tolist() == [[t, h // 2, w // 2]]
    assert text.count("seconds>") == t  # one timestamp per temporal patch
    # the tiny factory writes the same timestamps as the processor
    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor
    stamps = Qwen3VLProcessor._calculate_timestamps(None, list(range(frames)), 2.0, 2)
    assert frame_timestamps(frames, 2.0, 2) == stamps
    assert re.findall(r"<([0-9.]+) seconds>", text) == [f"{x:.1f}" for x in stamps]
    ids = torch.cat([torch.arange(5, 10), _tokens(text, vocab), torch.arange(20, 24)])[None]
    types = (ids == model.config.video_token_id).long() * 2
    call = dict(input_ids=ids, mm_token_type_ids=types, video_grid_thw=grid, attention_mask=torch.ones_like(ids))
    (lay,) = Qwen3VLAdapter(model).find_layouts(call, ids.shape[1], 1)
    per_block = (h // 4) * (w // 4)
    assert lay.n_visual == t * per_block == pixels.shape[0] // 4
    assert lay.items == [VisualItem("video", 0, t, h // 4, w // 4)]
    assert torch.equal(lay.positions, torch.nonzero(types[0]).flatten())
    # frame id = the vision_start block the token sits in; timestamps and markers are not visual
    block = torch.cumsum((ids[0] == model.config.vision_start_token_id).long(), 0) - 1
    assert torch.equal(lay.frame_ids, block[lay.positions])
    # rows/cols agree with the model's own M-RoPE: (h, w) offsets from the block's temporal position
    pos, _ = model.model.get_rope_index(ids, mm_token_type_ids=types, video_grid_thw=grid)
    p = pos[:, 0, lay.positions]
    assert torch.equal(p[1] - p[0], lay.rows) and torch.equal(p[2] - p[0], lay.cols)
    assert len(set(p[0].tolist())) == t  # one temporal position per block


def test_layouts_of_several_videos_and_an_image(layout_model):
    model = layout_model
    cfg = model.config
    vocab = cfg.text_config.vocab_size
    g1, _, v1, _ = _processor_video(4, 16, 16, fps=1.0, min_pixels=16, max_pixels=10**6)
    g2, _, v2, _ = _processor_video(6, 8, 16, fps=4.0, min_pixels=16, max_pixels=10**6)
    image = "<|vision_start|>" + "<|image_pad|>" * 6 + "<|vision_end|>"  # grid (1, 4, 6)
    ids = torch.cat([_tokens("a" + v1 + "b" + image + "c" + v2 + "d", vocab)])
    ids = torch.cat([torch.zeros(3, dtype=torch.long), ids])[None]  # left padding
    types = (ids == cfg.video_token_id).long() * 2 + (ids == cfg.image_token_id).long()
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    call = dict(input_ids=ids, mm_token_type_ids=types, video_grid_thw=torch.cat([g1, g2]),
                image_grid_thw=torch.tensor([[1, 4, 6]]), attention_mask=mask)
    (lay,) = Qwen3VLAdapter(model).find_layouts(call, ids.shape[1], 1)
    assert lay.items == [VisualItem("video", 0, 2, 4, 4), VisualItem("image", 32, 1, 2, 3),
                         VisualItem("video", 38, 3, 2, 4)]
    assert lay.n_visual == 32 + 6 + 24 and lay.n_frames == 2 + 1 + 3
    assert lay.of_kinds(("video",)).n_visual == 56
    # grids from another processor call are refused with a clear message
    with pytest.raises(sv.InputError, match="grid"):
        Qwen3VLAdapter(model).find_layouts(dict(call, video_grid_thw=torch.cat([g1, g1])), ids.shape[1], 1)
    with pytest.raises(sv.InputError, match="fewer blocks"):  # the grid claims a third block for video 1
        Qwen3VLAdapter(model).find_layouts(dict(call, video_grid_thw=torch.cat([g1 + torch.tensor([1, 0, 0]), g2])),
                                           ids.shape[1], 1)
    with pytest.raises(sv.InputError, match="mm_token_type_ids"):
        Qwen3VLAdapter(model).find_layouts({"input_ids": ids}, ids.shape[1], 1)


def test_a_text_model_without_deepstack_inputs_is_refused_at_apply(monkeypatch):
    model = tiny_qwen3_vl(layers=2, deepstack=(0,))

    def forward(self, input_ids=None, inputs_embeds=None, **kwargs):  # a release that renamed the deepstack inputs
        raise AssertionError("not called")

    monkeypatch.setattr(type(model.model.language_model), "forward", forward)
    with pytest.raises(sv.UnsupportedModelError, match="deepstack_visual_embeds"):
        sv.apply(model, sv.FastV(retain=0.5, layer=1))
