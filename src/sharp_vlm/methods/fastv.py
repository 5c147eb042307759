"""FastV (Chen et al., ECCV 2024)."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import KeepIndices, StageMethod, check_choice, register
from ..engine.view import StageView


@register("fastv")
@dataclass
class FastV(StageMethod):
    """FastV: keep the visual tokens the last prompt token attends to most at layer K (mean over heads)."""

    retain: float = 0.25
    layer: int = 2
    query: str = "last"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice(self.query, ("last", "text"), "query")

    def select(self, view: StageView) -> KeepIndices:
        scores = view.attention_scores(query=self.query)
        return view.top(scores, view.budget(self.retain))
