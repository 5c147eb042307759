"""In-decoder methods beside ShaRP: FastV's two attention rules and PyramidDrop's stages."""

from __future__ import annotations

import pytest
import torch

import sharp_vlm as sv
from cases import BY_NAME, model_and_inputs
from oracle import assert_matches, run_pruned, staged_forward


def test_pdrop_stages_keep_lambda_powers_of_the_original():
    cfg = sv.PDrop()
    assert cfg.lam == pytest.approx(0.5)
    assert [(s.layer, s.retain, s.label) for s in cfg.stages()] == [
        (8, 0.5, "pdrop@8"), (16, 0.25, "pdrop@16"), (24, 0.125, "pdrop@24")]
    # 28 layers (Qwen2-7B): 8 layers at 100%, 8 at 50%, 8 at 25%, 4 at 12.5%
    assert cfg.layer_averaged_retention(28) == pytest.approx((8 + 4 + 2 + 0.5) / 28)
    assert sv.PDrop(retain=0.04, layers=[2, 3]).lam == pytest.approx(0.2)


@pytest.mark.parametrize("bad", [{"layers": []}, {"layers": [3, 2]}, {"layers": [0, 2]}, {"retain": 0.0},
                                 {"query": "first"}, {"layer": 2}])
def test_pdrop_refuses_bad_options(bad):
    with pytest.raises(sv.ConfigError):
        sv.PDrop(**bad)


def test_pdrop_is_a_schedule_of_stage_layer_fastv_and_matches_the_oracle():
    case = BY_NAME["llama_span"]
    model, inputs = model_and_inputs("llama_span")
    pdrop = sv.PDrop(retain=0.25, layers=[1, 3])
    prefill, stats, out = run_pruned(model, inputs, pdrop, 4, span=case.span)
    by_hand = sv.Schedule([sv.FastV(retain=0.5, layer=1, attention_layer="stage"),
                           sv.FastV(retain=0.25, layer=3, attention_layer="stage")])
    _, stats_hand, _ = run_pruned(model, inputs, by_hand, 1, span=case.span)
    n = case.n_visual
    assert [s.n_kept[0] for s in stats.stages] == [sv.keep_count(0.5, n), sv.keep_count(0.25, n)]
    assert [s.label for s in stats.stages] == ["pdrop@1", "pdrop@3"]
    for a, b in zip(stats.stages, stats_hand.stages, strict=True):
        assert torch.equal(a.kept[0], b.kept[0])
    stages = [(s.layer, s.kept_positions[0]) for s in stats.stages]
    logits, tokens, _ = staged_forward(model, case.text_model(model), case.prompt(model, inputs), stages, 4)
    assert_matches(prefill, out, logits, tokens, 4)


def test_fastv_previous_layer_after_a_pre_llm_stage_matches_the_oracle():
    """Layer K-1 = 0 runs on what the layer-0 stage kept: the engine keeps that input, not the unpruned one."""
    case = BY_NAME["llama_span"]
    model, inputs = model_and_inputs("llama_span")
    method = sv.Schedule([sv.UniformPrune(retain=0.5, layer=0, positions="original"), sv.FastV(retain=0.25, layer=1)])
    prefill, stats, out = run_pruned(model, inputs, method, 4, span=case.span)
    assert torch.isin(stats.stages[1].kept[0], stats.stages[0].kept[0]).all()
    stages = [(s.layer, s.kept_positions[0]) for s in stats.stages]
    logits, tokens, _ = staged_forward(model, case.text_model(model), case.prompt(model, inputs), stages, 4)
    assert_matches(prefill, out, logits, tokens, 4)
    # the two rules rank different attention, so on a random model they keep different sets
    stage_rule = sv.Schedule([sv.UniformPrune(retain=0.5, layer=0, positions="original"),
                              sv.FastV(retain=0.25, layer=1, attention_layer="stage")])
    _, other, _ = run_pruned(model, inputs, stage_rule, 1, span=case.span)
    assert not torch.equal(other.stages[1].kept[0], stats.stages[1].kept[0])


def test_a_method_asking_for_layer_k_minus_1_without_saying_so_is_refused():
    class Sneaky(sv.StageMethod):
        def select(self, view):
            return view.top(view.attention_scores(layer="previous"))

    case = BY_NAME["llama_span"]
    model, inputs = model_and_inputs("llama_span")
    with sv.apply(model, Sneaky(retain=0.5, layer=2), span=case.span), torch.no_grad(), \
            pytest.raises(sv.ConfigError, match="scores_previous_layer"):
        model(**inputs)


def test_fastv_refuses_an_unknown_attention_layer():
    with pytest.raises(sv.ConfigError, match="attention_layer"):
        sv.FastV(attention_layer="next")
