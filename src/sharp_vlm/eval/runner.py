"""Run every (sample, method, retain) of a video-QA file, one record per answer, resumable.

`run_eval(cfg, records, answer, out)` asks `answer(record, variant)` for each pending pair and appends one JSON line
to `out/records.jsonl` as soon as it has it, so an interrupted run loses at most the answer in flight. Rerunning
with the same `out` reads the records back and asks only for the pairs that have none. `out/settings.json` holds
what makes two answers comparable (model, data file, frames, layer, method options, the dtype that runs, ...): a
rerun with other settings is refused instead of mixing runs. A run holds `out/eval.lock` while it writes the
folder, so a second run on the same folder is refused instead of answering everything twice. Before the first
answer, every clip still to answer is checked for the frames asked for. The returned records are scored again
from their stored replies against the samples as given now, so a corrected reference needs no new answers.
The answerer is a parameter so the loop, resume and report can be checked without a model; `videoqa_answerer`
builds it from a `VideoQA` pipeline.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..checkpoint import dtype_choice, resolve_dtype
from ..checks import check_unique
from ..errors import ConfigError
from ..loading import Variant, build_method
from ..methods import NoPrune
from .clips import check_clips
from .data import QARecord, score
from .files import DataError, atomic_write, folder_lock
from .records import RECORDS, prepare_append, rescored
from .records import read_records as read_records  # the resume count reads records from here

SETTINGS = "settings.json"


@dataclass(frozen=True)
class Reply:
    """What an answerer returns for one question under one variant.

    `prefill_s`: measured prefill seconds; `n_visual`: visual tokens of the prompt; `n_kept`: those reaching the
    last layer; `kept_per_stage`: kept count after each stage; `flops` / `flops_dense`: prefill FLOPs of this
    variant (method overhead included) and of the unpruned model on the same prompt.
    """

    text: str
    prefill_s: float
    n_visual: int
    n_kept: int
    flops: float | None = None
    flops_dense: float | None = None
    kept_per_stage: tuple[int, ...] = ()


AnswerFn = Callable[[QARecord, Variant], Reply]
BatchAnswerFn = Callable[[list[QARecord], Variant], list[Reply]]  # one batch of questions under one variant


@dataclass
class EvalConfig:
    """What `sharp eval` runs. `options` holds extra method options by name, e.g. {"sharp": {"dedup_tau": 0.8}}.
    `check_clips`: read every pending clip's frame count before the first answer (off only for an answerer that
    reads no video)."""

    model: str
    data: str
    methods: list[str] = field(default_factory=lambda: ["none", "fastv", "sharp"])
    retains: list[float] = field(default_factory=lambda: [0.25, 0.1])
    layer: int | None = None  # every method's decoder layer; None: each method's own default
    frames: int = 32  # frames sampled evenly; with `fps`, the most frames sampled at that rate
    fps: float | None = None
    max_new_tokens: int = 16
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    dtype: str = "auto"
    device: str = "cpu"
    limit: int | None = None
    check_clips: bool = True
    batch_size: int = 1  # questions answered in one batch (per variant); the answers do not depend on it

    def variants(self) -> list[Variant]:
        """`none` first (added when missing), then each other method at each retain, in the order given; every
        config is built and checked (unknown names and bad options raise `ConfigError`)."""
        out = [Variant("none", "none", 1.0, NoPrune())]
        for name in (m.strip().lower() for m in self.methods if m.strip()):
            if name != "none":
                opts = self.options.get(name)
                out += [Variant(name, name, float(r), build_method(name, float(r), self.layer, opts))
                        for r in self.retains]
        return out

    def check(self) -> None:
        """Every flag and every variant's config, before a model loads."""
        if self.frames < 1:
            raise ConfigError(f"--frames {self.frames} must be >= 1")
        if self.fps is not None and not self.fps > 0:
            raise ConfigError(f"--fps {self.fps} must be a positive number of frames per second")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit {self.limit} must be >= 1")
        if self.max_new_tokens < 1:
            raise ConfigError(f"--max-new-tokens {self.max_new_tokens} must be >= 1")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size {self.batch_size} must be >= 1")
        resolve_dtype(self.dtype, self.device)  # an unknown dtype is refused here, not when the model loads
        check_unique([m.strip().lower() for m in self.methods if m.strip()], "--methods")
        check_unique([f"{float(r):g}" for r in self.retains], "--retain")  # as the records' keys write them
        unused = sorted(set(self.options) - {m.strip().lower() for m in self.methods} - {"none"})
        if unused:
            raise ConfigError(f"--options names method(s) {unused} that are not pruning methods in --methods")
        self.variants()  # builds and checks every config

    def settings(self) -> dict[str, Any]:
        """What must match for records of two runs to be mixed (not methods, retains or limit: those only add).
        The dtype is the one that runs: "auto" can mean bfloat16 on one machine and float32 on another."""
        from .. import __version__

        return {
            "model": _resolved(self.model), "data": _resolved(self.data), "layer": self.layer,
            "frames": self.frames, "fps": self.fps, "max_new_tokens": self.max_new_tokens,
            "options": self.options, "dtype": dtype_choice(self.dtype, self.device)[0], "device": self.device,
            "sharp_vlm": __version__,
        }


def _resolved(path: str) -> str:
    p = Path(path).expanduser()
    return str(p.resolve()) if p.exists() else str(path)


def fingerprint(record: QARecord) -> str:
    """Changes when the model's input for the record changes (then its old answers are not reused). The video is
    keyed by its resolved path: the same clip named another way is the same input."""
    text = json.dumps([str(record.video.resolve()), record.question, record.options])
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def _read_settings(path: Path, out: Path) -> dict[str, Any]:
    cure = (f"the settings of the records in {out} are unknown: delete {out} to start again (or only {path.name} "
            "if its records were made with these same settings), or give another --out")
    try:
        old = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        what = "empty" if not path.stat().st_size else f"cut off or not JSON ({err})"
        raise DataError(f"{path} is {what}; {cure}") from None
    if not isinstance(old, dict):
        raise DataError(f"{path} is not a JSON object; {cure}")
    return old


def check_settings(out: str | Path, settings: dict[str, Any]) -> None:
    """Refuse when `out/settings.json` says the folder's records were made with other settings (`run_eval` writes
    the file before its first answer)."""
    out = Path(out)
    path = out / SETTINGS
    if not path.is_file():
        return
    old = _read_settings(path, out)
    changed = [f"{k}: {old.get(k)!r} -> {settings.get(k)!r}" for k in sorted(set(old) | set(settings))
               if old.get(k) != settings.get(k)]
    if changed:
        raise ConfigError(
            f"{out} holds records made with other settings ({'; '.join(changed)}); "
            "rerun with the same settings to resume, or give another --out"
        )


def _record_line(record: QARecord, variant: Variant, reply: Reply, batch_size: int) -> dict[str, Any]:
    pred, correct = score(record, reply.text)
    return {
        "id": record.id, "variant": variant.key, "method": variant.method, "retain": variant.retain,
        "kind": record.kind, "input": fingerprint(record), "reply": reply.text, "pred": pred,
        "answer": record.answer_key, "correct": correct, "n_visual": reply.n_visual, "n_kept": reply.n_kept,
        "kept_ratio": reply.n_kept / reply.n_visual if reply.n_visual else None,
        "kept_per_stage": list(reply.kept_per_stage), "flops": reply.flops, "flops_dense": reply.flops_dense,
        "prefill_s": reply.prefill_s, "batch_size": batch_size,
    }


@dataclass
class EvalRun:
    """The outcome of `run_eval`: every record of the selected samples and variants, and how many were new."""

    config: EvalConfig
    records: list[dict[str, Any]]
    variants: list[Variant]
    samples: list[QARecord]
    computed: int
    reused: int


def run_eval(cfg: EvalConfig, samples: Sequence[QARecord], answer: AnswerFn, out: str | Path,
             progress: bool = True, answer_batch: BatchAnswerFn | None = None) -> EvalRun:
    """Answer every pending (sample, variant) pair, appending each record to `out/records.jsonl` at once.

    With `cfg.batch_size` > 1 and `answer_batch`, the pending questions of each variant go in batches of that
    size (a record's `prefill_s` is then its batch's). Holds `out/eval.lock` throughout (`FolderLockedError` when
    another run holds it); checks the settings and, with `cfg.check_clips`, every pending clip's frames before
    the first answer."""
    from tqdm.auto import tqdm

    out = Path(out)
    cfg.check()
    settings = cfg.settings()
    samples = list(samples)[: cfg.limit] if cfg.limit else list(samples)
    variants = cfg.variants()
    with folder_lock(out):
        check_settings(out, settings)
        done = prepare_append(out)
        for rec in samples:  # a changed question or video is asked again, its old records are not reused
            for v in variants:
                old = done.get((rec.id, v.key))
                if old is not None and old.get("input") != fingerprint(rec):
                    del done[(rec.id, v.key)]
        pending = [(rec, v) for rec in samples for v in variants if (rec.id, v.key) not in done]
        if pending and cfg.check_clips:
            check_clips(list({rec.id: rec for rec, _ in pending}.values()), cfg.frames, cfg.fps, cfg.data)
        if not (out / SETTINGS).is_file():  # written only now: a run refused above leaves no settings behind
            atomic_write(out / SETTINGS, json.dumps(settings, indent=2) + "\n")
        reused = len(samples) * len(variants) - len(pending)
        bar = tqdm(total=len(pending), disable=not progress, desc="sharp eval", unit="answer")
        with (out / RECORDS).open("a", encoding="utf-8") as fh:
            for recs, v in _batches(pending, variants, cfg.batch_size if answer_batch is not None else 1):
                bar.set_postfix_str(f"{recs[0].id} {v.key}", refresh=False)
                replies = [answer(recs[0], v)] if answer_batch is None else answer_batch(recs, v)
                for rec, reply in zip(recs, replies, strict=True):
                    line = _record_line(rec, v, reply, len(recs))
                    fh.write(json.dumps(line) + "\n")  # a kill can cut only this line, the last one
                    fh.flush()
                    os.fsync(fh.fileno())  # the record survives a crash or kill right after
                    done[(rec.id, v.key)] = line
                    bar.update(1)
        bar.close()
    # scored again from the stored reply: a reference corrected in the data file counts without a new answer
    records = [rescored(done[(rec.id, v.key)], rec) for rec in samples for v in variants]
    return EvalRun(cfg, records, variants, samples, computed=len(pending), reused=reused)


def _batches(pending: list[tuple[QARecord, Variant]], variants: list[Variant], size: int,
             ) -> list[tuple[list[QARecord], Variant]]:
    """The pending pairs one at a time in their order (size 1), else per variant in batches of `size`."""
    if size == 1:
        return [([rec], v) for rec, v in pending]
    out = []
    for v in variants:
        recs = [rec for rec, w in pending if w is v]
        out += [(recs[i : i + size], v) for i in range(0, len(recs), size)]
    return out


def videoqa_batch_answerer(qa: Any, cfg: EvalConfig) -> BatchAnswerFn:
    """A `BatchAnswerFn` over a loaded `VideoQA` (`answer_batch`)."""

    def answer(records: list[QARecord], variant: Variant) -> list[Reply]:
        results = qa.answer_batch(
            [r.video for r in records], [r.question for r in records],
            options=[list(r.options) if r.options else None for r in records], frames=cfg.frames, fps=cfg.fps,
            method=None if variant.method == "none" else variant.config, max_new_tokens=cfg.max_new_tokens,
        )
        return [reply_from_answer(r) for r in results]

    return answer


def videoqa_answerer(qa: Any, cfg: EvalConfig) -> AnswerFn:
    """An `AnswerFn` over a loaded `sharp_vlm.pipeline.VideoQA`."""

    def answer(record: QARecord, variant: Variant) -> Reply:
        result = qa.answer(
            record.video, record.question, options=list(record.options) if record.options else None,
            frames=cfg.frames, fps=cfg.fps, method=None if variant.method == "none" else variant.config,
            max_new_tokens=cfg.max_new_tokens,
        )
        return reply_from_answer(result)

    return answer


def reply_from_answer(result: Any) -> Reply:
    """A `Reply` from a `VideoQA` `Answer`: its FLOPs plus what the stages spent beside the decoder (scoring side
    passes, reference passes; zero for a cached bias), as they ran."""
    stages = result.stats.stages if result.stats is not None else []
    # beside-the-decoder costs of this answer's own sample (the same in a batch as alone)
    extra = sum(s.costs.sample_flops[result.index] for s in stages if s.costs.sample_flops)
    flops = result.flops or {}
    return Reply(
        text=result.text, prefill_s=float(result.prefill_seconds), n_visual=int(result.n_visual),
        n_kept=int(result.n_kept), flops=float(flops["pruned"] + extra) if "pruned" in flops else None,
        flops_dense=float(flops["dense"]) if "dense" in flops else None,
        kept_per_stage=tuple(int(s.n_kept[result.index]) for s in stages),
    )


def config_dict(cfg: EvalConfig) -> dict[str, Any]:
    return asdict(cfg)
