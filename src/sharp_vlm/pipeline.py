"""Video question answering on a local checkpoint: decode -> preprocess -> (prune) -> generate -> what was kept.

    qa = VideoQA.from_pretrained("/models/Qwen2.5-VL-7B-Instruct")
    ans = qa.answer("clip.mp4", "What is the person doing?", method="sharp", retain=0.1, layer=2)
    print(ans.text, ans.prefill_seconds, ans.n_kept, "of", ans.n_visual)
"""

from __future__ import annotations

import time
from collections.abc import Sequence
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
    a method; in a batch, the batch's record, this answer's sample at `index`. n_kept: visual tokens that reached
    the last decoder layer. flops: prefill FLOPs of the decoder for this prompt with the stages as they ran
    (`pruned`) and without (`dense`). prefill_seconds: the prefill of the whole batch (`batch_size` prompts),
    vision tower included.
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
    index: int = 0
    batch_size: int = 1

    @property
    def kept(self) -> torch.Tensor:
        """Indices (among the prompt's visual tokens) of the ones that reached the last layer."""
        if self.stats is None or not self.stats.stages:
            return torch.arange(self.n_visual)
        return self.stats.stages[-1].kept[self.index].cpu()

    def summary(self) -> dict[str, Any]:
        stages = []
        for st in self.stats.summary()["stages"] if self.stats is not None else []:
            stages.append({**st, **{k: st[k][self.index] for k in ("n_in", "n_kept", "n_merged")}})
        return {"method": self.method, "text": self.text, "prefill_seconds": self.prefill_seconds,
                "batch_size": self.batch_size, "n_visual": self.n_visual, "n_kept": self.n_kept,
                "flops": self.flops, "new_tokens": self.new_tokens, "frames": int(self.inputs.frames.shape[0]),
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
        cfg = None if method is None else build_method(method, retain, layer)  # checked before any decoding
        prepared = inputs if inputs is not None else self.prepare(video, question, options, frames, fps)
        return self._generate([prepared], cfg, max_new_tokens)[0]

    def answer_batch(self, videos: Sequence[str | Path | Frames], questions: Sequence[str],
                     options: Sequence[list[str] | None] | None = None, frames: int = 32, fps: float | None = None,
                     method: str | Method | dict | None = None, retain: float | None = 0.1, layer: int | None = 2,
                     max_new_tokens: int = 32, inputs: Sequence[PreparedInputs] | None = None) -> list[Answer]:
        """`answer` for several videos in one left-padded batch: different videos (frame counts, sizes, so token
        counts) keep their own budgets, and each answer equals its `answer` alone (within float tolerance). The
        prefill time is the batch's. Where the family's model cannot encode some of these videos together
        (LLaVA-OneVision / LLaVA-Video / LLaVA-NeXT-Video with different frame counts or sizes), the videos of
        each shape make their own batch; the answers come back in the order given."""
        cfg = None if method is None else build_method(method, retain, layer)
        if inputs is None:
            if len(videos) != len(questions) or (options is not None and len(options) != len(videos)):
                raise ConfigError(f"{len(videos)} videos, {len(questions)} questions"
                                  + ("" if options is None else f", {len(options)} option lists")
                                  + ": give one of each per video")
            opts = list(options) if options is not None else [None] * len(videos)
            inputs = [self.prepare(v, q, o, frames, fps) for v, q, o in zip(videos, questions, opts, strict=True)]
        if not inputs:
            raise ConfigError("answer_batch needs at least one video")
        inputs = list(inputs)
        answers: list[Answer | None] = [None] * len(inputs)
        for group in self.processor.batch_groups(inputs):
            for i, ans in zip(group, self._generate([inputs[i] for i in group], cfg, max_new_tokens), strict=True):
                answers[i] = ans
        return answers  # type: ignore[return-value]

    def _generate(self, prepared: list[PreparedInputs], cfg: Method | None, max_new_tokens: int) -> list[Answer]:
        from .engine.handle import apply

        tok = self.processor.tokenizer
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        batch = prepared[0].kwargs if len(prepared) == 1 else self.processor.batch(prepared, pad_id or 0)
        device = next(self.model.parameters()).device
        kwargs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        for key in ("pixel_values_videos", "pixel_values"):
            if key in kwargs and kwargs[key].is_floating_point():
                kwargs[key] = kwargs[key].to(self.loaded.dtype)
        gen = dict(max_new_tokens=max_new_tokens, do_sample=False)
        if pad_id is not None:
            gen["pad_token_id"] = pad_id
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
        eos = self.model.generation_config.eos_token_id
        eos = torch.tensor([] if eos is None else [eos] if isinstance(eos, int) else list(eos), device=out.device)
        answers = []
        for i, p in enumerate(prepared):
            new = out[i, kwargs["input_ids"].shape[1]:]
            if len(prepared) > 1:  # a sample that ended early is padded to the longest: keep up to its end token
                ends = torch.nonzero(torch.isin(new, eos)).flatten()
                new = new[: int(ends[0]) + 1] if ends.numel() else new
            n_kept = stats.stages[-1].n_kept[i] if stats is not None and stats.stages else p.n_visual
            answers.append(Answer(
                text=tok.decode(new, skip_special_tokens=True), prefill_seconds=float(timer.seconds or 0.0),
                n_visual=p.n_visual, n_kept=int(n_kept), method=cfg.name if cfg is not None else "unpruned",
                inputs=p, stats=stats, flops=self._flops(p, stats, i), new_tokens=int(new.numel()), index=i,
                batch_size=len(prepared)))
        return answers

    def _flops(self, prepared: PreparedInputs, stats: CallStats | None, index: int = 0) -> dict[str, int]:
        """Decoder prefill FLOPs of one prompt with the stages as they ran (tokens removed at each stage's layer)
        and dense (its own length: a batch's padding is not counted)."""
        shape = DecoderShape.from_config(self.model.config)
        seq = int(prepared.kwargs["input_ids"].shape[1])
        removals = [(s.layer, s.n_in[index] - s.n_kept[index]) for s in (stats.stages if stats is not None else [])]
        return {"pruned": int(prefill_flops(shape, seq, removals)["total"]),
                "dense": int(prefill_flops(shape, seq)["total"])}
