"""Summaries of an evaluation: one row per method x retain, written as JSON, a Markdown table and a plot.

Per row: accuracy; relative accuracy (accuracy / the unpruned model's); agreement (share of samples whose
prediction equals the unpruned model's prediction, the extracted letter or normalised text); the kept ratio
actually reached (kept / original visual tokens, mean over samples); prefill FLOPs (mean, and as a share of the
unpruned prefill on the same prompts); measured prefill seconds (mean) and the speedup of the mean over the
unpruned mean. The records come scored from `run_eval`: every stored reply against the data file as it is now.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from ..viz.figure import pyplot, save
from .files import atomic_write, replacing
from .runner import EvalRun


def _mean(values: list[float | None]) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return statistics.fmean(vals) if vals else None


def summarize(run: EvalRun) -> list[dict[str, Any]]:
    by_variant: dict[str, list[dict[str, Any]]] = {v.key: [] for v in run.variants}
    for rec in run.records:
        by_variant[rec["variant"]].append(rec)
    base = {rec["id"]: rec for rec in by_variant["none"]}
    base_acc = _mean([float(r["correct"]) for r in base.values()])
    base_prefill = _mean([r["prefill_s"] for r in base.values()])
    rows = []
    for v in run.variants:
        recs = by_variant[v.key]
        acc = _mean([float(r["correct"]) for r in recs])
        flops, dense = _mean([r["flops"] for r in recs]), _mean([r["flops_dense"] for r in recs])
        prefill = _mean([r["prefill_s"] for r in recs])
        rows.append({
            "method": v.method, "retain": v.retain, "variant": v.key, "n": len(recs), "accuracy": acc,
            "relative_accuracy": acc / base_acc if acc is not None and base_acc else None,
            "agreement": _mean([float(r["pred"] == base[r["id"]]["pred"]) for r in recs if r["id"] in base]),
            "kept_ratio": _mean([r["kept_ratio"] for r in recs]),
            "n_visual": _mean([r["n_visual"] for r in recs]), "n_kept": _mean([r["n_kept"] for r in recs]),
            "tflops": None if flops is None else flops / 1e12,
            "flops_ratio": flops / dense if flops is not None and dense else None,
            "prefill_s": prefill,
            "prefill_speedup": base_prefill / prefill if prefill and base_prefill else None,
        })
    return rows


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| method | retain | n | accuracy | rel. acc. | agreement | kept ratio | TFLOPs | FLOPs vs dense "
            "| prefill s | prefill speedup |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['retain']:g} | {r['n']} | {_fmt(r['accuracy'], '.3f')} "
            f"| {_fmt(r['relative_accuracy'], '.3f')} | {_fmt(r['agreement'], '.3f')} | {_fmt(r['kept_ratio'], '.3f')} "
            f"| {_fmt(r['tflops'], '.4g')} | {_fmt(r['flops_ratio'], '.3f')} | {_fmt(r['prefill_s'], '.3f')} "
            f"| {_fmt(r['prefill_speedup'], '.2f')} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> Path:
    """Accuracy against the kept ratio (left) and against prefill TFLOPs (right), one line per method."""
    plt = pyplot()

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for ax, x_key, label in ((axes[0], "kept_ratio", "kept visual tokens (share)"),
                             (axes[1], "tflops", "prefill TFLOPs per sample")):
        for m in methods:
            pts = sorted((r[x_key], r["accuracy"]) for r in rows
                         if r["method"] == m and r[x_key] is not None and r["accuracy"] is not None)
            if not pts:
                continue
            xs, ys = zip(*pts, strict=True)
            if m == "none":
                ax.axhline(ys[0], color="gray", linestyle="--", linewidth=1)
                ax.plot(xs, ys, marker="*", markersize=12, linestyle="", color="gray", label="unpruned")
            else:
                ax.plot(xs, ys, marker="o", label=m)
        ax.set_xlabel(label)
        ax.set_ylabel("accuracy")
        ax.set_ylim(-0.02, 1.02)  # the whole range: a drop of a few points should look like one
        ax.grid(alpha=0.3)
    axes[0].legend()
    return save(fig, path)


def write(run: EvalRun, out: str | Path) -> dict[str, Path]:
    """`report.json`, `report.md` and `accuracy.png` in `out`, each replaced in one step (a run beside this one
    or a kill never leaves a cut report)."""
    from .runner import config_dict

    out = Path(out)
    rows = summarize(run)
    kinds = sorted({s.kind for s in run.samples})
    report = {
        "config": config_dict(run.config), "settings": run.config.settings(), "n_samples": len(run.samples),
        "kinds": kinds, "computed": run.computed, "reused": run.reused, "rows": rows,
    }
    paths = {"report_json": out / "report.json", "report_md": out / "report.md", "plot": out / "accuracy.png",
             "records": out / "records.jsonl"}
    atomic_write(paths["report_json"], json.dumps(report, indent=2) + "\n")
    s = run.config.settings()
    frames = f"{s['frames']} frames" if s["frames"] is not None else f"{s['fps']:g} fps"
    atomic_write(
        paths["report_md"],
        f"# Video QA: {Path(s['data']).name}\n\nmodel `{s['model']}`, {len(run.samples)} samples ({', '.join(kinds)}), "
        f"{frames}, layer {s['layer']}, dtype {s['dtype']}, device {s['device']}\n\n{table(rows)}\n"
    )
    with replacing(paths["plot"]) as tmp:
        plot(rows, tmp)
    return paths
