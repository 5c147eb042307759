"""Contiguous positions after a stage before the decoder: the patched model equals the unpatched one run on the
prompt without the dropped tokens (the kept rows numbered 0..S'-1, decoding at S'), on every 1-D family; batched
equals one by one; M-RoPE keeps its positions."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

import sharp_vlm as sv
from cases import BY_NAME, assert_batch_equals_one_by_one, model_and_inputs
from oracle import assert_matches, run_pruned, staged_forward

ONE_D = ["llama_span", "llava_onevision", "internvl_qwen2", "smolvlm2"]


def _short_prompt_forward(case, model, inputs, kept_positions, n_decode):
    """(logits per step, greedy tokens) of the unpatched decoder on the prompt without the dropped visual rows."""
    prompt = case.prompt(model, inputs)
    rows = ~prompt.visual
    rows[kept_positions] = True
    tm, head = case.text_model(model), model.get_output_embeddings()
    cache = DynamicCache(config=tm.config)
    logits, tokens = [], []
    with torch.no_grad():
        h = tm(inputs_embeds=prompt.embeds[:, rows], cache=cache, use_cache=True).last_hidden_state
        logits.append(head(h))
        for _ in range(n_decode):
            tokens.append(int(logits[-1][0, -1].argmax()))
            if len(tokens) == n_decode:
                break
            h = tm(input_ids=torch.tensor([[tokens[-1]]]), cache=cache, use_cache=True).last_hidden_state
            logits.append(head(h))
    return logits, tokens


@pytest.mark.parametrize("name", ONE_D)
@pytest.mark.parametrize("method", [sv.DivPrune(retain=0.3), sv.VidCom2(retain=0.3),
                                    sv.UniformPrune(retain=0.3, layer=0)], ids=["divprune", "vidcom2", "uniform"])
def test_contiguous_positions_equal_the_prompt_without_the_dropped_tokens(name, method):
    case = BY_NAME[name]
    model, inputs = model_and_inputs(name)
    assert method.positions == "auto"  # the default renumbers on 1-D positions
    prefill, stats, out = run_pruned(model, inputs, method, 4, span=case.span)
    logits, tokens = _short_prompt_forward(case, model, inputs, stats.stages[0].kept_positions[0], 4)
    assert_matches(prefill, out, logits, tokens, 4)


def test_original_positions_still_match_the_staged_oracle():
    case = BY_NAME["llava_onevision"]
    model, inputs = model_and_inputs("llava_onevision")
    method = sv.DivPrune(retain=0.3, positions="original")
    prefill, stats, out = run_pruned(model, inputs, method, 4)
    stages = [(s.layer, s.kept_positions[0]) for s in stats.stages]
    logits, tokens, _ = staged_forward(model, case.text_model(model), case.prompt(model, inputs), stages, 4)
    assert_matches(prefill, out, logits, tokens, 4)
    contiguous, _, _ = run_pruned(model, inputs, sv.DivPrune(retain=0.3), 1)
    assert not torch.allclose(contiguous, prefill)  # the two settings are different models of the prompt


def test_contiguous_then_an_in_decoder_stage_equals_the_short_prompt_pruned_there():
    """A later stage keeps the renumbered positions: the oracle runs the short prompt with that stage."""
    case = BY_NAME["llama_span"]
    model, inputs = model_and_inputs("llama_span")
    method = sv.Schedule([sv.DivPrune(retain=0.5), sv.FastV(retain=0.25, layer=2)])
    prefill, stats, out = run_pruned(model, inputs, method, 4, span=case.span)
    prompt = case.prompt(model, inputs)
    keep0 = stats.stages[0].kept_positions[0]
    rows = ~prompt.visual
    rows[keep0] = True
    short = prompt.__class__(prompt.embeds[:, rows], torch.arange(int(rows.sum()))[None], prompt.visual[rows],
                             int(rows.sum()))
    # the second stage's kept rows, as rows of the short prompt
    where = torch.cumsum(rows.long(), 0) - 1
    stages = [(2, where[stats.stages[1].kept_positions[0]])]
    logits, tokens, _ = staged_forward(model, case.text_model(model), short, stages, 4)
    assert_matches(prefill, out, logits, tokens, 4)


def test_contiguous_positions_batched_equal_one_by_one():
    case = BY_NAME["llava_onevision"]
    model, _ = model_and_inputs("llava_onevision")
    assert_batch_equals_one_by_one(case, model, case.samples(model), sv.DivPrune(retain=0.3))


def test_mrope_keeps_its_positions_and_refuses_contiguous():
    model, inputs = model_and_inputs("qwen2_5_vl")
    with pytest.raises(sv.ConfigError, match="M-RoPE"):
        sv.apply(model, sv.DivPrune(retain=0.3, positions="contiguous"))
    with pytest.raises(sv.ConfigError, match="layer=0"):
        sv.DivPrune(retain=0.3, layer=2, positions="contiguous")


def test_a_custom_method_asking_for_contiguous_positions_inside_the_decoder_is_refused():
    from dataclasses import dataclass

    @dataclass
    class Later(sv.StageMethod):  # not a PreLLMMethod: its own validate does not check positions
        positions: str = "contiguous"

        def select(self, view):
            return view.top(view.attention_scores())

    model, _ = model_and_inputs("llava_onevision")
    with pytest.raises(sv.ConfigError, match="needs layer=0, got layer=2"):
        sv.apply(model, Later(retain=0.5, layer=2))
