"""Measured prefill (time to first token), decode and method overhead, beside the FLOPs the config implies.

The unpruned model always runs in the same invocation, on the same inputs, so every speedup is measured
against a baseline from the same machine and the same moment.
"""

from __future__ import annotations

import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..config import Method, load_config
from ..engine.patch import apply
from ..methods import FastV, NoPrune, ShaRP
from ..models.generic import VideoSpan
from .flops import DecoderShape, decode_flops_per_token, method_flops


@dataclass
class BenchConfig:
    model: str = "qwen2.5-0.5b"  # a name from bench.shapes, or a local checkpoint folder
    frames: int = 32
    tokens_per_frame: int = 196
    prefix: int = 20
    question: int = 30
    layer: int = 2
    retain: float = 0.1
    dtype: str = "bfloat16"
    attn: str = "sdpa"
    repeats: int = 3
    warmup: int = 1
    decode_tokens: int = 8
    device: str = "cpu"
    variants: list[str] = field(default_factory=lambda: ["none", "fastv", "sharp-reference", "sharp-cached"])
    trim_kv: bool = True  # also time decode with the shallow layers' KV trimmed


def variant(name: str, retain: float, layer: int) -> Method:
    """Benchmark variants by name; anything else is parsed as a method name or a JSON/YAML config."""
    table = {
        "none": lambda: NoPrune(),
        "fastv": lambda: FastV(retain=retain, layer=layer),
        "sharp-reference": lambda: ShaRP(retain=retain, layer=layer, debias="reference"),
        "sharp-cached": lambda: ShaRP(retain=retain, layer=layer, debias="cached"),
        "sharp-nodebias": lambda: ShaRP(retain=retain, layer=layer, debias="off"),
    }
    if name in table:
        return table[name]()
    return load_config({"method": name, "retain": retain, "layer": layer})


def build_model(cfg: BenchConfig) -> torch.nn.Module:
    """Random weights from a built-in config (no download), or a local checkpoint folder."""
    from pathlib import Path

    from transformers import AutoModelForCausalLM

    from .shapes import decoder_config

    dtype = getattr(torch, cfg.dtype)
    if Path(cfg.model).is_dir():
        return AutoModelForCausalLM.from_pretrained(
            cfg.model, torch_dtype=dtype, attn_implementation=cfg.attn, local_files_only=True
        ).to(cfg.device).eval()
    conf = decoder_config(cfg.model)
    conf._attn_implementation = cfg.attn
    torch.manual_seed(0)
    with torch.device(cfg.device):
        model = AutoModelForCausalLM.from_config(conf, torch_dtype=dtype)
    return model.eval()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class _Timer:
    """CUDA events on a GPU, wall clock on the CPU."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")

    def __enter__(self) -> _Timer:
        if self.cuda:
            self.start, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.start.record()
        else:
            self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            self.end.record()
            torch.cuda.synchronize()
            self.seconds = self.start.elapsed_time(self.end) / 1000
        else:
            self.seconds = time.perf_counter() - self.t0


def _kv_bytes(cache: Any) -> int:
    return sum(int(layer.keys.numel() * layer.keys.element_size() * 2) for layer in cache.layers)


@torch.inference_mode()
def _one_run(model: torch.nn.Module, ids: torch.Tensor, decode_tokens: int, device: str) -> dict[str, Any]:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    with _Timer(device) as t:
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
    token = out.logits[:, -1:].argmax(-1)
    steps = []
    for _ in range(decode_tokens):
        with _Timer(device) as s:
            out = model(input_ids=token, cache=cache, use_cache=True)
        steps.append(s.seconds)
        token = out.logits[:, -1:].argmax(-1)
    peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else None
    return {"prefill": t.seconds, "decode": statistics.median(steps) if steps else None,
            "kv_bytes": _kv_bytes(cache), "peak_bytes": peak}


def _spread(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "runs": len(xs)}


def run_bench(cfg: BenchConfig, progress: bool = True) -> dict[str, Any]:
    from tqdm import tqdm

    model = build_model(cfg)
    shape = DecoderShape.from_config(model.config)
    n_visual = cfg.frames * cfg.tokens_per_frame
    seq = cfg.prefix + n_visual + cfg.question
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(10, model.config.vocab_size - 10, (1, seq), generator=gen).to(cfg.device)
    span = VideoSpan(cfg.prefix, cfg.frames, cfg.tokens_per_frame)
    plan = [(name, trim) for name in cfg.variants for trim in ((False, True) if cfg.trim_kv and name != "none" else (False,))]
    rows = []
    bar = tqdm(total=len(plan) * (cfg.warmup + cfg.repeats), desc="bench", unit="run", disable=not progress)
    for name, trim in plan:
        method = variant(name, cfg.retain, cfg.layer)
        runs, stage_parts = [], []
        with apply(model, method, span=span, trim_kv=trim) as handle:
            for i in range(cfg.warmup + cfg.repeats):
                r = _one_run(model, ids, cfg.decode_tokens, cfg.device)
                bar.update(1)
                if i >= cfg.warmup:
                    runs.append(r)
                    st = handle.last_stats.stages
                    stage_parts.append({"stage_seconds": sum(s.seconds for s in st),
                                        **(st[-1].parts if st else {})})
        stages = [(s.layer, s.retain) for s in method.stages()]
        fl = method_flops(shape, seq, n_visual, stages, reference_pass=getattr(method, "debias", "") == "reference")
        kv_lens = [r_len for r_len in _kv_lens(shape.num_layers, seq, n_visual, method, trim)]
        overhead = [p["stage_seconds"] for p in stage_parts]
        rows.append({
            "variant": name + ("+trim_kv" if trim else ""), "method": method.to_dict(), "trim_kv": trim,
            "prefill_s": _spread([r["prefill"] for r in runs]),
            "decode_s_per_token": _spread([r["decode"] for r in runs]) if cfg.decode_tokens else None,
            "method_overhead_s": _spread(overhead),
            "reference_s": _spread([p.get("reference_seconds", 0.0) for p in stage_parts]),
            "scoring_s": _spread([p.get("scoring_seconds", 0.0) for p in stage_parts]),
            "dedup_s": _spread([p.get("dedup_seconds", 0.0) for p in stage_parts]),
            "kv_bytes": runs[-1]["kv_bytes"], "peak_bytes": runs[-1]["peak_bytes"],
            "flops": fl, "decode_flops": decode_flops_per_token(shape, kv_lens)["total"],
        })
    bar.close()
    base = next(r for r in rows if r["variant"] == "none")
    for r in rows:
        r["speedup"] = base["prefill_s"]["median"] / r["prefill_s"]["median"]
        r["flops_bound"] = r["flops"]["speedup_bound"]
        r["overhead_share_of_dense"] = r["method_overhead_s"]["median"] / base["prefill_s"]["median"]
    return {"config": asdict(cfg), "machine": machine(cfg), "seq_len": seq, "n_visual": n_visual, "rows": rows}


def _kv_lens(n_layers: int, seq: int, n_visual: int, method: Method, trim: bool) -> list[int]:
    stages = method.stages()
    if not stages:
        return [seq] * n_layers
    kept = seq - n_visual + max(1, round(stages[-1].retain * n_visual))
    k = stages[0].layer
    return [(kept if trim else seq) if i < k else kept for i in range(n_layers)]


def machine(cfg: BenchConfig) -> dict[str, Any]:
    info = {
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "dtype": cfg.dtype, "attn": cfg.attn, "device": cfg.device,
    }
    if cfg.device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
    return info
