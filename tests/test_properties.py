"""Property: over random configs and random small inputs, on every adapter, a call either returns what the
hand-written pruned forward returns (with the budget of the one rule) or raises a SharpError; nothing else escapes."""

from __future__ import annotations

import functools
import math

import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import sharp_vlm as sv
from oracle import llama_prompt, qwen_prompt, staged_forward
from sharp_vlm.methods.experimental import ShaRPLab
from sharp_vlm.testing import tiny_llama, tiny_qwen_vl, tiny_video_inputs

N_LAYERS = 4


@functools.cache
def _model(kind: str):
    return tiny_llama(layers=N_LAYERS, seed=21) if kind == "llama" else tiny_qwen_vl(kind, layers=N_LAYERS, seed=21)


# mostly valid values, with invalid ones often enough that every refusal path is exercised
@st.composite
def retains(draw):
    if draw(st.integers(0, 7)) == 0:
        return draw(st.sampled_from([0.0, -0.2, 1.5, math.nan, True]))
    return draw(st.floats(min_value=0.01, max_value=1.0))


@st.composite
def layers(draw):
    if draw(st.integers(0, 5)) == 0:
        return draw(st.sampled_from([0, -1, N_LAYERS, N_LAYERS + 1]))
    return draw(st.integers(1, N_LAYERS - 1))


@st.composite
def methods(draw):
    kind = draw(st.sampled_from(["fastv", "uniform", "random", "sharp", "schedule"]))
    retain, layer = draw(retains()), draw(layers())
    if kind == "fastv":
        return lambda: sv.FastV(retain=retain, layer=layer,
                                query=draw(st.sampled_from(["last", "text", "last", "mean"])))
    if kind == "uniform":
        # the oracle keeps original positions (contiguous ones: tests/test_positions_contiguous.py)
        return lambda: sv.UniformPrune(retain=retain, layer=layer, positions="original")
    if kind == "random":
        return lambda: sv.RandomPrune(retain=retain, layer=layer, seed=draw(st.integers(0, 5)), positions="original")
    if kind == "sharp":
        # score scope or no mask: the shallow layers stay causal, so the oracle needs no segment mask
        opts = dict(mask=draw(st.sampled_from(["bidirectional", "local", "off"])), mask_scope="score",
                    debias=draw(st.sampled_from(["off", "reference", "pre_rope", "rope_only"])),
                    dedup=draw(st.booleans()), dedup_tau=draw(st.sampled_from([0.5, 0.9, 1.0, 1.2])))
        return lambda: ShaRPLab(retain=retain, layer=layer, **opts)
    second = draw(retains())
    return lambda: sv.Schedule([sv.UniformPrune(retain=retain, layer=0, positions="original"),
                                sv.FastV(retain=second, layer=max(layer, 1))])


@st.composite
def prompts(draw):
    kind = draw(st.sampled_from(["llama", "qwen2_vl", "qwen2_5_vl"]))
    model = _model(kind)
    if kind == "llama":
        span = sv.VideoSpan(draw(st.integers(0, 4)), draw(st.integers(1, 6)), draw(st.integers(1, 6)))
        length = span.start + span.n_tokens + draw(st.integers(0, 4))  # 0: the prompt ends with the video
        ids = torch.randint(3, 120, (1, length), generator=torch.Generator().manual_seed(draw(st.integers(0, 99))))
        return kind, model, {"input_ids": ids}, span, lambda: llama_prompt(model, ids, span)
    frames = draw(st.sampled_from([2, 4, 6]))
    side = draw(st.sampled_from([8, 16]))
    inputs = tiny_video_inputs(model, frames=frames, height=side, width=side, prefix=draw(st.integers(1, 4)),
                               question=draw(st.integers(1, 4)), seed=draw(st.integers(0, 99))).as_kwargs()
    return kind, model, inputs, None, lambda: qwen_prompt(model, inputs)


# derandomize: CI explores the same examples every run (a failure reproduces);
# raise max_examples locally to explore more
@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(make=methods(), prompt=prompts())
def test_every_call_equals_its_reference_or_raises_a_sharp_error(make, prompt):
    kind, model, inputs, span, reference = prompt
    try:
        method = make()
        with sv.apply(model, method, span=span) as handle, torch.no_grad():
            logits = model(**inputs).logits
    except sv.SharpError as err:
        event(f"refused: {type(err).__name__}: {str(err)[:50]}")
        return
    event(f"ran: {type(method).__name__} on {kind}")
    stats = handle.last_stats
    n = stats.n_visual[0]
    stages = method.stages()
    assert [s.n_kept[0] for s in stats.stages] == [sv.keep_count(s.retain, n) for s in stages]
    prompt_ = reference()
    kept = [(s.layer, s.kept_positions[0]) for s in stats.stages]
    expected, _, _ = staged_forward(model, model.model.language_model if kind != "llama" else model.model,
                                    prompt_, kept, n_decode=1)
    assert logits.shape == expected[0].shape
    assert (logits - expected[0]).abs().max() < 1e-4
