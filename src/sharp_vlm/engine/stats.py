"""What the engine records for each prefill call."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class StageStats:
    layer: int
    label: str
    n_in: list[int]  # visual tokens entering the stage, per sample
    n_kept: list[int]
    kept: list[torch.Tensor]  # per sample: kept visual indices (0..n_visual-1 of the original prompt), sorted
    kept_positions: list[torch.Tensor]  # per sample: their original sequence positions
    seconds: float  # side pass + selection
    parts: dict[str, Any] = field(default_factory=dict)  # method-specific costs (seconds, flops, counts)


@dataclass
class CallStats:
    """One prefill: sizes before pruning and one entry per stage."""

    batch: int
    seq_len: int
    n_visual: list[int]
    stages: list[StageStats] = field(default_factory=list)

    @property
    def kept_ratio(self) -> list[float]:
        """Actual share of visual tokens that reached the last layer, per sample."""
        if not self.stages:
            return [1.0] * self.batch
        return [k / n if n else 1.0 for k, n in zip(self.stages[-1].n_kept, self.n_visual, strict=True)]

    def summary(self) -> dict[str, Any]:
        return {
            "batch": self.batch,
            "seq_len": self.seq_len,
            "n_visual": self.n_visual,
            "kept_ratio": self.kept_ratio,
            "stages": [
                {"layer": s.layer, "label": s.label, "n_in": s.n_in, "n_kept": s.n_kept, "seconds": s.seconds,
                 **{k: v for k, v in s.parts.items() if isinstance(v, (int, float, str))}}
                for s in self.stages
            ],
        }
