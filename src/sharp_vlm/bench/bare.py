"""A bare, hook-based FastV with nothing of the engine: the yardstick of the engine's own cost.

One forward pre-hook on layer K scores the last token's attention with the layer's own modules, keeps the top
visual tokens and gathers the hidden states and rotary tables; the later layers get the gathered tables. It
handles exactly what the benchmark runs (batch 1, no padding, a LLaMA/Qwen2-style decoder, SDPA without a
mask) and nothing else. Decoding needs no help there: layer 0 holds every token, so the model's own decode
positions are the unpruned ones, and one new token attends to the whole (shorter) cache.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..core.budget import keep_count
from ..core.scoring import apply_rotary


class BareFastV:
    """Context manager: attach the bare FastV to a decoder-only model for one video span."""

    def __init__(self, model: nn.Module, layer: int, retain: float, start: int, n_visual: int):
        self.model, self.layer, self.retain, self.start, self.n = model, layer, retain, start, n_visual
        self._handles: list[Any] = []
        self._pos: tuple[torch.Tensor, torch.Tensor] | None = None

    def _stage(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        hidden = args[0] if args else kwargs["hidden_states"]
        if hidden.shape[1] < self.start + self.n:  # a decode step
            return None
        if kwargs.get("attention_mask") is not None:
            raise RuntimeError("the bare FastV handles unmasked (no padding) SDPA prefill only")
        attn = module.self_attn
        x = module.input_layernorm(hidden)
        cos, sin = kwargs["position_embeddings"]
        hd = attn.head_dim
        k = apply_rotary(attn.k_proj(x).view(1, x.shape[1], -1, hd).transpose(1, 2), cos, sin)
        q = apply_rotary(attn.q_proj(x[:, -1:]).view(1, 1, -1, hd).transpose(1, 2), cos[:, -1:], sin[:, -1:])
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        probs = torch.softmax((q @ k.transpose(-1, -2)).float() * attn.scaling, dim=-1).mean(1)[0, 0]
        vis = probs[self.start : self.start + self.n]
        top = torch.topk(vis, keep_count(self.retain, self.n)).indices.sort().values + self.start
        rows = torch.cat([torch.arange(self.start, device=hidden.device), top,
                          torch.arange(self.start + self.n, hidden.shape[1], device=hidden.device)])
        self._pos = (cos[:, rows], sin[:, rows])
        hidden = hidden[:, rows]
        kwargs = dict(kwargs, position_embeddings=self._pos)
        return ((hidden, *args[1:]), kwargs) if args else (args, dict(kwargs, hidden_states=hidden))

    def _after(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        hidden = args[0] if args else kwargs["hidden_states"]
        if self._pos is None or hidden.shape[1] != self._pos[0].shape[1]:
            return None  # a decode step: the model's own positions are right
        return args, dict(kwargs, position_embeddings=self._pos)

    def __enter__(self) -> BareFastV:
        layers = self.model.model.layers
        self._handles.append(layers[self.layer].register_forward_pre_hook(self._stage, with_kwargs=True))
        for lay in layers[self.layer + 1 :]:
            self._handles.append(lay.register_forward_pre_hook(self._after, with_kwargs=True))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._pos = None
