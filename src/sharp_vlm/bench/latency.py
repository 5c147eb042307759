"""Measured prefill (time to first token), decode and method overhead, beside the FLOPs the config implies.

The unpruned model always runs in the same invocation, on the same inputs, so every speedup is measured
against a baseline from the same machine and the same moment.
"""

from __future__ import annotations

import os
import platform
import statistics
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import cpu_has_native_bf16, cpu_info, dtype_choice
from ..checks import check_retain, check_unique
from ..core.budget import keep_count
from ..core.tower import TowerFeatures
from ..engine.bias_cache import BiasCache
from ..engine.handle import Handle, apply
from ..errors import ConfigError
from ..flops import DecoderShape, decode_flops_per_token, method_flops
from ..loading import Variant, build_method, split_layer
from ..methods.base import Method
from ..models.generic import VideoSpan
from .bare import BareFastV
from .memory import PeakMemory
from .timer import Timer

# The same schedule as the methods (prune at layer K to the same budget) with a selection that costs nothing:
# what a method's prefill would take without its own work. A method's measured overhead is its time above it.
FLOOR = "floor"
# Outside the engine: the model with no hooks at all, and a hand-rolled hook-based FastV (bench/bare.py). They
# measure what the engine itself costs: `none` against `unpatched`, `fastv` against `bare-fastv`.
UNPATCHED = "unpatched"
BARE_FASTV = "bare-fastv"
_OUTSIDE_ENGINE = (UNPATCHED, BARE_FASTV)


@dataclass
class BenchConfig:
    model: str = "qwen2.5-0.5b"  # a name from bench.shapes, or a local checkpoint folder
    frames: int = 32
    tokens_per_frame: int = 196
    prefix: int = 20
    question: int = 30
    layer: int = 2
    retain: float = 0.1
    dtype: str = "auto"  # bfloat16 on a GPU or a CPU with native bf16, else float32 (see checkpoint.dtype_choice)
    attn: str = "sdpa"
    repeats: int = 3
    warmup: int = 1
    decode_tokens: int = 8
    device: str = "cpu"
    variants: list[str] = field(
        default_factory=lambda: ["none", FLOOR, "fastv", "sharp-reference", "sharp-cached"]
    )
    trim_kv: bool = True  # also time decode with the shallow layers' KV trimmed
    vision: str | None = "auto"  # a shape name with a vision tower; "auto": the model's own; None: skip
    vision_frames: int | None = None  # encode this many frames and scale to all (the tower is per frame)
    options: dict[str, dict[str, Any]] = field(default_factory=dict)  # per method name: extra config fields
    batch: list[int] = field(default_factory=lambda: [1])  # videos per prefill: every variant at each size


# benchmark names for runs that are not a plain registered method: (method, options, with a shared bias cache)
_NAMED = {
    "none": ("none", {}, False),
    UNPATCHED: ("none", {}, False),
    BARE_FASTV: ("fastv", {}, False),
    "sharp-reference": ("sharp", {"debias": "reference"}, False),
    "sharp-cached": ("sharp", {"debias": "reference"}, True),
    "sharp-nodebias": ("sharp", {"debias": "off"}, False),
    FLOOR: ("uniform", {}, False),
}


def variant(name: str, retain: float, layer: int, options: dict[str, dict[str, Any]] | None = None) -> Variant:
    """A benchmark variant by name: one of the names above, or any registered method; "name@K" at layer K;
    `options`: extra config fields per method name (e.g. {"pdrop": {"layers": [6, 12, 18]}})."""
    base, at = split_layer(name)
    method, options_named, cached = _NAMED.get(base, (base, {}, False))
    extra = (options or {}).get(method, {})
    config = build_method(method, retain, layer if at is None else at, {**options_named, **extra}, label=name)
    return Variant(name, config.name, retain, config, bias_cache=cached)


def build_model(cfg: BenchConfig, dtype_name: str) -> torch.nn.Module:
    """Random weights from a built-in config (no download), or a local checkpoint folder."""
    from transformers import AutoModelForCausalLM

    from .shapes import decoder_config

    dtype = getattr(torch, dtype_name)
    if Path(cfg.model).is_dir():
        folder_config(cfg.model)  # a decoder-only checkpoint, or a one-line refusal before anything loads
        return AutoModelForCausalLM.from_pretrained(
            cfg.model, dtype=dtype, attn_implementation=cfg.attn, local_files_only=True
        ).to(cfg.device).eval()
    conf = decoder_config(cfg.model)
    conf._attn_implementation = cfg.attn
    if conf.pad_token_id is None and conf.eos_token_id is None:
        conf.pad_token_id = 0  # random weights: any token is as neutral as another for ShaRP's reference pass
    torch.manual_seed(0)
    with torch.device(cfg.device):
        model = AutoModelForCausalLM.from_config(conf, dtype=dtype)
    return model.eval()


def _kv_bytes(cache: Any) -> int:
    return sum(int(layer.keys.numel() * layer.keys.element_size() * 2) for layer in cache.layers)


@torch.inference_mode()
def _one_run(model: torch.nn.Module, ids: torch.Tensor, decode_tokens: int, device: str) -> dict[str, Any]:
    with PeakMemory(device) as mem:
        with Timer(device) as t:
            out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
        cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
        token = out.logits[:, -1:].argmax(-1)
        steps = []
        for _ in range(decode_tokens):
            with Timer(device) as s:
                out = model(input_ids=token, cache=cache, use_cache=True)
            steps.append(s.seconds)
            token = out.logits[:, -1:].argmax(-1)
    return {"prefill": t.seconds, "decode": statistics.median(steps) if steps else None,
            "kv_bytes": _kv_bytes(cache), **mem.result()}


def _attached(v: Variant, model: torch.nn.Module, span: VideoSpan, trim: bool, cfg: BenchConfig,
              cache: BiasCache) -> AbstractContextManager:
    if v.label == UNPATCHED:
        return nullcontext()
    if v.label == BARE_FASTV:
        return BareFastV(model, v.config.layer, cfg.retain, span.start, span.n_tokens)  # type: ignore[attr-defined]
    return apply(model, v.config, span=span, trim_kv=trim, bias_cache=cache if v.bias_cache else None)


def _spread(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "runs": len(xs)}


def _stage_parts(stages: list[Any]) -> dict[str, float]:
    """Seconds (and other numbers) a prefill's stages recorded, summed over the stages."""
    out: dict[str, float] = {"stage_seconds": sum(s.seconds for s in stages)}
    for s in stages:
        for key, value in s.costs.numbers().items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                out[key] = out.get(key, 0.0) + value
    return out


def _median_part(parts: list[dict[str, Any]], key: str) -> dict[str, float]:
    return _spread([float(p.get(key, 0.0)) for p in parts])


def _vision_config(cfg: BenchConfig) -> tuple[str, dict[str, Any]] | None:
    """The vision tower to time: checked before the long decoder runs, timed after them."""
    from .shapes import SHAPES, vision_config

    name = cfg.vision
    if name == "auto":
        if cfg.model.lower() not in SHAPES:
            return None  # a local checkpoint: its decoder alone is timed
        name = cfg.model
    if name is None:
        return None
    vision_cfg = vision_config(name)
    if vision_cfg is None:
        if cfg.vision == "auto":
            return None
        raise ConfigError(f"{name!r} has no vision tower; pick one of the VLM shapes for --vision")
    if cfg.vision_frames is not None and not 1 <= cfg.vision_frames <= cfg.frames:
        raise ConfigError(f"vision frames to measure must be in 1..{cfg.frames}, got {cfg.vision_frames}")
    return name, vision_cfg


def _time_vision(cfg: BenchConfig, tower: tuple[str, dict[str, Any]] | None, dtype: str) -> dict[str, Any] | None:
    from .vision import time_vision

    if tower is None:
        return None
    name, vision_cfg = tower
    out = time_vision(vision_cfg, cfg.frames, cfg.tokens_per_frame, getattr(torch, dtype), cfg.device,
                      cfg.repeats, cfg.warmup, cfg.vision_frames)
    return {"shape": name, "tower": vision_cfg.get("model_type"), **out}


def check_bench(cfg: BenchConfig) -> None:
    """Every setting and the model's depth, from its config alone (nothing is built): a bad flag or a folder that
    is not a decoder-only checkpoint stops before the long runs."""
    check_retain(cfg.retain)  # also where only 'none' runs: the report states the retain
    if cfg.frames < 1 or cfg.tokens_per_frame < 1:
        raise ConfigError("frames and tokens per frame must be >= 1")
    if cfg.repeats < 1 or cfg.warmup < 0:
        raise ConfigError("repeats must be >= 1 and warmup >= 0")
    if not cfg.batch or any(b < 1 for b in cfg.batch):
        raise ConfigError(f"batch sizes must be >= 1, got {cfg.batch}")
    check_unique([str(b) for b in cfg.batch], "--batch")
    if "none" not in cfg.variants:
        raise ConfigError("the variants must include 'none': every speedup is measured against it in the same run")
    check_unique([v.lower() for v in cfg.variants], "--variants")
    depth = _depth(cfg)
    if cfg.layer >= depth:
        raise ConfigError(f"--layer {cfg.layer} is beyond the model's depth: {cfg.model} has {depth} decoder layers, "
                          f"so use a layer in 1..{depth - 1}")
    run = {_NAMED.get(base, (base,))[0] for base in (split_layer(n)[0] for n in cfg.variants)}
    unused = sorted(set(cfg.options) - run)
    if unused:
        raise ConfigError(f"--options names {', '.join(unused)}, which no variant runs: {', '.join(cfg.variants)}")
    for name in cfg.variants:  # every stage of every variant, not only --layer (pdrop's 8/16/24, name@K)
        for st in variant(name, cfg.retain, cfg.layer, cfg.options).config.stages():
            if st.layer >= depth:
                raise ConfigError(f"{name}: a stage at layer {st.layer} is beyond the model's depth: {cfg.model} has "
                                  f"{depth} decoder layers; set its layers within 1..{depth - 1} (name@K, or "
                                  "--options for several, e.g. '{\"pdrop\": {\"layers\": [6, 12, 18]}}')")


def folder_config(folder: str | Path) -> dict[str, Any]:
    """The config.json of a local checkpoint folder, refused unless it is a decoder-only LM: the benchmark feeds
    the decoder token ids, which a Video LLM's own class cannot run without its visual inputs."""
    import json

    from .shapes import nearest_shape

    path = Path(folder) / "config.json"
    if not path.is_file():
        raise ConfigError(f"{folder} has no config.json: give a folder written by save_pretrained (a decoder-only "
                          "*ForCausalLM checkpoint) or a built-in shape name")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path} cannot be read as JSON ({err}); give a folder written by save_pretrained "
                          "or a built-in shape name") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is not a JSON object; give a folder written by save_pretrained")
    if "vision_config" in data:
        raise ConfigError(
            f"{folder} is a Video LLM checkpoint ({data.get('model_type', 'unknown type')}); sharp bench times the "
            f"decoder-only LM, so give --model {nearest_shape(data)} (the nearest built-in shape, random weights, "
            "with its vision tower) or a decoder-only *ForCausalLM folder; to time this Video LLM end to end, use "
            "sharp run --compare with --model set to this folder"
        )
    return data


def _depth(cfg: BenchConfig) -> int:
    """Decoder layers of the benchmarked model, read from its config (before any weights exist)."""
    from .shapes import decoder_config

    if Path(cfg.model).is_dir():
        data = folder_config(cfg.model)
        try:
            return int(data.get("text_config", data)["num_hidden_layers"])
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"{Path(cfg.model) / 'config.json'} has no num_hidden_layers; give a decoder-only "
                              "*ForCausalLM checkpoint written by save_pretrained") from None
    return int(decoder_config(cfg.model).num_hidden_layers)


def run_bench(cfg: BenchConfig, progress: bool = True) -> dict[str, Any]:
    from tqdm import tqdm

    check_bench(cfg)
    # the unpruned model first: everything else is compared with it, at the same batch size
    names = ["none"] + [v for v in cfg.variants if v != "none"]
    plan = [(batch, name, trim) for batch in cfg.batch for name in names
            for trim in ((False, True) if cfg.trim_kv and name not in ("none", *_OUTSIDE_ENGINE) else (False,))]
    variants = [variant(name, cfg.retain, cfg.layer, cfg.options) for _, name, _ in plan]
    cache = BiasCache()  # the cached variant's: the warm-up run fills it, the timed runs hit it
    tower = _vision_config(cfg)
    dtype, dtype_reason = dtype_choice(cfg.dtype, cfg.device)
    model = build_model(cfg, dtype)
    shape = DecoderShape.from_config(model.config)
    n_visual = cfg.frames * cfg.tokens_per_frame
    seq = cfg.prefix + n_visual + cfg.question
    gen = torch.Generator().manual_seed(0)
    # one video's prompt per row, each of its own tokens (same shapes: no padding)
    ids = {b: torch.randint(10, model.config.vocab_size - 10, (b, seq), generator=gen).to(cfg.device)
           for b in cfg.batch}
    span = VideoSpan(cfg.prefix, cfg.frames, cfg.tokens_per_frame, tower=stand_in_tower(n_visual))
    results: list[tuple[list[dict[str, Any]], list[dict[str, Any]]]] = [([], []) for _ in plan]
    bar = tqdm(total=len(plan) * (cfg.warmup + cfg.repeats), desc="bench", unit="run", disable=not progress)
    # Rounds over all variants rather than all repeats of one variant, so that a slow drift of the machine
    # (other tenants, clocks) spreads over every variant instead of biasing the ones that ran during it.
    for i in range(cfg.warmup + cfg.repeats):
        for (batch, name, trim), v, (runs, parts) in zip(plan, variants, results, strict=True):
            bar.set_postfix_str(f"{name}{'+trim_kv' if trim else ''} x{batch}", refresh=False)
            with _attached(v, model, span, trim, cfg, cache) as handle:
                r = _one_run(model, ids[batch], cfg.decode_tokens, cfg.device)
            bar.update(1)
            if i >= cfg.warmup:
                runs.append(r)
                parts.append(_stage_parts(handle.last_stats.stages if isinstance(handle, Handle) else []))
    rows = []
    for (batch, name, trim), v, (runs, parts) in zip(plan, variants, results, strict=True):
        method = v.config
        stages = [(s.layer, s.retain) for s in method.stages()]
        # query="text" scores from every token after the video (the question; the last token when there is none),
        # "last" from the final one; a cached bias pays no reference pass per request
        count = {"reference_pass": [s.method.reference_pass and not v.bias_cache for s in method.stages()],
                 "scoring": [s.method.scores_attention for s in method.stages()],
                 "n_query": [max(cfg.question, 1) if getattr(s.method, "query", "last") == "text" else 1
                             for s in method.stages()]}
        fl = method_flops(shape, seq, n_visual, stages, causal=True, **count)
        fl_rect = method_flops(shape, seq, n_visual, stages, **count)
        kv_lens = _kv_lens(shape.num_layers, seq, n_visual, method, trim)
        rows.append({
            "variant": name + ("+trim_kv" if trim else ""), "batch": batch, "method": method.to_dict(), "trim_kv": trim,
            "segment_mask": any(s.segment_mask is not None for s in method.stages()),
            "prefill_s": _spread([r["prefill"] for r in runs]),
            "decode_s_per_token": _spread([r["decode"] for r in runs]) if cfg.decode_tokens else None,
            "stage_s": _median_part(parts, "stage_seconds"),
            "layers_before_s": _median_part(parts, "layers_before_seconds"),
            "reference_s": _median_part(parts, "reference_seconds"),
            "scoring_s": _median_part(parts, "scoring_seconds"),
            "select_s": _median_part(parts, "select_seconds"),
            "kv_bytes": runs[-1]["kv_bytes"],
            "peak_bytes": max((r["peak_bytes"] for r in runs if r["peak_bytes"] is not None), default=None),
            "added_bytes": max((r["added_bytes"] for r in runs if r["added_bytes"] is not None), default=None),
            "memory_source": runs[-1]["memory_source"],
            "flops": fl, "flops_full_rectangle": fl_rect,
            "flops_per_batch": {k: fl[k] * batch for k in ("dense", "pruned")},  # same bound: no padding here
            "decode_flops": decode_flops_per_token(shape, kv_lens)["total"],
        })
    bar.close()
    vision = _time_vision(cfg, tower, dtype)
    for batch in cfg.batch:
        _derive([r for r in rows if r["batch"] == batch], vision)
    info = machine(cfg, dtype, dtype_reason)
    return {"config": asdict(cfg), "machine": info, "seq_len": seq, "n_visual": n_visual, "rows": rows,
            "vision": vision, "tower_attention": TOWER_NOTE}


TOWER_NOTE = ("methods that read the vision tower's attention (visionzip, holitom, flashvid) get a random stand-in: "
              "the benchmark's decoder-only model has no tower; it changes which tokens they keep, not the decoder's "
              "cost, and the capture's own cost in the tower is not timed")


def stand_in_tower(n_visual: int) -> TowerFeatures:
    """Seeded random tower attention and keys for the benchmark's span."""
    gen = torch.Generator().manual_seed(1)
    return TowerFeatures(torch.rand(n_visual, generator=gen), None, torch.randn(n_visual, 64, generator=gen))


def _derive(rows: list[dict[str, Any]], vision: dict[str, Any] | None) -> None:
    """Speedups against the unpruned row (of one batch size), the share of the FLOPs bound reached, each method's
    overhead, throughput and time to first token.

    overhead_s: the method's own work in the prefill: scoring + selection + its segment mask's extra cost in the
    layers before the stage (layers_before_s above the floor's), without the reference pass (reported apart).
    above_floor_s: measured prefill minus the floor's with the same KV setting, i.e. everything the method adds.
    after_stages_s: the decoder's layers after the first stage (prefill - layers before it - the stages' own time).
    ttft_s: the tower for every video of the batch (one video's time x the batch: it encodes frames apart) + the
    prefill.
    """
    base = next(r for r in rows if r["variant"] == "none")
    dense = base["prefill_s"]["median"]
    floors = {r["trim_kv"]: r for r in rows if r["variant"].split("+")[0] == FLOOR}
    encode = vision["seconds"]["median"] if vision else 0.0
    bare = next((r for r in rows if r["variant"] == BARE_FASTV), None)
    unpatched = next((r for r in rows if r["variant"] == UNPATCHED), None)
    for r in rows:
        prefill = r["prefill_s"]["median"]
        r["speedup"] = dense / prefill
        r["videos_per_s"] = r["batch"] / prefill
        r["after_stages_s"] = max(0.0, prefill - r["layers_before_s"]["median"] - r["stage_s"]["median"])
        r["flops_bound"] = r["flops"]["speedup_bound"]
        r["flops_bound_full_rectangle"] = r["flops_full_rectangle"]["speedup_bound"]
        r["of_bound"] = r["speedup"] / r["flops_bound"]
        floor = floors.get(r["trim_kv"])
        mask = 0.0
        if floor is not None and r is not base and r["variant"] != UNPATCHED:
            if r["segment_mask"]:
                mask = max(0.0, r["layers_before_s"]["median"] - floor["layers_before_s"]["median"])
            r["above_floor_s"] = prefill - floor["prefill_s"]["median"]
        r["mask_s"] = mask
        r["overhead_s"] = r["scoring_s"]["median"] + r["select_s"]["median"] + mask
        r["overhead_share_of_dense"] = r["overhead_s"] / dense
        if bare is not None:
            r["vs_bare_fastv"] = bare["prefill_s"]["median"] / prefill  # > 1: faster than the hand-rolled FastV
        if unpatched is not None:
            r["vs_unpatched"] = unpatched["prefill_s"]["median"] / prefill
        if vision:
            r["tower_s"] = encode * r["batch"]
            r["ttft_s"] = r["tower_s"] + prefill
            r["ttft_speedup"] = (r["tower_s"] + dense) / r["ttft_s"]


def _kv_lens(n_layers: int, seq: int, n_visual: int, method: Method, trim: bool) -> list[int]:
    """Keys each layer's cache holds after the prefill: the rows that reached it (trim_kv: the shallow layers
    keep only what the first stage kept)."""
    stages = method.stages()
    out, cur = [], seq
    for i in range(n_layers):
        for s in stages:
            if s.layer == i:
                cur = seq - n_visual + keep_count(s.retain, n_visual)
        out.append(cur)
    if trim and stages:
        out[: stages[0].layer] = [out[stages[0].layer]] * stages[0].layer
    return out


def _cpu_name() -> str:
    for line in cpu_info().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine(cfg: BenchConfig, dtype: str, dtype_reason: str) -> dict[str, Any]:
    info = {
        "platform": platform.platform(), "processor": _cpu_name(), "cpus": os.cpu_count(),
        "python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "dtype": dtype, "dtype_reason": dtype_reason, "attn": cfg.attn, "device": cfg.device,
        "cpu_native_bf16": cpu_has_native_bf16(),
    }
    if cfg.device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
    return info
