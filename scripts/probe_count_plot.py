"""docs/img/probe_count.png: where ShaRP fails on the `count` family.

A `count` sample's needle frames carry a running tally ("Bird count: 1.", ..., "Bird count: 3."); the answer is
the last one. On the first N development samples with two or more needles, at each retention: which tally digits
ShaRP keeps (the first caption's and the last's), and what the model answers (the last tally, an earlier tally,
or something else). Usage: python scripts/probe_count_plot.py [N] [K]
"""

from __future__ import annotations

import re
import sys

import torch

from sharp_vlm.methods import ShaRP
from sharp_vlm.probe.families import FAMILIES
from sharp_vlm.probe.generator import NUMBER_WORDS, check_answer, seeds
from sharp_vlm.probe.lm import load_smollm2
from sharp_vlm.probe.run import answer, blank_frames
from sharp_vlm.viz.figure import pyplot, save

RETAINS = (0.1, 0.25, 0.5)


def tally_digits(sample, tok) -> list[int]:
    """Sequence position of the tally digit in each needle frame's fact caption, in frame order."""
    out = []
    for f, (a, b) in zip(sample.needle_frames, sample.needle_spans, strict=True):
        base = sample.video_start + f * sample.tokens_per_frame
        ids = sample.frames[f][a:b]
        (last,) = [i for i, t in enumerate(ids) if tok.decode([t]).strip().isdigit()][-1:]
        out.append(base + a + last)
    return out


def said(text: str) -> int | None:
    """The first number in a reply (digits or a number word)."""
    words = {w: k for k, w in enumerate(NUMBER_WORDS)} | {"once": 1, "twice": 2}
    for w in re.findall(r"[a-z]+|\d+", text.lower()):
        if w.isdigit():
            return int(w)
        if w in words:
            return words[w]
    return None


def main(n: int = 24, layer: int = 2) -> None:
    torch.set_num_threads(2)
    model, tok = load_smollm2()
    reference = blank_frames(model, tok)
    fam = FAMILIES["count"]
    kept = {r: {"first": 0, "last": 0} for r in RETAINS}
    replies = {r: {"last tally (right)": 0, "an earlier tally": 0, "other": 0} for r in (*RETAINS, 1.0)}
    used = 0
    for seed in seeds("dev", n):
        sample = fam.sample(seed, tok)
        if len(sample.needle_frames) < 2:
            continue
        used += 1
        digits = tally_digits(sample, tok)
        for retain in (*RETAINS, 1.0):
            text, stats, _ = answer(model, tok, sample, ShaRP(retain=retain, layer=layer), 6, reference)
            if retain < 1.0:
                positions = set(stats.stages[-1].kept_positions[0].tolist())
                kept[retain]["first"] += digits[0] in positions
                kept[retain]["last"] += digits[-1] in positions
            k = said(text)
            kind = ("last tally (right)" if check_answer(text, sample)
                    else "an earlier tally" if k is not None and 1 <= k < len(sample.needle_frames) else "other")
            replies[retain][kind] += 1
        print(seed, sample.answer, flush=True)
    fig, axes = pyplot().subplots(1, 2, figsize=(11, 3.8))
    width = 0.38
    xs = range(len(RETAINS))
    for i, which in enumerate(("first", "last")):
        axes[0].bar([x + (i - 0.5) * width for x in xs], [kept[r][which] / used for r in RETAINS], width,
                    label=f"the {which} caption's tally digit")
    axes[0].set_xticks(list(xs))
    axes[0].set_xticklabels([f"{r:.0%}" for r in RETAINS])
    axes[0].set_ylim(0, 1.05)
    axes[0].set_title("share of samples where ShaRP keeps it", fontsize=9)
    axes[0].legend(fontsize=7)
    cols = (*RETAINS, 1.0)
    bottom = [0.0] * len(cols)
    for kind, color in zip(replies[1.0], ("tab:green", "tab:orange", "tab:gray"), strict=True):
        vals = [replies[r][kind] / used for r in cols]
        axes[1].bar(range(len(cols)), vals, 0.6, bottom=bottom, label=kind, color=color)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    axes[1].set_xticks(range(len(cols)))
    axes[1].set_xticklabels([f"{r:.0%}" if r < 1 else "unpruned" for r in cols])
    axes[1].set_title("what the model answers", fontsize=9)
    axes[1].legend(fontsize=7)
    fig.suptitle(f"ShaRP on `count` (SmolLM2-135M, layer {layer}; {used} development samples with 2-3 needles)",
                 fontsize=9)
    save(fig, "docs/img/probe_count.png", dpi=110)
    print("samples", used)
    for r in RETAINS:
        print(f"{r:.0%} kept", kept[r], "replies", replies[r])
    print("unpruned replies", replies[1.0])


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
