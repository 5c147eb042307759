"""What every tiny model is built from: one small decoder config, one small ViT-style tower config, and a seeded
build (so the same seed gives the same weights)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def tiny_text_config(layers: int = 4, hidden: int = 64, heads: int = 4, kv_heads: int = 2, vocab: int = 256,
                     **extra: Any) -> dict[str, Any]:
    """The decoder config of every tiny model, as the kwargs of a transformers text config.

    `extra` adds keys (model_type, rope_parameters, MoE sizes) or replaces them; an `extra` key set to None is left
    out (a family whose config has no such key). head_dim is explicit: Qwen3's default (128) does not follow from
    hidden / heads.
    """
    base: dict[str, Any] = dict(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=hidden // heads,
        max_position_embeddings=4096,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return {k: v for k, v in {**base, **extra}.items() if v is not None}


def tiny_vision_config(image_size: int, patch_size: int, **extra: Any) -> dict[str, Any]:
    """A one-layer ViT-style tower (SigLIP, CLIP, InternViT) of width 32 over image_size px in patch_size px
    patches; `extra` adds the family's keys."""
    return dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                image_size=image_size, patch_size=patch_size, **extra)


def build(model_cls: type, config: Any, attn_implementation: str = "sdpa", seed: int = 0) -> nn.Module:
    """`model_cls(config)` with random weights drawn after `torch.manual_seed(seed)`, in eval mode; the attention
    implementation is set on the config and (transformers passes it down) its sub-configs."""
    config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    return model_cls(config).eval()
