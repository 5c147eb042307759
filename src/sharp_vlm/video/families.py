"""config.json `model_type` -> the model class name: the model types sharp_vlm reads (each family's processor
class is in `preprocess.FAMILIES`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import InputError

MODEL_CLASSES: dict[str, str] = {
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "qwen3_vl": "Qwen3VLForConditionalGeneration",
    "qwen3_vl_moe": "Qwen3VLMoeForConditionalGeneration",
    "llava_onevision": "LlavaOnevisionForConditionalGeneration",
    "llava_next_video": "LlavaNextVideoForConditionalGeneration",
    "internvl": "InternVLForConditionalGeneration",
    "smolvlm": "SmolVLMForConditionalGeneration",
}


def family_of(config: dict[str, Any], path: Path | str = "") -> str:
    """The family name of a checkpoint's config.json `model_type`, or an error listing the supported ones."""
    model_type = config.get("model_type")
    if model_type not in MODEL_CLASSES:
        raise InputError(
            f"{path or 'the checkpoint'}: model_type {model_type!r} is not supported; supported: "
            f"{', '.join(sorted(MODEL_CLASSES))}"
        )
    return str(model_type)
