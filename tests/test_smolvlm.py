"""What is SmolVLM / SmolVLM2's own on the engine (the shared exactness suite is tests/test_adapter_exactness.py):
layouts against the model's own features and the processor's token rules, frame ids from the frame blocks, an
image's tiles beside the video against a hand-written pruned forward, beams, the reference input through the tower,
save/load, malformed prompts, and the real SmolLM2-135M decoder.

The oracle here defines the prunable rows without the adapter: the factory writes the video last, so the video's
rows are the last frames x tokens-per-frame `<image>` placeholders; the feature-placement test recomputes the
connector's pixel shuffle by explicit indexing.
"""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

import sharp_vlm as sv
from cases import assert_inputs_embeds_only_is_refused, model_and_inputs, reference_of
from oracle import check_against_oracle, forward_logits, greedy, staged_forward_1d
from oracle import decoder_input as oracle_decoder_input
from sharp_vlm.core.budget import keep_count
from sharp_vlm.core.layout import VisualItem
from sharp_vlm.core.words import number_words
from sharp_vlm.models import registry
from sharp_vlm.models.smolvlm import SmolVLMAdapter
from sharp_vlm.testing.smolvlm import (
    FAKE,
    GLOBAL,
    IMAGE,
    SmolVLMTokens,
    smolvlm_with_smollm2,
    split_image_text,
    tiny_smolvlm,
    tiny_smolvlm_inputs,
    tokenize,
    tokens_of,
    video_text,
)

FRAMES = 8
PER_FRAME = 16  # 32 px pictures, 4 px patches, scale 2: 4 x 4 tokens
N_VIDEO = FRAMES * PER_FRAME


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def smol():
    """The shared suite's SmolVLM2 case: 4 layers, an 8-frame video."""
    return model_and_inputs("smolvlm2")


@pytest.fixture(scope="module")
def smol_mixed():
    """A 2x3-tile image (6 tiles + global view) before an 8-frame video."""
    model = tiny_smolvlm()
    return model, tiny_smolvlm_inputs(model, frames=FRAMES, images=((2, 3),))


# ---------------------------------------------------------------- the oracle
def decoder_input(model, inputs) -> torch.Tensor:
    return oracle_decoder_input(model, model.model.text_model, inputs)


def prunable(model, inputs, frames=FRAMES, kinds=("video",), b=0) -> torch.Tensor:
    """(S,) bool: the `<image>` placeholders of these kinds (the video is the last frames x 16 of them)."""
    ids = inputs["input_ids"][b]
    place = (ids == model.config.image_token_id) & inputs["attention_mask"][b].bool()
    pos = torch.nonzero(place).flatten()
    n_video = frames * PER_FRAME
    out = torch.zeros_like(place)
    if "video" in kinds:
        out[pos[pos.numel() - n_video :]] = True
    if "image" in kinds:
        out[pos[: pos.numel() - n_video]] = True
    return out


def _check_against_oracle(model, inputs, method, kinds=("video",)):
    return check_against_oracle(model, model.model.text_model, inputs, method, prunable(model, inputs, kinds=kinds))


# ---------------------------------------------------------------- layouts against the model's features
def _shuffled(model, pixels) -> torch.Tensor:
    """(P, n, n, D): each picture's connector output, recomputed here: token (i, j) is the projection of the
    scale x scale patch window at (i, j), its patches concatenated row-major within the window."""
    cfg = model.config
    hidden = model.model.vision_model(pixels).last_hidden_state  # (P, side_patches^2, Dv), row-major patches
    p, s = pixels.shape[-1] // cfg.vision_config.patch_size, cfg.scale_factor
    grid = hidden.view(pixels.shape[0], p, p, -1)
    n = p // s
    out = torch.empty(pixels.shape[0], n, n, s * s * grid.shape[-1])
    for i in range(n):
        for j in range(n):
            window = [grid[:, i * s + r, j * s + c] for r in range(s) for c in range(s)]
            out[:, i, j] = torch.cat(window, dim=-1)
    return model.model.connector.modality_projection(out)


LAYOUT_CASES = [
    # (image_size, patch, scale, frames, images as (rows, cols) of tiles)
    (32, 4, 2, 1, ()),
    (32, 4, 2, 5, ((2, 3),)),
    (64, 4, 4, 3, ((1, 2), (3, 1))),  # scale 4 (as SmolVLM2-256M's connector): 4x4 windows of 16x16 patches
    (48, 4, 3, 2, ((2, 2),)),
    (32, 4, 2, 0, ((1, 4), (2, 2))),  # images only
]


@pytest.mark.parametrize(("size", "patch", "scale", "frames", "images"), LAYOUT_CASES)
def test_layout_places_every_feature_where_the_model_puts_it(size, patch, scale, frames, images):
    model = tiny_smolvlm(layers=1, image_size=size, patch_size=patch, scale_factor=scale)
    inputs = tiny_smolvlm_inputs(model, frames=frames, images=images)
    ids = inputs["input_ids"][0]
    (lay,) = registry.adapter_for(model).find_layouts(inputs, ids.numel(), 1)
    side = size // patch // scale
    per = side * side
    placeholders = ids == model.config.image_token_id
    assert torch.equal(lay.positions, torch.nonzero(placeholders).flatten())  # every placeholder, nothing else
    expected_items, seen = [], 0
    for rows, cols in images:
        expected_items += [VisualItem("image", seen, rows * cols, side, side),
                           VisualItem("image", seen + rows * cols * per, 1, side, side)]
        seen += (rows * cols + 1) * per
    if frames:
        expected_items.append(VisualItem("video", seen, frames, side, side))
    assert lay.items == expected_items
    # frame id = the picture's index in pixel_values; rows/cols: the connector's row-major window grid
    embeds = decoder_input(model, inputs)[0]
    with torch.no_grad():
        feats = _shuffled(model, inputs["pixel_values"][0])
    expect = feats[lay.frame_ids, lay.rows, lay.cols]
    assert (embeds[lay.positions] - expect).abs().max() < 1e-5
    # the markers and text before each block are untouched token embeddings
    text = ~placeholders
    with torch.no_grad():
        assert torch.equal(embeds[text], model.model.text_model.embed_tokens(ids[text]))


# ---------------------------------------------------------------- layouts against the processor's rules
def _processor_text(monkeypatch, image_seq_len, frames=0, fps=1.0, tiles=()):
    """The processor's own prompt text for these images ((rows, cols) per image) and a video of `frames` frames."""
    from transformers.models.smolvlm import processing_smolvlm as ps
    from transformers.video_utils import VideoMetadata

    monkeypatch.setattr(ps, "num2words", number_words, raising=False)  # not installed here; text only
    text = "".join(ps.get_image_prompt_string(r, c, image_seq_len, fake_token_around_image=FAKE, image_token=IMAGE,
                                              global_image_token=GLOBAL) for r, c in tiles)
    if frames:
        proc = types.SimpleNamespace(image_seq_len=image_seq_len, image_token=IMAGE, fake_image_token=FAKE,
                                     global_image_token=GLOBAL)
        meta = VideoMetadata(total_num_frames=frames, fps=fps, duration=frames / fps,  # as a video reader fills it
                             frames_indices=list(range(frames)))
        video = {"pixel_values": np.zeros((1, frames, 1, 1, 1), dtype=np.float32), "video_metadata": [meta]}
        text += ps.SmolVLMProcessor.replace_video_token(proc, video, 0)
    return text


GEOMETRIES = [(512, 16, 4), (384, 14, 3), (32, 4, 2)]  # SmolVLM2-256M/500M-like, SmolVLM2-2.2B-like, tiny


@pytest.mark.parametrize(("size", "patch", "scale"), GEOMETRIES)
@pytest.mark.parametrize("frames", [1, 2, 8, 64])
def test_video_counts_follow_the_processor_rules(monkeypatch, size, patch, scale, frames):
    from transformers import SmolVLMConfig

    vocab = 300
    cfg = SmolVLMConfig(text_config={"model_type": "llama", "vocab_size": vocab},
                        vision_config={"image_size": size, "patch_size": patch}, scale_factor=scale,
                        image_token_id=SmolVLMTokens(vocab).image)
    seq = int(((size // patch) ** 2) / (scale**2))  # the processor's image_seq_len rule
    text = _processor_text(monkeypatch, seq, frames=frames, fps=2.0)
    # the tiny factory writes the processor's text
    assert text == video_text([i / 2.0 for i in range(frames)], frames / 2.0, seq)
    tokens = SmolVLMTokens(vocab)
    ids = torch.cat([tokenize("<|im_start|>User: ", tokens), tokenize(text, tokens), tokenize("Why?", tokens)])[None]
    adapter = SmolVLMAdapter(types.SimpleNamespace(config=cfg))
    (lay,) = adapter.find_layouts({"input_ids": ids}, ids.shape[1], 1)
    side = int(round(seq**0.5))
    assert lay.n_visual == frames * seq == text.count(IMAGE)
    assert lay.items == [VisualItem("video", 0, frames, side, side)]
    # frame id = the "Frame from" block the token sits in: the timestamps and markers are not visual
    block = torch.cumsum((ids[0] == tokens.global_img).long(), 0) - 1
    assert torch.equal(lay.frame_ids, block[lay.positions])
    assert not bool(torch.isin(ids[0, lay.positions], torch.tensor([tokens.fake, tokens.global_img])).any())


IMAGE_CASES = [((50, 90), 4), ((90, 50), 4), ((32, 32), 4), ((20, 200), 4), ((128, 128), 3), ((7, 31), 2),
               ((100, 64), 3), ((50, 90), 1)]  # (height, width), resize size in tiles (4: SmolVLM2's 2048 / 512)


@pytest.mark.parametrize(("hw", "tiles"), IMAGE_CASES)
def test_split_images_follow_the_image_processor(monkeypatch, hw, tiles):
    """The image processor (PIL backend) splits, the processor writes the prompt; the layout's tiles and the
    model's features agree with both."""
    from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil

    model = tiny_smolvlm(layers=1)
    px = model.config.vision_config.image_size
    proc = SmolVLMImageProcessorPil(max_image_size={"longest_edge": px}, size={"longest_edge": tiles * px})
    image = np.random.default_rng(0).integers(0, 255, (*hw, 3), dtype=np.uint8)
    out = proc(images=[[image]], return_row_col_info=True, return_tensors="pt")
    rows, cols = out["rows"][0][0], out["cols"][0][0]
    n_pic = out["pixel_values"].shape[1]
    assert n_pic == (rows * cols + 1 if rows else 1)
    assert (rows, cols) == proc.get_number_of_image_patches(*hw)[1:]
    assert (rows == 0) == (tiles == 1)  # resized to one tile: not split
    text = _processor_text(monkeypatch, PER_FRAME, tiles=((rows, cols),))
    assert text == split_image_text(rows, cols, PER_FRAME)
    tokens = tokens_of(model)
    ids = torch.cat([tokenize("<|im_start|>User: ", tokens), tokenize(text, tokens), tokenize("Why?", tokens)])[None]
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": out["pixel_values"],
              "pixel_attention_mask": out["pixel_attention_mask"]}
    (lay,) = registry.adapter_for(model).find_layouts(inputs, ids.shape[1], 1)
    assert lay.n_visual == n_pic * PER_FRAME
    if rows:
        assert lay.items == [VisualItem("image", 0, rows * cols, 4, 4), VisualItem("image", rows * cols * 16, 1, 4, 4)]
    else:  # an image of one tile is a lone global view: read as a one-frame video (the documented limitation)
        assert lay.items == [VisualItem("video", 0, 1, 4, 4)]
    embeds = decoder_input(model, inputs)[0]
    with torch.no_grad():
        feats = _shuffled(model, out["pixel_values"][0])
    assert (embeds[lay.positions] - feats[lay.frame_ids, lay.rows, lay.cols]).abs().max() < 1e-5


def test_unsplit_images_and_several_videos():
    model = tiny_smolvlm(layers=1)
    tokens = tokens_of(model)
    one = split_image_text(0, 0, PER_FRAME)
    two_videos = video_text([0.0, 1.0], 2.0, PER_FRAME) + "and" + video_text([0.0, 1.0, 2.0], 3.0, PER_FRAME)
    ids = tokenize("a" + split_image_text(1, 2, PER_FRAME) + two_videos + "b" + one + "c", tokens)
    ids = torch.cat([torch.zeros(3, dtype=torch.long), ids])[None]  # left padding
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    adapter = SmolVLMAdapter(model)
    call = {"input_ids": ids, "attention_mask": mask}
    (lay,) = adapter.find_layouts(call, ids.shape[1], 1)
    # tiles + global view; then every lone view up to the end is one video (two videos and the unsplit image merge)
    assert lay.items == [VisualItem("image", 0, 2, 4, 4), VisualItem("image", 32, 1, 4, 4),
                         VisualItem("video", 48, 6, 4, 4)]
    assert lay.n_frames == 9 and lay.of_kinds(("video",)).n_visual == 96
    adapter.unsplit_kind = "image"  # prompts from do_image_splitting=False images
    (lay,) = adapter.find_layouts(call, ids.shape[1], 1)
    assert [it.kind for it in lay.items] == ["image"] * 8 and lay.n_visual == 144
    adapter.unsplit_kind = "frames"
    with pytest.raises(sv.InputError, match="unsplit_kind"):
        adapter.find_layouts(call, ids.shape[1], 1)


def test_malformed_prompts_are_refused(smol):
    model, inputs = smol
    adapter = registry.adapter_for(model)
    ids = inputs["input_ids"]
    seq = ids.shape[1]
    image = model.config.image_token_id
    first = int(torch.nonzero(ids[0] == image)[0])
    short = ids.clone()
    short[0, first] = 7  # a frame one token short
    with pytest.raises(sv.InputError, match="is not one picture"):
        adapter.find_layouts(dict(inputs, input_ids=short), seq, 1)
    with pytest.raises(sv.InputError, match="is not one picture"):  # pixels of another tile size
        adapter.find_layouts(dict(inputs, pixel_values=torch.zeros(1, 8, 3, 64, 64)), seq, 1)
    no_fake = ids.clone()
    no_fake[0, first - 2] = 7
    with pytest.raises(sv.InputError, match="fake_token_around_image"):
        adapter.find_layouts(dict(inputs, input_ids=no_fake), seq, 1)
    tokens = tokens_of(model)
    tiles_only = tokenize("x" + FAKE + "<row_1_col_1>" + IMAGE * 16 + "\n" + FAKE + "<row_2_col_1>" + IMAGE * 16
                          + FAKE + "<row_2_col_2>" + IMAGE * 16 + "\n\n" + split_image_text(0, 0, 16), tokens)[None]
    with pytest.raises(sv.InputError, match="tile rows"):
        adapter.find_layouts({"input_ids": tiles_only}, tiles_only.shape[1], 1)


# ---------------------------------------------------------------- exactness
def test_uniform_prune_keeps_the_same_share_of_every_frame(smol):
    """Frame ids come from the frame blocks: a uniform stage keeps 4 of each frame's 16 tokens."""
    model, inputs = smol
    with sv.apply(model, sv.UniformPrune(retain=0.25, layer=0)) as handle:
        forward_logits(model, inputs)
    kept = handle.last_stats.stages[0].kept_positions[0]
    frame_of = torch.cumsum((inputs["input_ids"][0] == tokens_of(model).global_img).long(), 0) - 1
    assert torch.bincount(frame_of[kept], minlength=FRAMES).tolist() == [4] * FRAMES


def test_fastv_on_image_and_video_matches_oracle(smol_mixed):
    model, inputs = smol_mixed
    n_image = 7 * PER_FRAME
    with sv.apply(model, sv.FastV(retain=0.25, layer=2)) as handle, torch.no_grad():
        model(**inputs)
    assert handle.last_stats.n_visual == [N_VIDEO]  # targets="video" by default: the image stays whole
    stats = _check_against_oracle(model, inputs, sv.FastV(retain=0.25, layer=2, targets="all"),
                                  kinds=("video", "image"))
    assert stats.n_visual == [N_VIDEO + n_image]
    stats = _check_against_oracle(model, inputs, sv.FastV(retain=0.25, layer=1, targets="image"), kinds=("image",))
    assert stats.n_visual == [n_image]


def test_beam_search_keeps_exactness(smol_mixed):
    model, inputs = smol_mixed
    ref = greedy(model, inputs, n=3, num_beams=2)
    with sv.apply(model, sv.UniformPrune(retain=1.0, layer=1, targets="all")) as handle:
        out = greedy(model, inputs, n=3, num_beams=2)
    assert torch.equal(out, ref)
    assert handle.last_stats.n_visual == [N_VIDEO + 7 * PER_FRAME] * 2


def test_reference_is_black_pixels_through_the_model(smol_mixed):
    """Tiles, global view and frames alike: as if the processor's black (-1 after its 0.5/0.5 normalisation)
    pictures had been fed to the model."""
    model, inputs = smol_mixed
    adapter = registry.adapter_for(model)
    ref, vis = reference_of(adapter, model, model.model.text_model, inputs)
    expect = decoder_input(model, dict(inputs, pixel_values=torch.full_like(inputs["pixel_values"], -1.0)))
    assert (ref[0, vis] - expect[0, vis]).abs().max() < 1e-6
    assert len(adapter._black) == 1  # one picture size: one cached black picture


# ---------------------------------------------------------------- errors, registry
def test_inputs_embeds_only_is_refused(smol):
    assert_inputs_embeds_only_is_refused(*smol)


def test_registered_adapter():
    from transformers import SmolVLMForConditionalGeneration

    assert any(n.startswith("SmolVLMForConditionalGeneration") for n in registry.supported())
    assert isinstance(registry.adapter_for(tiny_smolvlm(layers=1)), SmolVLMAdapter)
    assert SmolVLMForConditionalGeneration in registry._ADAPTERS


# ---------------------------------------------------------------- the real SmolLM2-135M decoder
@pytest.fixture(scope="module")
def real():
    model, tok = smolvlm_with_smollm2()
    inputs = tiny_smolvlm_inputs(model, frames=4, tokenizer=tok, question="What colour is the ball?")
    return model, inputs


@pytest.mark.real_lm
def test_real_decoder_keep_everything_equals_unpatched(real):
    model, inputs = real
    assert model.config.text_config.num_hidden_layers == 30 and model.config.text_config.hidden_size == 576
    ref, ref_gen = forward_logits(model, inputs), greedy(model, inputs, n=4)
    for cfg in (sv.NoPrune(), sv.FastV(retain=1.0, layer=2)):
        with sv.apply(model, cfg) as handle:
            out, gen = forward_logits(model, inputs), greedy(model, inputs, n=4)
        assert (out - ref).abs().max().item() <= 1e-5
        assert torch.equal(gen, ref_gen)
        assert handle.last_stats.n_visual == [4 * PER_FRAME]


@pytest.mark.real_lm
def test_real_decoder_fastv_and_sharp_run(real):
    model, inputs = real
    seq = inputs["input_ids"].shape[1]
    n = 4 * PER_FRAME
    with sv.apply(model, sv.FastV(retain=0.25, layer=2)) as handle:
        prefill = forward_logits(model, inputs)
        kept = handle.last_stats.stages[0].kept_positions[0]
    assert prefill.shape[1] == seq - n + keep_count(0.25, n)
    logits, _, _ = staged_forward_1d(model, model.model.text_model, decoder_input(model, inputs),
                                     prunable(model, inputs, frames=4),
                                     [(2, kept)], n_decode=1)
    assert (prefill - logits[0]).abs().max() < 1e-4
    with sv.apply(model, sv.ShaRP(retain=0.25)) as handle:
        gen = greedy(model, inputs, n=3)
    stage = handle.last_stats.stages[0]
    assert stage.n_kept == [keep_count(0.25, n)] and stage.costs.reference_flops > 0
    assert gen.shape[1] <= seq + 3 and torch.equal(gen[:, :seq], inputs["input_ids"])
