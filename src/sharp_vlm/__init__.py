"""sharp-vlm: prune visual tokens inside the decoder of Hugging Face Video LLMs.

    import sharp_vlm as sv
    with sv.apply(model, sv.FastV(retain=0.1, layer=2)) as handle:
        out = model.generate(**inputs, max_new_tokens=32)
    print(handle.last_stats.summary())
"""

# the subpackage `methods` is imported first so that the function `methods` below takes the name
from .methods import FastV, NoPrune, RandomPrune, ShaRP, UniformPrune  # isort: skip
from .config import KeepIndices, Method, Stage, StageMethod, load_config, methods, register  # isort: skip
from .core.layout import VisualItem, VisualLayout
from .engine.patch import Handle, apply
from .engine.stats import CallStats, StageStats
from .engine.view import StageView
from .errors import ConfigError, InputError, SharpError, UnsupportedModelError
from .models.generic import VideoSpan

__version__ = "0.1.0"

__all__ = [
    "CallStats",
    "ConfigError",
    "FastV",
    "Handle",
    "InputError",
    "KeepIndices",
    "Method",
    "NoPrune",
    "RandomPrune",
    "ShaRP",
    "SharpError",
    "Stage",
    "StageMethod",
    "StageStats",
    "StageView",
    "UniformPrune",
    "UnsupportedModelError",
    "VideoSpan",
    "VisualItem",
    "VisualLayout",
    "apply",
    "load_config",
    "methods",
    "register",
]
