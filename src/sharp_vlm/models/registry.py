"""Pick the adapter for a loaded model: a registry keyed by model class, matched with isinstance.

A subclass of a supported model (a fine-tuned variant, a wrapper class) gets its parent's adapter; among
several matches the most specific class wins.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..errors import UnsupportedModelError
from .base import Adapter
from .generic import GenericAdapter, SpanSource
from .qwen_vl import QwenVLAdapter

AdapterFactory = Callable[[nn.Module, "SpanSource | None"], Adapter]

_ADAPTERS: dict[type, tuple[AdapterFactory, str]] = {}


def register_adapter(model_class: type, factory: AdapterFactory, note: str = "") -> None:
    """Make `model_class` (and its subclasses) prunable with the adapter `factory(model, span)` builds.

    Registering a class again replaces its adapter (e.g. your own adapter for a built-in family)."""
    _ADAPTERS[model_class] = (factory, note)


def supported() -> list[str]:
    return [cls.__name__ + (f" ({note})" if note else "") for cls, (_, note) in _ADAPTERS.items()]


def adapter_for(model: nn.Module, span: SpanSource | None = None) -> Adapter:
    # the most specific registered class in the model's MRO
    cls = next((c for c in type(model).__mro__ if c in _ADAPTERS), None)
    if cls is None:
        raise UnsupportedModelError(
            f"{type(model).__name__} is not supported; supported: {', '.join(supported())}. "
            "Pass the top-level model returned by from_pretrained (e.g. Qwen2_5_VLForConditionalGeneration)."
        )
    adapter = _ADAPTERS[cls][0](model, span)
    adapter.check()
    return adapter


def _register_builtin() -> None:
    from transformers import (
        CohereForCausalLM,
        LlamaForCausalLM,
        MistralForCausalLM,
        Olmo2ForCausalLM,
        Phi3ForCausalLM,
        PhiForCausalLM,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2ForCausalLM,
        Qwen2VLForConditionalGeneration,
        Qwen3ForCausalLM,
    )

    from .decoders import CohereAdapter, Olmo2Adapter, Phi3Adapter, PhiAdapter
    from .internvl import register as register_internvl
    from .llava_onevision import register as register_llava
    from .qwen3_vl import register as register_qwen3_vl
    from .smolvlm import register as register_smolvlm

    def qwen_vl(model: nn.Module, span: SpanSource | None) -> Adapter:
        return QwenVLAdapter(model)

    register_adapter(Qwen2VLForConditionalGeneration, qwen_vl)
    register_adapter(Qwen2_5_VLForConditionalGeneration, qwen_vl)
    for cls in (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM):
        register_adapter(cls, GenericAdapter, "decoder-only, with span=sv.VideoSpan(...)")
    for cls, adapter in ((Phi3ForCausalLM, Phi3Adapter), (PhiForCausalLM, PhiAdapter),
                         (Olmo2ForCausalLM, Olmo2Adapter), (CohereForCausalLM, CohereAdapter)):
        register_adapter(cls, adapter, "decoder-only, with span=sv.VideoSpan(...)")
    register_llava(register_adapter)
    register_qwen3_vl(register_adapter)
    register_internvl(register_adapter)
    register_smolvlm(register_adapter)


_register_builtin()
