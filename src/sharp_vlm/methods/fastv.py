"""FastV (Chen et al., ECCV 2024)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..checks import check_choice
from .base import SampleView, StageMethod, register


@register("fastv")
@dataclass
class FastV(StageMethod):
    """FastV: keep the visual tokens the last prompt token attends to most at layer K (mean over heads)."""

    retain: float = 0.25
    layer: int = 2
    query: str = "last"

    def validate(self) -> None:
        super().validate()
        check_choice(self.query, ("last", "text"), "query")

    def select(self, view: SampleView) -> torch.Tensor:
        return view.top(view.attention_scores(query=self.query))
