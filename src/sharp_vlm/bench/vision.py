"""Vision-encoder time for the video whose tokens the decoder benchmark prunes.

In-decoder pruning does not touch the vision tower, so its time is the same for every method; it matters for
the end-to-end time to first token (encode + prefill), which is what a user waits for. The tower is built with
random weights from a built-in config (``bench.shapes``) and fed input of the size that yields the benchmark's
visual tokens:

* SigLIP and InternViT towers (LLaVA-OneVision, SmolVLM2, InternVL3) encode each frame at the tower's
  ``image_size``; the connector (pooling, pixel shuffle, projector) is not timed.
* Qwen2.5-VL towers encode ``frames`` temporal patches (2 input frames each) on a square grid whose merged
  tokens number ``tokens_per_frame`` (rounded to a square), merger included.

Both encode frames independently (attention never crosses a frame or temporal patch), so time grows linearly
with frames: ``frames_measured`` below the full count times a subset and scales it, and the report says so.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..flops import vision_encoder_flops
from .timer import Timer


@dataclass
class VisionInput:
    kwargs: dict[str, Any]  # the tower's forward arguments
    n_patches: int
    grid_thw: tuple[int, int, int] | None
    input_frames: int  # video frames this input stands for


def is_qwen_vision(vision_cfg: dict[str, Any]) -> bool:
    return "out_hidden_size" in vision_cfg


def build_tower(vision_cfg: dict[str, Any], dtype: torch.dtype, device: str) -> nn.Module:
    """A random-weight vision tower of the given config (no download)."""
    cfg = {k: v for k, v in vision_cfg.items() if k != "model_type"}
    torch.manual_seed(0)
    kind = vision_cfg.get("model_type", "")
    if kind == "qwen3_vl_vision":
        from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLVisionConfig
        from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLVisionModel

        conf = Qwen3VLVisionConfig(**cfg)
        conf._attn_implementation = "sdpa"
        tower = Qwen3VLVisionModel._from_config(conf, dtype=dtype)
    elif kind == "internvl_vision":
        from transformers.models.internvl.configuration_internvl import InternVLVisionConfig
        from transformers.models.internvl.modeling_internvl import InternVLVisionModel

        cfg.pop("downsample_ratio", None)  # the connector's setting, not the tower's
        conf = InternVLVisionConfig(**cfg)
        conf._attn_implementation = "sdpa"
        tower = InternVLVisionModel._from_config(conf, dtype=dtype)
    elif kind == "clip_vision_model":
        from transformers import CLIPVisionConfig, CLIPVisionModel

        conf = CLIPVisionConfig(**cfg)
        conf._attn_implementation = "sdpa"
        tower = CLIPVisionModel._from_config(conf, dtype=dtype)
    elif is_qwen_vision(vision_cfg):
        from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
        from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
            Qwen2_5_VisionTransformerPretrainedModel,
        )

        conf = Qwen2_5_VLVisionConfig(**cfg)
        conf._attn_implementation = "sdpa"
        tower = Qwen2_5_VisionTransformerPretrainedModel._from_config(conf, dtype=dtype)
    else:
        from transformers import SiglipVisionConfig, SiglipVisionModel

        cfg.pop("scale_factor", None)  # SmolVLM's connector setting, not the tower's
        conf = SiglipVisionConfig(**cfg)
        conf._attn_implementation = "sdpa"
        tower = SiglipVisionModel._from_config(conf, dtype=dtype)
    return tower.to(device).eval()


def vision_input(
    vision_cfg: dict[str, Any], frames: int, tokens_per_frame: int, dtype: torch.dtype, device: str
) -> VisionInput:
    """Random pixels shaped as the tower expects for ``frames`` frames (see the module docstring)."""
    gen = torch.Generator().manual_seed(0)
    size = vision_input_size(vision_cfg, frames, tokens_per_frame)
    n = size["n_patches"]
    if is_qwen_vision(vision_cfg):
        t_patch, patch = int(vision_cfg["temporal_patch_size"]), int(vision_cfg["patch_size"])
        dim = int(vision_cfg.get("in_channels", 3)) * t_patch * patch * patch
        pixels = torch.randn(n, dim, generator=gen).to(device, dtype)
        grid = torch.tensor([size["grid_thw"]], device=device)
        return VisionInput({"hidden_states": pixels, "grid_thw": grid}, n, size["grid_thw"], frames * t_patch)
    side = int(vision_cfg["image_size"])
    pixels = torch.randn(frames, int(vision_cfg.get("num_channels", 3)), side, side, generator=gen)
    return VisionInput({"pixel_values": pixels.to(device, dtype)}, n, None, frames)


def time_vision(
    vision_cfg: dict[str, Any],
    frames: int,
    tokens_per_frame: int,
    dtype: torch.dtype,
    device: str,
    repeats: int,
    warmup: int,
    frames_measured: int | None = None,
) -> dict[str, Any]:
    """Encode ``frames_measured`` (default all) frames ``warmup + repeats`` times; seconds scaled to ``frames``."""
    measured = frames if frames_measured is None else frames_measured
    if not 1 <= measured <= frames:
        raise ValueError(f"vision frames to measure must be in 1..{frames}, got {measured}")
    tower = build_tower(vision_cfg, dtype, device)
    inp = vision_input(vision_cfg, measured, tokens_per_frame, dtype, device)
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            with Timer(device) as t:
                tower(**inp.kwargs)
            if i >= warmup:
                times.append(t.seconds)
    scale = frames / measured
    full = vision_input_size(vision_cfg, frames, tokens_per_frame)
    flops = vision_encoder_flops(vision_cfg, full["n_patches"], grid_thw=full["grid_thw"])["total"]
    del tower
    return {
        "frames": frames, "frames_measured": measured, "input_frames": inp.input_frames * frames // measured,
        "n_patches": full["n_patches"], "flops": flops,
        "seconds": {"median": statistics.median(times) * scale, "min": min(times) * scale,
                    "max": max(times) * scale, "runs": len(times)},
        "measured_seconds_median": statistics.median(times), "extrapolated": measured < frames,
    }


def vision_input_size(vision_cfg: dict[str, Any], frames: int, tokens_per_frame: int) -> dict[str, Any]:
    """Patch count (and Qwen grid) of the full video, without building any tensor."""
    if is_qwen_vision(vision_cfg):
        side = max(1, round(math.sqrt(tokens_per_frame))) * int(vision_cfg["spatial_merge_size"])
        return {"n_patches": frames * side * side, "grid_thw": (frames, side, side)}
    per_frame = (int(vision_cfg["image_size"]) // int(vision_cfg["patch_size"])) ** 2
    return {"n_patches": frames * per_frame, "grid_thw": None}
