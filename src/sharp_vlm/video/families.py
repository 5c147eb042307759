"""config.json `model_type` -> the family's processor class (preprocessing) and model class name (loading)."""

from __future__ import annotations

from .internvl import InternVLVideoProcessor
from .llava import LlavaVideoProcessor
from .qwen import QwenVLProcessor
from .smolvlm import SmolVLMVideoProcessor

FAMILIES: dict[str, type] = {
    "qwen2_vl": QwenVLProcessor,
    "qwen2_5_vl": QwenVLProcessor,
    "qwen3_vl": QwenVLProcessor,
    "qwen3_vl_moe": QwenVLProcessor,
    "llava_onevision": LlavaVideoProcessor,
    "llava_next_video": LlavaVideoProcessor,
    "internvl": InternVLVideoProcessor,
    "smolvlm": SmolVLMVideoProcessor,
}

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
