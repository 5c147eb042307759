"""sharp-vlm: prune visual tokens inside the decoder of Hugging Face Video LLMs.

    import sharp_vlm as sv
    with sv.apply(model, sv.FastV(retain=0.1, layer=2)) as handle:
        out = model.generate(**inputs, max_new_tokens=32)
    print(handle.last_stats.summary())
"""

# the subpackage `methods` is imported first so that the function `methods` below takes the name
from .methods import FastV, NoPrune, RandomPrune, Schedule, ShaRP, UniformPrune  # isort: skip
from .loading import load_config, methods  # isort: skip
from .core.budget import keep_count
from .core.layout import VisualItem, VisualLayout
from .core.selection import DedupCounts, Merge, Selection
from .engine.bias_cache import BiasCache
from .engine.patch import Handle, apply
from .engine.stats import CallStats, SampleRecord, StageCosts, StageStats
from .errors import ConfigError, InputError, NoVisualTokensError, SharpError, UnsupportedModelError
from .methods.base import Method, SampleView, SegmentMask, Stage, StageMethod, register
from .models.generic import VideoSpan

__version__ = "0.1.0"

__all__ = [
    "BiasCache",
    "CallStats",
    "ConfigError",
    "DedupCounts",
    "FastV",
    "Handle",
    "InputError",
    "Merge",
    "Method",
    "NoPrune",
    "NoVisualTokensError",
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
    "UniformPrune",
    "UnsupportedModelError",
    "VideoSpan",
    "VisualItem",
    "VisualLayout",
    "apply",
    "keep_count",
    "load_config",
    "methods",
    "register",
]
