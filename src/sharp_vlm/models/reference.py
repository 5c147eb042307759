"""What the adapters share for the content-free reference input (ShaRP's debiasing): a black pixel as the
processor normalises it, a bounded cache of what black inputs give through the model's own vision tower, and the
placement of those features at the visual rows of the decoder input."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Generic, TypeVar

import torch

from ..core.layout import VisualItem, VisualLayout

T = TypeVar("T")


class FeatureCache(Generic[T]):
    """What black inputs give, per key (their shape and the normalisation, which a user may change after a first
    call), computed once without gradients; past `size` keys the oldest goes (a long run meets many shapes)."""

    def __init__(self, size: int = 16):
        self.size = size
        self._values: dict[Hashable, T] = {}

    def get(self, key: Hashable, compute: Callable[[], T]) -> T:
        if key not in self._values:
            with torch.no_grad():
                value = compute()
            if len(self._values) >= self.size:
                self._values.pop(next(iter(self._values)))
            self._values[key] = value
        return self._values[key]

    def __len__(self) -> int:
        return len(self._values)


def black_pixel(mean: Sequence[float], std: Sequence[float], channels: int) -> torch.Tensor:
    """(channels,): a black pixel normalised as the processor does, -mean/std per channel (the first channel's value
    where the statistics have fewer channels than the tower)."""
    value = torch.tensor([-m / s for m, s in zip(mean, std, strict=True)])
    return value[:channels] if value.numel() >= channels else value[:1].expand(channels)


def place_reference(embeds: torch.Tensor, layouts: list[VisualLayout],
                    features: Callable[[VisualItem], torch.Tensor]) -> torch.Tensor:
    """A copy of the decoder input (B, S, D) with each item's visual rows set to features(item), (n_tokens, D);
    text, markers and everything else stay."""
    out = embeds.clone()
    for b, lay in enumerate(layouts):
        for it in lay.items:
            rows = lay.positions[it.start : it.start + it.n_tokens].to(out.device)
            out[b, rows] = features(it).to(out.device, out.dtype)
    return out
