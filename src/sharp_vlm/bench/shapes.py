"""Architecture numbers of real checkpoints, for FLOP estimates and CPU stand-in decoders.

The table holds plain dicts with the values of each checkpoint's ``config.json`` on the
Hugging Face Hub (the repository named in ``hf_id``). Only the numbers that set compute are
kept; no weights are ever loaded. :func:`decoder_config` turns an entry into a decoder-only
``Qwen2Config`` / ``Qwen3Config`` / ``LlamaConfig`` so a random-weight model of the same shape
can be built.

For the VLMs only the language decoder goes into :func:`decoder_config`; the ``vision``
dict is the vision tower's config, in the same key names as the transformers config class
(``Qwen2_5_VLVisionConfig``, ``Qwen3VLVisionConfig``, ``SiglipVisionConfig``,
``CLIPVisionConfig`` or ``InternVLVisionConfig``), usable by :func:`sharp_vlm.flops.vision_encoder_flops`.
"""

from __future__ import annotations

import copy
import math
from typing import Any

from transformers import LlamaConfig, PreTrainedConfig, Qwen2Config, Qwen3Config

from sharp_vlm.errors import ConfigError
from sharp_vlm.flops import DecoderShape

# ---------------------------------------------------------------------------------------------
# Data only below. Source of every number: the checkpoint's config.json (repository in hf_id).
# ---------------------------------------------------------------------------------------------

# Qwen2.5-VL vision tower, shared by 3B and 7B except for out_hidden_size (= decoder width).
_QWEN2_5_VL_VISION: dict[str, Any] = {
    "model_type": "qwen2_5_vl_vision",
    "depth": 32,
    "hidden_size": 1280,
    "intermediate_size": 3420,
    "num_heads": 16,
    "in_channels": 3,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "spatial_merge_size": 2,
    "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31],
    "hidden_act": "silu",
}

# SigLIP-so400m/14 @384 as used by LLaVA-OneVision (the last of its 27 layers is dropped).
_LLAVA_OV_VISION: dict[str, Any] = {
    "model_type": "siglip_vision_model",
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_hidden_layers": 26,
    "num_attention_heads": 16,
    "num_channels": 3,
    "image_size": 384,
    "patch_size": 14,
}

# Qwen3-VL-8B vision tower (27-block ViT, patch 16, 2-matrix GELU MLP, no windowed attention;
# deepstack mergers after blocks 8, 16 and 24 feed decoder layers 0-2).
_QWEN3_VL_8B_VISION: dict[str, Any] = {
    "model_type": "qwen3_vl_vision",
    "depth": 27,
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_heads": 16,
    "in_channels": 3,
    "patch_size": 16,
    "temporal_patch_size": 2,
    "spatial_merge_size": 2,
    "out_hidden_size": 4096,
    "num_position_embeddings": 2304,
    "deepstack_visual_indexes": [8, 16, 24],
    "hidden_act": "gelu_pytorch_tanh",
}

SHAPES: dict[str, dict[str, Any]] = {
    # Qwen/Qwen2.5-VL-3B-Instruct config.json
    "qwen2.5-vl-3b": {
        "hf_id": "Qwen/Qwen2.5-VL-3B-Instruct",
        "family": "qwen2",
        "decoder": {
            "hidden_size": 2048,
            "intermediate_size": 11008,
            "num_hidden_layers": 36,
            "num_attention_heads": 16,
            "num_key_value_heads": 2,
            "vocab_size": 151936,
            "tie_word_embeddings": True,
            "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0,
            "max_position_embeddings": 128000,
        },
        "vision": {**_QWEN2_5_VL_VISION, "out_hidden_size": 2048},
    },
    # Qwen/Qwen2.5-VL-7B-Instruct config.json
    "qwen2.5-vl-7b": {
        "hf_id": "Qwen/Qwen2.5-VL-7B-Instruct",
        "family": "qwen2",
        "decoder": {
            "hidden_size": 3584,
            "intermediate_size": 18944,
            "num_hidden_layers": 28,
            "num_attention_heads": 28,
            "num_key_value_heads": 4,
            "vocab_size": 152064,
            "tie_word_embeddings": False,
            "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0,
            "max_position_embeddings": 128000,
        },
        "vision": {**_QWEN2_5_VL_VISION, "out_hidden_size": 3584},
    },
    # llava-hf/llava-onevision-qwen2-0.5b-ov-hf config.json (text_config = Qwen2-0.5B; the HF
    # conversion adds <image>/<video> and pads the vocab to a multiple of 64: 151936 -> 152000)
    "llava-onevision-0.5b": {
        "hf_id": "llava-hf/llava-onevision-qwen2-0.5b-ov-hf",
        "family": "qwen2",
        "decoder": {
            "hidden_size": 896,
            "intermediate_size": 4864,
            "num_hidden_layers": 24,
            "num_attention_heads": 14,
            "num_key_value_heads": 2,
            "vocab_size": 152000,
            "tie_word_embeddings": True,
            "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0,
            "max_position_embeddings": 32768,
        },
        "vision": dict(_LLAVA_OV_VISION),
    },
    # llava-hf/llava-onevision-qwen2-7b-ov-hf config.json (text_config = Qwen2-7B-Instruct;
    # vocab 152064 + 2 media tokens padded to a multiple of 64 -> 152128)
    "llava-onevision-7b": {
        "hf_id": "llava-hf/llava-onevision-qwen2-7b-ov-hf",
        "family": "qwen2",
        "decoder": {
            "hidden_size": 3584,
            "intermediate_size": 18944,
            "num_hidden_layers": 28,
            "num_attention_heads": 28,
            "num_key_value_heads": 4,
            "vocab_size": 152128,
            "tie_word_embeddings": False,
            "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0,
            "max_position_embeddings": 32768,
        },
        "vision": dict(_LLAVA_OV_VISION),
    },
    # Qwen/Qwen3-VL-8B-Instruct config.json (text_config = Qwen3-8B shape: head_dim 128 is set,
    # q/k RMSNorms cost no FLOPs; interleaved M-RoPE becomes 1-D RoPE here, same cost).
    # https://huggingface.co/Qwen/Qwen3-VL-8B-Instruct/blob/main/config.json, read through copies
    # of it quoted in public code (the Hub page is not in the stored corpus); they all agree.
    "qwen3-vl-8b": {
        "hf_id": "Qwen/Qwen3-VL-8B-Instruct",
        "family": "qwen3",
        "decoder": {
            "hidden_size": 4096,
            "intermediate_size": 12288,
            "num_hidden_layers": 36,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "head_dim": 128,
            "vocab_size": 151936,
            "tie_word_embeddings": False,
            "rms_norm_eps": 1e-6,
            "rope_theta": 5000000.0,
            "max_position_embeddings": 262144,
        },
        "vision": dict(_QWEN3_VL_8B_VISION),
    },
    # llava-hf/LLaVA-NeXT-Video-7B-hf config.json (text_config = lmsys/vicuna-7b-v1.5, LLaMA with
    # full multi-head attention; vocab 32000 + <video> 32000 / <image> 32001, padded to 32064; its
    # linear rope_scaling changes no FLOPs and is left out). Vision = CLIP ViT-L/14 @336, one class
    # token per frame; the VLM reads layer -2 (vision_feature_layer) but transformers runs all 24.
    # https://huggingface.co/llava-hf/LLaVA-NeXT-Video-7B-hf/blob/main/config.json, read through
    # a printout of AutoConfig.from_pretrained on that checkpoint in public code.
    "llava-next-video-7b": {
        "hf_id": "llava-hf/LLaVA-NeXT-Video-7B-hf",
        "family": "llama",
        "decoder": {
            "hidden_size": 4096,
            "intermediate_size": 11008,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 32,
            "vocab_size": 32064,
            "tie_word_embeddings": False,
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "max_position_embeddings": 4096,
        },
        "vision": {
            "model_type": "clip_vision_model",
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "num_channels": 3,
            "image_size": 336,
            "patch_size": 14,
        },
    },
    # HuggingFaceTB/SmolVLM2-256M-Video-Instruct config.json (text_config = SmolLM2-135M with
    # the vocab grown to 49280 for image tokens; vision = SigLIP-B/16 @512, pixel shuffle x4)
    "smolvlm2-256m": {
        "hf_id": "HuggingFaceTB/SmolVLM2-256M-Video-Instruct",
        "family": "llama",
        "decoder": {
            "hidden_size": 576,
            "intermediate_size": 1536,
            "num_hidden_layers": 30,
            "num_attention_heads": 9,
            "num_key_value_heads": 3,
            "vocab_size": 49280,
            "tie_word_embeddings": False,
            "rms_norm_eps": 1e-5,
            "rope_theta": 100000.0,
            "max_position_embeddings": 8192,
        },
        "vision": {
            "model_type": "siglip_vision_model",
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "num_channels": 3,
            "image_size": 512,
            "patch_size": 16,
            "scale_factor": 4,
        },
    },
    # HuggingFaceTB/SmolVLM2-2.2B-Instruct config.json, read through a copy of its numbers in public code that
    # pins "the real configs" of SmolVLM2-2.2B-Instruct and SmolVLM2-256M-Video-Instruct (its 256M numbers equal
    # the entry above): decoder 24 layers, 2048 wide, 32 query and 32 KV heads (head_dim 64), vocab 49280, 8192
    # positions, rope_theta 130000, rms_norm_eps 1e-5; tower 27 layers, 1152 wide, 384 px in 14 px patches,
    # pixel shuffle x3 (27 x 27 patches -> 9 x 9 = 81 tokens per image or frame). The decoder is SmolLM2-1.7B's
    # shape (the SmolVLM paper pairs SigLIP-SO400M with SmolLM2-1.7B for the 2.2B model): intermediate_size 8192
    # from HuggingFaceTB/SmolLM2-1.7B-Instruct config.json (quoted in public code). The tower is SigLIP-SO400M as
    # in HuggingFaceTB/SmolVLM-Instruct config.json (quoted in public code): intermediate_size 4304, 16 heads.
    "smolvlm2-2.2b": {
        "hf_id": "HuggingFaceTB/SmolVLM2-2.2B-Instruct",
        "family": "llama",
        "decoder": {
            "hidden_size": 2048,
            "intermediate_size": 8192,
            "num_hidden_layers": 24,
            "num_attention_heads": 32,
            "num_key_value_heads": 32,
            "head_dim": 64,
            "vocab_size": 49280,
            "rms_norm_eps": 1e-5,
            "rope_theta": 130000.0,
            "max_position_embeddings": 8192,
        },
        "vision": {
            "model_type": "siglip_vision_model",
            "hidden_size": 1152,
            "intermediate_size": 4304,
            "num_hidden_layers": 27,
            "num_attention_heads": 16,
            "num_channels": 3,
            "image_size": 384,
            "patch_size": 14,
            "scale_factor": 3,
        },
    },
    # Qwen/Qwen2.5-0.5B config.json
    "qwen2.5-0.5b": {
        "hf_id": "Qwen/Qwen2.5-0.5B",
        "family": "qwen2",
        "decoder": {
            "hidden_size": 896,
            "intermediate_size": 4864,
            "num_hidden_layers": 24,
            "num_attention_heads": 14,
            "num_key_value_heads": 2,
            "vocab_size": 151936,
            "tie_word_embeddings": True,
            "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0,
            "max_position_embeddings": 32768,
        },
    },
    # Qwen/Qwen2-7B config.json
    "qwen2-7b": {
        "hf_id": "Qwen/Qwen2-7B",
        "family": "qwen2",
        "decoder": {
            "hidden_size": 3584,
            "intermediate_size": 18944,
            "num_hidden_layers": 28,
            "num_attention_heads": 28,
            "num_key_value_heads": 4,
            "vocab_size": 152064,
            "tie_word_embeddings": False,
            "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0,
            "max_position_embeddings": 131072,
        },
    },
    # HuggingFaceTB/SmolLM2-135M config.json
    "smollm2-135m": {
        "hf_id": "HuggingFaceTB/SmolLM2-135M",
        "family": "llama",
        "decoder": {
            "hidden_size": 576,
            "intermediate_size": 1536,
            "num_hidden_layers": 30,
            "num_attention_heads": 9,
            "num_key_value_heads": 3,
            "vocab_size": 49152,
            "tie_word_embeddings": True,
            "rms_norm_eps": 1e-5,
            "rope_theta": 100000.0,
            "max_position_embeddings": 8192,
        },
    },
}

# OpenGVLab/InternVL3-8B(-hf): its config.json could not be read here, so every number is taken from at least
# two public sources that state it: the InternVL README's model table (OpenGVLab/InternVL, "InternVL3-8B |
# InternViT-300M-448px-V2_5 | Qwen2.5-7B"); a public training framework's InternVL3-8B preset (the Qwen2.5-7B
# decoder with vocab_size 151674; a 300M tower of 24 layers, 1024 wide, 16 heads, MLP 4096, 448 px in 14 px
# patches, LayerNorm, qkv bias, no qk norm); the printed InternVL3-8B-hf config in vllm-project/vllm issue
# #17634 (vocab_size 151674, rope_theta 1e6, downsample_ratio 0.5, image_seq_length 256); the InternVL3-1B
# config.json, which embeds the same InternViT-300M-448px-V2_5 tower config; and Qwen/Qwen2.5-7B config.json
# for the decoder (3584 wide, 28 layers, 28 query / 4 KV heads, MLP 18944). Not seen in an 8B config and
# irrelevant to FLOPs: max_position_embeddings (32768 in the 1B sibling) and rope scaling. The tower has a
# class token (1025 positions); the connector (pixel shuffle 2x2: 32 x 32 patches -> 16 x 16 = 256 tokens per
# 448 px frame, one tile per frame for video, then LayerNorm + two linears) is outside the tower.
SHAPES["internvl3-8b"] = {
    "hf_id": "OpenGVLab/InternVL3-8B-hf",
    "family": "qwen2",
    "decoder": {
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "vocab_size": 151674,
        "tie_word_embeddings": False,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "max_position_embeddings": 32768,
    },
    "vision": {
        "model_type": "internvl_vision",
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "num_channels": 3,
        "image_size": 448,
        "patch_size": 14,
        "attention_bias": True,
        "use_qk_norm": False,
        "norm_type": "layer_norm",
        "layer_norm_eps": 1e-6,
        "hidden_act": "gelu",
        "downsample_ratio": 0.5,
    },
}

# LLaVA-Video-7B-Qwen2 is LLaVA-OneVision-7B (SI) fine-tuned on video and image data ("We fine-tune
# LLaVA-OneVision (SI) on the joint dataset of video and image data",
# https://llava-vl.github.io/blog/2024-09-30-llava-video/); fine-tuning keeps the architecture, and the
# llava-hf conversion loads as LlavaOnevisionForConditionalGeneration. So the decoder and the tower are the
# llava-onevision-7b entry's numbers (read from llava-hf/llava-onevision-qwen2-7b-ov-hf config.json; the
# vocabulary is that conversion's). Frames: SigLIP's 27 x 27 patches pooled 2 x 2 to 14 x 14 = 196 tokens
# (the connector, outside the tower).
SHAPES["llava-video-7b"] = {**copy.deepcopy(SHAPES["llava-onevision-7b"]), "hf_id": "llava-hf/LLaVA-Video-7B-Qwen2-hf"}

# ---------------------------------------------------------------------------------------------

_CONFIG_CLASSES: dict[str, type[PreTrainedConfig]] = {
    "qwen2": Qwen2Config,
    "qwen3": Qwen3Config,
    "llama": LlamaConfig,
}


def list_shapes() -> list[str]:
    """Names accepted by :func:`decoder_config`, :func:`decoder_shape` and :func:`vision_config`."""
    return list(SHAPES)


def _entry(name: str) -> dict[str, Any]:
    key = name.lower()
    if key not in SHAPES:
        raise ConfigError(
            f"unknown model shape {name!r}: give one of {', '.join(SHAPES)}, or a local checkpoint folder"
        )
    return SHAPES[key]


def decoder_config(name: str, **overrides: Any) -> PreTrainedConfig:
    """A decoder-only transformers config with the language-model shape of checkpoint ``name``.

    Qwen2-family decoders (Qwen2/Qwen2.5, the Qwen2.5-VL and LLaVA-OneVision decoders) become a
    ``Qwen2Config``; the Qwen3-VL decoder a ``Qwen3Config`` (explicit ``head_dim``, q/k norms);
    SmolLM2 and Vicuna (LLaVA-NeXT-Video) decoders a ``LlamaConfig``. The multimodal RoPE of
    Qwen2.5-VL / Qwen3-VL is replaced by 1-D RoPE, which costs the same. ``overrides`` are passed
    to the config class (e.g. ``num_hidden_layers=2`` or ``attn_implementation="sdpa"``).
    """
    entry = _entry(name)
    kwargs = copy.deepcopy(entry["decoder"])
    kwargs.update(overrides)
    return _CONFIG_CLASSES[entry["family"]](**kwargs)


def decoder_shape(name: str) -> DecoderShape:
    """The :class:`DecoderShape` of checkpoint ``name``'s language decoder."""
    return DecoderShape.from_config(_entry(name)["decoder"])


def vision_config(name: str) -> dict[str, Any] | None:
    """A copy of the vision-tower config dict of checkpoint ``name`` (None for text-only models)."""
    vision = _entry(name).get("vision")
    return copy.deepcopy(vision) if vision is not None else None


# A Video LLM checkpoint's model_type -> the built-in shapes of its family, the most common size first (the
# nearest shape of a checkpoint whose decoder matches none of them exactly: a fine-tune or a tiny test model).
_FAMILY_SHAPES: dict[str, tuple[str, ...]] = {
    "qwen2_vl": ("qwen2.5-vl-7b", "qwen2.5-vl-3b"),  # Qwen2-VL-7B's decoder is Qwen2.5-VL-7B's shape
    "qwen2_5_vl": ("qwen2.5-vl-7b", "qwen2.5-vl-3b"),
    "qwen3_vl": ("qwen3-vl-8b",),
    "qwen3_vl_moe": ("qwen3-vl-8b",),  # no MoE shape is built in: the dense sibling is the nearest
    "llava_onevision": ("llava-onevision-7b", "llava-onevision-0.5b", "llava-video-7b"),
    "llava_next_video": ("llava-next-video-7b",),
    "internvl": ("internvl3-8b",),
    "smolvlm": ("smolvlm2-2.2b", "smolvlm2-256m"),
}


def nearest_shape(config: dict[str, Any]) -> str:
    """The built-in shape nearest a Video LLM's ``config.json`` (as a dict): one of its family whose decoder has
    the checkpoint's width and depth, else its family's most common size; for a family without built-in shapes,
    the shape with a vision tower whose decoder width and depth are closest."""
    text = config.get("text_config") or config
    width, depth = text.get("hidden_size"), text.get("num_hidden_layers")
    family = _FAMILY_SHAPES.get(str(config.get("model_type")))
    if family is not None:
        same = [n for n in family
                if (SHAPES[n]["decoder"]["hidden_size"], SHAPES[n]["decoder"]["num_hidden_layers"]) == (width, depth)]
        return (same or list(family))[0]
    vlms = [n for n, entry in SHAPES.items() if "vision" in entry]
    if not isinstance(width, int) or not isinstance(depth, int) or width < 1 or depth < 1:
        return vlms[0]  # no decoder numbers to compare: the first VLM shape is as near as any

    def distance(name: str) -> float:
        dec = SHAPES[name]["decoder"]
        return abs(math.log(dec["hidden_size"] / width)) + abs(math.log(dec["num_hidden_layers"] / depth))

    return min(vlms, key=distance)
