"""The `sharp_vlm` model for lmms-eval: any checkpoint `VideoQA` loads, pruned by any sharp-vlm method.

    lmms-eval --model sharp_vlm --model_args pretrained=/models/Qwen2.5-VL-7B-Instruct,method=sharp,retain=0.1 \\
        --tasks videomme --batch_size 1 --output_path runs/lmms

Model arguments (lmms-eval's `key=value,...`):
- `pretrained`: a local checkpoint folder (required).
- `method` (`none`: the unpatched model), `retain`, `layer`: as in `sharp eval`; any other argument is an option
  of the method (e.g. `dedup_tau=0.8`), checked by the method's config.
- `max_num_frames` (32): frames sampled evenly from each video (all of them for a shorter video); `fps`: sample
  at this rate instead, at most `max_num_frames`.
- `dtype` (auto), `device` (cuda when there is one, else cpu), `attn_implementation` (sdpa).
- `max_new_tokens`: used when the task's generation kwargs give none (32).
- `stats_file`: append one JSON line per request (task, doc id, visual and kept tokens, prefill seconds,
  FLOPs) to this path; with several processes each writes `<stem>.rank<R><suffix>`.

`batch_size` (lmms-eval's flag): consecutive requests answered in one left-padded batch (`VideoQA.answer_batch`:
different videos keep their own budgets; the answers are those of batch size 1; a request's `prefill_s` in the
stats file is its batch's). Under `accelerate launch --num_processes N` each process loads the model on its own GPU
(`cuda:<local rank>`) and lmms-eval gives it every N-th request (data parallel), as its own HF models do.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from loguru import logger
from tqdm import tqdm

from ..errors import InputError, SharpError
from ..loading import build_method
from ..pipeline import VideoQA
from ..video.decode import Frames, read_video

_VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".flv", ".wmv", ".mpg", ".mpeg")


class SharpVLM(lmms):
    is_simple = True

    def __init__(self, pretrained: str, method: str = "none", retain: float = 0.1, layer: int = 2,
                 max_num_frames: int = 32, fps: float | None = None, dtype: str = "auto",
                 device: str | None = None, attn_implementation: str = "sdpa", max_new_tokens: int = 32,
                 batch_size: int | str = 1, stats_file: str | None = None, **method_options: Any) -> None:
        super().__init__()
        self.method_name = str(method)
        if self.method_name in ("none", "unpruned"):
            if method_options:
                raise SharpError(f"method=none takes no method options, got {sorted(method_options)}")
            self.method = None
        else:  # checked (unknown method, bad retain, unknown option) before the model loads
            self.method = build_method(self.method_name, float(retain), int(layer), method_options)
        self.frames, self.fps, self.default_max_new_tokens = int(max_num_frames), fps, int(max_new_tokens)
        if str(batch_size).startswith("auto"):
            raise SharpError(f"batch_size={batch_size}: give a number of requests per batch (sharp_vlm does not "
                             "search for the largest batch that fits)")
        self._batch_size = int(batch_size)
        if self._batch_size < 1:
            raise SharpError(f"batch_size={batch_size} must be >= 1")
        accelerator = Accelerator()
        self.accelerator = accelerator
        if accelerator.num_processes > 1:  # data parallel: one model per process, every N-th request each
            self._rank, self._world_size = accelerator.process_index, accelerator.num_processes
            on_gpu = torch.cuda.is_available() and device != "cpu"
            self._device = torch.device(f"cuda:{accelerator.local_process_index}" if on_gpu else "cpu")
        else:
            self._device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.qa = VideoQA.from_pretrained(pretrained, dtype=dtype, device=str(self._device),
                                          attn_implementation=attn_implementation)
        self.stats_path = self._stats_path(stats_file)
        self._warned_sampling = False

    def _stats_path(self, stats_file: str | None) -> Path | None:
        if not stats_file:
            return None
        path = Path(stats_file)
        if self.world_size > 1:
            path = path.with_name(f"{path.stem}.rank{self.rank}{path.suffix}")
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def model(self) -> torch.nn.Module:
        return self.qa.model

    @property
    def tokenizer(self) -> Any:
        return self.qa.processor.tokenizer

    @property
    def batch_size(self) -> int:
        return self._batch_size

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        raise NotImplementedError(
            "sharp_vlm generates answers and does not score log-likelihoods; use a generation task "
            "(videomme, mvbench, mlvu_dev, longvideobench_val_v, egoschema_subset are)"
        )

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError("sharp_vlm answers single-turn requests; multi-round tasks are not supported")

    def _video(self, visuals: Any, where: str) -> Frames:
        items = visuals if isinstance(visuals, list | tuple) else [visuals]
        paths = [v for v in items if isinstance(v, str | Path) and str(v).lower().endswith(_VIDEO_SUFFIXES)]
        if len(paths) != 1 or len(items) != 1:
            kinds = [type(v).__name__ if not isinstance(v, str) else Path(v).suffix or "str" for v in items]
            raise SharpError(f"{where}: sharp_vlm answers about exactly one video file per request, got {kinds}")
        path = paths[0]
        if self.fps is not None:
            return read_video(path, sample_fps=float(self.fps), max_frames=self.frames)
        try:
            return read_video(path, n_frames=self.frames)
        except InputError as err:
            if "fewer than" not in str(err):
                raise
            # a clip shorter than max_num_frames: every frame (any rate above the stream's keeps them all)
            return read_video(path, sample_fps=1000.0, max_frames=self.frames)

    def generate_until(self, requests: list[Instance]) -> list[str]:
        results = []
        bar = tqdm(total=len(requests), disable=self.rank != 0, desc="sharp_vlm")
        for chunk in self._batches(requests):
            frames, questions = [], []
            for request in chunk:
                context, _, doc_to_visual, doc_id, task, split = request.args
                frames.append(self._video(doc_to_visual(self.task_dict[task][split][doc_id]),
                                          f"task {task} doc {doc_id}"))
                questions.append(context.replace("<image>", "").strip())
            answers = self.qa.answer_batch(frames, questions, method=self.method,
                                           max_new_tokens=self._max_new_tokens(chunk[0]))
            for request, answer in zip(chunk, answers, strict=True):
                context, gen_kwargs, _, doc_id, task, _ = request.args
                text = answer.text
                until = (gen_kwargs or {}).get("until") or []
                for stop in [until] if isinstance(until, str) else until:
                    if stop:
                        text = text.split(stop)[0]
                results.append(text)
                self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
                if self.stats_path is not None:
                    self._write_stats(task, doc_id, answer)
                bar.update(1)
        bar.close()
        return results

    def _max_new_tokens(self, request: Instance) -> int:
        gen_kwargs = request.args[1] or {}
        if float(gen_kwargs.get("temperature", 0) or 0) > 0 and not self._warned_sampling:
            logger.warning("sharp_vlm decodes greedily; the task's temperature is ignored")
            self._warned_sampling = True
        return int(gen_kwargs.get("max_new_tokens") or self.default_max_new_tokens)

    def _batches(self, requests: list[Instance]) -> list[list[Instance]]:
        """Consecutive requests, `batch_size` at a time, a batch closed early where the answer length changes."""
        out: list[list[Instance]] = []
        for request in requests:
            last = out[-1] if out else None
            if (last is not None and len(last) < self._batch_size
                    and self._max_new_tokens(last[0]) == self._max_new_tokens(request)):
                last.append(request)
            else:
                out.append([request])
        return out

    def _write_stats(self, task: str, doc_id: int, answer: Any) -> None:
        from .runner import reply_from_answer

        reply = reply_from_answer(answer)
        line = {"task": task, "doc_id": doc_id, "method": self.method_name, "n_visual": reply.n_visual,
                "n_kept": reply.n_kept, "kept_per_stage": list(reply.kept_per_stage), "prefill_s": reply.prefill_s,
                "flops": reply.flops, "flops_dense": reply.flops_dense}
        with self.stats_path.open("a") as fh:
            fh.write(json.dumps(line) + "\n")
