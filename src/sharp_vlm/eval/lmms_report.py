"""One table from several lmms-eval runs of the `sharp_vlm` model (one run folder per method x retain).

`collect(root)` reads every folder under `root` that holds an lmms-eval results file (`*_results.json`, the latest
when there are several): the method and retain from its `model_args`, each task's metrics, the per-sample replies
(`--log_samples`) and the plugin's `stats_file` lines (`stats*.jsonl` in the run folder). Per run: each task's
metrics; relative score (the mean over tasks of metric / the unpruned run's metric); agreement (share of the
documents, over all tasks, whose reply equals the unpruned run's reply after stripping white space); the kept
ratio, prefill TFLOPs (side passes included) and prefill seconds, means over the stats lines.

A file a killed run left cut off is named with what to do: a torn line of a stats or samples file is deleted (the
rest of the file counts), a cut results file means that run is done again.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from ..errors import SharpError
from .files import DataError, atomic_write, text_lines

_STATS_NUMBERS = ("n_visual", "n_kept", "flops", "flops_dense", "prefill_s")


def _model_args(text: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in text.split(",") if "=" in part)


def _metrics(task_results: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in task_results.items():
        name = key.split(",")[0]
        if "stderr" not in name and name != "alias" and isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def _jsonl(path: Path, what: str) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file; a line that is not one raises `DataError` naming it."""
    out = []
    for i, text in enumerate(text_lines(path), start=1):
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{i}: not valid JSON ({err.msg} at column {err.colno}), as a run killed while "
                            "writing leaves it; delete that line (the rest of the file counts)") from None
        if not isinstance(obj, dict) or (what == "sample" and "doc_id" not in obj):
            raise DataError(f"{path}:{i}: not a {what} line as lmms-eval and sharp_vlm write them; delete that line")
        if what == "stats":
            for key in _STATS_NUMBERS:
                value = obj.get(key)
                if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                    raise DataError(f"{path}:{i}: field {key!r} is {value!r}, not a number; delete that line")
            if obj.get("n_visual") and obj.get("n_kept") is None:
                raise DataError(f"{path}:{i}: has n_visual but no n_kept; delete that line")
        out.append(obj)
    return out


def _results(path: Path) -> dict[str, Any]:
    cure = "rerun that lmms-eval run (or move its folder out of the folder given to --lmms-runs)"
    try:
        data = json.loads("\n".join(text_lines(path)))
    except json.JSONDecodeError as err:
        raise DataError(f"{path} is not valid JSON ({err.msg} at line {err.lineno} column {err.colno}): cut off "
                        f"or damaged; {cure}") from None
    if not isinstance(data, dict) or not isinstance(data.get("results", {}), dict) \
            or not isinstance(data.get("config", {}), dict) \
            or not all(isinstance(res, dict) for res in data.get("results", {}).values()):
        raise DataError(f"{path} is not an lmms-eval results file (no 'results' and 'config' objects); {cure}")
    return data


def _run(folder: Path) -> dict[str, Any] | None:
    results = sorted(folder.rglob("*_results.json"))
    if not results:
        return None
    path = results[-1]
    data = _results(path)
    cfg = data.get("config", {})
    args = _model_args(str(cfg.get("model_args", "")))
    method = args.get("method", "none") if cfg.get("model") == "sharp_vlm" else str(cfg.get("model"))
    try:
        retain = 1.0 if method in ("none", "unpruned") else float(args.get("retain", 0.1))
    except ValueError:
        raise DataError(f"{path}: model_args retain={args['retain']!r} is not a number; rerun that lmms-eval run "
                        "with retain=<kept share>") from None
    stamp = path.name[: -len("_results.json")]
    tasks: dict[str, Any] = {}
    for task, res in data.get("results", {}).items():
        replies = {}
        for sample_file in path.parent.glob(f"{stamp}_samples_{task}.jsonl"):
            for rec in _jsonl(sample_file, "sample"):
                reply = rec.get("filtered_resps", rec.get("resps"))
                reply = reply[0] if isinstance(reply, list) and reply else reply
                replies[rec["doc_id"]] = str(reply).strip()
        tasks[task] = {"metrics": _metrics(res), "replies": replies}
    stats = [s for p in sorted(folder.glob("stats*.jsonl")) for s in _jsonl(p, "stats")]

    def mean(key: str, scale: float = 1.0) -> float | None:
        vals = [s[key] * scale for s in stats if s.get(key) is not None]
        return statistics.fmean(vals) if vals else None

    kept = [s["n_kept"] / s["n_visual"] for s in stats if s.get("n_visual")]
    return {"run": folder.name, "method": "none" if method == "unpruned" else method, "retain": retain,
            "results_file": str(path), "tasks": tasks, "n_stats": len(stats),
            "kept_ratio": statistics.fmean(kept) if kept else None, "tflops": mean("flops", 1e-12),
            "tflops_dense": mean("flops_dense", 1e-12), "prefill_s": mean("prefill_s")}


def collect(root: str | Path) -> dict[str, Any]:
    root = Path(root)
    runs = ([r for r in (_run(p) for p in sorted(root.iterdir()) if p.is_dir()) if r is not None]
            if root.is_dir() else [])
    if not runs:
        raise SharpError(f"no lmms-eval results under {root}; give the folder that holds one run folder per method")
    base = next((r for r in runs if r["method"] == "none"), None)
    runs.sort(key=lambda r: (r["method"] != "none", r["method"], -r["retain"]))
    rows = []
    for r in runs:
        row = {k: r[k] for k in ("run", "method", "retain", "kept_ratio", "tflops", "tflops_dense", "prefill_s")}
        row["metrics"] = {f"{t}/{m}": v for t, res in r["tasks"].items() for m, v in res["metrics"].items()}
        row["relative"] = row["agreement"] = None
        if base is not None:
            ratios = [v / base_v for key, v in row["metrics"].items()
                      if (base_v := _base_metric(base, key)) not in (None, 0)]
            row["relative"] = statistics.fmean(ratios) if ratios else None
            same = [reply == base["tasks"][t]["replies"][d] for t, res in r["tasks"].items() if t in base["tasks"]
                    for d, reply in res["replies"].items() if d in base["tasks"][t]["replies"]]
            row["agreement"] = statistics.fmean(same) if same else None
        rows.append(row)
    return {"root": str(root), "baseline": base["run"] if base else None, "rows": rows}


def _base_metric(base: dict[str, Any], key: str) -> float | None:
    task, metric = key.split("/", 1)
    return base["tasks"].get(task, {}).get("metrics", {}).get(metric)


def table(summary: dict[str, Any]) -> str:
    keys = list(dict.fromkeys(k for r in summary["rows"] for k in r["metrics"]))

    def fmt(v: Any, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    head = ["run", "method", "retain", *keys, "relative", "agreement", "kept ratio", "TFLOPs", "prefill s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in summary["rows"]:
        cells = [r["run"], r["method"], f"{r['retain']:g}", *(fmt(r["metrics"].get(k), ".4g") for k in keys),
                 fmt(r["relative"], ".3f"), fmt(r["agreement"], ".3f"), fmt(r["kept_ratio"], ".3f"),
                 fmt(r["tflops"], ".4g"), fmt(r["prefill_s"], ".3f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write(summary: dict[str, Any], out: str | Path) -> dict[str, Path]:
    out = Path(out)
    paths = {"lmms_report_json": out / "lmms_report.json", "lmms_report_md": out / "lmms_report.md"}
    atomic_write(paths["lmms_report_json"], json.dumps(summary, indent=2) + "\n")
    atomic_write(paths["lmms_report_md"], f"# lmms-eval runs in {summary['root']}\n\n{table(summary)}\n")
    return paths
