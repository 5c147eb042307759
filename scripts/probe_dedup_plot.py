"""docs/img/probe_dedup.png: what ShaRP's deduplication sees on the probe families.

Runs SmolLM2-135M cut to layers 0..K (the selection needs nothing deeper) on the first N development samples of
every family, captures the debiased scores and the states entering layer K, and compares deduplication on the raw
and on the centred states: the share of the budget the walk fills with distinct tokens, and the needle-fact
tokens kept. Usage: python scripts/probe_dedup_plot.py [N] [K]
"""

from __future__ import annotations

import sys

import torch
from figures import family_bars, selection_model

from sharp_vlm.core.budget import keep_count
from sharp_vlm.core.dedup import center, dedup_select
from sharp_vlm.methods import ShaRP
from sharp_vlm.probe.families import FAMILIES
from sharp_vlm.probe.generator import seeds
from sharp_vlm.probe.run import answer, blank_frames

SETTINGS = {"raw states, tau 0.9": ("hidden", 0.9), "centred, tau 0.9": ("centered", 0.9),
            "centred, tau 0.95 (default)": ("centered", 0.95)}


class Capture(ShaRP):
    """ShaRP that also hands its scores, bias and states to `seen`."""

    seen: dict = {}

    def scores(self, view):
        scores = super().scores(view)
        Capture.seen = {"scores": scores, "hidden": view.hidden.float()}
        return scores


def main(n: int = 8, layer: int = 2, retain: float = 0.1) -> None:
    model, tok = selection_model(layer)
    reference = blank_frames(model, tok)
    walk = {k: {f: [] for f in FAMILIES} for k in SETTINGS}
    facts = {k: {f: [] for f in FAMILIES} for k in SETTINGS}
    for fam in FAMILIES.values():
        for seed in seeds("dev", n):
            sample = fam.sample(seed, tok)
            answer(model, tok, sample, Capture(retain=retain, layer=layer), 1, reference)
            s, h = Capture.seen["scores"], Capture.seen["hidden"]
            budget = keep_count(retain, s.numel())
            fact = torch.tensor(sample.needle_fact_positions) - sample.video_start
            for label, (features, tau) in SETTINGS.items():
                r = dedup_select(s, center(h) if features == "centered" else h, budget, tau, 1, candidates=s.numel())
                walk[label][fam.name].append(1 - r.n_filled / budget)
                facts[label][fam.name].append(torch.isin(fact, r.keep).float().mean().item())
        print(fam.name, flush=True)
    family_bars({"share of the budget kept by the walk (rest: fill by score)": walk, "needle-fact tokens kept": facts},
                f"ShaRP C3 on the probe families (SmolLM2-135M, layer {layer}, {retain:.0%} kept, "
                f"{n} development samples each)", "docs/img/probe_dedup.png")
    names = list(FAMILIES)
    for label in SETTINGS:
        print(label, "walk share", round(sum(map(sum, walk[label].values())) / (n * len(names)), 2),
              "fact recall", round(sum(map(sum, facts[label].values())) / (n * len(names)), 2))


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
