"""Decoder-only families whose attention differs from a LLaMA layer: each says how the side pass recomputes it.

Every family here is tested: FastV's kept set equals the one an eager-attention run's weights give
(tests/test_generic_adapter.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import nn

from ..core.scoring import apply_rotary, apply_rotary_interleaved
from .base import AttentionParts, heads
from .generic import GenericAdapter


def _split_heads(x: torch.Tensor, head_dim: int) -> torch.Tensor:
    return x.view(x.shape[0], x.shape[1], -1, head_dim).transpose(1, 2)


class Phi3Adapter(GenericAdapter):
    """Phi-3: one fused qkv projection; partial rotary when the config asks (handled by `apply_rotary`)."""

    name = "phi3"
    attention_attributes = ("qkv_proj", "head_dim", "scaling", "num_key_value_heads")

    def attention_parts(self, index: int) -> AttentionParts:
        layer = self.layers()[index]
        attn = layer.self_attn
        hd = attn.head_dim
        q_dim = attn.config.num_attention_heads * hd
        kv_dim = attn.num_key_value_heads * hd
        # the fused weight's rows are [q | k | v]: slice it rather than computing v
        weight = attn.qkv_proj.weight

        def part(lo: int, hi: int) -> Callable[[torch.Tensor], torch.Tensor]:
            return lambda x: _split_heads(nn.functional.linear(x, weight[lo:hi]), hd)

        return AttentionParts(norm=layer.input_layernorm, queries=part(0, q_dim), keys=part(q_dim, q_dim + kv_dim),
                              rotary=apply_rotary, scaling=float(attn.scaling),
                              sliding_window=getattr(attn, "sliding_window", None))


class PhiAdapter(GenericAdapter):
    """Phi (1/1.5/2): LayerNorm, biased projections, optional per-head q/k LayerNorms, partial rotary."""

    name = "phi"

    def attention_parts(self, index: int) -> AttentionParts:
        layer = self.layers()[index]
        attn = layer.self_attn
        hd = attn.head_dim
        qn = getattr(attn, "q_layernorm", None) if getattr(attn, "qk_layernorm", False) else None
        kn = getattr(attn, "k_layernorm", None) if getattr(attn, "qk_layernorm", False) else None
        return AttentionParts(norm=layer.input_layernorm, queries=heads(attn.q_proj, qn, hd),
                              keys=heads(attn.k_proj, kn, hd), rotary=apply_rotary, scaling=float(attn.scaling))


class Olmo2Adapter(GenericAdapter):
    """OLMo-2: no norm before attention (its norms follow the sublayers); q/k RMSNorms over the whole projection."""

    name = "olmo2"
    layer_attributes = ()
    attention_attributes = ("q_proj", "k_proj", "q_norm", "k_norm", "head_dim", "scaling")

    def attention_parts(self, index: int) -> AttentionParts:
        attn = self.layers()[index].self_attn
        hd = attn.head_dim
        return AttentionParts(
            norm=lambda x: x,
            queries=lambda x: _split_heads(attn.q_norm(attn.q_proj(x)), hd),
            keys=lambda x: _split_heads(attn.k_norm(attn.k_proj(x)), hd),
            rotary=apply_rotary,
            scaling=float(attn.scaling),
        )


class CohereAdapter(GenericAdapter):
    """Cohere (Command-R): LayerNorm, interleaved rotary, optional per-head q/k LayerNorms."""

    name = "cohere"

    def attention_parts(self, index: int) -> AttentionParts:
        # q/k norms are per head, as in the LLaMA-style default; only the rotary layout differs
        return dataclasses.replace(super().attention_parts(index), rotary=apply_rotary_interleaved)
