"""Needle-in-a-video probe: a text "video" of near-duplicate frames with one or more needle frames.

A sample is ``prefix_ids + frames + suffix_ids``. Every frame is exactly ``tokens_per_frame`` token ids
("Frame 7: <scene description>" cut to fit, ending with a newline), so a pruning engine can treat the
frame tokens as visual tokens with one segment per frame. Filler frames describe the same scene with
light per-frame variation. A needle frame starts, right after its header, with an event sentence and a
short fact caption ("A car drives past. Car color: red."), then the usual scene text. The question
follows the video, and the assistant turn is primed ("The car color was") so that a small LM answers
with the candidate word first.

Answers come from small closed vocabularies that never occur in the filler, so ``check_answer`` can
match them exactly.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

KINDS: tuple[str, ...] = ("attribute", "object", "action", "order", "count")
# Draw weights when make_sample picks the kind from the seed (the action kind only when asked for, so that
# the seeds of the original four-kind mix keep their samples).
KIND_WEIGHTS: dict[str, float] = {"attribute": 1.0, "object": 1.0, "order": 1.0, "count": 1.0}

DEV_SEEDS = range(0, 1000)
HELDOUT_SEEDS = range(10_000, 11_000)
_SPLITS = {"dev": DEV_SEEDS, "heldout": HELDOUT_SEEDS}

MIN_FRAMES, MAX_FRAMES = 16, 96
MIN_TPF, MAX_TPF = 16, 196

SYSTEM_PROMPT = (
    "You are a video assistant. The video is given as one line of description per frame. "
    "Answer the question about the video with one word."
)

COLORS: tuple[str, ...] = (
    "red",
    "blue",
    "green",
    "yellow",
    "white",
    "black",
    "orange",
    "purple",
    "pink",
    "brown",
)

# Needle phrasing. SmolLM2-135M copies a value reliably when the primer (the start of the assistant
# turn) repeats the key the needle uses ("Car color: red." / "The car color was"), so each needle is an
# event sentence plus a short key-value caption; the event sentence is dropped when a frame is too small.
ATTR_EVENT, ATTR_FACT = "A {obj} {action}.", "{Obj} color: {color}."
ATTR_QUESTION, ATTR_PRIMER = "What color was the {obj}?", "The {obj} color was"
OBJ_EVENT, OBJ_FACT = "", "An animal appears: a {animal}."
OBJ_QUESTION, OBJ_PRIMER = "Which animal appeared in the video?", "The animal was a"
# The model cannot tell which of two events came first: it names the later one ~9 times in 10, whatever
# the phrasing (ordinals in the captions, options in the question). The order kind therefore asks for
# the last of the two events, which it answers from position alone.
ORDER_EVENT, ORDER_FACT = "", "An animal appears: a {animal}."
ORDER_QUESTION, ORDER_PRIMER = "Which animal appeared last in the video?", "The last animal was a"
# The model cannot count frames either (it answers a constant), so every needle frame carries the
# running tally, as an on-screen counter would; the answer is read from the last needle frame.
COUNT_EVENT, COUNT_FACT = "A {obj} {action}.", "{Obj} count: {k}."
# What an animal did, as a one-word verb in the same key-value form.
ACTION_EVENT, ACTION_FACT = "A {animal} appears.", "{Animal} action: {verb}."
# The primer repeats the key itself ("Goat action:"): with "The goat action was" the model answers from the
# filler's verbs twice as often. It often answers in another form of the verb ("jumped", "jumping"), which
# names the same action and counts.
ACTION_QUESTION, ACTION_PRIMER = "What did the {animal} do?", "{Animal} action:"
VERB_FORMS: dict[str, tuple[str, ...]] = {
    "jumps": ("jump", "jumped", "jumping"),
    "sleeps": ("sleep", "slept", "sleeping"),
    "swims": ("swim", "swam", "swimming"),
    "eats": ("eat", "ate", "eating"),
    "climbs": ("climb", "climbed", "climbing"),
    "digs": ("dig", "dug", "digging"),
    "hides": ("hide", "hid", "hiding"),
    "naps": ("nap", "napped", "napping"),
}
VERBS: tuple[str, ...] = tuple(VERB_FORMS)
COUNT_QUESTION, COUNT_PRIMER = "In how many frames did a {obj} appear?", "The {obj} count was"

# object -> action, for the attribute kind
COLORED_OBJECTS: dict[str, str] = {
    "car": "drives past",
    "bus": "stops nearby",
    "truck": "drives by",
    "balloon": "floats by",
    "kite": "flies overhead",
    "umbrella": "opens nearby",
    "scooter": "rolls past",
    "van": "parks nearby",
}

# animal -> action, for the object and order kinds
ANIMALS: dict[str, str] = {
    "dog": "runs across",
    "cat": "walks by",
    "horse": "trots past",
    "cow": "wanders in",
    "fox": "runs across",
    "rabbit": "hops by",
    "deer": "walks past",
    "goat": "wanders in",
    "sheep": "walks by",
    "duck": "waddles past",
    "pig": "trots by",
    "bear": "walks past",
}

PLURALS: dict[str, str] = {"fox": "foxes", "bus": "buses", "deer": "deer", "sheep": "sheep"}

# counted object -> action, for the count kind
COUNT_EVENTS: dict[str, str] = {
    "bird": "flies past",
    "plane": "flies overhead",
    "firework": "bursts above",
}
COUNT_RANGE = (1, 3)

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


@dataclass(frozen=True)
class Scene:
    """A static scene: a fixed opening plus slots whose option changes now and then between frames."""

    opening: str
    slots: tuple[tuple[str, ...], ...]
    details: tuple[str, ...]


# Filler text must not contain any answer word (colors, animals, vehicles, counted objects, numbers).
SCENES: tuple[Scene, ...] = (
    Scene(
        "A quiet street.",
        (
            (
                "A few people wait at the crossing.",
                "People walk along the pavement.",
                "A man reads on a bench.",
            ),
            ("The sun is bright.", "A cloud drifts over.", "Shadows stretch across the road."),
            ("Leaves rustle in the trees.", "The trees are still.", "A breeze moves the awning."),
        ),
        (
            "There is a bakery, a lamp post and parked bicycles.",
            "Shop signs hang over the doors.",
            "Flower pots line the windows.",
        ),
    ),
    Scene(
        "A city park.",
        (
            ("A woman jogs on the path.", "Children play near the pond.", "An old man sits by the pond."),
            ("The water is calm.", "Ripples cross the pond.", "Light glitters on the water."),
            ("The grass is freshly cut.", "Leaves fall slowly.", "The trees sway gently."),
        ),
        (
            "There is a pond, wooden benches and tall trees.",
            "A fountain splashes softly.",
            "The path curves around the pond.",
        ),
    ),
    Scene(
        "A riverside path.",
        (
            ("A couple walks on the bridge.", "A man fishes from the bank.", "A waiter wipes a table."),
            ("The river flows slowly.", "Mist hangs over the water.", "Sunlight hits the reeds."),
            ("Chairs stand outside the cafe.", "A menu board leans on the wall.", "Cups sit on a table."),
        ),
        (
            "There is a stone bridge, reeds and a small cafe.",
            "Reeds bend in the wind.",
            "The cafe door is open.",
        ),
    ),
    Scene(
        "A town square.",
        (
            ("Shoppers browse the stalls.", "A vendor arranges fruit.", "Tourists take photos."),
            ("The fountain sprays water.", "The fountain is quiet.", "Water drips from the fountain."),
            ("The sky is clear.", "Clouds gather above.", "The light is soft."),
        ),
        (
            "There is a clock tower, a fountain and market stalls.",
            "Cobblestones cover the ground.",
            "Awnings shade the stalls.",
        ),
    ),
    Scene(
        "A beach promenade.",
        (
            (
                "People stroll along the railing.",
                "A boy builds a sandcastle.",
                "Towels dry on the railing.",
            ),
            ("Waves roll onto the sand.", "The sea is calm.", "Foam washes up the shore."),
            ("The palms sway.", "The wind picks up.", "The air is still."),
        ),
        (
            "There is a railing, palm trees and a lifeguard hut.",
            "Sand drifts over the path.",
            "Benches face the sea.",
        ),
    ),
)

# Appended when a frame budget is larger than the scene text: more of the same static scene.
_NEUTRAL_TAIL = " Nothing else changes in the scene. The view stays the same."

_PREFIX_TEMPLATE = "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\nVideo:\n"
_SUFFIX_TEMPLATE = "Question: {question} Answer with one word.<|im_end|>\n<|im_start|>assistant\n{primer}"


@dataclass
class ProbeSample:
    """One probe prompt, already tokenised.

    ``needle_frames`` are the (0-based, sorted) frame indices that carry the answer. ``needle_spans``
    gives, for each needle frame, the ``[start, end)`` token offsets *inside the frame* of its fact
    caption ("Car color: red."), the tokens the answer is copied from; the rest of a needle frame is
    the event sentence and ordinary scene text. ``candidates`` is the closed vocabulary that
    ``check_answer`` recognises for this question.
    """

    seed: int
    kind: str
    prefix_ids: list[int]
    frames: list[list[int]]
    suffix_ids: list[int]
    answer: str
    aliases: list[str]
    needle_frames: list[int]
    question: str
    candidates: list[str] = field(default_factory=list)
    needle_spans: list[tuple[int, int]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def input_ids(self) -> list[int]:
        ids = list(self.prefix_ids)
        for frame in self.frames:
            ids.extend(frame)
        ids.extend(self.suffix_ids)
        return ids

    @property
    def video_start(self) -> int:
        return len(self.prefix_ids)

    @property
    def n_frames(self) -> int:
        return len(self.frames)

    @property
    def tokens_per_frame(self) -> int:
        return len(self.frames[0])

    @property
    def video_end(self) -> int:
        return self.video_start + self.n_frames * self.tokens_per_frame

    def frame_positions(self, frame: int) -> list[int]:
        """Sequence positions of all tokens of ``frame``."""
        start = self.video_start + frame * self.tokens_per_frame
        return list(range(start, start + self.tokens_per_frame))

    @property
    def needle_token_positions(self) -> list[int]:
        """Sequence positions of every token of every needle frame (frame-level ground truth)."""
        return [p for f in self.needle_frames for p in self.frame_positions(f)]

    @property
    def needle_fact_positions(self) -> list[int]:
        """Sequence positions of the fact captions only: the answer-bearing subset of the needle frames."""
        out: list[int] = []
        for f, (a, b) in zip(self.needle_frames, self.needle_spans, strict=True):
            base = self.video_start + f * self.tokens_per_frame
            out.extend(range(base + a, base + b))
        return out


def seeds(split: str, n: int | None = None) -> list[int]:
    """The first ``n`` seeds of ``split`` ("dev" or "heldout"); all of them when ``n`` is None."""
    if split not in _SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(_SPLITS)}")
    pool = _SPLITS[split]
    if n is None:
        return list(pool)
    if not 0 <= n <= len(pool):
        raise ValueError(f"split {split!r} has {len(pool)} seeds, asked for {n}")
    return list(pool[:n])


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def _with_article(sentence: str) -> str:
    """Fix "A orange" / "a orange" to "An orange" / "an orange"."""
    return re.sub(r"\b([Aa]) ([aeiou])", r"\1n \2", sentence)


def _plural(word: str) -> str:
    return PLURALS.get(word, word + "s")


def _scene_text(scene: Scene, choice: Sequence[int], detail_order: Sequence[int]) -> str:
    parts = [scene.opening]
    parts += [slot[c] for slot, c in zip(scene.slots, choice, strict=True)]
    parts += [scene.details[i] for i in detail_order]
    return " ".join(parts) + _NEUTRAL_TAIL


def _fit_frame(
    tokenizer: Any,
    index: int,
    needle: tuple[str, str] | None,
    scene_text: str,
    tokens_per_frame: int,
    n_frames: int,
    tail: str = _NEUTRAL_TAIL,
) -> tuple[list[int], tuple[int, int]]:
    """Token ids of one frame, exactly ``tokens_per_frame`` long, and the fact caption's token span.

    Layout: ``Frame {index+1}:`` + optional needle (event sentence + fact caption) + scene text (cut at a
    token boundary, extended with `tail` when short) + ``\\n``. The fact is never cut; the
    event sentence is dropped when both do not fit behind the widest header of the video, so all needle
    frames of a sample use the same form.
    """
    header = _encode(tokenizer, f"Frame {index + 1}:")
    newline = _encode(tokenizer, "\n")
    widest = len(_encode(tokenizer, f"Frame {n_frames}:"))
    event_ids: list[int] = []
    fact_ids: list[int] = []
    if needle is not None:
        event, fact = needle
        event_ids = _encode(tokenizer, " " + _with_article(event)) if event else []
        fact_ids = _encode(tokenizer, " " + _with_article(fact))
        if len(event_ids) + len(fact_ids) > tokens_per_frame - widest - len(newline):
            event_ids = []
        if len(fact_ids) > tokens_per_frame - len(header) - len(newline):
            raise ValueError(f"tokens_per_frame={tokens_per_frame} is too small for the needle {fact!r}")
    used = len(header) + len(event_ids) + len(fact_ids)
    room = tokens_per_frame - used - len(newline)
    scene_ids = _encode(tokenizer, " " + scene_text)
    pad = _encode(tokenizer, tail)
    while len(scene_ids) < room:
        scene_ids += pad
    ids = header + event_ids + fact_ids + scene_ids[:room] + newline
    return ids, (used - len(fact_ids), used)


def _pick_needles(
    rng: random.Random, n_frames: int, count: int, needle_position: int | Sequence[int] | None
) -> list[int]:
    if needle_position is None:
        return sorted(rng.sample(range(n_frames), count))
    if isinstance(needle_position, int):
        fixed = [needle_position]
    else:
        fixed = list(needle_position)
        if len(fixed) != count:
            raise ValueError(f"needle_position lists {len(fixed)} frames, this sample needs {count}")
    if len(set(fixed)) != len(fixed) or any(not 0 <= p < n_frames for p in fixed):
        raise ValueError(f"needle_position {needle_position!r} must be distinct frames in [0, {n_frames})")
    rest = [f for f in range(n_frames) if f not in fixed]
    return sorted(fixed + rng.sample(rest, count - len(fixed)))


def make_sample(
    seed: int,
    tokenizer: Any,
    n_frames: int = 32,
    tokens_per_frame: int = 32,
    kind: str | None = None,
    n_needles: int = 1,
    needle_position: int | Sequence[int] | None = None,
    change_rate: float = 0.25,
    salt: str = "",
) -> ProbeSample:
    """Build the probe sample for ``seed`` (deterministic for a given tokenizer and arguments).

    ``kind`` is drawn from the seed (``KIND_WEIGHTS``) when None. ``n_needles`` is the number of frames
    showing the needle for the "attribute" and "object" kinds; "order" always has two needle frames and
    "count" draws its count (the answer) from ``COUNT_RANGE``. ``needle_position`` fixes needle frames:
    an int places one needle there (any others are drawn from the seed), a sequence gives all of them;
    None draws them uniformly over the video. ``change_rate`` is the chance that the scene changes between
    two frames (a slot changes and, for rates above 0.5, the details are reordered too): 0.25 gives long runs
    of identical frames, 1.0 a busy video where neighbours rarely repeat. ``salt`` separates the samples of
    probe families that share seeds.
    """
    if not MIN_FRAMES <= n_frames <= MAX_FRAMES:
        raise ValueError(f"n_frames must be in [{MIN_FRAMES}, {MAX_FRAMES}], got {n_frames}")
    if not MIN_TPF <= tokens_per_frame <= MAX_TPF:
        raise ValueError(f"tokens_per_frame must be in [{MIN_TPF}, {MAX_TPF}], got {tokens_per_frame}")
    if n_needles < 1:
        raise ValueError("n_needles must be >= 1")
    if not 0.0 <= change_rate <= 1.0:
        raise ValueError(f"change_rate must be in [0, 1], got {change_rate}")
    # str seeds are hashed deterministically by random.Random, unlike hash().
    rng = random.Random(f"sharp-vlm-probe:{salt}{seed}")
    if kind is None:
        names = list(KIND_WEIGHTS)
        kind = rng.choices(names, weights=[KIND_WEIGHTS[k] for k in names])[0]
    elif kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")

    scene = rng.choice(SCENES)
    events: list[tuple[str, str]]
    meta: dict[str, Any] = {"scene": SCENES.index(scene)}
    if kind == "attribute":
        obj = rng.choice(sorted(COLORED_OBJECTS))
        color = rng.choice(COLORS)
        needles = _pick_needles(rng, n_frames, n_needles, needle_position)
        fields = {"obj": obj, "Obj": obj.capitalize(), "color": color, "action": COLORED_OBJECTS[obj]}
        events = [(ATTR_EVENT.format(**fields), ATTR_FACT.format(**fields))] * len(needles)
        question, primer = ATTR_QUESTION.format(**fields), ATTR_PRIMER.format(**fields)
        answer, aliases, candidates = color, [], list(COLORS)
        meta["object"] = obj
    elif kind == "object":
        animal = rng.choice(sorted(ANIMALS))
        needles = _pick_needles(rng, n_frames, n_needles, needle_position)
        fields = {"animal": animal, "action": ANIMALS[animal]}
        events = [(OBJ_EVENT.format(**fields), OBJ_FACT.format(**fields))] * len(needles)
        question, primer = OBJ_QUESTION, OBJ_PRIMER
        answer, aliases = animal, [_plural(animal)]
        candidates = sorted(ANIMALS) + [_plural(a) for a in sorted(ANIMALS)]
    elif kind == "action":
        animal = rng.choice(sorted(ANIMALS))
        verb = rng.choice(VERBS)
        needles = _pick_needles(rng, n_frames, n_needles, needle_position)
        fields = {"animal": animal, "Animal": animal.capitalize(), "verb": verb}
        events = [(ACTION_EVENT.format(**fields), ACTION_FACT.format(**fields))] * len(needles)
        question, primer = ACTION_QUESTION.format(**fields), ACTION_PRIMER.format(**fields)
        answer, aliases = verb, list(VERB_FORMS[verb])
        candidates = list(VERBS) + [f for v in VERBS for f in VERB_FORMS[v]]
        meta["animal"] = animal
    elif kind == "order":
        earlier, later = rng.sample(sorted(ANIMALS), 2)
        needles = _pick_needles(rng, n_frames, 2, needle_position)
        events = [
            (ORDER_EVENT.format(animal=a, action=ANIMALS[a]), ORDER_FACT.format(animal=a, action=ANIMALS[a]))
            for a in (earlier, later)
        ]
        question, primer = ORDER_QUESTION, ORDER_PRIMER
        answer, aliases = later, [_plural(later)]
        candidates = sorted(ANIMALS) + [_plural(a) for a in sorted(ANIMALS)]
        meta["animals"] = [earlier, later]
    else:  # count
        obj = rng.choice(sorted(COUNT_EVENTS))
        count = rng.randint(*COUNT_RANGE)
        needles = _pick_needles(rng, n_frames, count, needle_position)
        fields = {"obj": obj, "Obj": obj.capitalize(), "action": COUNT_EVENTS[obj]}
        events = [
            (COUNT_EVENT.format(**fields), COUNT_FACT.format(k=k, **fields)) for k in range(1, count + 1)
        ]
        question, primer = COUNT_QUESTION.format(**fields), COUNT_PRIMER.format(**fields)
        answer, aliases = str(count), [NUMBER_WORDS[count]] + (["once"] if count == 1 else [])
        aliases += ["twice"] if count == 2 else []
        candidates = [str(i) for i in range(len(NUMBER_WORDS))] + list(NUMBER_WORDS)
        meta["object"] = obj

    # Filler: the same scene in every frame; a slot changes with probability change_rate between frames.
    choice = [rng.randrange(len(slot)) for slot in scene.slots]
    detail_order = [0] + rng.sample(range(1, len(scene.details)), len(scene.details) - 1)
    needle_at = dict(zip(needles, events, strict=True))
    frames: list[list[int]] = []
    spans: list[tuple[int, int]] = []
    meta["change_rate"] = change_rate
    for i in range(n_frames):
        if rng.random() < change_rate:
            s = rng.randrange(len(scene.slots))
            choice[s] = rng.randrange(len(scene.slots[s]))
            if change_rate > 0.5:
                detail_order = rng.sample(range(len(scene.details)), len(scene.details))
        ids, span = _fit_frame(
            tokenizer,
            i,
            needle_at.get(i),
            _scene_text(scene, choice, detail_order),
            tokens_per_frame,
            n_frames,
        )
        frames.append(ids)
        if i in needle_at:
            spans.append(span)

    prefix_ids = _encode(tokenizer, _PREFIX_TEMPLATE.format(system=SYSTEM_PROMPT))
    suffix_ids = _encode(tokenizer, "\n" + _SUFFIX_TEMPLATE.format(question=question, primer=primer))
    return ProbeSample(
        seed=seed,
        kind=kind,
        prefix_ids=prefix_ids,
        frames=frames,
        suffix_ids=suffix_ids,
        answer=answer,
        aliases=aliases,
        needle_frames=needles,
        question=question,
        candidates=candidates,
        needle_spans=spans,
        meta=meta,
    )


_WORD_RE = re.compile(r"[a-z0-9]+")
_ARTICLES = {"a", "an", "the"}


_SENTENCE_END = re.compile(r"[.!?](?=\s|$)|\n")


def _words(text: str) -> list[str]:
    """Normalised words of the reply's first sentence.

    A primed one-word answer is often followed by the model parroting the video ("3. A town square...");
    that run-on is not part of the answer, so only the first sentence or line is read.
    """
    text = text.split("<|im_end|>")[0].strip()
    end = _SENTENCE_END.search(text)
    text = (text[: end.start()] if end else text).lower()
    return [w for w in _WORD_RE.findall(text) if w not in _ARTICLES]


def _canonical(word: str, sample: ProbeSample) -> str | None:
    """Map a reply word to the candidate it names (numbers by value), or None if it names none."""
    if sample.kind == "count":
        if word.isdigit():
            return str(int(word))
        if word in NUMBER_WORDS:
            return str(NUMBER_WORDS.index(word))
        return {"once": "1", "twice": "2", "thrice": "3"}.get(word)
    if word == sample.answer or word in sample.aliases:
        return sample.answer
    for cand in sample.candidates:
        if word == cand or word == _plural(cand):
            return cand
    return None


def check_answer(generated_text: str, sample: ProbeSample) -> bool:
    """True when the reply's first sentence names the answer (or an alias) and no other candidate.

    Matching is on normalised words (lowercase, punctuation and articles dropped) against the sample's
    closed vocabulary, so "Red.", " red car" and "the red one. A blue bus..." count for "red"; "red or
    blue", "blue, not red" and "blue" do not. Numbers match by value ("2", "two", "twice").
    """
    named = [c for c in (_canonical(w, sample) for w in _words(generated_text)) if c is not None]
    return bool(named) and named[0] == sample.answer and len(set(named)) == 1
