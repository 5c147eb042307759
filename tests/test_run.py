"""`sharp run` and VideoQA end to end: a generated mp4, tiny saved checkpoints, the kept-token overlay."""

from __future__ import annotations

import json

import pytest
import torch

from sharp_vlm import cli
from sharp_vlm.models.registry import adapter_for
from sharp_vlm.pipeline import VideoQA
from sharp_vlm.testing import TINY_FAMILIES, save_tiny_checkpoint
from sharp_vlm.video.decode import write_video
from sharp_vlm.viz.kept import overlay_frames


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    gen = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (24, 40, 56, 3), dtype=torch.uint8, generator=gen)
    return write_video(tmp_path_factory.mktemp("video") / "clip.mp4", pixels, fps=8)


@pytest.fixture(scope="module", params=TINY_FAMILIES)
def checkpoint(request, tmp_path_factory):
    return request.param, save_tiny_checkpoint(request.param, tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="module")
def qwen_checkpoint(tmp_path_factory):
    return save_tiny_checkpoint("qwen2_vl", tmp_path_factory.mktemp("qwen2_vl_errors"))


@pytest.fixture(scope="module")
def qa(checkpoint):
    return VideoQA.from_pretrained(checkpoint[1], dtype="float32")


def _token_grid(qa, answer) -> tuple[int, int, int]:
    """(rows, cols, frames per token) of one frame's tokens, from the model config and pixel shapes by each
    family's rule (written out here independently of the preprocessing's TokenGrid)."""
    cfg, kwargs, family = qa.model.config, answer.inputs.kwargs, qa.family
    if family.startswith("qwen"):
        _, h, w = kwargs["video_grid_thw"][0].tolist()
        m = cfg.vision_config.spatial_merge_size
        return h // m, w // m, cfg.vision_config.temporal_patch_size
    size, patch = cfg.vision_config.image_size, cfg.vision_config.patch_size
    p = (size[0] if isinstance(size, list) else size) // (patch[0] if isinstance(patch, list) else patch)
    if family == "llava_onevision":
        side = -(-p // 2)  # bilinear pooling to ceil(p/2)
    elif family == "llava_next_video":
        side = p // cfg.spatial_pool_stride
    elif family == "internvl":
        side = int(p * cfg.downsample_ratio)  # pixel shuffle
    else:
        side = p // cfg.scale_factor
    return side, side, 1


def _expected_cells(qa, answer) -> torch.Tensor:
    """The kept cells from the family's token order: frame-major, then rows, then cols."""
    rows, cols, tp = _token_grid(qa, answer)
    n_frames = answer.inputs.frames.shape[0]
    mask = torch.zeros(n_frames, rows, cols, dtype=torch.bool)
    for k in answer.kept.tolist():
        t, r, c = k // (rows * cols), (k // cols) % rows, k % cols
        for f in range(t * tp, min(t * tp + tp, n_frames)):  # a temporal patch covers tp frames
            mask[f, r, c] = True
    return mask


def test_answer_records_kept_tokens_flops_and_the_grid_matches_the_adapter(qa, video):
    ans = qa.answer(video, "What moves?", frames=8, method="fastv", retain=0.25, layer=2, max_new_tokens=3)
    assert ans.n_visual == ans.inputs.n_visual and ans.n_kept == round(0.25 * ans.n_visual)
    assert ans.stats is not None and ans.stats.stages[0].layer == 2 and ans.new_tokens >= 1
    assert ans.prefill_seconds > 0 and ans.flops["pruned"] < ans.flops["dense"]
    # the overlay grid numbers the tokens as the engine's layout does
    call = {k: v for k, v in ans.inputs.kwargs.items()}
    layout = adapter_for(qa.model).find_layouts(call, call["input_ids"].shape[1], 1)[0]
    grid = ans.inputs.grid
    assert layout.n_visual == grid.n_tokens
    assert torch.equal(layout.frame_ids * grid.span, grid.frame)
    assert torch.equal(layout.rows, grid.row) and torch.equal(layout.cols, grid.col)
    assert torch.equal(grid.mask(ans.kept), _expected_cells(qa, ans))


def test_overlay_dims_exactly_the_dropped_cells(qa, video):
    ans = qa.answer(video, "What moves?", frames=8, method="uniform", retain=0.5, layer=0, max_new_tokens=1)
    mask = ans.inputs.grid.mask(ans.kept)
    frames = ans.inputs.frames
    shown = overlay_frames(frames, mask)
    h, w = frames.shape[1:3]
    rows, cols = mask.shape[1:]
    for f in range(frames.shape[0]):
        for r in range(rows):
            for c in range(cols):
                cell = (slice(r * h // rows, (r + 1) * h // rows), slice(c * w // cols, (c + 1) * w // cols))
                if mask[f, r, c]:
                    assert torch.equal(shown[f][cell], frames[f][cell])
                else:
                    assert shown[f][cell].float().sum() <= frames[f][cell].float().sum() * 0.26 + 1


def test_sharp_run_compare_writes_the_overlay_and_record(checkpoint, video, tmp_path, capsys):
    family, path = checkpoint
    out = tmp_path / "out"
    argv = ["run", "--model", str(path), "--video", str(video), "--question", "What is shown?", "--frames", "8",
            "--retain", "0.25", "--layer", "1", "--compare", "--max-new-tokens", "2", "--out", str(out)]
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert family in text and "unpruned" in text and "stage sharp at layer 1" in text
    record = json.loads((out / "run.json").read_text())
    assert [r["method"] for r in record["runs"]] == ["unpruned", "sharp"]
    assert record["runs"][1]["n_kept"] == round(0.25 * record["runs"][1]["n_visual"])
    assert (out / "kept_tokens.png").stat().st_size > 1000


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist"),
    ("garbage", "cannot be decoded"),
    ("short", "fewer than the 64 asked for"),
    ("no_model", "config.json does not exist"),
    ("unsupported", "model_type 'bert' is not supported"),
    ("no_weights", "has no weights"),
    ("method", "unknown method"),
])
def test_sharp_run_errors_are_one_line_exit_2(case, message, video, qwen_checkpoint, tmp_path, capsys,
                                              monkeypatch):
    model, clip, frames, method = qwen_checkpoint, video, "8", "sharp"
    if case == "missing":
        clip = tmp_path / "nope.mp4"
    elif case == "garbage":
        clip = tmp_path / "bad.mp4"
        clip.write_bytes(b"not a video at all" * 50)
    elif case == "short":
        frames = "64"
    elif case == "no_model":
        model = tmp_path
    elif case == "unsupported":
        (tmp_path / "config.json").write_text('{"model_type": "bert"}')
        (tmp_path / "preprocessor_config.json").write_text("{}")
        model = tmp_path
    elif case == "no_weights":
        for f in qwen_checkpoint.iterdir():
            if f.suffix != ".safetensors":
                (tmp_path / f.name).write_bytes(f.read_bytes())
        model = tmp_path
    elif case == "method":
        method = "sharpp"
    if case not in ("no_model", "unsupported", "no_weights"):
        monkeypatch.setattr("sharp_vlm.pipeline.load_model", _refuse_after_error(case))
    argv = ["run", "--model", str(model), "--video", str(clip), "--question", "Q?", "--frames", frames,
            "--method", method, "--out", str(tmp_path / "out")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and err.startswith("sharp run: ")


def test_user_gives_a_folder_as_video(qwen_checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("sharp_vlm.pipeline.load_model", _refuse_after_error("a folder as --video"))
    clips = tmp_path / "clips"
    clips.mkdir()
    argv = ["run", "--model", str(qwen_checkpoint), "--video", str(clips), "--question", "Q?",
            "--out", str(tmp_path / "out")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"sharp run: --video {clips} is a folder") and "\n" not in err, err
    assert "one video file" in err and "does not exist" not in err


def _refuse_after_error(case):
    def refuse(*a, **k):
        raise AssertionError(f"{case}: the model was loaded before the input was checked")

    return refuse


def test_rate_sampling_and_multiple_choice(qwen_checkpoint, video):
    qa = VideoQA.from_pretrained(qwen_checkpoint, dtype="float32")
    frames = qa.read(video, frames=4, fps=2.0)  # 24 frames at 8 fps: one every 4 frames, at most 4 of the 6
    assert frames.n_frames == 4 and all(b - a >= 4 for a, b in zip(frames.indices, frames.indices[1:], strict=False))
    prep = qa.prepare(frames, "Which colour?", options=["red", "green"])
    assert "Which colour?\nA. red\nB. green\nAnswer with the option's letter" in prep.prompt
