"""Random-weight LLaVA-OneVision and LLaVA-NeXT-Video models built from configs, and prompts for them.

No downloads: the placeholder counts come from the adapter's layout rules (`models/llava_onevision.py`), which
follow the processors; the models themselves check that the features fill the placeholders exactly.
"""

from __future__ import annotations

import torch
from torch import nn

from .configs import build, tiny_text_config, tiny_vision_config

ONEVISION_TEXT = "qwen2"  # LLaVA-OneVision / LLaVA-Video checkpoints use a Qwen2 decoder
NEXT_VIDEO_TEXT = "llama"  # LLaVA-NeXT-Video checkpoints use a Vicuna (LLaMA) decoder


def pinpoints(tile: int) -> list[list[int]]:
    """anyres resolutions of 1x1 up to 3x3 tiles (the real checkpoints go up to 6x6 tiles of 384 px)."""
    return [[tile * a, tile * b] for a in range(1, 4) for b in range(1, 4)]


def tiny_llava_onevision(
    layers: int = 4,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    vocab: int = 256,
    image_size: int = 16,
    patch_size: int = 2,
    vision_aspect_ratio: str = "anyres_max_9",
    attn_implementation: str = "sdpa",
    seed: int = 0,
) -> nn.Module:
    """A random-weight LLaVA-OneVision (SigLIP tower without CLS, Qwen2 decoder).

    Each frame is `image_size` px with `patch_size` px patches; the default 16/2 gives an 8x8 patch grid, pooled
    to 4x4 = 16 tokens per video frame.
    """
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

    cfg = LlavaOnevisionConfig(
        text_config=tiny_text_config(layers, hidden, heads, kv_heads, vocab, model_type=ONEVISION_TEXT),
        vision_config=tiny_vision_config(image_size, patch_size, model_type="siglip_vision_model",
                                         vision_use_head=False),
        image_token_index=vocab - 3,
        video_token_index=vocab - 4,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        image_grid_pinpoints=pinpoints(image_size),
        vision_aspect_ratio=vision_aspect_ratio,
    )
    return build(LlavaOnevisionForConditionalGeneration, cfg, attn_implementation, seed)


def tiny_llava_next_video(
    layers: int = 4,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    vocab: int = 256,
    image_size: int = 16,
    patch_size: int = 2,
    attn_implementation: str = "sdpa",
    seed: int = 0,
) -> nn.Module:
    """A random-weight LLaVA-NeXT-Video (CLIP tower with CLS, 2x2 average pooling of video frames, LLaMA decoder).

    The default 16/2 px gives an 8x8 patch grid, pooled to 4x4 = 16 tokens per video frame.
    """
    from transformers import LlavaNextVideoConfig, LlavaNextVideoForConditionalGeneration

    cfg = LlavaNextVideoConfig(
        text_config=tiny_text_config(layers, hidden, heads, kv_heads, vocab, model_type=NEXT_VIDEO_TEXT),
        vision_config=tiny_vision_config(image_size, patch_size, model_type="clip_vision_model", projection_dim=32),
        image_token_index=vocab - 3,
        video_token_index=vocab - 4,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        image_grid_pinpoints=pinpoints(image_size),
    )
    return build(LlavaNextVideoForConditionalGeneration, cfg, attn_implementation, seed)


def tiny_llava_inputs(
    model: nn.Module,
    frames: int = 8,
    image_sizes: tuple[tuple[int, int], ...] = (),
    prefix: int = 5,
    middle: int = 3,
    question: int = 7,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Inputs for a tiny LLaVA-OneVision / LLaVA-NeXT-Video, as the processor returns them.

    The prompt is `prefix text, images (one placeholder run each, original (height, width) in image_sizes),
    middle text, the video (frames x the pooled grid, plus OneVision's newline), question text`, with random
    pixels. frames=0 gives an image-only prompt.
    """
    from ..models.llava_onevision import adapter_for_family

    adapter = adapter_for_family(model)
    cfg = model.config
    vc = cfg.vision_config
    gen = torch.Generator().manual_seed(seed)
    vocab_text = cfg.text_config.vocab_size - 8
    n_img = len(image_sizes)
    many = n_img > 1  # OneVision encodes each image of a multi-image prompt as one tile (no anyres)

    def text(n: int) -> torch.Tensor:
        return torch.randint(3, vocab_text, (n,), generator=gen)

    parts = [text(prefix)]
    for size in image_sizes:
        piece = adapter.image_piece(size, patched=not many)
        parts.append(torch.full((piece.length,), cfg.image_token_id))
    parts.append(text(middle))
    out: dict[str, torch.Tensor] = {}
    if frames:
        side = vc.image_size
        piece = adapter.video_piece(frames, (side, side))
        parts.append(torch.full((piece.length,), cfg.video_token_id))
        out["pixel_values_videos"] = torch.randn(1, frames, vc.num_channels, side, side, generator=gen)
    parts.append(text(question))
    ids = torch.cat(parts)[None]
    out = {"input_ids": ids, "attention_mask": torch.ones_like(ids), **out}
    if n_img:
        tiles = [adapter.image_piece(size, patched=not many).tiles for size in image_sizes]
        side = vc.image_size
        # the processor pads every image to the largest tile count (zeros past an image's own tiles)
        pixels = torch.zeros(n_img, max(tiles), vc.num_channels, side, side)
        for i, n in enumerate(tiles):
            pixels[i, :n] = torch.randn(n, vc.num_channels, side, side, generator=gen)
        out["pixel_values"] = pixels
        out["image_sizes"] = torch.tensor([list(s) for s in image_sizes])
        if adapter.name == "llava-onevision":
            out["batch_num_images"] = torch.tensor([n_img])
    return out
