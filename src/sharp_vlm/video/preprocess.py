"""Torch-only preprocessing: sampled frames + a question -> the model's inputs, as the family's HF processor
would build them from the checkpoint's own configs (no torchvision at run time).

`load_processor(dir)` reads the checkpoint's `config.json`, its preprocessor configs
(`video_preprocessor_config.json`, `preprocessor_config.json`, `processor_config.json`), its tokenizer and its chat
template, and returns the family's `VideoProcessor`; `prepare_inputs(dir_or_processor, frames, question)` runs it.
The family rules live beside this file: `qwen.py` (Qwen2-VL, Qwen2.5-VL, Qwen3-VL), `llava.py` (LLaVA-OneVision /
LLaVA-Video, LLaVA-NeXT-Video), `smolvlm.py` (SmolVLM2), `internvl.py` (InternVL), on what they share in
`processor.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import InputError
from .decode import Frames
from .families import family_of
from .internvl import InternVLVideoProcessor
from .llava import LlavaVideoProcessor
from .processor import Checkpoint, PreparedInputs, TokenGrid, VideoProcessor
from .qwen import QwenVLProcessor
from .smolvlm import SmolVLMVideoProcessor

# the entry points, and the shared types callers import from here (defined in processor.py and families.py)
__all__ = ["FAMILIES", "Checkpoint", "PreparedInputs", "TokenGrid", "VideoProcessor", "family_of", "load_processor",
           "load_tokenizer", "prepare_inputs"]

# config.json `model_type` -> the family's processor class (`families.MODEL_CLASSES` lists the same types)
FAMILIES: dict[str, type[VideoProcessor]] = {
    "qwen2_vl": QwenVLProcessor,
    "qwen2_5_vl": QwenVLProcessor,
    "qwen3_vl": QwenVLProcessor,
    "qwen3_vl_moe": QwenVLProcessor,
    "llava_onevision": LlavaVideoProcessor,
    "llava_next_video": LlavaVideoProcessor,
    "internvl": InternVLVideoProcessor,
    "smolvlm": SmolVLMVideoProcessor,
}


def load_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model",
                                               "vocab.json")):
        raise InputError(f"{path} has no tokenizer files (tokenizer.json / tokenizer_config.json); copy the "
                         "checkpoint's tokenizer into the folder")
    try:
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as err:
        raise InputError(f"the tokenizer in {path} cannot be loaded ({str(err).splitlines()[0]})") from None


def load_processor(path: str | Path, tokenizer: Any = None) -> VideoProcessor:
    """The family's processor for a local checkpoint folder (configs, tokenizer, chat template)."""
    ckpt = Checkpoint.read(path)
    family = family_of(ckpt.config, ckpt.path)
    tok = tokenizer if tokenizer is not None else load_tokenizer(ckpt.path)
    return FAMILIES[family](ckpt, tok, family)


def prepare_inputs(model_dir_or_processor: str | Path | VideoProcessor, frames: Frames,
                   question: str) -> PreparedInputs:
    """Sampled frames + a question -> the model's inputs, the prompt, the frames as the model sees them and the
    grid of every visual token (see `PreparedInputs`)."""
    proc = model_dir_or_processor
    if not isinstance(proc, VideoProcessor):
        proc = load_processor(proc)
    if not isinstance(question, str) or not question.strip():
        raise InputError("the question is empty; give the text to ask about the video")
    need = proc.min_frames()
    if frames.n_frames < need:
        raise InputError(f"{proc.family} needs at least {need} frames, got {frames.n_frames}; sample more frames")
    return proc(frames, question)
