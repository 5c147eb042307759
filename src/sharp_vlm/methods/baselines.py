"""Simple reference methods: no pruning, random, uniform spatial subsampling."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.select import random_indices, uniform_indices
from ..errors import ConfigError
from .base import Method, PreLLMMethod, SampleView, Stage, register


@register("none")
@dataclass
class NoPrune(Method):
    """Keep every token: the unpruned model, run through the same engine."""

    def stages(self) -> list[Stage]:
        return []


@register("random")
@dataclass
class RandomPrune(PreLLMMethod):
    """Keep a uniformly random subset of the visual tokens (seeded, reproducible).

    Every sample draws from a generator seeded with `seed`, so a sample keeps the same tokens alone or in a batch.
    At layer 0 the kept tokens' positions follow `positions` as for every method before the decoder.
    """

    retain: float = 0.25
    layer: int = 2
    seed: int = 0

    def validate(self) -> None:
        super().validate()
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ConfigError(f"seed={self.seed!r} must be an integer")

    def select(self, view: SampleView) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed)
        return random_indices(view.n_visual, view.budget, gen).to(view.device)


@register("uniform")
@dataclass
class UniformPrune(PreLLMMethod):
    """Keep evenly spaced tokens in every frame (uniform spatial subsampling at the same budget). At layer 0 the
    kept tokens' positions follow `positions` as for every method before the decoder."""

    retain: float = 0.25
    layer: int = 2

    def select(self, view: SampleView) -> torch.Tensor:
        return uniform_indices(view.layout.frame_ids, view.budget)
