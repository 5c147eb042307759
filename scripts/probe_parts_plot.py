"""docs/img/probe_fill_query.png: what ShaRP's context fill and text query change in the kept set.

Runs SmolLM2-135M cut to layers 0..K (the selection needs nothing deeper) on the first N development samples of
every family at one retention, with the defaults, with the score fill (`fill="score"`) and with the last-token
query (`query="last"`), and measures per family the needle-fact tokens kept and the needle captions kept whole
(every token of the caption: the key beside its value). Usage: python scripts/probe_parts_plot.py [N] [K] [RETAIN]
"""

from __future__ import annotations

import sys

import torch
from figures import family_bars, selection_model

from sharp_vlm.methods import ShaRP
from sharp_vlm.probe.families import FAMILIES
from sharp_vlm.probe.generator import seeds
from sharp_vlm.probe.run import answer, blank_frames

VARIANTS = {"default (context fill, text query)": {}, "score fill": {"fill": "score"},
            "last-token query": {"query": "last"}}


def main(n: int = 6, layer: int = 2, retain: float = 0.1) -> None:
    torch.set_num_threads(2)
    model, tok = selection_model(layer)
    reference = blank_frames(model, tok)
    facts = {k: {f: [] for f in FAMILIES} for k in VARIANTS}
    whole = {k: {f: [] for f in FAMILIES} for k in VARIANTS}
    for fam in FAMILIES.values():
        for seed in seeds("dev", n):
            sample = fam.sample(seed, tok)
            captions = [
                torch.arange(a, b) + sample.video_start + f * sample.tokens_per_frame
                for f, (a, b) in zip(sample.needle_frames, sample.needle_spans, strict=True)
            ]
            for label, opts in VARIANTS.items():
                _, stats, _ = answer(model, tok, sample, ShaRP(retain=retain, layer=layer, **opts), 1, reference)
                kept = stats.stages[-1].kept_positions[0]
                facts[label][fam.name].append(torch.isin(torch.cat(captions), kept).float().mean().item())
                whole[label][fam.name].append(sum(bool(torch.isin(c, kept).all()) for c in captions) / len(captions))
        print(fam.name, flush=True)
    family_bars({"needle-fact tokens kept": facts, "needle captions kept whole": whole},
                f"ShaRP's fill and query on the probe families (SmolLM2-135M, layer {layer}, {retain:.0%} kept, "
                f"{n} development samples each)", "docs/img/probe_fill_query.png", legend=(1, "upper left"))
    names = list(FAMILIES)
    for label in VARIANTS:
        total = n * len(names)
        print(label, "fact tokens kept", round(sum(map(sum, facts[label].values())) / total, 2),
              "captions whole", round(sum(map(sum, whole[label].values())) / total, 2))


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]), *(float(a) for a in sys.argv[3:4]))
