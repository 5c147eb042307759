"""Pick the adapter for a loaded model."""

from __future__ import annotations

from torch import nn

from ..errors import UnsupportedModelError
from .base import Adapter
from .generic import GenericAdapter, SpanSource
from .qwen_vl import QwenVLAdapter

_QWEN_VL = {"Qwen2VLForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration"}

SUPPORTED = sorted(_QWEN_VL) + ["any *ForCausalLM decoder (with span=sv.VideoSpan(...))"]


def adapter_for(model: nn.Module, span: SpanSource | None = None) -> Adapter:
    cls = type(model).__name__
    if cls in _QWEN_VL:
        return QwenVLAdapter(model)
    if cls.endswith("ForCausalLM") and hasattr(getattr(model, "model", None), "layers"):
        return GenericAdapter(model, span)
    raise UnsupportedModelError(
        f"{cls} is not supported; supported: {', '.join(SUPPORTED)}. "
        "Pass the top-level model returned by from_pretrained (e.g. Qwen2_5_VLForConditionalGeneration)."
    )
