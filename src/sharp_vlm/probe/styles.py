"""Probe styles: needle videos written in other words than the probe families, for holding out by style.

The families (`families.py`) share one generator: one set of scenes whose filler never names a candidate answer,
one needle phrasing per question kind. A default chosen on them is held out by seed only. A style has its own
scene vocabulary, in which the filler names other candidates of the answer's kind (objects on a counter, colours of
things in a room, animals in the background: distractors as coherent as the needle), its own needle phrasing,
several paraphrases of the question and of the answer primer, and filler of different lengths per frame. Styles
are split: `DEV` styles are the ones defaults may be chosen on; `HELDOUT` styles are reported, never tuned on.

Every style's filler names only candidates other than the sample's answer, so the answer is unambiguous; the
answer is matched against the style's closed vocabulary (`generator.check_answer`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from .generator import SYSTEM_PROMPT, ProbeSample, _encode, _fit_frame, _with_article

# the share of filler frames that name a distractor (chosen for the unpruned model, not for any method): at 0.3
# SmolLM2-135M unpruned answers 10-90% of the styles' development samples (mean 43%; it names the most repeated
# candidate), at 0.15 10-90% (mean 51%, 10 per style); the distractors still outnumber the needle several times
# over
DISTRACTOR_RATE = 0.15

_PREFIX = "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\nVideo:\n"
_SUFFIX = "\nQuestion: {question} Answer with one word.<|im_end|>\n<|im_start|>assistant\n{primer}"


@dataclass(frozen=True)
class Style:
    """One way of writing the probe.

    place: the scene's opening line; filler: sentences with a "{d}" slot that names a distractor (a candidate
    other than the answer) or none; plain: sentences naming no candidate; tail: what pads a frame. needle:
    (event, fact) templates with "{a}" for the answer (and "{b}" for the first of two needles in an order
    style); questions: (question, primer) paraphrases; candidates: the closed vocabulary of answers.
    """

    name: str
    split: str
    n_frames: int
    tokens_per_frame: int
    kind: str
    place: str
    filler: tuple[str, ...]
    plain: tuple[str, ...]
    tail: str
    needle: tuple[str, str]
    questions: tuple[tuple[str, str], ...]
    candidates: tuple[str, ...]
    about: str = ""

    def sample(self, seed: int, tokenizer: Any) -> ProbeSample:
        rng = random.Random(f"sharp-vlm-style:{self.name}:{seed}")
        order = self.kind == "order"
        answer = rng.choice(self.candidates)
        first = rng.choice([c for c in self.candidates if c != answer]) if order else None
        distractors = [c for c in self.candidates if c not in (answer, first)]
        needles = sorted(rng.sample(range(self.n_frames), 2 if order else 1))
        question, primer = rng.choice(self.questions)
        frames, spans = [], []
        picks = [rng.choice(distractors) for _ in range(3)]  # the scene's own distractors, changing now and then
        for i in range(self.n_frames):
            if rng.random() < 0.3:
                picks[rng.randrange(3)] = rng.choice(distractors)
            # filler of different lengths; a frame names a distractor with probability DISTRACTOR_RATE
            named = [s.format(d=picks[j % 3]) for j, s in enumerate(self.filler)]
            pool = list(self.plain) + ([rng.choice(named)] if rng.random() < DISTRACTOR_RATE else [])
            text = _with_article(" ".join([self.place] + rng.sample(pool, rng.randint(1, len(pool)))))
            needle = None
            if i in needles:
                value = answer if (not order or i == needles[-1]) else first
                needle = tuple(_with_article(t.format(a=value)) for t in self.needle)
            ids, span = _fit_frame(tokenizer, i, needle, text, self.tokens_per_frame, self.n_frames,
                                   " " + self.tail)
            frames.append(ids)
            if needle is not None:
                spans.append(span)
        prefix = _encode(tokenizer, _PREFIX.format(system=SYSTEM_PROMPT))
        suffix = _encode(tokenizer, _SUFFIX.format(question=question, primer=primer))
        return ProbeSample(seed=seed, kind=self.kind, prefix_ids=prefix, frames=frames, suffix_ids=suffix,
                           answer=answer, aliases=[], needle_frames=needles, question=question,
                           candidates=list(self.candidates), needle_spans=spans,
                           meta={"style": self.name, "first": first})

    def describe(self) -> str:
        return (f"{self.split} style, {self.n_frames} frames x {self.tokens_per_frame} tokens, {self.kind}; "
                f"{self.about}")


KITCHEN = ("kettle", "toaster", "mug", "bowl", "teapot", "blender", "jug", "pan", "plate", "ladle")
OFFICE_COLOURS = ("red", "blue", "green", "yellow", "white", "black", "orange", "purple", "grey", "pink")
FARM = ("goat", "hen", "cow", "pig", "horse", "sheep", "duck", "donkey", "goose", "rabbit")
HALL_COLOURS = ("red", "blue", "green", "yellow", "white", "black", "orange", "purple", "brown", "pink")
GARAGE = ("van", "truck", "tractor", "scooter", "motorbike", "bus", "taxi", "jeep", "trailer", "bicycle")
ZOO = ("lion", "zebra", "giraffe", "monkey", "tiger", "camel", "panda", "parrot", "penguin", "elephant")
MARKET = ("apple", "lemon", "melon", "fig", "plum", "mango", "pear", "grape", "banana", "orange")

STYLES: dict[str, Style] = {s.name: s for s in (
    # ---- development styles: defaults may be chosen on these
    Style("kitchen-objects", "dev", 48, 32, "object", "A kitchen.",
          ("A {d} sits on the counter.", "A {d} is next to the sink.", "There is a {d} on the shelf."),
          ("The tap drips.", "Steam rises from the stove.", "The window is open."), "The kitchen is quiet.",
          ("Someone puts down a {a}.", "Object put down: {a}."),
          (("Which object was put down?", "The object put down was a"),
           ("What did someone put down?", "Object put down:")),
          KITCHEN, "which object was put down, among objects the filler names"),
    Style("office-colours", "dev", 32, 64, "attribute", "An office.",
          ("The chair is {d}.", "A {d} folder lies on the desk.", "The curtains are {d}."),
          ("A printer hums.", "Someone types on a keyboard.", "The clock ticks.", "Papers are stacked high."),
          "Work goes on as usual.",
          ("The lamp on the desk changes colour.", "Lamp colour: {a}."),
          (("What colour did the lamp turn?", "The lamp colour was"), ("Which colour was the lamp?", "Lamp colour:")),
          OFFICE_COLOURS, "the colour of a lamp, among colours of things in the room"),
    Style("farm-order", "dev", 32, 32, "order", "A farmyard.",
          ("A {d} grazes in the field.", "A {d} rests by the barn."),
          ("Hay is piled by the gate.", "The fence is old."), "The farm is calm.",
          ("", "Animal jumping the fence: {a}."),
          (("Which animal jumped the fence second?", "The last animal jumping the fence was a"),
           ("Which animal was the last to jump the fence?", "Last animal jumping the fence:")),
          FARM, "the second of two animals that jumped, among animals in the background"),
    # ---- held-out styles: reported once, never used for a choice
    Style("hallway-colours", "heldout", 32, 32, "attribute", "A hallway.",
          ("The carpet is {d}.", "A {d} coat hangs on a hook."),
          ("A door is half open.", "Footsteps echo."), "Nobody else passes.",
          ("A door at the end opens.", "Door colour: {a}."),
          (("What colour was the door?", "The door colour was"),
           ("Which colour was the door that opened?", "Door colour:")),
          HALL_COLOURS, "the colour of a door, closest to the families' attribute kind"),
    Style("garage-vehicles", "heldout", 40, 48, "object", "A garage.",
          ("A {d} is parked by the wall.", "A {d} waits for repair.", "Someone polishes a {d}."),
          ("Tools hang on the wall.", "Oil stains the floor.", "A radio plays softly."), "The garage is busy.",
          ("A vehicle drives in and stops.", "Vehicle driving in: {a}."),
          (("Which vehicle drove in?", "The vehicle driving in was a"),
           ("What drove into the garage?", "Vehicle driving in:")),
          GARAGE, "which vehicle drove in, among parked vehicles"),
    Style("zoo-feeding", "heldout", 48, 32, "object", "A zoo.",
          ("A {d} sleeps in its pen.", "Visitors watch a {d}."),
          ("A keeper carries a bucket.", "Children point at the pens."), "The zoo is open.",
          ("", "Animal fed by the keeper: {a}."),
          (("Which animal did the keeper feed?", "The animal fed by the keeper was a"),
           ("Who got fed?", "Animal fed by the keeper:")),
          ZOO, "which animal was fed, among animals in the pens"),
    Style("market-fruit", "heldout", 32, 48, "object", "A market stall.",
          ("A crate of {d}s stands in front.", "The seller stacks a {d}.", "A {d} rolls off the table."),
          ("Shoppers walk past.", "The awning flaps."), "The market is loud.",
          ("A shopper pays the seller.", "Fruit bought: {a}."),
          (("Which fruit was bought?", "The fruit bought was a"), ("What did the shopper buy?", "Fruit bought:")),
          MARKET, "which fruit was bought, among fruit on the stall"),
)}

DEV = tuple(n for n, s in STYLES.items() if s.split == "dev")
HELDOUT = tuple(n for n, s in STYLES.items() if s.split == "heldout")


def styles(names: str | list[str]) -> list[Style]:
    """Styles by name, or "dev" / "heldout" for a split's styles."""
    listed = names.split(",") if isinstance(names, str) else list(names)
    out: list[str] = []
    for n in listed:
        out += list(DEV if n == "dev" else HELDOUT if n == "heldout" else [n])
    unknown = [n for n in out if n not in STYLES]
    if unknown:
        raise ValueError(f"unknown probe style(s) {', '.join(unknown)}; known: {', '.join(STYLES)} (or dev, "
                         "heldout)")
    return [STYLES[n] for n in dict.fromkeys(out)]
