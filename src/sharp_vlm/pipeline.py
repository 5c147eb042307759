"""Video question answering on a local checkpoint: decode -> preprocess -> (prune) -> generate -> what was kept.

    qa = VideoQA.from_pretrained("/models/Qwen2.5-VL-7B-Instruct")
    ans = qa.answer("clip.mp4", "What is the person doing?", method="sharp", retain=0.1, layer=2)
    print(ans.text, ans.prefill_seconds, ans.n_kept, "of", ans.n_visual)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .checkpoint import LoadedModel, load_model
from .engine.stats import CallStats
from .errors import ConfigError
from .flops import DecoderShape, prefill_flops
from .loading import build_method
from .methods.base import Method
from .video.decode import Frames, read_video
from .video.preprocess import PreparedInputs, prepare_inputs

_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def multiple_choice(question: str, options: list[str]) -> str:
    """The question with lettered options and the instruction to answer with a letter (lmms-eval's wording)."""
    if len(options) > len(_LETTERS):
        raise ConfigError(f"{len(options)} options; at most {len(_LETTERS)} are supported")
    lines = [question] + [f"{_LETTERS[i]}. {opt}" for i, opt in enumerate(options)]
    return "\n".join(lines) + "\nAnswer with the option's letter from the given choices directly."


@dataclass
class Answer:
    """One answer and what it cost.

    stats: the engine's record of the prefill (kept indices/positions per stage, scores per sample), None without
    a method. n_kept: visual tokens that reached the last decoder layer. flops: prefill FLOPs of the decoder with
    the stages as they ran (`pruned`) and without (`dense`).
    """

    text: str
    prefill_seconds: float
    n_visual: int
    n_kept: int
    method: str
    inputs: PreparedInputs
    stats: CallStats | None = None
    flops: dict[str, int] = field(default_factory=dict)
    new_tokens: int = 0

    @property
    def kept(self) -> torch.Tensor:
        """Indices (among the prompt's visual tokens) of the ones that reached the last layer."""
        if self.stats is None or not self.stats.stages:
            return torch.arange(self.n_visual)
        return self.stats.stages[-1].kept[0].cpu()

    def summary(self) -> dict[str, Any]:
        stages = self.stats.summary()["stages"] if self.stats is not None else []
        return {"method": self.method, "text": self.text, "prefill_seconds": self.prefill_seconds,
                "n_visual": self.n_visual, "n_kept": self.n_kept, "flops": self.flops,
                "new_tokens": self.new_tokens, "frames": int(self.inputs.frames.shape[0]),
                "seq_len": int(self.inputs.kwargs["input_ids"].shape[1]), "stages": stages}


class _PrefillTimer:
    """Seconds of the model's first forward call in a generate() (the prefill, vision tower included)."""

    def __init__(self, model: torch.nn.Module):
        self.model, self.seconds, self._t0 = model, None, 0.0

    def __enter__(self) -> _PrefillTimer:
        self._hooks = [self.model.register_forward_pre_hook(self._pre),
                       self.model.register_forward_hook(self._post)]
        return self

    def _pre(self, *_: Any) -> None:
        if self.seconds is None:
            self._t0 = time.perf_counter()

    def _post(self, *_: Any) -> None:
        if self.seconds is None:
            self.seconds = time.perf_counter() - self._t0

    def __exit__(self, *_: Any) -> None:
        for h in self._hooks:
            h.remove()


class VideoQA:
    """A loaded checkpoint that answers questions about videos, with or without pruning."""

    def __init__(self, loaded: LoadedModel):
        self.loaded = loaded
        self.model = loaded.model
        self.processor = loaded.processor

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: str | torch.dtype = "auto", device: str = "cpu",
                        attn_implementation: str = "sdpa") -> VideoQA:
        return cls(load_model(path, dtype=dtype, device=device, attn_implementation=attn_implementation))

    @property
    def family(self) -> str:
        return self.loaded.family

    def read(self, video: str | Path | Frames, frames: int = 32, fps: float | None = None) -> Frames:
        """Decoded frames: `frames` evenly spaced, or at `fps` per second (at most `frames`)."""
        if isinstance(video, Frames):
            return video
        if fps is not None:
            return read_video(video, sample_fps=fps, max_frames=frames)
        return read_video(video, n_frames=frames)

    def prepare(self, video: str | Path | Frames, question: str, options: list[str] | None = None,
                frames: int = 32, fps: float | None = None) -> PreparedInputs:
        text = multiple_choice(question, options) if options else question
        return prepare_inputs(self.processor, self.read(video, frames, fps), text)

    def answer(self, video: str | Path | Frames, question: str, options: list[str] | None = None,
               frames: int = 32, fps: float | None = None, method: str | Method | dict | None = None,
               retain: float | None = 0.1, layer: int | None = 2, max_new_tokens: int = 32,
               inputs: PreparedInputs | None = None) -> Answer:
        """Answer `question` about `video` (a file or decoded `Frames`); `method` (a name with `retain`/`layer`,
        a dict or a config; None: the unpatched model) prunes the visual tokens. `inputs` reuses a `prepare()`d
        prompt (e.g. the same input with and without pruning)."""
        from .engine.handle import apply

        cfg = None if method is None else build_method(method, retain, layer)  # checked before any decoding
        prepared = inputs if inputs is not None else self.prepare(video, question, options, frames, fps)
        device = next(self.model.parameters()).device
        kwargs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in prepared.kwargs.items()}
        for key in ("pixel_values_videos", "pixel_values"):
            if key in kwargs and kwargs[key].is_floating_point():
                kwargs[key] = kwargs[key].to(self.loaded.dtype)
        tok = self.processor.tokenizer
        gen = dict(max_new_tokens=max_new_tokens, do_sample=False)
        if tok.pad_token_id is not None:
            gen["pad_token_id"] = tok.pad_token_id
        stats = None
        with torch.inference_mode(), _PrefillTimer(self.model) as timer:
            if cfg is None:
                out = self.model.generate(**kwargs, **gen)
            else:
                with apply(self.model, cfg) as handle:
                    # the prompt holds one video and nothing else: say so where the tokens alone leave it open
                    handle.adapter.declare_video_prompt()
                    out = self.model.generate(**kwargs, **gen)
                stats = handle.last_stats
        new = out[0, kwargs["input_ids"].shape[1]:]
        text = tok.decode(new, skip_special_tokens=True)
        n_kept = stats.stages[-1].n_kept[0] if stats is not None and stats.stages else prepared.n_visual
        return Answer(text=text, prefill_seconds=float(timer.seconds or 0.0), n_visual=prepared.n_visual,
                      n_kept=int(n_kept), method=cfg.name if cfg is not None else "unpruned", inputs=prepared,
                      stats=stats, flops=self._flops(prepared, stats), new_tokens=int(new.numel()))

    def _flops(self, prepared: PreparedInputs, stats: CallStats | None) -> dict[str, int]:
        """Decoder prefill FLOPs with the stages as they ran (tokens removed at each stage's layer) and dense."""
        shape = DecoderShape.from_config(self.model.config)
        seq = int(prepared.kwargs["input_ids"].shape[1])
        removals = [(s.layer, s.n_in[0] - s.n_kept[0]) for s in (stats.stages if stats is not None else [])]
        return {"pruned": int(prefill_flops(shape, seq, removals)["total"]),
                "dense": int(prefill_flops(shape, seq)["total"])}
