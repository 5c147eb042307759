"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL video preprocessing (the rules of transformers' Qwen2VLVideoProcessor,
Qwen3VLVideoProcessor and their processors).

Frames are resized so both sides are multiples of patch x merge and the pixel count stays within the configured
bounds (`smart_resize`; Qwen3-VL bounds the whole clip's pixels), normalised, padded to a multiple of the temporal
patch by repeating the last frame, and cut into flattened patches ordered (temporal patch, merged row, merged col,
row in merge, col in merge); each merged 2x2 cell of a temporal pair of frames is one LLM token. Qwen3-VL writes
`<t seconds>` before each temporal patch, framed by its own vision start/end tokens.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..errors import InputError
from ..models.pixel_norms import CLIP_MEAN, CLIP_STD
from .decode import Frames
from .processor import (
    PreparedInputs,
    TokenGrid,
    VideoProcessor,
    channels_last_uint8,
    expand_once,
    normalize,
    plain_text,
    render_prompt,
    resample_mode,
    resize,
    to_channels_first,
    tokenize,
)

# the processors' class defaults, used where the checkpoint's config leaves a key out
_DEFAULTS: dict[str, dict[str, Any]] = {
    "qwen2": dict(shortest_edge=128 * 28 * 28, longest_edge=28 * 28 * 768, patch_size=14, mean=CLIP_MEAN,
                  std=CLIP_STD, max_video_tokens=128000),
    "qwen3": dict(shortest_edge=128 * 32 * 32, longest_edge=32 * 32 * 768, patch_size=16, mean=[0.5] * 3,
                  std=[0.5] * 3, max_video_tokens=768),
}

QWEN_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int,
                 frames: int = 1, temporal_factor: int = 1) -> tuple[int, int]:
    """(height, width), multiples of `factor`, close to the input's aspect ratio, with
    frames' x height x width within [min_pixels, max_pixels] (`frames` = 1: per frame, as Qwen2/2.5-VL;
    Qwen3-VL counts the clip's frames rounded to the temporal factor)."""
    if height < factor or width < factor:  # Qwen3-VL first scales tiny frames up to one factor (Qwen2 never has to)
        scale = max(factor / height, factor / width)
        height, width = int(height * scale), int(width * scale)
    if max(height, width) / min(height, width) > 200:
        raise InputError(f"frames of {height}x{width} px are too elongated (aspect ratio over 200) for Qwen-VL")
    h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
    t_bar = round(frames / temporal_factor) * temporal_factor
    if t_bar * h_bar * w_bar > max_pixels:
        beta = math.sqrt(frames * height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif t_bar * h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (frames * height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def patchify(frames: torch.Tensor, patch: int, merge: int, temporal: int) -> tuple[torch.Tensor, list[int]]:
    """(T, C, H, W) float -> (t*h*w, C*temporal*patch*patch) flattened patches and the grid [t, h, w] in patches;
    T is padded to a multiple of `temporal` with copies of the last frame."""
    if pad := -frames.shape[0] % temporal:
        frames = torch.cat([frames, frames[-1:].expand(pad, -1, -1, -1)])
    n, c, height, width = frames.shape
    t, h, w = n // temporal, height // patch, width // patch
    x = frames.reshape(t, temporal, c, h // merge, merge, patch, w // merge, merge, patch)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)  # t, merged row, merged col, row, col | channel, time, py, px
    return x.reshape(t * h * w, c * temporal * patch * patch), [t, h, w]


class QwenVLProcessor(VideoProcessor):
    """Qwen2-VL / Qwen2.5-VL (`qwen2_vl`, `qwen2_5_vl`) and Qwen3-VL (`qwen3_vl`, `qwen3_vl_moe`)."""

    @property
    def v3(self) -> bool:
        return self.family.startswith("qwen3")

    def settings(self) -> dict[str, Any]:
        cfg = self.checkpoint.video
        base = _DEFAULTS["qwen3" if self.v3 else "qwen2"]
        size = dict(cfg.get("size") or {})
        shortest = size.get("shortest_edge", size.get("min_pixels", base["shortest_edge"]))
        longest = size.get("longest_edge", size.get("max_pixels", base["longest_edge"]))
        if not self.v3:  # Qwen2VLVideoProcessor lets top-level min/max_pixels override `size`
            shortest = cfg.get("min_pixels") or shortest
            longest = cfg.get("max_pixels") or longest
        return dict(
            min_pixels=int(shortest), max_pixels=int(longest),
            patch=int(cfg.get("patch_size") or base["patch_size"]),
            temporal=int(cfg.get("temporal_patch_size") or 2), merge=int(cfg.get("merge_size") or 2),
            mean=list(cfg.get("image_mean") or base["mean"]), std=list(cfg.get("image_std") or base["std"]),
            rescale=float(cfg.get("rescale_factor") or 1 / 255), mode=resample_mode(cfg.get("resample"), "bicubic"),
            cap=bool(cfg.get("cap_pixels_per_frame") or False),
            max_video_tokens=int(cfg.get("max_video_tokens") or base["max_video_tokens"]),
        )

    def min_frames(self) -> int:
        # Qwen3-VL's smart_resize refuses fewer frames than one temporal patch; Qwen2/2.5 pad a single frame
        return self.settings()["temporal"] if self.v3 else 1

    def target_size(self, n_frames: int, height: int, width: int) -> tuple[int, int]:
        s = self.settings()
        factor = s["patch"] * s["merge"]
        max_pixels = s["max_pixels"]
        if self.v3:
            if s["cap"]:  # qwen-vl-utils' per-frame share of the clip's budget, bounded per frame
                per_frame = max(min(s["max_video_tokens"] * factor * factor, s["max_pixels"] // n_frames),
                                int(s["min_pixels"] * 1.05))
                max_pixels = per_frame * n_frames
            return smart_resize(height, width, factor, s["min_pixels"], max_pixels, n_frames, s["temporal"])
        if s["cap"]:
            total = int(s["max_video_tokens"] * factor * factor * 0.9)
            max_pixels = max(min(max_pixels, total * s["temporal"] // n_frames), int(s["min_pixels"] * 1.05))
        return smart_resize(height, width, factor, s["min_pixels"], max_pixels)

    def pixels(self, frames: Frames) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """(resized uint8 frames (T, 3, H, W), flattened patches, grid [t, h, w])."""
        s = self.settings()
        x = to_channels_first(frames.pixels)
        h, w = self.target_size(x.shape[0], x.shape[-2], x.shape[-1])
        x = resize(x, h, w, s["mode"])
        patches, grid = patchify(normalize(x, s["mean"], s["std"], s["rescale"]), s["patch"], s["merge"],
                                 s["temporal"])
        return x, patches, grid

    def timestamps(self, frames: Frames) -> list[float]:
        """Seconds of each temporal patch: the mean of its first and last frame's time (last frame repeated)."""
        tp = self.settings()["temporal"]
        times = list(frames.timestamps)
        times += [times[-1]] * (-len(times) % tp)
        return [(times[i] + times[i + tp - 1]) / 2 for i in range(0, len(times), tp)]

    def __call__(self, frames: Frames, question: str) -> PreparedInputs:
        s = self.settings()
        resized, patches, (t, h, w) = self.pixels(frames)
        m = s["merge"]
        per_step = (h // m) * (w // m)
        pad, start, end = "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"
        if self.v3:
            expansion = "".join(f"<{ts:.1f} seconds>{start}{pad * per_step}{end}" for ts in self.timestamps(frames))
        else:
            expansion = pad * (t * per_step)
        prompt = expand_once(render_prompt(self.tokenizer, self.checkpoint.chat_template, question, QWEN_TEMPLATE,
                                           placeholders=(pad, start, end, "<|image_pad|>")), pad, expansion)
        text = tokenize(self.tokenizer, prompt)
        ids = text["input_ids"]
        video_id = self.tokenizer.convert_tokens_to_ids(pad)
        image_id = self.tokenizer.convert_tokens_to_ids("<|image_pad|>")
        types = torch.where(ids == video_id, 2, torch.where(ids == image_id, 1, 0))
        kwargs: dict[str, Any] = {**text, "pixel_values_videos": patches, "video_grid_thw": torch.tensor([[t, h, w]]),
                                  "mm_token_type_ids": types}
        if self.family == "qwen2_5_vl":  # seconds per temporal patch at the rate the frames were sampled
            sampled_fps = frames.n_frames / frames.n_total * frames.fps if frames.n_total else frames.fps
            kwargs["second_per_grid_ts"] = torch.tensor([s["temporal"] / sampled_fps])
        n_visual = int((types == 2).sum())
        grid = TokenGrid.raster(t, h // m, w // m, s["temporal"], frames.n_frames)
        if n_visual != grid.n_tokens:
            raise InputError(f"the tokenizer split {pad!r} ({n_visual} video tokens for {grid.n_tokens} patches); "
                             "the tokenizer must know it as one special token")
        return PreparedInputs(kwargs, plain_text(prompt), channels_last_uint8(resized), list(frames.timestamps), grid,
                              self.family, n_visual)
