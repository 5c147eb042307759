"""What the engine needs to know about a model family."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..core.layout import VisualLayout

ReferenceFn = Callable[[torch.Tensor, list[VisualLayout], dict[str, Any]], torch.Tensor]


class Adapter:
    """Model-facing facts: the decoder module, its layers, positions, and where the visual tokens are."""

    name = "adapter"
    mrope = False  # True: position ids are (3, batch, seq) (Qwen's M-RoPE)

    def __init__(self, model: nn.Module):
        self.model = model

    def text_model(self) -> nn.Module:
        """The decoder stack: a module with `.layers`, called with inputs_embeds / position_ids / cache."""
        raise NotImplementedError

    def layers(self) -> nn.ModuleList:
        return self.text_model().layers

    @property
    def n_layers(self) -> int:
        return len(self.layers())

    def find_layouts(self, call: dict[str, Any], seq_len: int, batch: int) -> list[VisualLayout]:
        """Visual-token layout per sample, from the kwargs of the outer model call."""
        raise NotImplementedError

    def reference_embeds(
        self, embeds: torch.Tensor, layouts: list[VisualLayout], call: dict[str, Any]
    ) -> torch.Tensor:
        """The decoder input with every visual token replaced by a content-free one (same count, same places)."""
        raise NotImplementedError

    def decode_position_ids(self, next_pos: torch.Tensor, q_len: int) -> torch.Tensor:
        """Position ids for `q_len` new tokens per sample starting at next_pos (B,)."""
        pos = next_pos[:, None] + torch.arange(q_len, device=next_pos.device)[None]
        return pos[None].expand(3, -1, -1) if self.mrope else pos
