"""What is LLaVA-OneVision's and LLaVA-NeXT-Video's own on the engine (the shared exactness suite is
tests/test_adapter_exactness.py): layouts against the model's own features and the processors' token rules, images
with their row newlines beside the video against a hand-written pruned forward, beams with images, the reference
input through the tower, save/load, and the errors of missing image sizes.

The oracle here defines the prunable rows independently of the adapter: placeholder tokens whose decoder input
is not the model's `image_newline` embedding.
"""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

import sharp_vlm as sv
from cases import assert_inputs_embeds_only_is_refused, model_and_inputs, reference_of
from oracle import check_against_oracle, greedy
from oracle import decoder_input as oracle_decoder_input
from sharp_vlm.models import registry
from sharp_vlm.models.llava_onevision import LlavaNextVideoAdapter, LlavaOnevisionAdapter
from sharp_vlm.testing import tiny_llava_inputs, tiny_llava_next_video, tiny_llava_onevision

FAMILIES = {"onevision": tiny_llava_onevision, "next_video": tiny_llava_next_video}
N_VIDEO = 128  # 8 frames x 4 x 4 pooled tokens in the tiny models


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=list(FAMILIES))
def llava(request):
    """The shared suite's case of this family: 4 layers, an 8-frame video."""
    return model_and_inputs(f"llava_{request.param}")


@pytest.fixture(scope="module")
def onevision_mixed():
    """One 20x40 px image (anyres: base 8x8 + 12x24 grid with row newlines) and an 8-frame video."""
    model = tiny_llava_onevision()
    return model, tiny_llava_inputs(model, frames=8, image_sizes=((20, 40),))


# ---------------------------------------------------------------- the oracle
def decoder_input(model, inputs) -> torch.Tensor:
    return oracle_decoder_input(model, model.model.language_model, inputs)


def prunable(model, inputs, kinds=("video",)) -> torch.Tensor:
    """(S,) bool: placeholders of these kinds whose feature is not the newline embedding."""
    cfg = model.config
    ids = inputs["input_ids"][0]
    place = torch.zeros_like(ids, dtype=torch.bool)
    for kind in kinds:
        place |= ids == (cfg.video_token_id if kind == "video" else cfg.image_token_id)
    newline = (decoder_input(model, inputs)[0] == model.model.image_newline).all(-1)
    return place & ~newline


def _check_against_oracle(model, inputs, method, kinds=("video",)):
    return check_against_oracle(model, model.model.language_model, inputs, method, prunable(model, inputs, kinds))


# ---------------------------------------------------------------- layouts
def _pooled_video(model, pixels) -> torch.Tensor:
    """(F, g, g, D): each frame's pooled grid, computed here from the tower's patch features."""
    from transformers import LlavaOnevisionForConditionalGeneration

    cfg = model.config
    hidden = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states[cfg.vision_feature_layer]
    if cfg.vision_feature_select_strategy == "default":
        hidden = hidden[:, 1:]  # CLS
    p = cfg.vision_config.image_size // cfg.vision_config.patch_size
    grid = hidden.view(pixels.shape[0], p, p, -1)  # the patches are row-major
    if isinstance(model, LlavaOnevisionForConditionalGeneration):  # project, then bilinear to ceil(p/2)
        proj = model.model.multi_modal_projector(grid).permute(0, 3, 1, 2)
        g = -(-p // 2)
        return torch.nn.functional.interpolate(proj, size=[g, g], mode="bilinear").permute(0, 2, 3, 1)
    s = cfg.spatial_pool_stride  # average-pool by the stride, then project
    pooled = torch.nn.functional.avg_pool2d(grid.permute(0, 3, 1, 2), s, s).permute(0, 2, 3, 1)
    return model.model.multi_modal_projector(pooled)


LAYOUT_CASES = [
    ("onevision", 1, ()),
    ("onevision", 3, ((20, 40),)),
    ("onevision", 8, ((40, 20), (16, 16))),  # two images: each one tile + a newline
    ("onevision", 0, ((33, 17),)),
    ("onevision_max1", 2, ((20, 40),)),  # anyres_max_1: the 8x16 grid is shrunk to 5x11
    ("next_video", 1, ()),
    ("next_video", 5, ((20, 40),)),
    ("next_video", 4, ((40, 20), (33, 17))),
]


@pytest.mark.parametrize(("family", "frames", "sizes"), LAYOUT_CASES)
def test_layout_places_every_feature_where_the_model_puts_it(family, frames, sizes):
    if family == "onevision_max1":
        model = tiny_llava_onevision(vision_aspect_ratio="anyres_max_1")
    else:
        model = FAMILIES[family]()
    inputs = tiny_llava_inputs(model, frames=frames, image_sizes=sizes)
    adapter = registry.adapter_for(model)
    (lay,) = adapter.find_layouts(inputs, inputs["input_ids"].shape[1], 1)
    embeds = decoder_input(model, inputs)[0]
    cfg = model.config
    ids = inputs["input_ids"][0]
    placeholders = (ids == cfg.video_token_id) | (ids == cfg.image_token_id)
    in_layout = torch.zeros_like(placeholders)
    in_layout[lay.positions] = True
    assert not bool((in_layout & ~placeholders).any())
    newline = model.model.image_newline
    # every placeholder left out of the layout holds the newline embedding, and no visual token does
    assert torch.equal(embeds[placeholders & ~in_layout], newline.expand(int((placeholders & ~in_layout).sum()), -1))
    assert not bool((embeds[lay.positions] == newline).all(-1).any())
    images = [it for it in lay.items if it.kind == "image"]
    videos = [it for it in lay.items if it.kind == "video"]
    assert len(videos) == (1 if frames else 0)
    tiled = family == "next_video" or len(sizes) == 1  # OneVision tiles only the image of a one-image sample
    if tiled:  # base tile, then the anyres grid with a newline closing each of its rows
        assert len(images) == 2 * len(sizes)
        expected = sum(grid.h for grid in images[1::2])
        assert all((base.h, base.w) == (8, 8) for base in images[::2])
    else:  # one tile and one newline per image
        assert len(images) == len(sizes) and all((it.h, it.w) == (8, 8) for it in images)
        expected = len(sizes)
    if family.startswith("onevision"):
        expected += len(videos)  # one newline closes each video
    assert int((placeholders & ~in_layout).sum()) == expected
    if frames:
        (video,) = videos
        assert (video.t, video.h, video.w) == (frames, 4, 4)
        with torch.no_grad():
            pooled = _pooled_video(model, inputs["pixel_values_videos"][0])
        sub = lay.of_kinds(("video",))
        f0 = int(sub.frame_ids.min())
        expect = pooled[sub.frame_ids - f0, sub.rows, sub.cols]
        assert (embeds[sub.positions] - expect).abs().max() < 1e-5  # frame-major, then rows, then cols


def _onevision_processor(num_image_tokens: int, strategy: str, pinpoints, aspect: str = "anyres_max_9"):
    """The processor's own token-count methods on its attributes (no tokenizer, no download)."""
    from transformers import LlavaOnevisionProcessor as P

    ns = types.SimpleNamespace(num_image_tokens=num_image_tokens, vision_feature_select_strategy=strategy,
                               vision_aspect_ratio=aspect, image_token="<image>", video_token="<video>",
                               image_processor=types.SimpleNamespace(image_grid_pinpoints=pinpoints))
    for name in ("_get_unpadded_features", "_get_number_of_features", "replace_image_token", "replace_video_token"):
        setattr(ns, name, types.MethodType(getattr(P, name), ns))
    return ns


def _next_video_processor(patch_size: int, pinpoints):
    from transformers import LlavaNextVideoProcessor as P

    ns = types.SimpleNamespace(patch_size=patch_size, num_additional_image_tokens=1,
                               vision_feature_select_strategy="default", image_token="<image>",
                               video_token="<video>",
                               image_processor=types.SimpleNamespace(image_grid_pinpoints=pinpoints))
    for name in ("_get_unpadded_features", "_get_number_of_features", "replace_image_token", "replace_video_token"):
        setattr(ns, name, types.MethodType(getattr(P, name), ns))
    return ns


SIZES = [(480, 640), (1080, 1920), (300, 2000), (2000, 300), (384, 384), (100, 100), (720, 1280), (1024, 768),
         (37, 3000), (336, 1000), (899, 901)]
FRAMES = [1, 8, 32, 64]


def test_onevision_counts_follow_the_processor_rules():
    """Real geometry (SigLIP 384/14: 27x27 patches, pooled 14x14; default pinpoints up to 6x6 tiles)."""
    from transformers import LlavaOnevisionConfig

    cfg = LlavaOnevisionConfig()
    adapter = LlavaOnevisionAdapter(types.SimpleNamespace(config=cfg))
    proc = _onevision_processor(729, cfg.vision_feature_select_strategy, cfg.image_grid_pinpoints)
    for frames in FRAMES:
        video = {"pixel_values_videos": [np.zeros((frames, 3, 384, 384), dtype=np.float32)]}
        n = len(proc.replace_video_token(video, 0)) // len("<video>")
        piece = adapter.video_piece(frames)
        assert piece.length == n == frames * 196 + 1
        assert piece.grids == ((frames, 14, 14),) and int(piece.visual.sum()) == n - 1
    pixels = [[np.zeros((3, 384, 384), dtype=np.float32)]]
    shrunk = 0
    for h, w in SIZES:
        single = {"batch_num_images": [1], "image_sizes": [[h, w]], "pixel_values": pixels}
        n = len(proc.replace_image_token(single, 0)) // len("<image>")
        piece = adapter.image_piece((h, w))
        assert piece.length == n, (h, w)
        (_, p, q), (_, rows, cols) = piece.grids
        assert (p, q) == (27, 27) and piece.length == 729 + rows * (cols + 1)
        shrunk += rows * cols < (piece.tiles - 1) * 729 * 0.5
        multi = {"batch_num_images": [2], "image_sizes": [[h, w], [h, w]], "pixel_values": pixels}
        n = len(proc.replace_image_token(multi, 0)) // len("<image>")
        assert adapter.image_piece((h, w), patched=False).length == n == 730
    assert shrunk  # some sizes take the anyres_max_9 shrinking branch


def test_next_video_counts_follow_the_processor_rules():
    """Real geometry (CLIP 336/14: 24x24 patches + CLS, stride-2 pooling to 12x12; default pinpoints)."""
    from transformers import LlavaNextVideoConfig

    cfg = LlavaNextVideoConfig()
    adapter = LlavaNextVideoAdapter(types.SimpleNamespace(config=cfg))
    proc = _next_video_processor(14, cfg.image_grid_pinpoints)
    for frames in FRAMES:
        video = {"pixel_values_videos": [np.zeros((frames, 3, 336, 336), dtype=np.float32)]}
        n = len(proc.replace_video_token(video, 0)) // len("<video>")
        piece = adapter.video_piece(frames, (336, 336))
        assert piece.length == n == frames * 144 and bool(piece.visual.all())
        assert piece.grids == ((frames, 12, 12),)
    for h, w in SIZES:
        inputs = {"image_sizes": [[h, w]], "pixel_values": [[np.zeros((3, 336, 336), dtype=np.float32)]]}
        n = len(proc.replace_image_token(inputs, 0)) // len("<image>")
        piece = adapter.image_piece((h, w))
        (_, rows, cols) = piece.grids[1]
        assert piece.length == n == 576 + rows * (cols + 1), (h, w)


def test_processor_rule_agrees_with_the_tiny_models():
    """The tiny factories' counts, checked by the processors' methods at the tiny geometry."""
    ov = tiny_llava_onevision()
    proc = _onevision_processor(64, "full", ov.config.image_grid_pinpoints)
    for h, w in [(20, 40), (40, 20), (33, 17), (16, 16), (47, 5)]:
        single = {"batch_num_images": [1], "image_sizes": [[h, w]], "pixel_values": [[np.zeros((3, 16, 16))]]}
        n = len(proc.replace_image_token(single, 0)) // len("<image>")
        assert n == LlavaOnevisionAdapter(ov).image_piece((h, w)).length


# ---------------------------------------------------------------- exactness
def test_fastv_on_image_and_video_matches_oracle(onevision_mixed):
    model, inputs = onevision_mixed
    n_image = 64 + 12 * 24
    with sv.apply(model, sv.FastV(retain=0.25, layer=2)) as handle, torch.no_grad():
        model(**inputs)
    assert handle.last_stats.n_visual == [N_VIDEO]  # targets="video" by default: the image stays whole
    stats = _check_against_oracle(model, inputs, sv.FastV(retain=0.25, layer=2, targets="all"),
                                  kinds=("video", "image"))
    assert stats.n_visual == [N_VIDEO + n_image]


def test_beam_search_with_an_image_keeps_exactness(onevision_mixed):
    # generate() repeats the prompt (and image_sizes / batch_num_images) per beam
    model, inputs = onevision_mixed
    ref = greedy(model, inputs, n=3, num_beams=2)
    with sv.apply(model, sv.UniformPrune(retain=1.0, layer=1, targets="all")) as handle:
        out = greedy(model, inputs, n=3, num_beams=2)
    assert torch.equal(out, ref)
    assert handle.last_stats.n_visual == [N_VIDEO + 64 + 12 * 24] * 2


def test_sharp_reference_pass_under_beams_with_an_image(llava):
    """The reference input is built per prompt (the call's image sizes are the unexpanded prompts') and repeated
    for the beams: every beam keeps what its prompt keeps alone."""
    model, _ = llava
    inputs = tiny_llava_inputs(model, frames=8, image_sizes=((20, 40),))
    with sv.apply(model, sv.ShaRP(retain=0.25, layer=2)) as handle, torch.no_grad():
        model(**inputs)
        alone = handle.last_stats.stages[0].kept[0]
        out = model.generate(**inputs, max_new_tokens=2, num_beams=2, do_sample=False)
    assert out.shape[0] == 1
    assert [torch.equal(k, alone) for k in handle.last_stats.stages[0].kept] == [True, True]


# ---------------------------------------------------------------- ShaRP
def test_reference_replaces_images_through_the_tower(onevision_mixed):
    model, inputs = onevision_mixed
    adapter = registry.adapter_for(model)
    ref, vis = reference_of(adapter, model, model.model.language_model, inputs)
    black = torch.full_like(inputs["pixel_values"], 0.0)
    black += torch.tensor([-m / s for m, s in zip(adapter.pixel_mean, adapter.pixel_std, strict=True)])[:, None, None]
    black_video = black[:1, :1].expand(1, 8, -1, -1, -1)
    expect = decoder_input(model, dict(inputs, pixel_values=black, pixel_values_videos=black_video.contiguous()))
    assert (ref[0, vis] - expect[0, vis]).abs().max() < 1e-5  # as if black pixels had been fed to the model


# ---------------------------------------------------------------- errors
def test_inputs_embeds_only_is_refused(llava):
    assert_inputs_embeds_only_is_refused(*llava)


def test_missing_image_sizes_and_mismatched_runs(onevision_mixed):
    model, inputs = onevision_mixed
    adapter = registry.adapter_for(model)
    seq = inputs["input_ids"].shape[1]
    no_sizes = {k: v for k, v in inputs.items() if k not in ("image_sizes", "batch_num_images")}
    with pytest.raises(sv.InputError, match="missing `image_sizes`"):
        adapter.find_layouts(no_sizes, seq, 1)
    with pytest.raises(sv.InputError, match="does not match"):
        adapter.find_layouts(dict(inputs, pixel_values_videos=inputs["pixel_values_videos"][:, :5]), seq, 1)
    with pytest.raises(sv.InputError, match="does not match"):
        adapter.find_layouts(dict(inputs, image_sizes=torch.tensor([[40, 40]])), seq, 1)
    # without the pixels, a run of one video still gives its frame count
    no_pixels = {k: v for k, v in inputs.items() if k != "pixel_values_videos"}
    assert adapter.find_layouts(no_pixels, seq, 1)[0].items[-1].t == 8


def test_registered_adapters():
    from transformers import LlavaNextVideoForConditionalGeneration, LlavaOnevisionForConditionalGeneration

    names = registry.supported()
    for cls in (LlavaOnevisionForConditionalGeneration, LlavaNextVideoForConditionalGeneration):
        assert any(n.startswith(cls.__name__) for n in names)
