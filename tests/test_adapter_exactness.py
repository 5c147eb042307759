"""The engine's exactness suite, once for every supported family (tests/cases.py): the layout the adapter finds,
keep-everything equals the unpatched model, a hand-written pruned forward (tests/oracle.py) at prefill and decode
for one- and two-stage schedules with the per-layer cache lengths, decode positions, generate with and without a
cache, FastV against eager attention, ShaRP (forward-scope segment mask, reference debias) against the oracle with
the dense segment mask and its reference pass, a saved checkpoint, and a left-padded batch against its samples one
by one.
Tiny random-weight models, no downloads."""

from __future__ import annotations

import pytest
import torch

import sharp_vlm as sv
from cases import BY_NAME, CASES, assert_batch_equals_one_by_one, assert_fastv_matches_eager, model_and_inputs
from oracle import assert_matches, forward_logits, greedy, run_pruned, staged_forward
from sharp_vlm.core.masks import segment_allowed
from sharp_vlm.engine.segment_attention import RUNS_KWARG
from sharp_vlm.models import registry

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=CASES, ids=[c.name for c in CASES])
def case(request):
    return request.param


@pytest.fixture(scope="module")
def family(case):
    return (case, *model_and_inputs(case.name))


def _cache(out):
    return out.cache if getattr(out, "cache", None) is not None else out.past_key_values


# ---------------------------------------------------------------- the layout and the oracle itself
def test_layout_is_the_video_frame_by_frame(family):
    """The adapter's video tokens are exactly the case's rows, frame-major, each frame its row-major grid."""
    case, model, inputs = family
    (lay,) = registry.adapter_for(model, case.span).find_layouts(inputs, inputs["input_ids"].shape[1], 1)
    lay = lay.of_kinds(("video",))
    h, w = case.grid
    assert lay.items == [sv.VisualItem("video", 0, case.frames, h, w)]
    assert torch.equal(lay.positions, torch.nonzero(case.visual(model, inputs)).flatten())
    assert torch.equal(lay.frame_ids - lay.frame_ids.min(), torch.arange(case.frames).repeat_interleave(h * w))
    assert torch.equal(lay.rows, torch.arange(h).repeat_interleave(w).repeat(case.frames))
    assert torch.equal(lay.cols, torch.arange(w).repeat(h * case.frames))


def test_oracle_without_stages_is_the_model(family):
    case, model, inputs = family
    logits, tokens, _ = staged_forward(model, case.text_model(model), case.prompt(model, inputs), [], 4)
    assert (logits[0] - forward_logits(model, inputs)).abs().max() < 1e-5
    assert tokens == greedy(model, inputs, n=4)[0, -4:].tolist()


# ---------------------------------------------------------------- exactness
@pytest.mark.parametrize("cfg", [sv.NoPrune(), sv.FastV(retain=1.0, layer=2), sv.UniformPrune(retain=1.0, layer=0),
                                 sv.ShaRP(retain=1.0)], ids=["noprune", "fastv", "uniform0", "sharp"])
def test_keep_everything_equals_unpatched(family, cfg):
    case, model, inputs = family
    ref, ref_gen = forward_logits(model, inputs), greedy(model, inputs)
    with case.apply(model, cfg) as handle:
        out, gen = forward_logits(model, inputs), greedy(model, inputs)
    assert out.shape == ref.shape
    assert (out - ref).abs().max().item() <= 1e-5
    assert torch.equal(gen, ref_gen)
    assert handle.last_stats.n_visual == [case.n_visual]


SCHEDULES = {
    "fastv2": lambda: sv.FastV(retain=0.2, layer=2),
    "random1": lambda: sv.RandomPrune(retain=0.3, layer=1),
    # original positions: the oracle keeps them (contiguous ones: tests/test_positions_contiguous.py)
    "uniform0+fastv2": lambda: sv.Schedule([sv.UniformPrune(retain=0.5, layer=0, positions="original"),
                                            sv.FastV(retain=0.25, layer=2)]),
    "fastv1+fastv3": lambda: sv.Schedule([sv.FastV(retain=0.5, layer=1), sv.FastV(retain=0.25, layer=3)]),
}


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_engine_matches_oracle_with_cache_lengths(family, name):
    case, model, inputs = family
    method = SCHEDULES[name]()
    steps = getattr(method, "steps", [method])
    prefill, stats, out = run_pruned(model, inputs, method, 4, span=case.span)
    stages = [(s.layer, s.kept_positions[0]) for s in stats.stages]
    n = case.n_visual
    assert [s.n_kept[0] for s in stats.stages] == [sv.keep_count(m.retain, n) for m in steps]
    assert [s.n_in[0] for s in stats.stages] == [n] + [s.n_kept[0] for s in stats.stages[:-1]]
    prompt = case.prompt(model, inputs)
    for i, (_, kept) in enumerate(stages):  # only the video's rows, each stage within what the previous kept
        assert bool(prompt.visual[kept].all())
        assert i == 0 or bool(torch.isin(kept, stages[i - 1][1]).all())
    tm = case.text_model(model)
    logits, tokens, cache = staged_forward(model, tm, prompt, stages, n_decode=4)
    assert_matches(prefill, out, logits, tokens, 4)
    seq = prompt.embeds.shape[1]
    expect, cur = [], seq
    for i in range(len(tm.layers)):
        cur = next((seq - n + kept.numel() for layer, kept in reversed(stages) if layer <= i), seq)
        expect.append(cur + 3)  # 3 decoded tokens were fed back
    assert [layer.keys.shape[-2] for layer in _cache(out).layers] == expect
    assert [layer.keys.shape[-2] for layer in cache.layers] == expect


@pytest.mark.parametrize("trim", [False, True])
def test_kv_cache_lengths_and_decode_positions(family, trim):
    case, model, inputs = family
    seq = inputs["input_ids"].shape[1]
    seen = []
    hook = case.text_model(model).layers[-1].register_forward_pre_hook(
        lambda m, a, k: seen.append(k["position_embeddings"][0][:, -1].clone()), with_kwargs=True)
    try:
        greedy(model, inputs, n=4)
        ref_pos = seen[1:]
        seen.clear()
        with case.apply(model, sv.FastV(retain=0.25, layer=2), trim_kv=trim):
            out = greedy(model, inputs, n=4, return_dict_in_generate=True)
        pruned_pos = seen[1:]
    finally:
        hook.remove()
    # decode continues at the unpruned positions (as the RoPE angles the layers get)
    assert len(ref_pos) == len(pruned_pos) == 3
    for a, b in zip(ref_pos, pruned_pos, strict=True):
        assert torch.equal(a, b)
    kept = seq - case.n_visual + sv.keep_count(0.25, case.n_visual)
    shallow = kept if trim else seq
    assert [layer.keys.shape[-2] for layer in _cache(out).layers] == [shallow + 3] * 2 + [kept + 3] * 2


def test_a_later_text_turn_at_once_equals_it_token_by_token(family):
    """A multi-token call that continues a pruned cache (a follow-up turn) is text: fed at once it gives the logits
    of feeding it one token at a time. For the declared span the turn is longer than the span's end, which must
    not read as a new video."""
    case, model, inputs = family
    seq = inputs["input_ids"].shape[1]
    if case.span is not None:
        end = case.span.start + case.span.n_tokens
        turn = torch.randint(3, 120, (1, end + 2), generator=torch.Generator().manual_seed(0))
    else:
        turn = inputs["input_ids"][:, -6:]  # the prompt's closing text tokens (question, assistant marker)

    def call(ids: torch.Tensor, cache) -> torch.Tensor:
        extra = {"mm_token_type_ids": torch.zeros_like(ids)} if "mm_token_type_ids" in inputs else {}
        mask = torch.ones(1, seq + done[0] + ids.shape[1], dtype=torch.long)
        done[0] += ids.shape[1]
        return model(input_ids=ids, attention_mask=mask, cache=cache, use_cache=True, **extra).logits

    with case.apply(model, sv.FastV(retain=0.25, layer=2)), torch.no_grad():
        logits = []
        for chunks in ([turn], list(turn.split(1, dim=1))):
            cache = _cache(model(**inputs, use_cache=True))
            done = [0]
            logits.append(torch.cat([call(c, cache) for c in chunks], dim=1))
    assert (logits[0] - logits[1]).abs().max() < 1e-4


def test_generate_with_and_without_cache_agree(family):
    case, model, inputs = family
    cfg = sv.Schedule([sv.UniformPrune(retain=0.5, layer=0), sv.FastV(retain=0.25, layer=1)])
    with case.apply(model, cfg) as handle:
        cached = greedy(model, inputs, n=5)
        kept_cached = handle.last_stats.stages[-1].kept[0]
        uncached = greedy(model, inputs, n=5, use_cache=False)
        kept_uncached = handle.last_stats.stages[-1].kept[0]
    assert torch.equal(cached, uncached)
    # without a cache every step prunes again; the query stays the last prompt token, so the kept set is stable
    assert torch.equal(kept_cached, kept_uncached)


@pytest.mark.parametrize("layer", [1, 2])
def test_fastv_matches_eager_attention_reference(case, layer):
    sdpa, eager = case.build(5, "sdpa"), case.build(5, "eager")
    assert_fastv_matches_eager(case, sdpa, eager, case.inputs(sdpa, 6), layer)


# ---------------------------------------------------------------- ShaRP
def test_sharp_defaults_match_the_segment_masked_oracle(family):
    """Forward-scope bidirectional mask per frame in the layers before K, reference debias, dedup."""
    case, model, inputs = family
    prompt = case.prompt(model, inputs)
    seg = torch.full((prompt.embeds.shape[1],), -1)
    seg[prompt.visual] = torch.arange(case.n_visual) // case.per_frame  # text, markers, newlines in none
    cfg = sv.ShaRP(retain=0.2)
    prefill, stats, out = run_pruned(model, inputs, cfg, 4, span=case.span)
    stage = stats.stages[0]
    assert stage.n_kept == [sv.keep_count(0.2, case.n_visual)] and stage.costs.reference_flops > 0
    logits, tokens, _ = staged_forward(model, case.text_model(model), prompt, [(cfg.layer, stage.kept_positions[0])],
                                       4, shallow_mask=segment_allowed(seg, "bidirectional")[None, None])
    assert_matches(prefill, out, logits, tokens, 4)


def test_reference_pass_uses_the_real_positions_and_masks(family):
    case, model, inputs = family
    calls = []
    with case.apply(model, sv.ShaRP(retain=0.2, debias="reference")), torch.no_grad():
        # registered after the engine's hook, so it sees what the layer really receives
        hook = case.text_model(model).layers[0].register_forward_pre_hook(
            lambda m, a, k: calls.append((a[0], k["position_embeddings"], k.get(RUNS_KWARG))), with_kwargs=True)
        try:
            model(**inputs)
        finally:
            hook.remove()
    assert len(calls) == 2  # the real prefill and the reference pass
    (real_h, real_pe, real_runs), (ref_h, ref_pe, ref_runs) = calls
    assert real_h.shape == ref_h.shape
    assert torch.equal(real_pe[0], ref_pe[0]) and torch.equal(real_pe[1], ref_pe[1])
    # the segment mask, as the block-wise kernel's runs, in both passes: one block per frame
    assert real_runs is not None and real_runs == ref_runs
    assert sum(seg for _, _, seg in real_runs.runs) == case.frames
    vis = case.visual(model, inputs)
    assert torch.equal(real_h[0, ~vis], ref_h[0, ~vis])  # text, markers, newlines untouched
    assert not torch.allclose(real_h[0, vis], ref_h[0, vis])  # frames replaced
    frames = ref_h[0, vis].view(case.frames, case.per_frame, -1)  # black frames: every frame alike
    assert torch.allclose(frames, frames[:1].expand_as(frames), atol=1e-5)


# ---------------------------------------------------------------- a saved checkpoint
def test_a_saved_checkpoint_loads_and_prunes_the_same(family, tmp_path):
    """save_pretrained, then the Auto class: the same model class, adapter, kept sets, logits and tokens."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    case, model, inputs = family
    model.save_pretrained(tmp_path)
    auto = AutoModelForCausalLM if case.span is not None else AutoModelForImageTextToText
    loaded = auto.from_pretrained(tmp_path, attn_implementation="sdpa").eval()
    assert type(loaded) is type(model)
    for cfg in (sv.FastV(retain=0.25, layer=2), sv.ShaRP(retain=0.2)):
        runs = []
        for m in (model, loaded):
            with case.apply(m, cfg) as handle:
                runs.append((type(handle.adapter), forward_logits(m, inputs), handle.last_stats.stages[0].kept[0],
                             greedy(m, inputs, n=3)))
        (ta, a, ka, ga), (tb, b, kb, gb) = runs
        assert ta is tb and torch.equal(ka, kb) and torch.equal(ga, gb)
        assert (a - b).abs().max() < 1e-6


# ---------------------------------------------------------------- batches
@pytest.mark.parametrize("cfg", [sv.FastV(retain=0.25, layer=2), sv.ShaRP(retain=0.25, layer=2),
                                 sv.Schedule([sv.UniformPrune(retain=0.5, layer=0), sv.FastV(retain=0.25, layer=2)])],
                         ids=["fastv", "sharp", "schedule"])
@pytest.mark.parametrize("name", [c.name for c in CASES if c.samples is not None])
def test_batched_equals_one_by_one(name, cfg):
    case = BY_NAME[name]
    model, _ = model_and_inputs(name)
    assert_batch_equals_one_by_one(case, model, case.samples(model), cfg)
