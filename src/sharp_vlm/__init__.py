"""sharp-vlm: prune visual tokens inside the decoder of Hugging Face Video LLMs.

    import sharp_vlm as sv
    with sv.apply(model, sv.FastV(retain=0.1, layer=2)) as handle:
        out = model.generate(**inputs, max_new_tokens=32)
    print(handle.last_stats.summary())
"""

# the subpackage `methods` is imported first so that the function `methods` below takes the name
from .methods import FastV, NoPrune, PDrop, RandomPrune, Schedule, ShaRP, UniformPrune  # isort: skip
from .methods import DivPrune, Downsample, DyCoke, FrameFusion, VidCom2  # isort: skip
from .methods import FastVID, FlashVID, HoliTom, VisionZip  # isort: skip
from .loading import load_config, methods  # isort: skip
from .core.budget import keep_count
from .core.layout import VisualItem, VisualLayout
from .core.selection import DedupCounts, Merge, Selection
from .core.tower import TowerFeatures
from .engine.bias_cache import BiasCache
from .engine.handle import Handle, apply
from .engine.stats import CallStats, SampleRecord, StageCosts, StageStats
from .errors import ConfigError, InputError, MethodError, NoVisualTokensError, SharpError, UnsupportedModelError
from .methods.base import (
    DecodePruning,
    DecodeView,
    Method,
    PreLLMMethod,
    SampleView,
    SegmentMask,
    Stage,
    StageMethod,
    register,
)
from .models.generic import VideoSpan
from .video.decode import TruncatedVideoWarning

__version__ = "0.1.0"

__all__ = [
    "BiasCache",
    "CallStats",
    "ConfigError",
    "DecodePruning",
    "DecodeView",
    "DedupCounts",
    "DivPrune",
    "Downsample",
    "DyCoke",
    "FastV",
    "FastVID",
    "FlashVID",
    "FrameFusion",
    "Handle",
    "HoliTom",
    "InputError",
    "Merge",
    "MethodError",
    "Method",
    "NoPrune",
    "NoVisualTokensError",
    "PreLLMMethod",
    "PDrop",
    "RandomPrune",
    "SampleRecord",
    "SampleView",
    "Schedule",
    "Selection",
    "SegmentMask",
    "ShaRP",
    "SharpError",
    "Stage",
    "StageCosts",
    "StageMethod",
    "StageStats",
    "TowerFeatures",
    "TruncatedVideoWarning",
    "UniformPrune",
    "UnsupportedModelError",
    "VideoSpan",
    "VidCom2",
    "VisionZip",
    "VisualItem",
    "VisualLayout",
    "apply",
    "keep_count",
    "load_config",
    "methods",
    "register",
]
