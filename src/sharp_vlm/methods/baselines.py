"""Simple reference methods: no pruning, random, uniform spatial subsampling."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import KeepIndices, Method, Stage, StageMethod, register
from ..core.select import random_indices, uniform_indices
from ..engine.view import StageView


@register("none")
@dataclass
class NoPrune(Method):
    """Keep every token: the unpruned model, run through the same engine."""

    def stages(self) -> list[Stage]:
        return []


@register("random")
@dataclass
class RandomPrune(StageMethod):
    """Keep a uniformly random subset of the visual tokens (seeded, reproducible)."""

    retain: float = 0.25
    layer: int = 2
    seed: int = 0
    allow_layer_zero = True
    scores_attention = False

    def select(self, view: StageView) -> KeepIndices:
        gen = torch.Generator().manual_seed(self.seed)
        return [
            random_indices(n, r, gen).to(view.device)
            for n, r in zip(view.n_visual, view.budget(self.retain), strict=True)
        ]


@register("uniform")
@dataclass
class UniformPrune(StageMethod):
    """Keep evenly spaced tokens in every frame (uniform spatial subsampling at the same budget)."""

    retain: float = 0.25
    layer: int = 2
    allow_layer_zero = True
    scores_attention = False

    def select(self, view: StageView) -> KeepIndices:
        return [
            uniform_indices(lay.frame_ids, r)
            for lay, r in zip(view.layouts, view.budget(self.retain), strict=True)
        ]
