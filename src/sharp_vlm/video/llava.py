"""LLaVA-OneVision / LLaVA-Video and LLaVA-NeXT-Video video preprocessing (the rules of transformers'
LlavaOnevisionVideoProcessor / LlavaNextVideoVideoProcessor and their processors).

LLaVA-OneVision: every frame resized to the config's fixed height x width (SigLIP: 384 x 384, aspect ratio not
kept), normalised; the tower's p x p patch grid is pooled to ceil(p/2) x ceil(p/2) tokens per frame and one
newline token closes the video: frames * ceil(p/2)**2 + 1 placeholders (p**2 = the processor's
`num_image_tokens`). LLaVA-NeXT-Video: shortest edge resized to `size`, centre crop, normalised; each frame's patch
grid pooled 2 x 2: (h/patch * w/patch) // 4 placeholders per frame, no newline.
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

ONEVISION_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + ' '}}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ '\n' + content['text'] }}"
    "{% endfor %}{{'<|im_end|>'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

NEXT_VIDEO_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def shortest_edge_size(height: int, width: int, short: int) -> tuple[int, int]:
    """(height, width) with the shorter side `short` and the longer scaled, truncated (aspect ratio kept)."""
    if width <= height:
        return int(short * height / width), short
    return short, int(short * width / height)


def center_crop(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Centre crop of (T, C, H, W) frames, zero-padded first where the frame is smaller than the crop."""
    h, w = frames.shape[-2:]
    if height > h or width > w:
        pad_w, pad_h = max(width - w, 0), max(height - h, 0)
        frames = torch.nn.functional.pad(frames, (pad_w // 2, (pad_w + 1) // 2, pad_h // 2, (pad_h + 1) // 2))
        h, w = frames.shape[-2:]
    top, left = int((h - height) / 2.0), int((w - width) / 2.0)
    return frames[..., top:top + height, left:left + width]


class LlavaVideoProcessor(VideoProcessor):
    """LLaVA-OneVision / LLaVA-Video (`llava_onevision`) and LLaVA-NeXT-Video (`llava_next_video`)."""

    @property
    def onevision(self) -> bool:
        return self.family == "llava_onevision"

    def _vision(self) -> dict[str, Any]:
        return dict(self.checkpoint.config.get("vision_config") or {})

    def batch(self, prepared: list[PreparedInputs], pad_id: int) -> dict[str, Any]:
        if len(self.batch_groups(prepared)) > 1:
            shapes = sorted({tuple(p.kwargs["pixel_values_videos"].shape[1:]) for p in prepared})
            raise InputError(
                f"{self.family} encodes the videos of a batch as one (videos, frames, C, H, W) tensor, and these "
                f"videos have {len(shapes)} shapes {shapes}; sample the same number of frames from each video, "
                "or batch the videos of one shape together (VideoQA.answer_batch does)"
            )
        return super().batch(prepared, pad_id)

    def batch_groups(self, prepared: list[PreparedInputs]) -> list[list[int]]:
        """Videos of one shape (frames, size) together: the model stacks a batch's videos into one tensor."""
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, p in enumerate(prepared):
            groups.setdefault(tuple(p.kwargs["pixel_values_videos"].shape[1:]), []).append(i)
        return list(groups.values())

    def __call__(self, frames: Frames, question: str) -> PreparedInputs:
        cfg = self.checkpoint.video
        proc = self.checkpoint.processor
        vision = self._vision()
        mean = list(cfg.get("image_mean") or CLIP_MEAN)
        std = list(cfg.get("image_std") or CLIP_STD)
        rescale = float(cfg.get("rescale_factor") or 1 / 255)
        mode = resample_mode(cfg.get("resample"), "bicubic")
        x = to_channels_first(frames.pixels)
        size = dict(cfg.get("size") or {})
        if self.onevision:
            side = int(vision.get("image_size", 384))
            x = resize(x, int(size.get("height", side)), int(size.get("width", side)), mode)
            n_patches = int(proc.get("num_image_tokens") or (side // int(vision.get("patch_size", 14))) ** 2)
            pooled = math.ceil(math.isqrt(n_patches) / 2)  # apply_pooling: bilinear to ceil(p/2) x ceil(p/2)
            per_frame, rows = pooled * pooled, pooled
            expansion_len = frames.n_frames * per_frame + 1  # + the newline after the last frame
            token, template = "<video>", ONEVISION_TEMPLATE
        else:
            short = int(size.get("shortest_edge", 224))
            x = resize(x, *shortest_edge_size(x.shape[-2], x.shape[-1], short), mode)
            crop = dict(cfg.get("crop_size") or {"height": 224, "width": 224})
            if cfg.get("do_center_crop", True):
                x = center_crop(x, int(crop["height"]), int(crop["width"]))
            patch = int(proc.get("patch_size") or vision.get("patch_size", 14))
            n_patches = (x.shape[-2] // patch) * (x.shape[-1] // patch)
            per_frame = n_patches // 4  # the processor's 2x2 pooling
            rows = math.isqrt(per_frame)
            expansion_len = frames.n_frames * per_frame
            token, template = "<video>", NEXT_VIDEO_TEMPLATE
        pixels = normalize(x, mean, std, rescale)[None]  # (1, T, C, H, W): one video
        prompt = expand_once(render_prompt(self.tokenizer, self.checkpoint.chat_template, question, template,
                                           placeholders=("<image>", "<video>")), token, token * expansion_len)
        text = tokenize(self.tokenizer, prompt)
        n_placeholders = int((text["input_ids"] == self.tokenizer.convert_tokens_to_ids(token)).sum())
        if n_placeholders != expansion_len:
            raise InputError(f"the tokenizer split {token!r}; it must know it as one special token")
        grid = TokenGrid.raster(frames.n_frames, rows, rows, 1, frames.n_frames)
        return PreparedInputs({**text, "pixel_values_videos": pixels}, plain_text(prompt), channels_last_uint8(x),
                              list(frames.timestamps), grid, self.family, grid.n_tokens)
