"""Built-in methods; importing this package registers them."""

from . import experimental  # noqa: F401  (registers sharp_lab)
from .baselines import NoPrune, RandomPrune, UniformPrune
from .divprune import DivPrune
from .downsample import Downsample
from .dycoke import DyCoke
from .fastv import FastV
from .fastvid import FastVID
from .flashvid import FlashVID
from .framefusion import FrameFusion
from .holitom import HoliTom
from .pdrop import PDrop
from .schedule import Schedule
from .sharp import ShaRP
from .vidcom2 import VidCom2
from .visionzip import VisionZip

__all__ = [
    "DivPrune", "Downsample", "DyCoke", "FastV", "NoPrune", "PDrop", "RandomPrune", "Schedule", "ShaRP", "UniformPrune",
    "FastVID", "FrameFusion", "VidCom2", "VisionZip", "HoliTom", "FlashVID",
]
