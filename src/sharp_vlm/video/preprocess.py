"""Torch-only preprocessing: sampled frames + a question -> the model's inputs, as the family's HF processor
would build them from the checkpoint's own configs (no torchvision at run time).

`load_processor(dir)` reads the checkpoint's `config.json`, its preprocessor configs
(`video_preprocessor_config.json`, `preprocessor_config.json`, `processor_config.json`), its tokenizer and its chat
template, and returns the family's `VideoProcessor`; `prepare_inputs(dir_or_processor, frames, question)` runs it.
The family rules live beside this file: `qwen.py` (Qwen2-VL, Qwen2.5-VL, Qwen3-VL), `llava.py` (LLaVA-OneVision /
LLaVA-Video, LLaVA-NeXT-Video), `smolvlm.py` (SmolVLM2), `internvl.py` (InternVL).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import InputError
from .decode import Frames


@dataclass(frozen=True)
class TokenGrid:
    """Where each visual token of the prompt sits on the frames the model saw (for overlays).

    Visual token i (in prompt order, as the adapter's layout numbers them) covers frames
    `frame[i] .. frame[i] + span - 1` and cell (`row[i]`, `col[i]`) of a `rows` x `cols` grid laid over each
    frame; `frame[i] == -1` marks a token with no cell (LLaVA's trailing newline, SmolVLM/InternVL tokens of
    another view). `n_frames` is the number of frames shown.
    """

    frame: torch.Tensor
    row: torch.Tensor
    col: torch.Tensor
    rows: int
    cols: int
    span: int
    n_frames: int

    @property
    def n_tokens(self) -> int:
        return int(self.frame.numel())

    def mask(self, kept: torch.Tensor) -> torch.Tensor:
        """(n_frames, rows, cols) bool: True where a kept visual token (indices into the prompt's visual tokens)
        covers the cell."""
        out = torch.zeros(self.n_frames, self.rows, self.cols, dtype=torch.bool)
        idx = kept.long().cpu()
        f, r, c = self.frame[idx], self.row[idx], self.col[idx]
        has = f >= 0
        for k in range(self.span):
            fk = f[has] + k
            ok = fk < self.n_frames
            out[fk[ok], r[has][ok], c[has][ok]] = True
        return out

    @staticmethod
    def raster(n_steps: int, rows: int, cols: int, span: int, n_frames: int) -> TokenGrid:
        """Tokens laid out step-major then row-major: step s covers frames s*span .. s*span+span-1."""
        t, r, c = torch.meshgrid(torch.arange(n_steps), torch.arange(rows), torch.arange(cols), indexing="ij")
        return TokenGrid((t * span).reshape(-1), r.reshape(-1), c.reshape(-1), rows, cols, span, n_frames)

    @staticmethod
    def concat(parts: list[TokenGrid]) -> TokenGrid:
        first = parts[0]
        return TokenGrid(torch.cat([p.frame for p in parts]), torch.cat([p.row for p in parts]),
                         torch.cat([p.col for p in parts]), first.rows, first.cols, first.span, first.n_frames)

    @staticmethod
    def none(n: int, like: TokenGrid) -> TokenGrid:
        """n tokens without a cell (newline or separator rows of the visual run)."""
        z = torch.full((n,), -1, dtype=torch.long)
        return TokenGrid(z, z.clone(), z.clone(), like.rows, like.cols, like.span, like.n_frames)


@dataclass
class PreparedInputs:
    """One prompt ready for `model.generate(**kwargs)`.

    kwargs: the tensors the family's processor returns (input_ids, attention_mask, pixel values, grids, ...).
    prompt: the text before tokenisation, placeholders expanded. frames: (T, H, W, 3) uint8, the sampled frames as
    the model sees them (resized, before normalisation); timestamps: their seconds from the video's start.
    grid: where each visual token sits on those frames; n_visual: the prompt's visual tokens (the adapter's count).
    """

    kwargs: dict[str, Any]
    prompt: str
    frames: torch.Tensor
    timestamps: list[float]
    grid: TokenGrid
    family: str
    n_visual: int


@dataclass(frozen=True)
class Checkpoint:
    """The parts of a checkpoint folder a processor needs: config.json and the preprocessor configs as dicts."""

    path: Path
    config: dict[str, Any]
    video: dict[str, Any]  # video_preprocessor_config.json, else preprocessor_config.json
    image: dict[str, Any]  # preprocessor_config.json
    processor: dict[str, Any]  # processor_config.json
    chat_template: str | None

    @staticmethod
    def read(path: str | Path) -> Checkpoint:
        path = Path(path)
        if not path.is_dir():
            raise InputError(f"model folder {path} does not exist; give a local checkpoint folder")
        config = _json(path / "config.json", required=True)
        family_of(config, path)  # an unsupported model says so before anything else is missing
        image = _json(path / "preprocessor_config.json")
        video = _json(path / "video_preprocessor_config.json") or dict(image)
        processor = _json(path / "processor_config.json")
        if not video and not processor:
            raise InputError(
                f"{path} has no preprocessor config (video_preprocessor_config.json, preprocessor_config.json or "
                "processor_config.json); copy the checkpoint's processor files into the folder"
            )
        # a processor_config.json may nest the sub-processors' configs (newer checkpoints save them there)
        video = {**processor.get("video_processor", {}), **video}
        image = {**processor.get("image_processor", {}), **image}
        return Checkpoint(path, config, video, image, processor, _chat_template(path, processor))


def _json(path: Path, required: bool = False) -> dict[str, Any]:
    if not path.is_file():
        if required:
            raise InputError(f"{path} does not exist; give a checkpoint folder with its config.json")
        return {}
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path} is not valid JSON ({err}); restore the checkpoint's file") from None
    if not isinstance(value, dict):
        raise InputError(f"{path} must hold a JSON object; restore the checkpoint's file")
    return value


def _chat_template(path: Path, processor: dict[str, Any]) -> str | None:
    """The processor's chat template (chat_template.jinja, chat_template.json, processor_config.json); None
    where only the tokenizer has one (the tokenizer's is used then)."""
    if (path / "chat_template.jinja").is_file():
        return (path / "chat_template.jinja").read_text()
    if (path / "chat_template.json").is_file():
        template = _json(path / "chat_template.json").get("chat_template")
        if isinstance(template, str):
            return template
    template = processor.get("chat_template")
    return template if isinstance(template, str) else None


# ---------------------------------------------------------------------------------------------------------------
# pixel operations shared by the families (each the op the HF torchvision backend runs, in the same dtype)

# PIL resample codes in the configs -> interpolate modes
_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}


def resample_mode(code: Any, default: str) -> str:
    if code is None:
        return default
    if code not in _RESAMPLE:
        raise InputError(f"resample={code!r} in the preprocessor config is not supported; use 0 (nearest), "
                         "1 (lanczos), 2 (bilinear) or 3 (bicubic)")
    return _RESAMPLE[code]


def to_channels_first(pixels: torch.Tensor) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (T, 3, H, W) uint8 (the layout the processors work in)."""
    if pixels.ndim != 4 or pixels.shape[-1] != 3 or pixels.dtype != torch.uint8:
        raise InputError(f"frames must be (T, H, W, 3) uint8 RGB, got {tuple(pixels.shape)} {pixels.dtype}")
    return pixels.permute(0, 3, 1, 2).contiguous()


def resize(frames: torch.Tensor, height: int, width: int, mode: str = "bicubic") -> torch.Tensor:
    """Antialiased resize of (T, 3, H, W) uint8 frames, kept uint8 (torch has native uint8 bilinear, bicubic and
    Lanczos on the CPU, which torchvision uses; elsewhere through float32, rounded and clamped as torchvision
    does)."""
    if tuple(frames.shape[-2:]) == (height, width):
        return frames
    antialias = mode in ("bilinear", "bicubic", "lanczos")
    if frames.device.type == "cpu" or mode == "nearest":
        return F.interpolate(frames, size=(height, width), mode=mode, antialias=antialias,
                             align_corners=False if antialias else None)
    out = F.interpolate(frames.float(), size=(height, width), mode=mode, antialias=antialias, align_corners=False)
    return out.clamp_(0, 255).round_().to(torch.uint8)


def normalize(frames: torch.Tensor, mean: list[float], std: list[float], rescale: float = 1 / 255) -> torch.Tensor:
    """Rescale and normalise in one step, as the processors fuse it: (x - mean/rescale) / (std/rescale) in float32."""
    m = (torch.tensor(mean) * (1.0 / rescale)).view(-1, 1, 1)
    s = (torch.tensor(std) * (1.0 / rescale)).view(-1, 1, 1)
    return frames.to(torch.float32).sub(m).div(s)


def channels_last_uint8(frames: torch.Tensor) -> torch.Tensor:
    return frames.permute(0, 2, 3, 1).contiguous()


# ---------------------------------------------------------------------------------------------------------------
# prompt text


def render_prompt(tokenizer: Any, template: str | None, question: str, fallback: str,
                  video_item: dict[str, Any] | None = None, system: str | None = None) -> str:
    """The chat template applied to one user turn holding a video and the question, with the generation prompt;
    `fallback` (a Jinja template of the family's format) where the checkpoint has none."""
    content: list[dict[str, Any]] = [video_item or {"type": "video"}, {"type": "text", "text": question}]
    messages: list[dict[str, Any]] = [{"role": "user", "content": content}]
    if system is not None:
        messages.insert(0, {"role": "system", "content": [{"type": "text", "text": system}]})
    chosen = template or getattr(tokenizer, "chat_template", None) or fallback
    return tokenizer.apply_chat_template(messages, chat_template=chosen, tokenize=False, add_generation_prompt=True)


def tokenize(tokenizer: Any, text: str) -> dict[str, torch.Tensor]:
    """input_ids and attention_mask of one prompt; no second BOS where the template already wrote one (the rule
    of the processors' apply_chat_template)."""
    bos = getattr(tokenizer, "bos_token", None)
    add_special = not (bos and text.startswith(bos))
    enc = tokenizer(text, add_special_tokens=add_special, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def expand_once(text: str, token: str, replacement: str) -> str:
    """Replace the template's one video placeholder with its expansion."""
    count = text.count(token)
    if count != 1:
        raise InputError(
            f"the chat template wrote {count} video placeholders {token!r}, expected 1; check the checkpoint's "
            "chat template"
        )
    return text.replace(token, replacement)


# ---------------------------------------------------------------------------------------------------------------
# the processor interface and dispatch


@dataclass
class VideoProcessor(ABC):
    """Base of the family processors: a checkpoint's configs and tokenizer; `__call__` builds the inputs."""

    checkpoint: Checkpoint
    tokenizer: Any
    family: str = ""

    @abstractmethod
    def __call__(self, frames: Frames, question: str) -> PreparedInputs:
        """The model's inputs for these frames and this question (the family's rules)."""

    def min_frames(self) -> int:
        """The fewest frames the family's processor accepts."""
        return 1


def family_of(config: dict[str, Any], path: Path | str = "") -> str:
    """The family name of a checkpoint's config.json `model_type`, or an error listing the supported ones."""
    from .families import FAMILIES

    model_type = config.get("model_type")
    if model_type not in FAMILIES:
        raise InputError(
            f"{path or 'the checkpoint'}: model_type {model_type!r} is not supported; supported: "
            f"{', '.join(sorted(FAMILIES))}"
        )
    return str(model_type)


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
    from .families import FAMILIES

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
