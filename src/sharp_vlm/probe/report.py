"""Probe results as JSON, a table and PNG plots."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..viz.figure import pyplot, save


def _paired(summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pruned rows with lost / gained counts (those whose samples had an unpruned answer to pair with)."""
    return [r for r in summary if r.get("lost") is not None and r["method"] != "none"]


def table(summary: list[dict[str, Any]]) -> str:
    head = ("| method | retain | n | accuracy | vs unpruned | lost / gained | agreement | needle recall | fact recall "
            "| kept | s/run |")
    lines = [head, "|" + "---|" * 11]
    for r in sorted(summary, key=lambda r: (r["method"] != "none", r["method"], -r["retain"])):
        fact = "-" if r["fact_recall"] is None else f"{r['fact_recall']:.2f}"
        flips = "-" if r["method"] == "none" or r.get("lost") is None else f"{r['lost']} / {r['gained']}"
        lines.append(
            f"| {r['method']} | {r['retain']:.2f} | {r['n']} | {r['accuracy']:.1%} | {_pct(r['relative'], 1)} | "
            f"{flips} | {r['agreement']:.1%} | {r['needle_recall']:.2f} | {fact} | {r['kept_ratio']:.3f} | "
            f"{r['seconds']:.2f} |"
        )
    if _paired(summary):
        lines += ["", "lost / gained: samples the unpruned model answers right and this run wrong, and the reverse "
                  "(a pruned run gains where it removes what misled the unpruned model)."]
    return "\n".join(lines)


def _pct(x: float, digits: int = 0) -> str:
    return "-" if math.isnan(x) else f"{x:.{digits}%}"


def json_text(result: Any) -> str:
    """The result as strict JSON: an undefined value (NaN, e.g. relative accuracy where the unpruned model answered
    nothing) is written as null, which every JSON reader accepts."""
    def strict(x: Any) -> Any:
        if isinstance(x, float) and math.isnan(x):
            return None
        if isinstance(x, dict):
            return {k: strict(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [strict(v) for v in x]
        return x

    return json.dumps(strict(result), indent=1, allow_nan=False)


def family_table(result: dict[str, Any]) -> str:
    """Accuracy per family (unpruned absolute; methods relative to it), the mean over families and the worst."""
    rows, names = result["by_family"], list(result["families"])
    cell = {(r["family"], r["method"], r["retain"]): r for r in rows}
    mean = {(r["method"], r["retain"]): r for r in result["mean"]}
    lines = ["| method | retain | " + " | ".join(names) + " | mean | worst |", "|" + "---|" * (len(names) + 4)]
    for method, retain in sorted(mean, key=lambda k: (k[0] != "none", k[0], -k[1])):
        m = mean[(method, retain)]
        if method == "none":
            cells = [f"{cell[(f, method, retain)]['accuracy']:.0%}" if (f, method, retain) in cell else "-"
                     for f in names]
            lines.append("| unpruned (accuracy) | 1.00 | " + " | ".join(cells) + f" | {m['accuracy']:.0%} | - |")
            continue
        cells = [_pct(cell[(f, method, retain)]["relative"]) if (f, method, retain) in cell else "-" for f in names]
        worst = f"{_pct(m['worst_relative'])} ({m['worst_family']})" if m["worst_family"] else "-"
        lines.append(f"| {method} | {retain:.2f} | " + " | ".join(cells) + f" | **{_pct(m['relative'])}** | {worst} |")
    lines.append("")
    unanswered = sorted({f for m in result["mean"] for f in m.get("unanswered", [])})
    if unanswered:
        lines.append(f"The unpruned model answered no sample of {', '.join(unanswered)}: no relative accuracy there "
                     "('-'), and the mean leaves them out.")
    lines.append("Methods: accuracy relative to the unpruned model on the same samples. Families: "
                 + "; ".join(f"{k}: {v}" for k, v in result["families"].items()) + ".")
    if result.get("inversions"):
        lines.append("Retention inversions (more tokens, fewer correct by > 1 sample; samples that went worse / "
                     "better; p of the one-sided sign test per comparison, >= 0.05 is within noise): " + "; ".join(
                         f"{i['method']} on {i['family']} {i['from']:g}->{i['to']:g} (-{i['correct_lost']}"
                         + (f": {i['worse']} / {i['better']}, p {i['p']:.2g})" if "p" in i else ")")
                         for i in result["inversions"]))
    return "\n".join(lines)


def write(result: dict[str, Any], out: Path) -> dict[str, Path]:
    """results.json, table.md (per family too when families ran), accuracy.png, lost_gained.png (when the unpruned
    model ran), kept_per_frame.png."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "table": out / "table.md"}
    paths["json"].write_text(json_text(result))
    text = table(result["summary"])
    if "by_family" in result:
        text = family_table(result) + "\n\nAll samples pooled:\n\n" + text
    paths["table"].write_text(text + "\n")
    paths["accuracy"] = plot_accuracy(result["summary"], out / "accuracy.png")
    if _paired(result["summary"]):
        paths["flips"] = plot_flips(result["summary"], out / "lost_gained.png")
    paths["frames"] = plot_kept_per_frame(result["records"], out / "kept_per_frame.png")
    return paths


def plot_accuracy(summary: list[dict[str, Any]], path: Path) -> Path:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6.5, 4))
    base = [r for r in summary if r["method"] == "none"]
    methods = sorted({r["method"] for r in summary} - {"none"})
    for m in methods:
        rs = sorted((r for r in summary if r["method"] == m), key=lambda r: r["retain"])
        ax.plot([r["retain"] for r in rs], [r["accuracy"] for r in rs], marker="o", label=m)
    if base:
        ax.axhline(base[0]["accuracy"], color="black", linestyle="--", label="unpruned")
    _retain_axis(ax, sorted({r["retain"] for r in summary}))
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title("Needle probe: accuracy vs retention")
    ax.legend(fontsize=7)
    return save(fig, path)


def _retain_axis(ax: Any, retains: list[float]) -> None:
    """Log-scaled retention axis, ticked at the retentions that ran (as percentages)."""
    ax.set_xscale("log")
    ax.set_xticks(retains, [f"{100 * r:.3g}%" for r in retains])
    ax.minorticks_off()
    ax.set_xlabel("retained visual tokens")


def plot_flips(summary: list[dict[str, Any]], path: Path) -> Path:
    """Per method against retention: the share of samples lost against the unpruned model (right there, wrong
    here; solid) and gained (dashed). Accuracy is the unpruned accuracy minus lost plus gained: this separates
    what pruning loses from what it wins by removing a distractor."""
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6.5, 4))
    paired = _paired(summary)
    for i, m in enumerate(sorted({r["method"] for r in paired})):
        rs = sorted((r for r in paired if r["method"] == m), key=lambda r: r["retain"])
        x = [r["retain"] for r in rs]
        color = f"C{i}"
        # shares of the samples that have an unpruned answer to pair with
        ax.plot(x, [r["lost"] / r.get("paired", r["n"]) for r in rs], marker="o", color=color, label=f"{m}: lost")
        ax.plot(x, [r["gained"] / r.get("paired", r["n"]) for r in rs], marker="s", linestyle="--", color=color,
                label=f"{m}: gained")
    _retain_axis(ax, sorted({r["retain"] for r in summary}))
    ax.set_ylim(bottom=0)
    ax.set_ylabel("share of samples")
    ax.set_title("Against the unpruned model: samples lost and gained")
    ax.legend(fontsize=7)
    return save(fig, path)


def _binned(values: list[float], bins: int) -> list[float]:
    """Sum of per-frame values over `bins` equal stretches of the video (videos of different lengths align)."""
    out = [0.0] * bins
    for f, v in enumerate(values):
        out[f * bins // len(values)] += v
    return out


def plot_kept_per_frame(records: list[dict[str, Any]], path: Path) -> Path:
    """Mean kept tokens per frame index at the lowest retention, per method (shows positional bias). When the
    samples have different frame counts (probe families), the share of kept tokens per tenth of the video."""
    plt = pyplot()

    pruned = [r for r in records if r["method"] != "none"]
    low = min((r["retain"] for r in pruned), default=1.0)
    methods = sorted({r["method"] for r in pruned if r["retain"] == low})
    fig, axes = plt.subplots(len(methods) or 1, 1, figsize=(7, 1.6 * max(1, len(methods))), sharex=True,
                             squeeze=False)
    for ax, m in zip(axes[:, 0], methods, strict=False):
        rs = [r for r in pruned if r["method"] == m and r["retain"] == low]
        n_frames = len(rs[0]["kept_per_frame"])
        if any(len(r["kept_per_frame"]) != n_frames for r in rs):
            n_frames = 10
            per = [[k / max(1, sum(r["kept_per_frame"])) for k in _binned(r["kept_per_frame"], 10)] for r in rs]
            hits = [_binned([float(f in r["needle_frames"]) for f in range(len(r["kept_per_frame"]))], 10)
                    for r in rs]
            mean = [sum(p[b] for p in per) / len(rs) for b in range(10)]
            needle = [sum(h[b] > 0 for h in hits) / len(rs) for b in range(10)]
        else:
            mean = [sum(r["kept_per_frame"][f] for r in rs) / len(rs) for f in range(n_frames)]
            needle = [sum(f in r["needle_frames"] for r in rs) / len(rs) for f in range(n_frames)]
        ax.bar(range(n_frames), mean, color="tab:blue")
        ax2 = ax.twinx()
        ax2.plot(range(n_frames), needle, color="tab:red", linewidth=1)
        ax2.set_yticks([])
        ax.set_ylabel(m, fontsize=7)
    axes[-1, 0].set_xlabel("frame (bars: mean kept tokens; red: how often the needle is there)")
    fig.suptitle(f"Kept tokens per frame at retain={low:g}", fontsize=9)
    return save(fig, path)
