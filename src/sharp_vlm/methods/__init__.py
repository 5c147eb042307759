"""Built-in methods; importing this package registers them."""

from .baselines import NoPrune, RandomPrune, UniformPrune
from .fastv import FastV
from .sharp import ShaRP

__all__ = ["FastV", "ShaRP", "NoPrune", "RandomPrune", "UniformPrune"]
