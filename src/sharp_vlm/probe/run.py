"""Run pruning methods on the needle-in-a-video probe with the real SmolLM2-135M-Instruct."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..checks import check_unique
from ..core.layout import VisualLayout
from ..engine.bias_cache import BiasCache
from ..engine.handle import apply
from ..errors import ConfigError
from ..loading import Variant, build_method, build_run, split_layer
from ..methods import NoPrune
from ..methods.base import Method
from ..models.generic import VideoSpan
from .families import families
from .generator import MAX_FRAMES, MAX_TPF, MIN_FRAMES, MIN_TPF, ProbeSample, check_answer, make_sample, seeds
from .styles import styles


@dataclass
class ProbeConfig:
    """What to run. Method names may carry a layer: "uniform@0" prunes before the decoder."""

    methods: list[str] = field(default_factory=lambda: ["none", "fastv", "sharp"])
    retains: list[float] = field(default_factory=lambda: [0.1])
    layer: int | None = None  # every method without @K; None: each method's own default layer
    n: int = 20
    split: str = "heldout"
    n_frames: int = 32
    tokens_per_frame: int = 32
    max_new_tokens: int = 6
    ablate: bool = False
    trim_kv: bool = False  # decode with the pruned tokens dropped from the shallow layers' KV too
    bias_cache: bool = False  # one sv.BiasCache for the whole run: a sample's reference pass is paid once
    options: dict[str, dict[str, Any]] = field(default_factory=dict)  # per method name: extra config fields
    # probe families (probe/families.py) instead of one video shape; "all" for every family
    families: list[str] | None = None
    # probe styles (probe/styles.py), beside or instead of the families; "dev" / "heldout" for a split's styles
    styles: list[str] | None = None


ABLATIONS = {  # C1 mask, C2 debias, C3 dedup
    (c1, c2, c3): {"mask": "bidirectional" if c1 else "off", "debias": "reference" if c2 else "off", "dedup": c3}
    for c1 in (True, False) for c2 in (True, False) for c3 in (True, False)
}


def ablation_label(c1: bool, c2: bool, c3: bool) -> str:
    on = [name for name, flag in (("mask", c1), ("debias", c2), ("dedup", c3)) if flag]
    return "sharp[" + ("+".join(on) if on else "none") + "]"


def variants(cfg: ProbeConfig) -> list[Variant]:
    out = [Variant("none", "none", 1.0, NoPrune())]
    named = {split_layer(part, spec)[0] for spec in cfg.methods for part in spec.split("+")}
    unknown = sorted(set(cfg.options) - named)
    if unknown:
        raise ConfigError(f"--options names {', '.join(unknown)}, which is not among the methods run: {cfg.methods}")
    for spec in cfg.methods:
        if spec == "none":
            continue
        for r in cfg.retains:
            method = build_run(spec, r, cfg.layer, cfg.options)
            out.append(Variant(spec, method.name, r, method))
    if cfg.ablate:
        base = cfg.options.get("sharp", {})
        for (c1, c2, c3), opts in ABLATIONS.items():
            for r in cfg.retains:
                label = ablation_label(c1, c2, c3)
                out.append(Variant(label, "sharp", r, build_method("sharp", r, cfg.layer, {**base, **opts}, label)))
    return out


def _run_key(v: Variant) -> str:
    """What a run computes, as name@layer ("sharp@2", "pdrop@8,16,24", "vidcom2@0+sharp@2")."""
    stages = v.config.stages()
    if v.method == "schedule":
        return "+".join(f"{st.method.name}@{st.layer}" for st in stages)
    return f"{v.method}@" + ",".join(str(st.layer) for st in stages)


def check_probe(cfg: ProbeConfig, n_layers: int | None = None) -> list[Variant]:
    """Every flag checked before anything loads (and, given the model's depth, every stage's layer)."""
    if cfg.n < 1:
        raise ConfigError(f"--n {cfg.n}: run at least one sample")
    if not MIN_FRAMES <= cfg.n_frames <= MAX_FRAMES or not MIN_TPF <= cfg.tokens_per_frame <= MAX_TPF:
        raise ConfigError(f"the probe's videos have {MIN_FRAMES}-{MAX_FRAMES} frames of {MIN_TPF}-{MAX_TPF} tokens; "
                          f"got {cfg.n_frames} x {cfg.tokens_per_frame}")
    try:
        if cfg.families is not None:
            families(cfg.families)
        if cfg.styles is not None:
            styles(cfg.styles)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    check_unique([f"{float(r):g}" for r in cfg.retains], "--retain")  # two that print alike are one run to a reader
    plan = variants(cfg)
    # "Sharp" and "sharp@2" name the run of "sharp" (its default layer is 2)
    first = [v for v in plan if v.retain == cfg.retains[0] and v.label in cfg.methods]
    check_unique([_run_key(v) for v in first], "--methods (as name@layer)")
    tower = sorted({v.label for v in plan for st in v.config.stages() if st.reads_vision})
    if tower:
        raise ConfigError(
            f"{', '.join(tower)} read the vision tower's attention; the probe's frames are text in a decoder-only "
            "LM, which has no tower. Compare them with `sharp eval` on a Video LLM (LLaVA-OneVision, LLaVA-Video, "
            "LLaVA-NeXT-Video, InternVL)"
        )
    available = len(seeds(cfg.split))
    if cfg.n > available:
        raise ConfigError(f"--n {cfg.n}: the {cfg.split} split has {available} samples")
    if n_layers is not None:
        for v in plan:
            for st in v.config.stages():
                if st.layer >= n_layers:
                    raise ConfigError(
                        f"{v.label}: layer={st.layer} is beyond the model's depth; it has {n_layers} layers, "
                        f"so use a layer in 1..{n_layers - 1} (0 prunes before the decoder)"
                    )
    return plan


_WORD = re.compile(r"[a-z0-9]+")


def normalise(text: str) -> str:
    words = [w for w in _WORD.findall(text.lower()) if w not in {"a", "an", "the"}]
    return " ".join(words[:2])


def blank_frames(model: Any, tok: Any) -> Callable[[torch.Tensor, list[VisualLayout], dict], torch.Tensor]:
    """Reference input for debiasing: every frame token becomes the tokenizer's space token (a "black frame" for
    text)."""
    emb = model.get_input_embeddings().weight[tok.encode(" ", add_special_tokens=False)[0]]

    def fill(embeds: torch.Tensor, layouts: list[VisualLayout], call: dict) -> torch.Tensor:
        out = embeds.clone()
        for b, lay in enumerate(layouts):
            out[b, lay.positions] = emb.to(out.dtype)
        return out

    return fill


@torch.inference_mode()
def answer(model: Any, tok: Any, sample: ProbeSample, method: Method, max_new_tokens: int,
           reference: Callable | None, trim_kv: bool = False, bias_cache: BiasCache | None = None,
           ) -> tuple[str, Any, float]:
    ids = torch.tensor([sample.input_ids])
    span = VideoSpan(sample.video_start, sample.n_frames, sample.tokens_per_frame)
    with apply(model, method, span=span, reference=reference, trim_kv=trim_kv, bias_cache=bias_cache) as handle:
        t0 = time.perf_counter()
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False)
        seconds = time.perf_counter() - t0
    text = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    return text, handle.last_stats, seconds


def sample_sources(cfg: ProbeConfig) -> list[tuple[str, Callable[[int, Any], ProbeSample]]]:
    """(family or style name, seed -> sample) for each family and style run; the plain probe (neither given) is one
    family named by its shape."""
    if cfg.families is None and cfg.styles is None:
        def plain(seed: int, tok: Any) -> ProbeSample:
            return make_sample(seed, tok, n_frames=cfg.n_frames, tokens_per_frame=cfg.tokens_per_frame)

        return [(f"{cfg.n_frames}x{cfg.tokens_per_frame}", plain)]
    return ([(f.name, f.sample) for f in families(cfg.families)] if cfg.families is not None else []) + \
        ([(s.name, s.sample) for s in styles(cfg.styles)] if cfg.styles is not None else [])


def described_sources(cfg: ProbeConfig) -> dict[str, str] | None:
    """What each family and style of the run is (None for the plain probe)."""
    if cfg.families is None and cfg.styles is None:
        return None
    out = {f.name: f.describe() for f in families(cfg.families)} if cfg.families is not None else {}
    return out | ({s.name: s.describe() for s in styles(cfg.styles)} if cfg.styles is not None else {})


def run_probe(cfg: ProbeConfig, model: Any, tok: Any, progress: bool = True) -> dict[str, Any]:
    """Every variant on every sample of every family; returns {config, records, summary, families}."""
    from tqdm import tqdm

    plan = check_probe(cfg, len(model.model.layers))
    seed_list = seeds(cfg.split, cfg.n)
    reference = blank_frames(model, tok)
    cache = BiasCache() if cfg.bias_cache else None
    records = []
    sources = sample_sources(cfg)
    bar = tqdm(total=len(sources) * len(seed_list) * len(plan), desc="probe", unit="run", disable=not progress)
    for (family, make), seed in ((src, seed) for src in sources for seed in seed_list):
        sample = make(seed, tok)
        needle = torch.tensor(sample.needle_token_positions)
        fact = torch.tensor(sample.needle_fact_positions)
        unpruned = None
        for v in plan:
            text, stats, seconds = answer(model, tok, sample, v.config, cfg.max_new_tokens, reference, cfg.trim_kv,
                                           cache)
            if v.label == "none":
                unpruned = text
            kept = (stats.stages[-1].kept_positions[0] if stats.stages
                    else torch.arange(sample.video_start, sample.video_end))
            frames = (kept - sample.video_start) // sample.tokens_per_frame
            records.append({
                "family": family, "seed": seed, "kind": sample.kind, "method": v.label, "retain": v.retain,
                "answer": text, "correct": check_answer(text, sample),
                "agree": normalise(text) == normalise(unpruned or ""),
                "needle_recall": float(torch.isin(needle, kept).float().mean()),
                "fact_recall": float(torch.isin(fact, kept).float().mean()) if fact.numel() else None,
                "needle_frames": sample.needle_frames,
                "kept_per_frame": torch.bincount(frames, minlength=sample.n_frames).tolist(),
                "kept_ratio": stats.kept_ratio[0], "seconds": seconds,
                "costs": stats.stages[-1].costs.numbers() if stats.stages else {},
                "dedup": asdict(stats.stages[-1].samples[0].dedup) if stats.stages and stats.stages[-1].samples[0].dedup
                else None,
            })
            bar.update(1)
    bar.close()
    return {"config": asdict(cfg), "records": records, **analyse(records, described_sources(cfg))}


def analyse(records: list[dict[str, Any]], described: dict[str, str] | None = None) -> dict[str, Any]:
    """The summaries of a run's records: pooled ("summary"); with the families' descriptions also per family
    ("by_family"), their mean ("mean") and the retention inversions (per family and over all families)."""
    out: dict[str, Any] = {"summary": summarise(records, by_family=False)}
    if described is not None:
        by_family = summarise(records)
        out.update(families=described, by_family=by_family, mean=family_mean(by_family),
                   inversions=inversions(records))
    return out


def summarise(records: list[dict[str, Any]], by_family: bool = True) -> list[dict[str, Any]]:
    """Per (family, method, retain) (or per (method, retain) over all records): accuracy, relative accuracy
    against the unpruned run of the same samples, agreement, recalls, kept share and time."""
    groups: dict[tuple[str, str, float], list[dict[str, Any]]] = {}
    for r in records:
        family = r.get("family", "") if by_family else ""
        groups.setdefault((family, r["method"], r["retain"]), []).append(r)
    unpruned = {(r.get("family", ""), r["seed"]): r["correct"] for r in records if r["method"] == "none"}
    rows = []
    for (family, method, retain), rs in groups.items():
        base = groups.get((family, "none", 1.0), [])
        pairs = [(unpruned[k], r["correct"]) for r in rs if (k := (r.get("family", ""), r["seed"])) in unpruned]
        base_acc = sum(r["correct"] for r in base) / len(base) if base else float("nan")
        base_acc = base_acc or float("nan")  # nothing to be relative to when the unpruned model never answers
        n = len(rs)
        acc = sum(r["correct"] for r in rs) / n
        facts = [r["fact_recall"] for r in rs if r["fact_recall"] is not None]
        rows.append({
            **({"family": family} if by_family else {}),
            "method": method, "retain": retain, "n": n, "accuracy": acc,
            "relative": acc / base_acc if base_acc else float("nan"),
            # against the unpruned model on the same samples: right there and wrong here, and the reverse
            "paired": len(pairs),
            "lost": sum(b and not c for b, c in pairs) if pairs else None,
            "gained": sum(c and not b for b, c in pairs) if pairs else None,
            "agreement": sum(r["agree"] for r in rs) / n,
            "needle_recall": sum(r["needle_recall"] for r in rs) / n,
            "fact_recall": sum(facts) / len(facts) if facts else None,
            "kept_ratio": sum(r["kept_ratio"] for r in rs) / n,
            "seconds": sum(r["seconds"] for r in rs) / n,
        })
    return rows


def family_mean(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (method, retain): accuracy and relative accuracy averaged over families (each family weighs the
    same), and the worst family's relative accuracy. A family the unpruned model never answers has no relative
    accuracy: it is left out of the relative mean and listed under "unanswered"."""
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["retain"]), []).append(r)
    out = []
    for (method, retain), rs in groups.items():
        scored = [r for r in rs if not math.isnan(r["relative"])]
        worst = min(scored, key=lambda r: r["relative"]) if scored else None
        out.append({"method": method, "retain": retain, "families": len(rs),
                    "accuracy": sum(r["accuracy"] for r in rs) / len(rs),
                    "relative": sum(r["relative"] for r in scored) / len(scored) if scored else float("nan"),
                    "worst_relative": worst["relative"] if worst else float("nan"),
                    "worst_family": worst["family"] if worst else None,
                    "unanswered": sorted(r["family"] for r in rs if math.isnan(r["relative"]))})
    return out


def inversions(records: list[dict[str, Any]], tolerance: int = 1) -> list[dict[str, Any]]:
    """Where keeping more tokens answered fewer samples correctly, by more than `tolerance` samples: per family
    and method, and over all families ("all"). Each comes with the samples right at the lower retention and wrong
    at the higher ("worse"), the reverse ("better"), and the one-sided exact sign test on them ("p": the chance
    of at least that many of the changed samples going the worse way if either way were as likely); p >= 0.05 is
    within what the number of samples can tell apart. p is per comparison, not corrected for how many the run
    makes (families x methods x retention steps): with many of them a few p < 0.05 come by chance."""
    right: dict[tuple[str, str], dict[float, dict[tuple[str, int], bool]]] = {}
    for r in records:
        if r["method"] != "none":
            for family in (r["family"], "all"):
                by = right.setdefault((family, r["method"]), {}).setdefault(r["retain"], {})
                by[(r["family"], r["seed"])] = r["correct"]
    out = []
    for (family, method), by_retain in right.items():
        if family == "all" and len({k[0] for v in by_retain.values() for k in v}) < 2:
            continue  # one family: its own row says it all
        retains = sorted(by_retain)
        for lo, hi in zip(retains, retains[1:], strict=False):
            a, b = by_retain[lo], by_retain[hi]
            lost = sum(a.values()) - sum(b.values())
            if lost > tolerance:
                both = a.keys() & b.keys()
                worse = sum(a[k] and not b[k] for k in both)
                better = sum(b[k] and not a[k] for k in both)
                out.append({"family": family, "method": method, "from": lo, "to": hi, "correct_lost": lost,
                            "worse": worse, "better": better, "p": sign_test(worse, better)})
    return sorted(out, key=lambda i: i["family"] == "all")  # the families first, the pooled rows last


def sign_test(worse: int, better: int) -> float:
    """One-sided exact sign test: P(X >= worse) for X ~ Binomial(worse + better, 1/2)."""
    n = worse + better
    return sum(math.comb(n, k) for k in range(worse, n + 1)) / 2**n
