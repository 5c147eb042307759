"""Why a selection fails: attention share per frame (raw, positional bias, debiased) and needle ranks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..core.budget import keep_count
from ..core.scoring import renormalize
from ..errors import ConfigError
from ..loading import build_method
from ..methods import ShaRP
from ..methods.experimental.rules import frame_medians
from ..viz.figure import pyplot, save
from .generator import seeds
from .report import json_text
from .run import ProbeConfig, answer, blank_frames, sample_sources


def _rank(scores: torch.Tensor, targets: torch.Tensor) -> int:
    """0-based rank of the best-scored target token among all visual tokens."""
    order = torch.argsort(scores, descending=True)
    ranks = torch.nonzero(torch.isin(order, targets)).flatten()
    return int(ranks.min()) if ranks.numel() else -1


def _per_frame(x: torch.Tensor, n_frames: int) -> list[float]:
    return x.view(n_frames, -1).sum(-1).tolist()


def check_diagnose(cfg: ProbeConfig) -> None:
    """The per-frame plots average over samples of one video shape: the plain probe or one family."""
    if len(cfg.retains) != 1:
        raise ConfigError(f"--diagnose plots one retention; got --retain {','.join(map(str, cfg.retains))}: "
                          "give one, e.g. --retain 0.1")
    other = sorted(set(cfg.options) - {"sharp", "sharp_lab"})
    if other or len(cfg.options) > 1:
        raise ConfigError(f"--diagnose runs ShaRP alone, so the --options of {', '.join(other or cfg.options)} "
                          'would be ignored; give options for sharp (or sharp_lab) only, e.g. \'{"sharp": {"lam": '
                          "0.5}}'")

    try:
        shapes = len(sample_sources(cfg))
    except ValueError as err:  # an unknown family
        raise ConfigError(str(err)) from None
    if shapes != 1:
        raise ConfigError("--diagnose averages per-frame shares over samples of one video shape: give one family "
                          "(--families count) or none (the plain probe at --frames x --tokens-per-frame)")


def diagnosed_method(cfg: ProbeConfig) -> ShaRP:
    """The ShaRP that --diagnose runs: `sharp`, or `sharp_lab` when its options are given."""
    name = next(iter(cfg.options), "sharp")
    return build_method(name, cfg.retains[0], cfg.layer, cfg.options.get(name))

def bias_label(method: ShaRP) -> str:
    """What the bias curve shows: what the debias mode subtracts from (or divides into) the raw scores."""
    if method.debias == "reference":
        if getattr(method, "combine", "subtract") == "ratio":
            return f"reference (log s - {method.lam:g} x log of it)"
        return f"bias ({method.lam:g} x reference)"
    if method.debias == "frame":
        return f"bias ({method.lam:g} x frame median)"
    if method.debias == "rope_only":
        return "RoPE-only prior (divided)"
    return f"no bias (debias={method.debias})"


def diagnose(cfg: ProbeConfig, model: Any, tok: Any, method: ShaRP) -> dict[str, Any]:
    """Per sample: the frame shares of raw scores, bias and final scores, and the ranks of the needle's fact tokens."""
    check_diagnose(cfg)
    ((source, make),) = sample_sources(cfg)
    reference = blank_frames(model, tok)
    rows = []
    for seed in seeds(cfg.split, cfg.n):
        sample = make(seed, tok)
        text, stats, _ = answer(model, tok, sample, method, cfg.max_new_tokens, reference)
        record = stats.stages[-1].samples[0]
        raw = renormalize(record.raw_scores.float())
        final = record.scores.float()
        if record.bias is not None:
            # subtraction takes lam x the renormalised reference; the ratio and the RoPE prior divide (drawn as is)
            ratio = getattr(method, "combine", "subtract") == "ratio" or method.debias == "rope_only"
            lam = 1.0 if ratio else method.lam
            bias = lam * renormalize(record.bias.float())
        elif method.debias == "frame":  # what subtract_frame_median takes off each token
            frames = torch.arange(sample.n_frames).repeat_interleave(sample.tokens_per_frame)
            bias = method.lam * frame_medians(raw, frames)
        else:
            bias = torch.zeros_like(raw)
        facts = torch.tensor(sample.needle_fact_positions) - sample.video_start
        rows.append(
            {
                "seed": seed,
                "kind": sample.kind,
                "needle_frames": sample.needle_frames,
                "answer": text,
                "raw_frame_share": _per_frame(raw, sample.n_frames),
                "bias_frame_share": _per_frame(bias, sample.n_frames),
                "final_frame_mean": _per_frame(final / sample.tokens_per_frame, sample.n_frames),
                "fact_rank_raw": _rank(raw, facts),
                "fact_rank_final": _rank(final, facts),
                "fact_kept": bool(
                    torch.isin(facts + sample.video_start, stats.stages[-1].kept_positions[0]).any()
                ),
            }
        )
    budget = keep_count(method.retain, sample.n_frames * sample.tokens_per_frame)
    return {"method": method.to_dict(), "source": source, "bias_label": bias_label(method), "budget": budget,
            "rows": rows}


def write(result: dict[str, Any], out: Path) -> dict[str, Path]:
    plt = pyplot()

    out.mkdir(parents=True, exist_ok=True)
    rows = result["rows"]
    n_frames = len(rows[0]["raw_frame_share"])
    mean = lambda key: [sum(r[key][f] for r in rows) / len(rows) for f in range(n_frames)]  # noqa: E731
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    axes[0].bar(range(n_frames), mean("raw_frame_share"))
    axes[0].set_title("raw attention share per frame", fontsize=9)
    axes[0].bar(
        range(n_frames), mean("bias_frame_share"), alpha=0.5, color="tab:orange",
        label=result.get("bias_label", "bias (reference)"),
    )
    axes[0].legend(fontsize=7)
    axes[1].bar(range(n_frames), mean("final_frame_mean"), color="tab:green")
    axes[1].set_title("final score per frame (mean)", fontsize=9)
    for ax in axes[:2]:
        ax.set_xlabel("frame")
    budget = result["budget"]
    raw = [r["fact_rank_raw"] for r in rows]
    final = [r["fact_rank_final"] for r in rows]
    axes[2].scatter(raw, final, s=12)
    axes[2].axhline(budget, color="red", linewidth=0.8)
    axes[2].axvline(budget, color="red", linewidth=0.8)
    axes[2].set_xscale("symlog")
    axes[2].set_yscale("symlog")
    axes[2].set_xlabel("needle rank, raw scores")
    axes[2].set_ylabel("needle rank, final scores")
    axes[2].set_title(f"best needle-fact token rank (budget {budget})", fontsize=9)
    paths = {"json": out / "diagnose.json", "plot": save(fig, out / "diagnose.png")}
    paths["json"].write_text(json_text(result))
    return paths
