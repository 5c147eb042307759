"""sharp_vlm's torch-only preprocessing gives what the family's HF processor gives, from the same checkpoint folder.

For every family, with the tiny checkpoints' configs and with the real checkpoints' settings (tile sizes, pixel
bounds, normalisation, resampling), at several frame counts and frame sizes: input_ids and attention mask equal,
grids / second_per_grid_ts / masks equal, pixel values equal up to float rounding.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from transformers import AutoProcessor

from conftest import RESULTS
from sharp_vlm.testing import TINY_FAMILIES, save_tiny_checkpoint
from sharp_vlm.video.decode import Frames, read_video, write_video
from sharp_vlm.video.preprocess import load_processor, prepare_inputs

QUESTION = "What happens in the video? Answer briefly."

# what the published checkpoints' preprocessor files set (Qwen2-VL-7B-Instruct, Qwen2.5-VL-7B-Instruct,
# Qwen3-VL-8B-Instruct, llava-onevision-qwen2-0.5b-ov-hf, LLaVA-NeXT-Video-7B-hf, InternVL3-1B-hf,
# SmolVLM2-256M-Video-Instruct); applied over the tiny checkpoint's files
CLIP = dict(image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711])
QWEN2 = {"video": dict(min_pixels=3136, max_pixels=12845056, patch_size=14, **CLIP), "drop": ["size"]}
REAL = {
    "qwen2_vl": QWEN2,
    "qwen2_5_vl": QWEN2,
    "qwen3_vl": {"video": dict(size={"longest_edge": 25165824, "shortest_edge": 4096}, patch_size=16)},
    "qwen3_vl_moe": {"video": dict(size={"longest_edge": 25165824, "shortest_edge": 4096}, patch_size=16)},
    "llava_onevision": {"video": dict(size={"height": 384, "width": 384}), "processor": dict(num_image_tokens=729)},
    "llava_next_video": {"video": dict(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}),
                         "processor": dict(patch_size=14)},
    "internvl": {"video": dict(size={"height": 448, "width": 448}), "processor": dict(image_seq_length=256)},
    "smolvlm": {"image": dict(max_image_size={"longest_edge": 512}, size={"longest_edge": 2048},
                              video_sampling={"fps": 1, "max_frames": 64, "video_size": {"longest_edge": 512}}),
                "processor": dict(image_seq_len=64)},
}
# (frames, height, width): odd counts (Qwen pads the last temporal patch), portrait, landscape, tiny, odd sizes
TINY_CASES = [(1, 24, 32), (3, 37, 53), (8, 48, 64), (5, 90, 160), (4, 120, 68)]
REAL_CASES = [(3, 240, 320), (4, 360, 640), (2, 500, 282)]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """family -> {"tiny": dir, "real": dir}: a tiny checkpoint, and a copy with the real checkpoints' settings."""
    out = {}
    for family in TINY_FAMILIES:
        tiny = save_tiny_checkpoint(family, tmp_path_factory.mktemp(family), layers=1)
        real = tmp_path_factory.mktemp(family + "_real")
        shutil.copytree(tiny, real, dirs_exist_ok=True)
        change = REAL[family]
        for key, name in (("video", "video_preprocessor_config.json"), ("image", "preprocessor_config.json"),
                          ("processor", "processor_config.json")):
            path = real / name
            if key in change and path.is_file():
                cfg = json.loads(path.read_text())
                for k in change.get("drop", []):
                    cfg.pop(k, None)
                cfg.update(change[key])
                path.write_text(json.dumps(cfg))
        if family == "smolvlm":  # its video settings live in the image processor's file
            cfg = json.loads((real / "preprocessor_config.json").read_text())
            assert cfg["video_sampling"]["video_size"] == {"longest_edge": 512}
        out[family] = {"tiny": tiny, "real": real}
    return out


def _frames(n: int, height: int, width: int, seed: int) -> Frames:
    """Smooth gradients plus noise (resampling differences show on edges and noise alike), at 8 fps."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.linspace(0, 1, height)[:, None, None]
    x = torch.linspace(0, 1, width)[None, :, None]
    base = torch.cat([y * 255 * torch.ones_like(x), x * 255 * torch.ones_like(y), (x + y) * 127 + 0 * x], dim=2)
    frames = [(base + torch.randn(height, width, 3, generator=gen) * 40 + 17 * i).clamp(0, 255) for i in range(n)]
    pixels = torch.stack(frames).round().to(torch.uint8)
    indices = [3 * i + 1 for i in range(n)]
    return Frames(pixels, [i / 8.0 for i in indices], indices, 8.0, 3 * n + 2)


def _hf(folder, frames: Frames):
    proc = AutoProcessor.from_pretrained(str(folder))
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": QUESTION}]}]
    text = proc.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    meta = {"total_num_frames": frames.n_total, "fps": frames.fps, "frames_indices": list(frames.indices),
            "duration": frames.n_total / frames.fps, "height": int(frames.pixels.shape[1]),
            "width": int(frames.pixels.shape[2])}
    kwargs = dict(text=[text], videos=[frames.pixels.numpy()], video_metadata=[meta], do_sample_frames=False,
                  return_tensors="pt")
    if "qwen" in type(proc).__name__.lower():
        kwargs["cap_pixels_per_frame"] = False  # the transformers 5.24 default, set to silence its warning
    return proc(**kwargs)


def _check(family: str, folder, frames: Frames, config: str) -> None:
    ours = prepare_inputs(load_processor(folder), frames, QUESTION)
    theirs = _hf(folder, frames)
    assert ours.kwargs["input_ids"].tolist() == theirs["input_ids"].tolist()
    assert torch.equal(ours.kwargs["attention_mask"], theirs["attention_mask"])
    max_diff = 0.0
    for key, value in ours.kwargs.items():
        if key in ("input_ids", "attention_mask"):
            continue
        assert key in theirs, f"{key} is not in the HF processor's output"
        ref = theirs[key]
        ref = torch.as_tensor(np.asarray(ref)) if not isinstance(ref, torch.Tensor) else ref
        assert tuple(value.shape) == tuple(ref.shape), key
        if value.is_floating_point():
            diff = float((value.double() - ref.double()).abs().max()) if value.numel() else 0.0
            max_diff = max(max_diff, diff) if key.startswith("pixel_values") else max_diff
            assert diff <= 1e-5, f"{key}: max |diff| {diff}"
        else:
            assert torch.equal(value, ref.to(value.dtype)), key
    extra = set(theirs) - set(ours.kwargs) - {"video_metadata"}
    assert not extra, f"the HF processor also returns {sorted(extra)}"
    RESULTS.append(dict(family=family, config=config, frames=frames.n_frames,
                        input=f"{frames.pixels.shape[1]}x{frames.pixels.shape[2]}",
                        model=f"{ours.frames.shape[1]}x{ours.frames.shape[2]}", n_visual=ours.n_visual,
                        ids=int(ours.kwargs["input_ids"].shape[1]), max_diff=max_diff))


@pytest.mark.parametrize("family", TINY_FAMILIES)
@pytest.mark.parametrize("case", TINY_CASES, ids=lambda c: "x".join(map(str, c)))
def test_tiny_configs(folders, family, case):
    n, h, w = case
    if family.startswith("qwen3") and n < 2:
        n = 2  # Qwen3-VL's processor refuses fewer frames than one temporal patch
    _check(family, folders[family]["tiny"], _frames(n, h, w, seed=n * 1000 + h), "tiny")


@pytest.mark.parametrize("family", TINY_FAMILIES)
@pytest.mark.parametrize("case", REAL_CASES, ids=lambda c: "x".join(map(str, c)))
def test_real_checkpoint_settings(folders, family, case):
    n, h, w = case
    _check(family, folders[family]["real"], _frames(n, h, w, seed=n * 1000 + h), "real")


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_decoded_mp4(folders, family, tmp_path):
    """Frames decoded from an mp4 (timestamps and rate from the stream) give the same inputs too."""
    clip = _frames(20, 72, 96, seed=7).pixels
    path = write_video(tmp_path / "clip.mp4", clip, fps=8)
    _check(family, folders[family]["real"], read_video(path, n_frames=6), "mp4")
