"""Built-in methods; importing this package registers them."""

from .baselines import NoPrune, RandomPrune, UniformPrune
from .fastv import FastV

__all__ = ["FastV", "NoPrune", "RandomPrune", "UniformPrune"]
