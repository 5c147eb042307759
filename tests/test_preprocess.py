"""Torch-only preprocessing against the processors' documented rules (the equality with the HF processors
themselves is checked by `make test-hf`, which needs torchvision)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from sharp_vlm.core.words import number_words
from sharp_vlm.errors import InputError
from sharp_vlm.testing import save_tiny_checkpoint
from sharp_vlm.video.decode import Frames
from sharp_vlm.video.preprocess import Checkpoint, TokenGrid, load_processor, prepare_inputs
from sharp_vlm.video.qwen import patchify, smart_resize
from sharp_vlm.video.smolvlm import longest_edge_size


def frames_of(n: int, h: int, w: int, fps: float = 4.0, seed: int = 0) -> Frames:
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (n, h, w, 3), dtype=torch.uint8, generator=gen)
    return Frames(pixels, [2 * i / fps for i in range(n)], [2 * i for i in range(n)], fps, 2 * n)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    cache = {}

    def get(family: str):
        if family not in cache:
            cache[family] = save_tiny_checkpoint(family, tmp_path_factory.mktemp(family), layers=1)
        return cache[family]

    return get


@pytest.mark.parametrize("h, w", [(240, 320), (360, 640), (37, 1000), (1080, 1920), (28, 28)])
def test_smart_resize_keeps_factor_bounds_and_aspect(h, w):
    factor, lo, hi = 28, 56 * 56, 28 * 28 * 1280
    rh, rw = smart_resize(h, w, factor, lo, hi)
    assert rh % factor == 0 and rw % factor == 0 and lo <= rh * rw <= hi
    assert abs(math.log((rh / rw) / (h / w))) < 0.35  # aspect ratio kept up to the rounding to the factor


def test_smart_resize_known_values():
    assert smart_resize(240, 320, 28, 3136, 12845056) == (252, 308)  # round to the factor
    assert smart_resize(1080, 1920, 28, 3136, 28 * 28 * 128) == (224, 420)  # scaled down into max_pixels
    assert smart_resize(10, 10, 28, 56 * 56, 10**6) == (56, 56)  # scaled up into min_pixels
    # Qwen3-VL bounds the clip: 4 frames (rounded to temporal pairs) share max_pixels
    assert smart_resize(360, 640, 32, 4096, 4 * 256 * 448, frames=4, temporal_factor=2) == (224, 448)


def test_patchify_orders_temporal_pair_then_merged_cells():
    t, c, h, w, p, m = 3, 3, 8, 12, 2, 2
    x = torch.arange(t * c * h * w, dtype=torch.float32).view(t, c, h, w)
    patches, grid = patchify(x, p, m, 2)
    assert grid == [2, 4, 6] and patches.shape == (2 * 4 * 6, c * 2 * p * p)
    padded = torch.cat([x, x[-1:]])  # odd frame count: the last frame repeated
    for k in (0, 5, 23, 30, 47):
        tt, rest = divmod(k, 24)
        mr, rest = divmod(rest, (6 // m) * m * m)  # merged row
        mc, rest = divmod(rest, m * m)
        r, cc = divmod(rest, m)
        row, col = (mr * m + r) * p, (mc * m + cc) * p
        want = padded[2 * tt:2 * tt + 2, :, row:row + p, col:col + p].permute(1, 0, 2, 3).reshape(-1)
        assert torch.equal(patches[k], want)


@pytest.mark.parametrize("family, n", [("qwen2_vl", 5), ("qwen2_5_vl", 4), ("qwen3_vl", 3)])
def test_qwen_token_counts_and_grid(tiny, family, n):
    prep = prepare_inputs(tiny(family), frames_of(n, 30, 40), "What?")
    t, h, w = prep.kwargs["video_grid_thw"][0].tolist()
    assert t == -(-n // 2) and prep.kwargs["pixel_values_videos"].shape == (t * h * w, 3 * 2 * 2 * 2)
    assert prep.n_visual == t * (h // 2) * (w // 2) == int((prep.kwargs["mm_token_type_ids"] == 2).sum())
    assert prep.frames.shape == (n, h * 2, w * 2, 3)  # resized frames, patch 2 px
    assert prep.grid.span == 2 and prep.grid.rows == h // 2
    if family == "qwen2_5_vl":  # temporal patch / sampled rate: 4 of 8 frames at 4 fps are 2 fps
        assert prep.kwargs["second_per_grid_ts"].tolist() == [1.0]
    if family == "qwen3_vl":  # one <t seconds> per temporal patch, the mean time of its two frames
        assert "<0.2 seconds><|vision_start|>" in prep.prompt and "<1.0 seconds><|vision_start|>" in prep.prompt


def test_llava_onevision_placeholders_are_pooled_frames_plus_one_newline(tiny):
    prep = prepare_inputs(tiny("llava_onevision"), frames_of(5, 30, 50), "What?")
    video_id = prep.kwargs["input_ids"].max()
    assert int((prep.kwargs["input_ids"] == video_id).sum()) == 5 * 4 * 4 + 1  # 8x8 patches pooled to 4x4
    assert prep.n_visual == 5 * 16 and prep.kwargs["pixel_values_videos"].shape == (1, 5, 3, 16, 16)


def test_llava_next_video_crops_the_shortest_edge_and_adds_bos(tiny):
    prep = prepare_inputs(tiny("llava_next_video"), frames_of(3, 30, 50), "What?")
    assert prep.kwargs["pixel_values_videos"].shape == (1, 3, 3, 16, 16) and prep.n_visual == 3 * 16
    assert prep.prompt.startswith("USER: <video>") and prep.kwargs["input_ids"][0, 0] == 257  # <s>


def test_internvl_writes_one_labelled_block_per_frame(tiny):
    prep = prepare_inputs(tiny("internvl"), frames_of(3, 30, 50), "What?")
    assert prep.prompt.count("<img>") == 3 and "Frame3: <img>" in prep.prompt
    assert prep.kwargs["pixel_values"].shape == (3, 3, 16, 16) and prep.n_visual == 3 * 16


def test_smolvlm_prompt_has_the_count_in_words_and_frame_times(tiny):
    prep = prepare_inputs(tiny("smolvlm"), frames_of(8, 30, 50, fps=2.0), "What?")
    assert "series of eight frames from a 0:00:08 [H:MM:SS] video" in prep.prompt
    assert "\nFrame from 00:07:<fake_token_around_image><global-img>" in prep.prompt
    assert prep.kwargs["pixel_values"].shape == (1, 8, 3, 32, 32) and prep.n_visual == 8 * 16


def test_number_words_and_longest_edge():
    assert [number_words(n) for n in (8, 21, 40, 64, 100, 115)] == [
        "eight", "twenty-one", "forty", "sixty-four", "one hundred", "one hundred and fifteen"]
    assert longest_edge_size(360, 640, 512) == (288, 512) and longest_edge_size(641, 360, 512) == (512, 288)
    assert longest_edge_size(300, 401, 512) == (384, 512)  # 382.9 truncated, rounded up to even


def test_token_grid_mask_marks_every_frame_a_token_spans():
    grid = TokenGrid.raster(2, 2, 3, span=2, n_frames=3)  # 2 temporal pairs over 3 frames (the last padded)
    mask = grid.mask(torch.tensor([0, 11]))  # pair 0 cell (0, 0) and pair 1 cell (1, 2)
    assert mask.shape == (3, 2, 3) and mask.sum() == 3
    assert mask[0, 0, 0] and mask[1, 0, 0] and mask[2, 1, 2]


def test_video_config_falls_back_to_the_image_processor_config(tiny, tmp_path):
    src = tiny("qwen2_vl")
    for f in src.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    (tmp_path / "video_preprocessor_config.json").unlink()
    cfg = json.loads((tmp_path / "preprocessor_config.json").read_text())
    cfg.pop("size")
    cfg.update(min_pixels=64, max_pixels=16 * 16)  # older checkpoints: top-level pixel bounds
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(cfg))
    prep = prepare_inputs(tmp_path, frames_of(2, 64, 64), "What?")
    assert prep.frames.shape[1:3] == (16, 16)


@pytest.mark.parametrize("case, message", [
    ("no_dir", "does not exist"),
    ("unsupported", "model_type 'bert' is not supported; supported: internvl, llava_next_video"),
    ("bad_json", "is not valid JSON"),
    ("no_preprocessor", "has no preprocessor config"),
    ("no_tokenizer", "has no tokenizer files"),
])
def test_bad_checkpoint_folders_say_what_is_missing(tiny, tmp_path, case, message):
    src = tiny("qwen2_vl")
    if case != "no_dir":
        for f in src.iterdir():
            (tmp_path / f.name).write_bytes(f.read_bytes())
    path = tmp_path / "missing" if case == "no_dir" else tmp_path
    if case == "unsupported":
        (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    elif case == "bad_json":
        (tmp_path / "config.json").write_text("{not json")
    elif case == "no_preprocessor":
        (tmp_path / "preprocessor_config.json").unlink()
        (tmp_path / "video_preprocessor_config.json").unlink()
    elif case == "no_tokenizer":
        (tmp_path / "tokenizer.json").unlink()
        (tmp_path / "tokenizer_config.json").unlink()
    with pytest.raises(InputError, match=message.replace("(", r"\(")):
        load_processor(path)


def test_bad_inputs_are_refused(tiny):
    proc = load_processor(tiny("qwen3_vl"))
    with pytest.raises(InputError, match="at least 2 frames"):
        prepare_inputs(proc, frames_of(1, 30, 40), "What?")
    with pytest.raises(InputError, match="question is empty"):
        prepare_inputs(proc, frames_of(2, 30, 40), "  ")
    bad = Frames(torch.zeros(2, 30, 40, 3), [0.0, 0.5], [0, 1], 2.0, 2)
    with pytest.raises(InputError, match=r"\(T, H, W, 3\) uint8"):
        prepare_inputs(proc, bad, "What?")
    assert Checkpoint.read(tiny("qwen3_vl")).chat_template is not None


@pytest.mark.parametrize("family, placeholder", [
    ("llava_onevision", "<video>"), ("llava_next_video", "<image>"), ("internvl", "<video>"), ("smolvlm", "<image>"),
    ("qwen2_vl", "<|video_pad|>"),
])
def test_user_asks_a_question_holding_the_placeholder_text(tiny, family, placeholder):
    """The question is the user's text: a "<video>" / "<image>" in it (or a turn marker) is encoded as plain text,
    never expanded or read as the placeholder, as the HF processors do with `sanitize_control_tokens=True`."""
    proc = load_processor(tiny(family))
    frames = frames_of(2, 30, 40)
    question = f'What does "{placeholder}" stand for, and "<video>" "<image>" <|im_end|>?'
    plain = prepare_inputs(proc, frames, "Why?")
    prep = prepare_inputs(proc, frames, question)
    assert question in prep.prompt and prep.prompt.replace(question, "Why?") == plain.prompt
    assert prep.n_visual == plain.n_visual and prep.grid.n_tokens == plain.grid.n_tokens
    ids, plain_ids = prep.kwargs["input_ids"][0].tolist(), plain.kwargs["input_ids"][0].tolist()
    tok = proc.tokenizer
    for token in ("<video>", "<image>", "<|im_end|>", placeholder):
        tid = tok.convert_tokens_to_ids(token)
        assert ids.count(tid) == plain_ids.count(tid)  # no extra placeholder or turn end from the question
    assert ids[0] == plain_ids[0]  # the template's (or the tokenizer's) first token, BOS for LLaVA-NeXT-Video
    assert question in tok.decode(ids)  # the question's tokens spell it out
    assert torch.equal(prep.kwargs["attention_mask"], torch.ones_like(prep.kwargs["input_ids"]))
