"""Random-weight Qwen2-VL / Qwen2.5-VL built from configs, and a one-video prompt for them (no downloads)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .configs import build, tiny_text_config


@dataclass(frozen=True)
class TinyVideo:
    """Inputs for a tiny Qwen-VL / Qwen3-VL: one video of `frames` frames at `height` x `width` pixels."""

    input_ids: torch.Tensor
    mm_token_type_ids: torch.Tensor
    attention_mask: torch.Tensor
    pixel_values_videos: torch.Tensor
    video_grid_thw: torch.Tensor

    def as_kwargs(self) -> dict[str, torch.Tensor]:
        return dict(self.__dict__)


def qwen_token_ids(vocab: int) -> dict[str, int]:
    """The placeholder and marker ids of every tiny Qwen model (the tiny checkpoints' tokenizers put them there)."""
    return dict(image_token_id=vocab - 3, video_token_id=vocab - 4, vision_start_token_id=vocab - 5,
                vision_end_token_id=vocab - 6)


def tiny_qwen_vl(
    family: str = "qwen2_5_vl",
    layers: int = 4,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    vocab: int = 256,
    attn_implementation: str = "sdpa",
    seed: int = 0,
) -> nn.Module:
    """A random-weight Qwen2-VL / Qwen2.5-VL (patch 2 px, 2x2 merge, 2 frames per temporal patch)."""
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
    )

    half = hidden // heads // 2
    section = [half - 2 * (half // 3), half // 3, half // 3]  # M-RoPE (t, h, w) sections of the frequencies
    # Qwen2-VL's text config has no head_dim key
    text = tiny_text_config(layers, hidden, heads, kv_heads, vocab, head_dim=None, rope_parameters={
        "rope_type": "default", "rope_theta": 10000.0, "mrope_section": section})
    vision = dict(depth=1, embed_dim=32, hidden_size=hidden, num_heads=2, patch_size=2,
                  spatial_merge_size=2, temporal_patch_size=2, in_channels=3)
    if family == "qwen2_5_vl":
        vision.update(intermediate_size=64, out_hidden_size=hidden, window_size=8, fullatt_block_indexes=[0])
        cfg_cls, model_cls = Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    elif family == "qwen2_vl":
        cfg_cls, model_cls = Qwen2VLConfig, Qwen2VLForConditionalGeneration
    else:
        raise ValueError(f"family must be 'qwen2_vl' or 'qwen2_5_vl', got {family!r}")
    cfg = cfg_cls(text_config=text, vision_config=vision, **qwen_token_ids(vocab))
    return build(model_cls, cfg, attn_implementation, seed)


def tiny_video_inputs(
    model: nn.Module,
    frames: int = 16,
    height: int = 16,
    width: int = 16,
    prefix: int = 5,
    question: int = 7,
    seed: int = 0,
) -> TinyVideo:
    """A prompt `prefix text, <vision_start>, video tokens, <vision_end>, question text` with random pixels."""
    cfg = model.config
    vc = cfg.vision_config
    p, m, tp = vc.patch_size, vc.spatial_merge_size, vc.temporal_patch_size
    if frames % tp or height % (p * m) or width % (p * m):
        raise ValueError(f"frames must be a multiple of {tp} and height/width multiples of {p * m}")
    gen = torch.Generator().manual_seed(seed)
    t, h, w = frames // tp, height // p, width // p
    n_vis = t * (h // m) * (w // m)
    vocab_text = cfg.text_config.vocab_size - 8
    pre = torch.randint(3, vocab_text, (prefix,), generator=gen)
    post = torch.randint(3, vocab_text, (question,), generator=gen)
    ids = torch.cat([
        pre,
        torch.tensor([cfg.vision_start_token_id]),
        torch.full((n_vis,), cfg.video_token_id),
        torch.tensor([cfg.vision_end_token_id]),
        post,
    ])[None]
    types = (ids == cfg.video_token_id).long() * 2
    pixels = torch.randn(t * h * w, vc.in_channels * tp * p * p, generator=gen)
    return TinyVideo(
        input_ids=ids,
        mm_token_type_ids=types,
        attention_mask=torch.ones_like(ids),
        pixel_values_videos=pixels,
        video_grid_thw=torch.tensor([[t, h, w]]),
    )
