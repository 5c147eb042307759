"""Load a local checkpoint folder of any supported family: the model and its torch-only video processor, and the
dtype rule every command uses ("auto": bf16 only where it runs natively)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import InputError
from .video.families import MODEL_CLASSES
from .video.preprocess import Checkpoint, VideoProcessor, family_of, load_processor

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedModel:
    """A loaded checkpoint: the HF model (eval mode), its processor (tokenizer, configs) and family name."""

    model: nn.Module
    processor: VideoProcessor
    family: str
    path: Path
    dtype: torch.dtype

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer


def cpu_info() -> str:
    """The text of /proc/cpuinfo (flags, model name)."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""  # not Linux: no flags, no model name


def cpu_has_native_bf16() -> bool:
    """True where the CPU has bf16 matrix instructions (AVX512-BF16 or AMX); elsewhere bf16 runs emulated."""
    flags = cpu_info()
    return any(f in flags for f in (" avx512_bf16", " amx_bf16"))


def dtype_choice(dtype: str, device: str) -> tuple[str, str]:
    """The dtype to run and why. bf16 on a CPU without bf16 instructions is emulated and far slower than fp32
    (measured: ~1 GFLOP/s against ~90 for fp32 matmuls on an AVX2-only EPYC), so "auto" avoids it there."""
    if dtype != "auto":
        return dtype, "asked for"
    if device.startswith("cuda"):
        return "bfloat16", "auto: GPU"
    if cpu_has_native_bf16():
        return "bfloat16", "auto: CPU with native bf16"
    return "float32", "auto: this CPU has no bf16 instructions (no avx512_bf16/amx_bf16), bf16 would be emulated"


def resolve_dtype(dtype: str | torch.dtype, device: str) -> torch.dtype:
    """"auto": bf16 on a GPU or a CPU with bf16 instructions, else float32 (bf16 is emulated, and slow, there)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return _DTYPES[dtype_choice("auto", device)[0]]
    if dtype not in _DTYPES:
        raise InputError(f"dtype {dtype!r} is not supported; use auto, {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def load_model(path: str | Path, dtype: str | torch.dtype = "auto", device: str = "cpu",
               attn_implementation: str = "sdpa") -> LoadedModel:
    """Detect the family from `path`/config.json, load the model and its processor.

    Bad folders (missing, no config.json, an unsupported `model_type`, no weights, no tokenizer or preprocessor
    config) raise an `InputError` that says what is missing."""
    import transformers

    ckpt = Checkpoint.read(path)  # config.json and the preprocessor configs, checked before any weight is read
    family = family_of(ckpt.config, ckpt.path)
    if not any(ckpt.path.glob("*.safetensors")) and not any(ckpt.path.glob("*.bin")):
        raise InputError(f"{ckpt.path} has no weights (*.safetensors or *.bin); copy the checkpoint's weight files")
    processor = load_processor(ckpt.path)
    torch_dtype = resolve_dtype(dtype, device)
    cls = getattr(transformers, MODEL_CLASSES[family])
    try:
        model = cls.from_pretrained(str(ckpt.path), dtype=torch_dtype, attn_implementation=attn_implementation)
    except (OSError, ValueError, RuntimeError) as err:
        raise InputError(f"the model in {ckpt.path} cannot be loaded ({str(err).splitlines()[0]})") from None
    return LoadedModel(model.to(device).eval(), processor, family, ckpt.path, torch_dtype)
