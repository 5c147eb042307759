"""What the engine records for each prefill call: typed, per stage and per sample."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from ..core.selection import DedupCounts


@dataclass
class StageCosts:
    """Seconds and FLOPs a stage spent on its own work (summed over the batch)."""

    scoring_seconds: float = 0.0  # the side pass on the real input
    scoring_flops: int = 0
    reference_seconds: float = 0.0  # the reference pass (or the cache look-up)
    reference_flops: int = 0
    select_seconds: float = 0.0  # the method's own work: everything in select() but the two passes above
    layers_before_seconds: float = 0.0  # first stage only: the layers before it, segment mask included
    bias_cache: str | None = None  # "hit" | "miss" when a cached bias was asked for
    sample_flops: list[int] | None = None  # per sample: its share of scoring_flops + reference_flops (own rows)

    def add_flops(self, per_sample: list[int], reference: bool) -> None:
        """Count a side pass's or reference pass's FLOPs, given per sample."""
        if reference:
            self.reference_flops += sum(per_sample)
        else:
            self.scoring_flops += sum(per_sample)
        self.sample_flops = [a + b for a, b in zip(self.sample_flops or [0] * len(per_sample), per_sample,
                                                  strict=True)]

    def numbers(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass
class SampleRecord:
    """What one sample's selection saw (tensors over the visual tokens entering the stage)."""

    raw_scores: torch.Tensor | None = None  # attention scores on the real input (the last ones asked for)
    bias: torch.Tensor | None = None  # the reference scores or positional prior, when used
    scores: torch.Tensor | None = None  # what the method ranked by
    dedup: DedupCounts | None = None


@dataclass
class StageStats:
    layer: int
    label: str
    n_in: list[int]  # visual tokens entering the stage, per sample
    n_kept: list[int]
    kept: list[torch.Tensor]  # per sample: kept visual indices (0..n_visual-1 of the original prompt), sorted
    kept_positions: list[torch.Tensor]  # per sample: their original sequence positions
    seconds: float  # side passes + selection + gather
    costs: StageCosts = field(default_factory=StageCosts)
    samples: list[SampleRecord] = field(default_factory=list)
    n_merged: list[int] = field(default_factory=list)  # dropped tokens merged into kept ones, per sample


@dataclass
class CallStats:
    """One prefill: sizes before pruning and one entry per stage."""

    batch: int
    seq_len: int
    n_visual: list[int]
    stages: list[StageStats] = field(default_factory=list)
    # per decode step with attention pruning: per sample, how many visual keys layers >= L attended (None: all)
    decode_kept: list[list[int | None]] = field(default_factory=list)

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
                {"layer": s.layer, "label": s.label, "n_in": s.n_in, "n_kept": s.n_kept, "n_merged": s.n_merged,
                 "seconds": s.seconds, **s.costs.numbers()}
                for s in self.stages
            ],
        }
