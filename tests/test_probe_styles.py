"""Probe styles: other scene vocabularies whose filler names distractors, other needle phrasings and question
paraphrases, a dev / held-out split by style; run and summarised beside the families."""

from __future__ import annotations

import re

import pytest

from sharp_vlm.errors import ConfigError
from sharp_vlm.probe.generator import check_answer
from sharp_vlm.probe.run import ProbeConfig, check_probe, described_sources, sample_sources
from sharp_vlm.probe.styles import DEV, HELDOUT, STYLES, styles


@pytest.fixture(scope="module")
def tok():
    from sharp_vlm.probe.lm import load_tokenizer

    return load_tokenizer()


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def test_the_split_is_by_style_and_the_held_out_styles_share_no_vocabulary_choice():
    assert DEV and HELDOUT and not set(DEV) & set(HELDOUT)
    assert [s.name for s in styles("dev")] == list(DEV) and [s.name for s in styles("heldout")] == list(HELDOUT)
    for name in HELDOUT:  # no held-out style reuses a development style's scene, needle or questions
        held = STYLES[name]
        for dev in (STYLES[d] for d in DEV):
            assert held.place != dev.place and held.needle != dev.needle
            assert not set(held.questions) & set(dev.questions) and not set(held.filler) & set(dev.filler)
    with pytest.raises(ValueError, match="unknown probe style"):
        styles("kitchen")


@pytest.mark.parametrize("name", list(STYLES))
def test_style_samples_carry_the_needle_and_distractors_but_never_the_answer_in_the_filler(tok, name):
    style = STYLES[name]
    lengths = set()
    for seed in range(6):
        s = style.sample(seed, tok)
        assert s.n_frames == style.n_frames and {len(f) for f in s.frames} == {style.tokens_per_frame}
        assert len(s.needle_frames) == (2 if style.kind == "order" else 1)
        a, b = s.needle_spans[-1]
        assert s.answer in tok.decode(s.frames[s.needle_frames[-1]][a:b])
        others = set(style.candidates) - {s.answer, s.meta["first"]}
        filler = [tok.decode(f) for i, f in enumerate(s.frames) if i not in s.needle_frames]
        assert all(s.answer not in _words(t) for t in filler)  # the answer is named by the needle only
        named = {w.removesuffix("s") for t in filler for w in _words(t)} | {w for t in filler for w in _words(t)}
        assert named & others  # the filler names other candidates: distractors
        lengths |= {len(tok.decode(f).split(style.tail)[0]) for f in s.frames}
        assert s.question in [q for q, _ in style.questions]
        assert check_answer(f" {s.answer}.", s) and not check_answer(f" {sorted(others)[0]}.", s)
        assert style.sample(seed, tok).input_ids == s.input_ids  # deterministic
    assert len(lengths) > 2  # filler of different lengths per frame


def test_styles_run_beside_the_families_and_are_described(tok):
    cfg = ProbeConfig(methods=["sharp"], n=1, families=["attribute"], styles=["dev"])
    names = [name for name, _ in sample_sources(cfg)]
    assert names == ["attribute", *DEV]
    assert set(described_sources(cfg)) == set(names)
    with pytest.raises(ConfigError, match="unknown probe style"):
        check_probe(ProbeConfig(methods=["sharp"], n=1, styles=["nowhere"]))
