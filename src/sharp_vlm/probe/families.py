"""Probe families: the needle probe built at the shapes and question kinds that video QA asks about.

Each family fixes the video's shape (16-96 frames of 16-144 tokens; the generator itself goes to 196), how
redundant the scene is, how many needle frames there are and which question kinds it asks (drawn per seed); needle
frames are placed uniformly over the video, so a family's samples sweep the needle position. Seeds are shared with
the plain probe (development 0-999, held-out 10000-10999) and salted with the family name, so families do not share
needles.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from ..checks import check_unique
from .generator import KINDS, MAX_FRAMES, MAX_TPF, MIN_FRAMES, MIN_TPF, ProbeSample, make_sample


@dataclass(frozen=True)
class Family:
    """One probe family: video shape, scene redundancy (`change_rate`), needles and question kinds."""

    name: str
    n_frames: int
    tokens_per_frame: int
    kinds: tuple[str, ...]
    change_rate: float = 0.25
    n_needles: int = 1
    about: str = ""

    def __post_init__(self) -> None:
        if not (MIN_FRAMES <= self.n_frames <= MAX_FRAMES and MIN_TPF <= self.tokens_per_frame <= MAX_TPF):
            raise ValueError(f"family {self.name}: {self.n_frames} x {self.tokens_per_frame} is outside the probe's "
                             f"{MIN_FRAMES}-{MAX_FRAMES} frames x {MIN_TPF}-{MAX_TPF} tokens")
        unknown = set(self.kinds) - set(KINDS)
        if not self.kinds or unknown:
            raise ValueError(f"family {self.name}: kinds must be a non-empty subset of {KINDS}")

    def kind(self, seed: int) -> str:
        return random.Random(f"sharp-vlm-family:{self.name}:{seed}").choice(self.kinds)

    def sample(self, seed: int, tokenizer: Any) -> ProbeSample:
        kind = self.kind(seed)
        needles = self.n_needles if kind in ("attribute", "object", "action") else 1
        return make_sample(seed, tokenizer, n_frames=self.n_frames, tokens_per_frame=self.tokens_per_frame,
                           kind=kind, n_needles=needles, change_rate=self.change_rate, salt=f"{self.name}:")

    def describe(self) -> str:
        needles = f", {self.n_needles} needle frames" if self.n_needles > 1 else ""
        return (f"{self.n_frames} frames x {self.tokens_per_frame} tokens, scene change rate {self.change_rate:g}"
                f"{needles}; {'/'.join(self.kinds)}")


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("attribute", 32, 32, ("attribute",), about="an object's colour in one frame of a calm scene"),
    Family("object-48f", 48, 32, ("object",), about="which animal appeared, longer video"),
    Family("action", 32, 48, ("action",), change_rate=0.5, about="what an animal did"),
    Family("order", 32, 32, ("order",), about="the later of two events"),
    Family("count", 24, 32, ("count",), about="how many frames showed an event (1-3 needles)"),
    Family("busy", 32, 64, ("attribute", "object"), change_rate=1.0,
           about="a scene that changes every frame: little redundancy"),
    Family("many-frames", 96, 16, ("attribute", "object"), about="many small frames"),
    Family("large-frames", 16, 144, ("attribute", "action"), change_rate=0.5,
           about="few frames of many tokens (a 12x12 grid)"),
    Family("repeated", 32, 32, ("attribute", "object"), n_needles=3,
           about="the same needle in three frames"),
)}


def families(names: str | list[str] | None) -> list[Family]:
    """Families by name ("all" or None: every family)."""
    if names is None or names == "all" or names == ["all"]:
        return list(FAMILIES.values())
    listed = names.split(",") if isinstance(names, str) else list(names)
    unknown = [n for n in listed if n not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown probe famil{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)}; "
                         f"known: {', '.join(FAMILIES)} (or all)")
    check_unique(listed, "--families")
    return [FAMILIES[n] for n in listed]
