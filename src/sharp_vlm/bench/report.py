"""Benchmark results as JSON, a table and a PNG."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..viz.figure import pyplot, save


def _mib(x: int | None) -> str:
    return "-" if x is None else f"{x / 2**20:.0f}"


def _pct(x: float | None, dense: float) -> str:
    return "-" if x is None else f"{x:.2f} ({x / dense:.1%})"


def _batches(result: dict[str, Any]) -> list[int]:
    return sorted({r.get("batch", 1) for r in result["rows"]})


def _label(r: dict[str, Any], result: dict[str, Any]) -> str:
    """The variant's name, with its batch size where the run timed several."""
    return r["variant"] + (f" x{r.get('batch', 1)}" if len(_batches(result)) > 1 else "")


def table(result: dict[str, Any]) -> str:
    m = result["machine"]
    rows = result["rows"]
    dense_of = {r.get("batch", 1): r["prefill_s"]["median"] for r in rows if r["variant"] == "none"}
    lines = [
        f"{result['config']['model']}: {result['seq_len']} tokens ({result['n_visual']} visual), layer "
        f"{result['config']['layer']}, retain {result['config']['retain']:g}, {m['dtype']} ({m['dtype_reason']}), "
        f"{m['attn']}, {m['device']} ({m.get('gpu') or m['processor']}, {m['threads']} threads), torch {m['torch']}",
        "",
        "| variant | prefill s (min-max) | speedup | FLOPs bound | of bound | bound, rect. | FLOPs cut | "
        "overhead s (of dense) | scoring s | select s | mask s | reference s | above floor s | decode ms/tok | "
        "KV MiB | peak MiB (+run) |",
        "|" + "---|" * 16,
    ]
    for r in rows:
        p = r["prefill_s"]
        dec = r["decode_s_per_token"]
        above = r.get("above_floor_s")
        dense = dense_of[r.get("batch", 1)]
        lines.append(
            f"| {_label(r, result)} | {p['median']:.2f} ({p['min']:.2f}-{p['max']:.2f}) | {r['speedup']:.2f}x | "
            f"{r['flops_bound']:.2f}x | {r['of_bound']:.0%} | {r['flops_bound_full_rectangle']:.2f}x | "
            f"{r['flops']['reduction']:.1%} | "
            f"{_pct(r['overhead_s'], dense)} | {r['scoring_s']['median']:.3f} | {r['select_s']['median']:.3f} | "
            f"{r['mask_s']:.3f} | {r['reference_s']['median']:.3f} | "
            f"{'-' if above is None else f'{above:+.2f}'} | "
            f"{dec['median'] * 1000 if dec else float('nan'):.1f} | {r['kv_bytes'] / 2**20:.1f} | "
            f"{_mib(r['peak_bytes'])} (+{_mib(r['added_bytes'])}) |"
        )
    lines += [
        "",
        "speedup: unpruned prefill / this prefill (medians). FLOPs bound: the speedup if time followed FLOPs "
        "(scoring and a per-request reference pass included), counting the attention pairs a causal kernel "
        "computes; rect.: counting the full attention rectangle (torch's flop-counter convention). overhead: "
        "scoring + selection (dedup) + the segment mask's extra time in the layers before the stage; "
        "the reference pass is apart. above floor: prefill minus "
        f"the 'floor' run (same schedule, free selection). Peak memory: {rows[0].get('memory_source')}.",
    ]
    by_name = {r["variant"]: r for r in rows}
    engine_cost = []
    if "unpatched" in by_name:
        engine_cost.append(f"unpruned through the engine runs at {by_name['none']['vs_unpatched']:.2f}x the "
                           "unpatched model's speed")
    if "bare-fastv" in by_name:
        engine_cost += [f"{name} at {by_name[name]['vs_bare_fastv']:.2f}x a hand-rolled hook FastV's"
                        for name in ("floor", "fastv", "sharp-cached") if name in by_name]
    if engine_cost:
        lines += ["", "Engine cost: " + "; ".join(engine_cost) + " (prefill medians; 1.00x = no cost)."]
    v = result.get("vision")
    if v:
        how = (f"measured on {v['frames_measured']} and scaled" if v["extrapolated"] else "measured")
        lines += [
            "",
            f"Vision encoder ({v['shape']}, {v['tower']}, random weights): {v['seconds']['median']:.2f} s for "
            f"{v['frames']} frames ({how}), {v['flops'] / 1e12:.2f} TFLOPs. Time to first token = encode + prefill:",
            "",
            "| variant | TTFT s | TTFT speedup |",
            "|---|---|---|",
        ]
        lines += [f"| {_label(r, result)} | {r['ttft_s']:.2f} | {r['ttft_speedup']:.2f}x |" for r in rows
                  if not r["trim_kv"]]
    if _batches(result) != [1]:
        lines += ["", batch_table(result)]
    return "\n".join(lines)


def batch_table(result: dict[str, Any]) -> str:
    """Per batch size: throughput, the prefill's split around the first stage, the tower, time to first token and
    peak memory, each variant beside the unpruned one of the same batch."""
    tower = result.get("vision") is not None
    head = ("| batch | variant | prefill s | videos/s | speedup | FLOPs bound | decoder before stage s | stages s | "
            "decoder after s |" + (" tower s | TTFT s | TTFT speedup |" if tower else "") + " peak MiB (+run) |")
    lines = ["Batches (each a batch of videos of the same shape; tower: one video's time x the batch):", "",
             head, "|" + "---|" * (head.count("|") - 1)]
    for r in sorted(result["rows"], key=lambda r: (r.get("batch", 1), r["trim_kv"])):
        cells = [str(r.get("batch", 1)), r["variant"], f"{r['prefill_s']['median']:.2f}",
                 f"{r['videos_per_s']:.3f}" if "videos_per_s" in r else "-", f"{r['speedup']:.2f}x",
                 f"{r['flops_bound']:.2f}x", f"{r['layers_before_s']['median']:.2f}", f"{r['stage_s']['median']:.2f}",
                 f"{r['after_stages_s']:.2f}" if "after_stages_s" in r else "-"]
        if tower:
            cells += [f"{r['tower_s']:.2f}", f"{r['ttft_s']:.2f}", f"{r['ttft_speedup']:.2f}x"]
        cells.append(f"{_mib(r['peak_bytes'])} (+{_mib(r['added_bytes'])})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write(result: dict[str, Any], out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "bench.json", "table": out / "bench.md", "plot": out / "speedup.png"}
    paths["json"].write_text(json.dumps(result, indent=1))
    paths["table"].write_text(table(result) + "\n")
    plot(result, paths["plot"])
    return paths


def plot(result: dict[str, Any], path: Path) -> Path:
    plt = pyplot()

    rows = [r for r in result["rows"] if not r["trim_kv"]]
    names = [_label(r, result) for r in rows]
    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    vision = result.get("vision")
    width = 0.27 if vision else 0.4
    series = [("measured prefill speedup", "speedup"), ("bound from FLOPs (causal attention)", "flops_bound")]
    if vision:
        series.append(("time to first token, vision encoder included", "ttft_speedup"))
    offsets = [(j - (len(series) - 1) / 2) * width for j in range(len(series))]
    for (label, key), off in zip(series, offsets, strict=True):
        bars = ax.bar([i + off for i in x], [r[key] for r in rows], width=width, label=label)
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
    ax.set_xticks(list(x), names, fontsize=8)
    ax.set_ylabel("x faster than unpruned")
    m, c = result["machine"], result["config"]
    ax.set_title(f"{c['model']}, {result['seq_len']} tokens ({result['n_visual']} visual), layer {c['layer']}, "
                 f"retain {c['retain']:g}, {m['dtype']}, {m.get('gpu') or m['device']}", fontsize=9)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=len(series), frameon=False)
    return save(fig, path)
