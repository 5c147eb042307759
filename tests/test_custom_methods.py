"""A user's own method: what the engine refuses, and how it names it."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

import sharp_vlm as sv
from sharp_vlm.testing import tiny_llama

SPAN = sv.VideoSpan(start=2, n_frames=4, tokens_per_frame=8)  # 32 visual tokens; retain 0.25 keeps 8


@dataclass
class Answers(sv.StageMethod):
    """Returns whatever `answer(budget)` gives."""

    answer: object = None
    scores_attention = False

    def select(self, view):
        return self.answer(view.budget)


def _keep(b):
    return torch.arange(b)


BAD = {
    "wrong count": lambda b: torch.arange(b + 1),
    "duplicates": lambda b: torch.tensor([0] * b),
    "unsorted": lambda b: torch.arange(b).flip(0),
    "out of range": lambda b: torch.arange(b) + 100,
    "merge from a kept token": lambda b: sv.Selection(_keep(b), sv.Merge(torch.tensor([0]), torch.tensor([1]))),
    "NaN weight": lambda b: sv.Selection(_keep(b), sv.Merge(torch.tensor([b]), torch.tensor([0]),
                                                              torch.tensor([float("nan")]))),
    "infinite weight": lambda b: sv.Selection(_keep(b), sv.Merge(torch.tensor([b]), torch.tensor([0]),
                                                                   torch.tensor([float("inf")]))),
}


@pytest.mark.parametrize("case", list(BAD))
def test_user_method_returns_a_bad_answer_and_catches_sharp_error(case):
    model = tiny_llama()
    with sv.apply(model, Answers(retain=0.25, layer=1, answer=BAD[case]), span=SPAN), torch.no_grad():
        with pytest.raises(sv.SharpError, match=r"Answers \(sample 0\)") as err:
            model(input_ids=torch.randint(3, 100, (1, 40)))
    assert isinstance(err.value, RuntimeError) and isinstance(err.value, sv.MethodError)


def test_user_registers_a_method_under_a_builtin_name():
    with pytest.raises(sv.ConfigError, match="'fastv' is taken by sharp_vlm.methods.fastv.FastV"):
        @sv.register("fastv")
        @dataclass
        class MyFastV(sv.StageMethod):
            def select(self, view):
                return view.top(view.attention_scores())

    assert sv.load_config({"method": "fastv"}).__class__ is sv.FastV  # the built-in is still there


def test_user_replaces_a_registered_method_on_purpose():
    from sharp_vlm.methods.base import _REGISTRY

    @sv.register("user-replaceable")
    @dataclass
    class First(sv.StageMethod):
        pass

    @sv.register("user-replaceable", replace=True)
    @dataclass
    class Second(sv.StageMethod):
        pass

    try:
        assert type(sv.load_config({"method": "user-replaceable"})) is Second
    finally:
        del _REGISTRY["user-replaceable"]


def test_user_method_without_register_is_named_by_its_class():
    model = tiny_llama()
    with sv.apply(model, Answers(retain=0.25, layer=1, answer=_keep), span=SPAN) as h, torch.no_grad():
        model(input_ids=torch.randint(3, 100, (1, 40)))
    assert h.last_stats.stages[0].label == "Answers" and Answers().to_dict()["method"] == "Answers"
