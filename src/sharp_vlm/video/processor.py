"""What every family's video processor is built on: `VideoProcessor` (a checkpoint's configs and tokenizer; its
`__call__` builds the inputs), the `Checkpoint` folder it reads, the `PreparedInputs` and `TokenGrid` it returns, and
the pixel and prompt steps the families share. The families' rules are in `qwen.py`, `llava.py`, `smolvlm.py` and
`internvl.py`; `preprocess.py` picks one for a checkpoint.
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import InputError
from .decode import Frames
from .families import family_of


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


# The question is the user's text: a "<video>" or "<|im_end|>" in it is text, never a placeholder or a turn marker.
# As transformers' `apply_chat_template(..., sanitize_control_tokens=True)` does, the control tokens in the question
# are wrapped in two private-use characters before the template is rendered; the placeholder is expanded only outside
# them, and `tokenize` encodes a wrapped token as plain text (the markers themselves never reach the tokenizer).
MARK_START, MARK_END = "\U000f0000", "\U000f0001"
_MARKED = re.compile(f"({MARK_START}.*?{MARK_END})", re.DOTALL)


def control_tokens(tokenizer: Any, template: str, placeholders: tuple[str, ...] = ()) -> list[str]:
    """The tokens the user's text must not write: the tokenizer's special added tokens, the added tokens the chat
    template writes (transformers' rule for sanitising control tokens), and the family's own placeholders."""
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    found = {tok.content for tok in added.values()
             if tok.special or (tok.content in template and not tok.content.isspace())}
    # longest first: a token wins over a shorter one inside it
    return sorted(found | {p for p in placeholders if p}, key=len, reverse=True)


def mark_user_text(text: str, tokens: list[str]) -> str:
    """`text` with every occurrence of `tokens` wrapped in the markers (markers already in it are dropped, so that
    the text cannot forge one)."""
    text = text.replace(MARK_START, "").replace(MARK_END, "")
    if not tokens:
        return text
    return re.sub("|".join(map(re.escape, tokens)), lambda m: f"{MARK_START}{m.group(0)}{MARK_END}", text)


def plain_text(text: str) -> str:
    """The prompt as the model reads it: the markers removed."""
    return text.replace(MARK_START, "").replace(MARK_END, "")


def render_prompt(tokenizer: Any, template: str | None, question: str, fallback: str,
                  video_item: dict[str, Any] | None = None, system: str | None = None,
                  placeholders: tuple[str, ...] = ()) -> str:
    """The chat template applied to one user turn holding a video and the question, with the generation prompt;
    `fallback` (a Jinja template of the family's format) where the checkpoint has none. The control tokens in the
    question (see `control_tokens`; `placeholders`: the tokens the family writes besides the template's) come back
    marked as the user's text."""
    chosen = template or getattr(tokenizer, "chat_template", None) or fallback
    question = mark_user_text(question, control_tokens(tokenizer, chosen, placeholders))
    content: list[dict[str, Any]] = [video_item or {"type": "video"}, {"type": "text", "text": question}]
    messages: list[dict[str, Any]] = [{"role": "user", "content": content}]
    if system is not None:
        messages.insert(0, {"role": "system", "content": [{"type": "text", "text": system}]})
    return tokenizer.apply_chat_template(messages, chat_template=chosen, tokenize=False, add_generation_prompt=True)


def tokenize(tokenizer: Any, text: str) -> dict[str, torch.Tensor]:
    """input_ids and attention_mask of one prompt; no second BOS where the template already wrote one (the rule
    of the processors' apply_chat_template). Tokens marked as the user's text are encoded as plain text."""
    bos = getattr(tokenizer, "bos_token", None)
    add_special = not (bos and plain_text(text).startswith(bos))
    if MARK_START not in text and MARK_END not in text:
        enc = tokenizer(text, add_special_tokens=add_special, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    ids: list[int] = []
    for i, piece in enumerate(_MARKED.split(text)):  # [text, marked token, text, marked token, ..., text]
        as_text = i % 2 == 1
        piece = plain_text(piece)
        if not piece:
            continue
        piece_ids = _encode_piece(tokenizer, piece, as_text, first=i == 0)
        if as_text and _token_id(tokenizer, piece) in piece_ids:
            raise InputError(f"the tokenizer encodes the question's text {piece!r} as the token {piece!r} itself; "
                             "reword the question without it")
        ids += piece_ids
    if add_special:
        prefix, suffix = _special_tokens_around(tokenizer)
        ids = prefix + ids + suffix
    input_ids = torch.tensor([ids], dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


def _token_id(tokenizer: Any, token: str) -> int | None:
    """The id of `token` where the tokenizer knows it as one token, else None."""
    tid = tokenizer.convert_tokens_to_ids(token)
    return None if tid is None or tid == getattr(tokenizer, "unk_token_id", None) else int(tid)


def _encode_piece(tokenizer: Any, piece: str, as_text: bool, first: bool) -> list[int]:
    """One piece of a prompt split at the user's marked tokens (transformers' `encode_marked_chat` rule): as plain
    text (added tokens not matched) or as usual. A piece after the first is encoded after a newline that is then
    dropped, so that a SentencePiece tokenizer does not add the word-start space it adds at the start of a text."""
    def encode(text: str) -> list[int]:
        return list(tokenizer.encode(text, add_special_tokens=False, split_special_tokens=as_text))

    if first:
        return encode(piece)
    newline = encode("\n")
    ids = encode("\n" + piece)
    return ids[len(newline):] if ids[:len(newline)] == newline else encode(piece)


def _special_tokens_around(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The ids the tokenizer adds before and after a text (BOS, EOS), read off one encoded probe."""
    bare = list(tokenizer.encode("a", add_special_tokens=False))
    full = list(tokenizer.encode("a", add_special_tokens=True))
    for i in range(len(full) - len(bare) + 1):
        if full[i:i + len(bare)] == bare:
            return full[:i], full[i + len(bare):]
    raise InputError(f"{type(tokenizer).__name__} changes a text when it adds its special tokens; this tokenizer "
                     "cannot encode a question holding control tokens such as '<video>': reword the question")


def expand_once(text: str, token: str, replacement: str) -> str:
    """Replace the template's one video placeholder with its expansion (the user's marked text left as it is)."""
    pieces = _MARKED.split(text)  # even: the template's text; odd: the user's marked tokens
    count = sum(p.count(token) for p in pieces[::2])
    if count != 1:
        raise InputError(
            f"the chat template wrote {count} video placeholders {token!r}, expected 1; check the checkpoint's "
            "chat template"
        )
    return "".join(p.replace(token, replacement) if i % 2 == 0 else p for i, p in enumerate(pieces))


# ---------------------------------------------------------------------------------------------------------------
# the processor interface


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

    def batch(self, prepared: list[PreparedInputs], pad_id: int) -> dict[str, Any]:
        """One batch of several prompts' inputs, as the family's processor batches them: token rows padded on the
        left (`pad_id`, attention mask 0); every other tensor joined along its first dimension (per-video patches,
        grids and tiles), zero-padded past it to the largest (SmolVLM's frames: all-zero pictures, which the model
        skips)."""
        return batch_kwargs([p.kwargs for p in prepared], pad_id)

    def batch_groups(self, prepared: list[PreparedInputs]) -> list[list[int]]:
        """Which prompts can go in one batch (indices, in order): all of them, unless the family's model cannot
        encode their videos together."""
        return [list(range(len(prepared)))]


TOKEN_ROWS = ("input_ids", "attention_mask", "mm_token_type_ids")


def batch_kwargs(samples: list[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """`VideoProcessor.batch` over the kwargs dicts."""
    keys = list(samples[0])
    if any(list(x) != keys for x in samples):
        raise InputError("the prompts of a batch carry different inputs "
                         f"({sorted({k for x in samples for k in x})}); prepare them with one processor")
    out: dict[str, Any] = {}
    for k in keys:
        xs = [x[k] for x in samples]
        if k in TOKEN_ROWS:
            width = max(x.shape[1] for x in xs)
            fill = pad_id if k == "input_ids" else 0
            out[k] = torch.cat([F.pad(x, (width - x.shape[1], 0), value=fill) for x in xs])
            continue
        shape = [max(x.shape[d] for x in xs) for d in range(1, xs[0].dim())]
        padded = []
        for x in xs:
            widths = [w for d in reversed(range(1, x.dim())) for w in (0, shape[d - 1] - x.shape[d])]
            padded.append(F.pad(x, widths))
        out[k] = torch.cat(padded)
    return out

