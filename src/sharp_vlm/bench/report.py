"""Benchmark results as JSON, a table and a PNG."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def table(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f"{result['config']['model']}: {result['seq_len']} tokens ({result['n_visual']} visual), {m['dtype']}, "
        f"{m['attn']}, {m['device']} ({m.get('gpu') or m['processor']}, {m['threads']} threads), torch {m['torch']}",
        "",
        "| variant | prefill s (min-max) | speedup | FLOPs bound | FLOPs cut | overhead s | ref s | dedup s | "
        "decode ms/tok | KV MiB |",
        "|" + "---|" * 10,
    ]
    for r in result["rows"]:
        p = r["prefill_s"]
        dec = r["decode_s_per_token"]
        lines.append(
            f"| {r['variant']} | {p['median']:.2f} ({p['min']:.2f}-{p['max']:.2f}) | {r['speedup']:.2f}x | "
            f"{r['flops_bound']:.2f}x | {r['flops']['reduction']:.1%} | {r['method_overhead_s']['median']:.3f} | "
            f"{r['reference_s']['median']:.3f} | {r['dedup_s']['median']:.3f} | "
            f"{dec['median'] * 1000 if dec else float('nan'):.1f} | {r['kv_bytes'] / 2**20:.1f} |"
        )
    return "\n".join(lines)


def write(result: dict[str, Any], out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "bench.json", "table": out / "bench.md", "plot": out / "speedup.png"}
    paths["json"].write_text(json.dumps(result, indent=1))
    paths["table"].write_text(table(result) + "\n")
    plot(result, paths["plot"])
    return paths


def plot(result: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if not r["trim_kv"]]
    names = [r["variant"] for r in rows]
    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.bar([i - 0.2 for i in x], [r["speedup"] for r in rows], width=0.4, label="measured prefill speedup")
    ax.bar([i + 0.2 for i in x], [r["flops_bound"] for r in rows], width=0.4, label="bound from FLOPs")
    ax.set_xticks(list(x), names, fontsize=8)
    ax.set_ylabel("x faster than unpruned")
    ax.set_title(f"{result['config']['model']}, {result['seq_len']} tokens, {result['machine']['device']}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
