"""Built-in methods; importing this package registers them."""

from . import experimental  # noqa: F401  (registers sharp_lab)
from .baselines import NoPrune, RandomPrune, UniformPrune
from .fastv import FastV
from .schedule import Schedule
from .sharp import ShaRP

__all__ = ["FastV", "NoPrune", "RandomPrune", "Schedule", "ShaRP", "UniformPrune"]
