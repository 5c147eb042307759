"""Tiny random-weight models of every supported family, built from their transformers configs (no downloads), with
inputs laid out as each family's processor lays them out, and `save_tiny_checkpoint` to write one as a checkpoint
folder. Tests, benchmarks and examples run on them; `smolvlm_with_smollm2` puts the real SmolLM2-135M decoder
(`testing.smollm2`, offline) under a tiny vision tower.
"""

from .configs import tiny_text_config, tiny_vision_config
from .internvl import tiny_internvl, tiny_internvl_inputs
from .llama import tiny_llama
from .llava import tiny_llava_inputs, tiny_llava_next_video, tiny_llava_onevision
from .qwen3_vl import tiny_qwen3_video_inputs, tiny_qwen3_vl
from .qwen_vl import TinyVideo, tiny_qwen_vl, tiny_video_inputs
from .saved import TINY_FAMILIES, save_tiny_checkpoint
from .smolvlm import smolvlm_with_smollm2, tiny_smolvlm, tiny_smolvlm_inputs

__all__ = [
    "TINY_FAMILIES",
    "TinyVideo",
    "save_tiny_checkpoint",
    "smolvlm_with_smollm2",
    "tiny_internvl",
    "tiny_internvl_inputs",
    "tiny_llama",
    "tiny_llava_inputs",
    "tiny_llava_next_video",
    "tiny_llava_onevision",
    "tiny_qwen3_video_inputs",
    "tiny_qwen3_vl",
    "tiny_qwen_vl",
    "tiny_smolvlm",
    "tiny_smolvlm_inputs",
    "tiny_text_config",
    "tiny_video_inputs",
    "tiny_vision_config",
]
