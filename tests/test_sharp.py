"""ShaRP on the engine: component semantics, exactness in the score scope, bias cache, dedup, FlashAttention layers.
(The forward scope with the reference pass, against the oracle, per family: tests/test_adapter_exactness.py.)"""

from __future__ import annotations

import pytest
import torch

import sharp_vlm as sv
from oracle import forward_logits, pruned_forward
from sharp_vlm.core.dedup import dedup_select
from sharp_vlm.engine.segment_attention import SEGMENT_ATTENTION
from sharp_vlm.methods.experimental import ShaRPLab
from sharp_vlm.methods.experimental.rules import distinct_key, with_neighbors


def test_retain_one_equals_unpatched_in_score_scope(qwen):
    model, inputs = qwen
    ref = forward_logits(model, inputs)
    with torch.no_grad():
        ref_gen = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    with sv.apply(model, ShaRPLab(retain=1.0, mask_scope="score")) as handle, torch.no_grad():
        out = forward_logits(model, inputs)
        gen = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert (out - ref).abs().max() <= 1e-5
    assert torch.equal(gen, ref_gen)
    assert handle.last_stats.stages[0].n_kept == [128]


def test_all_components_off_equals_fastv(qwen):
    model, inputs = qwen
    plain = sv.ShaRP(retain=0.15, layer=2, mask="off", debias="off", dedup=False, query="last")
    # ShaRP scores with layer K's own attention: FastV's "stage" rule
    with sv.apply(model, sv.FastV(retain=0.15, layer=2, attention_layer="stage")) as h, torch.no_grad():
        fast = forward_logits(model, inputs)
        fast_kept = h.last_stats.stages[0].kept[0]
    with sv.apply(model, plain) as h, torch.no_grad():
        out = forward_logits(model, inputs)
        assert torch.equal(h.last_stats.stages[0].kept[0], fast_kept)
    assert torch.equal(out, fast)
    # in score scope a text query row is causal anyway: the mask alone does not change FastV's choice
    score_scope = ShaRPLab(retain=0.15, mask_scope="score", debias="off", dedup=False, query="last")
    with sv.apply(model, score_scope) as h, torch.no_grad():
        model(**inputs)
        assert torch.equal(h.last_stats.stages[0].kept[0], fast_kept)
    # the default query rows (the text after the video) choose differently from FastV's last token
    with sv.apply(model, sv.ShaRP(retain=0.15, mask="off", debias="off", dedup=False)) as h, torch.no_grad():
        model(**inputs)
        assert not torch.equal(h.last_stats.stages[0].kept[0], fast_kept)


def test_sharp_in_score_scope_matches_oracle_and_cache_layout(qwen):
    """The segment mask only in the scoring side pass: the layers run causal, as the plain oracle."""
    model, inputs = qwen
    seq = inputs["input_ids"].shape[1]
    cfg = ShaRPLab(retain=0.2, layer=2, mask_scope="score")
    with sv.apply(model, cfg) as handle, torch.no_grad():
        prefill = model(**inputs).logits
        kept = handle.last_stats.stages[0].kept_positions[0]
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False, output_logits=True,
                             return_dict_in_generate=True)
    logits, tokens, _ = pruned_forward(model, inputs, kept, 2, n_decode=4)
    assert (prefill - logits[0]).abs().max() < 1e-5
    assert out.sequences[0, -4:].tolist() == tokens
    for a, b in zip(out.logits, logits, strict=True):
        assert (a - b[:, -1]).abs().max() < 1e-4
    lengths = [layer.keys.shape[-2] for layer in out.cache.layers]
    assert lengths == [seq + 3] * 2 + [seq - 128 + 26 + 3] * 2


def test_forward_scope_changes_the_shallow_layers(qwen):
    model, inputs = qwen
    fwd, score = {}, {}
    for scope, box in (("forward", fwd), ("score", score)):
        cfg = ShaRPLab(retain=0.2, mask_scope=scope, debias="off", dedup=False, query="last")
        with sv.apply(model, cfg) as h:
            forward_logits(model, inputs)
            box["kept"] = h.last_stats.stages[0].kept[0]
            box["scores"] = h.last_stats.stages[0].samples[0].scores
    # the random tiny model attends almost uniformly: the scores move by ~1e-5 of ~1e-2, enough to reorder a few
    assert (fwd["scores"] - score["scores"]).abs().max() > 1e-6
    assert not torch.equal(fwd["kept"], score["kept"])


def test_cached_debias_equals_reference(qwen25, tmp_path):
    model, inputs = qwen25
    cfg = sv.ShaRP(retain=0.15, debias="reference")
    with sv.apply(model, cfg) as h, torch.no_grad():
        model(**inputs)
        ref_kept = h.last_stats.stages[0].kept[0]
    cache = sv.BiasCache(directory=tmp_path)
    with sv.apply(model, cfg, bias_cache=cache) as h, torch.no_grad():
        model(**inputs)
        first = h.last_stats.stages[0]
        model(**inputs)
        second = h.last_stats.stages[0]
    assert first.costs.bias_cache == "miss" and second.costs.bias_cache == "hit"
    assert first.costs.reference_flops > 0 and second.costs.reference_flops == 0
    assert torch.equal(first.kept[0], ref_kept) and torch.equal(second.kept[0], ref_kept)
    assert len(list(tmp_path.glob("*.pt"))) == 1
    with sv.apply(model, cfg, bias_cache=cache) as h, torch.no_grad():  # a new handle sharing the cache
        model(**inputs)
        assert h.last_stats.stages[0].costs.bias_cache == "hit"
    with sv.apply(model, cfg, bias_cache=sv.BiasCache(directory=tmp_path)) as h, torch.no_grad():
        model(**inputs)  # as in a new process: only the file is left
        assert h.last_stats.stages[0].costs.bias_cache == "hit"
        assert torch.equal(h.last_stats.stages[0].kept[0], ref_kept)
    with sv.apply(model, cfg, bias_cache=sv.BiasCache()) as h, torch.no_grad():
        model(**inputs)
        assert h.last_stats.stages[0].costs.bias_cache == "miss"  # another cache, no folder
    with sv.apply(model, cfg) as h, torch.no_grad():
        model(**inputs)
        assert h.last_stats.stages[0].costs.bias_cache is None  # no cache: a reference pass per request


def test_cached_bias_is_shared_only_by_prompts_with_the_same_template_and_query_token(qwen25):
    """The reference pass reads the text before the video and the query token exactly; only the question text
    between the video and the query token may differ between prompts that share a cached bias."""
    model, inputs = qwen25
    ids = inputs["input_ids"]
    video = torch.nonzero(ids[0] == model.config.video_token_id).flatten()
    first, last = int(video.min()), int(video.max())
    assert last + 2 < ids.shape[1] - 1 and first > 0  # a question token between the video and the query token

    def variant(pos: int) -> dict:
        x = ids.clone()
        x[0, pos] = 7 if int(x[0, pos]) != 7 else 8
        return {**inputs, "input_ids": x}

    outcome = {}
    for name, call in (("same", inputs), ("question", variant(last + 2)), ("template", variant(0)),
                       ("query token", variant(ids.shape[1] - 1))):
        with sv.apply(model, sv.ShaRP(retain=0.15), bias_cache=sv.BiasCache()) as h, torch.no_grad():
            if name != "same":  # the first prompt's bias is in the cache
                model(**inputs)
            model(**call)
            outcome[name] = h.last_stats.stages[0].costs.bias_cache
    assert outcome == {"same": "miss", "question": "hit", "template": "miss", "query token": "miss"}


def test_debias_modes_change_the_selection(qwen25):
    model, inputs = qwen25
    kept = {}
    for mode in ("off", "reference", "pre_rope", "rope_only"):
        with sv.apply(model, ShaRPLab(retain=0.15, debias=mode, dedup=False)) as h, torch.no_grad():
            model(**inputs)
            kept[mode] = h.last_stats.stages[0].kept[0]
            assert kept[mode].numel() == 19
    for mode in ("reference", "pre_rope", "rope_only"):
        assert not torch.equal(kept[mode], kept["off"]), mode


def test_combine_rules():
    from sharp_vlm.core.scoring import subtract_bias
    from sharp_vlm.methods.experimental.sharp_lab import _ratio

    s = torch.tensor([[0.1, 0.3, 0.6]])
    b = torch.tensor([[0.2, 0.2, 0.6]])
    assert torch.allclose(subtract_bias(s, b, 1.0), s - b)
    assert torch.allclose(subtract_bias(s, b, 0.5), s - 0.5 * b)
    ratio = _ratio(s, b, 1.0)
    assert torch.allclose(ratio, torch.log(s / b))
    # ratio prefers the token that beats its positional expectation by the largest factor,
    # subtraction the one with the largest margin
    s2, b2 = torch.tensor([[0.02, 0.38, 0.6]]), torch.tensor([[0.01, 0.29, 0.7]])
    assert int(_ratio(s2, b2, 1.0).argmax()) == 0
    assert int(subtract_bias(s2, b2, 1.0).argmax()) == 1


@pytest.mark.parametrize("features", ["hidden", "centered", "neighbors"])
def test_dedup_on_the_model_keeps_dissimilar_tokens(qwen25, features):
    model, inputs = qwen25
    grabbed = {}
    layer2 = model.model.language_model.layers[2]
    def grab(module, args, kwargs):
        grabbed.setdefault("h", args[0])  # the states entering layer K, before the stage prunes them

    hook = layer2.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        cfg = ShaRPLab(retain=0.2, dedup_tau=0.2, debias="off", dedup_features=features, fill="score")
        with sv.apply(model, cfg) as h, torch.no_grad():
            model(**inputs)
    finally:
        hook.remove()
    stage = h.last_stats.stages[0]
    states = grabbed["h"][0].float()
    visual = torch.nonzero(inputs["input_ids"][0] == model.config.video_token_id).flatten()
    states = states[visual]
    if features != "hidden":  # minus the mean over every visual token of the sample, not only the kept ones
        states = states - states.mean(0)
    if features == "neighbors":  # beside the mean of each token's neighbours on its frame's grid
        from sharp_vlm.models.qwen_vl import QwenVLAdapter

        (lay,) = QwenVLAdapter(model).find_layouts(inputs, inputs["input_ids"].shape[1], 1)
        states = with_neighbors(states, lay.frame_ids, lay.rows, lay.cols)
    # the engine kept what the walk keeps on these states and the recorded scores
    res = dedup_select(stage.samples[0].scores, states, 26, tau=0.2, candidates=visual.numel())
    assert torch.equal(res.keep, stage.kept[0].to(res.keep.device))
    # tau 0.2: the walk runs out on this model (6-15 filled), so both steps are exercised
    assert 0 < stage.samples[0].dedup.filled == res.n_filled < 26
    # and the tokens the walk chose are pairwise below tau (the filled ones are not checked, by definition)
    walked = sorted(set(res.keep.tolist()) - set(res.filled.tolist()))
    feats = torch.nn.functional.normalize(states[walked], dim=-1)
    sim = feats @ feats.T - 2 * torch.eye(feats.shape[0])
    assert len(walked) > 1 and not (sim > 0.2).any()
    assert stage.n_kept == [26]


def test_distinct_fill_follows_the_rings_then_a_second_walk_on_neighbour_features(qwen25):
    from sharp_vlm.core.context import context_key
    from sharp_vlm.models.qwen_vl import QwenVLAdapter

    model, inputs = qwen25
    grabbed = {}
    def grab(module, args, kwargs):
        grabbed.setdefault("h", args[0])  # the states entering layer K, before the stage prunes them

    hook = model.model.language_model.layers[2].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        cfg = ShaRPLab(retain=0.6, dedup_tau=0.1, debias="off", fill="distinct")
        with sv.apply(model, cfg) as h, torch.no_grad():
            model(**inputs)
    finally:
        hook.remove()
    stage = h.last_stats.stages[0]
    visual = torch.nonzero(inputs["input_ids"][0] == model.config.video_token_id).flatten()
    states = grabbed["h"][0].float()[visual]
    states = states - states.mean(0)
    (lay,) = QwenVLAdapter(model).find_layouts(inputs, inputs["input_ids"].shape[1], 1)
    scores, budget = stage.samples[0].scores, len(stage.kept[0])

    def key(anchors):
        ring = context_key(anchors, lay.frame_ids, lay.rows, lay.cols, 1)
        near = with_neighbors(states, lay.frame_ids, lay.rows, lay.cols)
        second = distinct_key(anchors, scores, near, budget + int((ring > 0).sum()), 0.1)
        return torch.where(ring > 0, ring, second)

    res = dedup_select(scores, states, budget, tau=0.1, candidates=visual.numel(), fill_key=key)
    assert torch.equal(res.keep, stage.kept[0].to(res.keep.device))
    walked = res.keep[~torch.isin(res.keep, res.filled)]
    ring = context_key(walked, lay.frame_ids, lay.rows, lay.cols, 1)
    assert res.n_filled > int((ring > 0).sum())  # the fill got past the rings: the second walk was used
    with sv.apply(model, sv.ShaRP(retain=0.6, dedup_tau=0.1, debias="off")) as h2, torch.no_grad():
        model(**inputs)
    assert not torch.equal(h2.last_stats.stages[0].kept[0], stage.kept[0])  # the context fill chooses otherwise


def test_flash_attention_layers_switch_to_a_masked_kernel(qwen25):
    model, _ = qwen25
    text_cfg = model.model.language_model.config
    layers = model.model.language_model.layers
    saved = text_cfg._attn_implementation
    text_cfg._attn_implementation = "flash_attention_2"
    try:
        with sv.apply(model, sv.ShaRP(retain=0.2, layer=2)):
            assert [layer.self_attn.config._attn_implementation for layer in layers] == [
                SEGMENT_ATTENTION, SEGMENT_ATTENTION, "flash_attention_2", "flash_attention_2"]
        assert all(layer.self_attn.config is text_cfg for layer in layers)
    finally:
        text_cfg._attn_implementation = saved


@pytest.mark.parametrize("kwargs, match", [
    ({"mask": "causal"}, "mask="), ({"mask_scope": "all"}, "mask_scope="), ({"debias": "black"}, "debias="),
    ({"segment_frames": 0}, "segment_frames"), ({"dedup_tau": 0.0}, "dedup_tau"),
    ({"max_registers": -1}, "max_registers"),
    ({"lam": -1.0}, "lam"), ({"retain": 0}, "retain"), ({"layer": 0}, "layer"), ({"combine": "max"}, "combine"),
    ({"dedup_window": 0}, "dedup_window"), ({"fill": "nearest"}, "fill="), ({"context_radius": 0}, "context_radius"),
    ({"context_share": 0.95, "fill": "context"}, "context_share"),
    ({"context_share": 0.5, "fill": "score"}, "fill='context'"),
    ({"combine": "ratio", "debias": "frame"}, "reference bias"),
    ({"combine": "ratio", "debias": "off"}, "reference bias"),
])
def test_invalid_options(kwargs, match):
    with pytest.raises(sv.ConfigError, match=match):
        ShaRPLab(**kwargs)  # the lab checks ShaRP's options and its own


def test_context_fill_keeps_the_grid_neighbours_of_the_walked_tokens(qwen):
    # No deduplication (tau = 1) and no register cap: the walk keeps the top half of the budget by score, and the
    # context share goes to their neighbours on each frame's 2-D grid (Qwen2-VL: 4 x 4 merged tokens per frame).
    from sharp_vlm.models.qwen_vl import QwenVLAdapter

    model, inputs = qwen
    (lay,) = QwenVLAdapter(model).find_layouts(inputs, inputs["input_ids"].shape[1], 1)
    cfg = ShaRPLab(retain=0.2, layer=2, dedup_tau=1.0, max_registers=10_000, fill="context", context_share=0.5)
    with sv.apply(model, cfg) as h, torch.no_grad():
        model(**inputs)
    stage = h.last_stats.stages[0]
    kept, scores = stage.kept[0].tolist(), stage.samples[0].scores
    budget = len(kept)
    anchors = torch.sort(scores.float(), descending=True, stable=True).indices[: budget - budget // 2].tolist()
    assert set(anchors) <= set(kept)
    f, r, c = lay.frame_ids.tolist(), lay.rows.tolist(), lay.cols.tolist()
    near = {i for i in range(lay.n_visual) for a in anchors
            if f[i] == f[a] and max(abs(r[i] - r[a]), abs(c[i] - c[a])) == 1}
    assert len(near - set(anchors)) >= budget // 2  # enough context to fill the share
    assert set(kept) - set(anchors) <= near
    with sv.apply(model, sv.ShaRP(retain=0.2, layer=2, dedup_tau=1.0, max_registers=10_000)) as h, torch.no_grad():
        model(**inputs)
    assert set(h.last_stats.stages[0].kept[0].tolist()) != set(kept)  # without context: the top scores alone


def test_frame_fill_completes_the_anchors_frames(qwen):
    # No deduplication and no register cap: the walk keeps the top 10% of the budget by score (4 tokens here);
    # fill="frame" gives the rest to their rings and then to the rest of their frames (4 x 4 tokens each),
    # where fill="context" goes back to the scores after the rings.
    from sharp_vlm.models.qwen_vl import QwenVLAdapter

    model, inputs = qwen
    (lay,) = QwenVLAdapter(model).find_layouts(inputs, inputs["input_ids"].shape[1], 1)
    f = lay.frame_ids.tolist()
    kept = {}
    for fill in ("frame", "context"):
        cfg = ShaRPLab(retain=0.25, layer=2, dedup_tau=1.0, max_registers=10_000, fill=fill, context_share=0.9)
        with sv.apply(model, cfg) as h, torch.no_grad():
            model(**inputs)
        stage = h.last_stats.stages[0]
        kept[fill] = set(stage.kept[0].tolist())
    budget = len(kept["frame"])
    anchors = torch.sort(stage.samples[0].scores.float(), descending=True, stable=True).indices
    anchors = anchors[: budget - int(0.9 * budget)].tolist()
    frames = {f[a] for a in anchors}
    assert set(anchors) <= kept["frame"]
    whole = {i for i in range(lay.n_visual) if f[i] in frames}
    # the fill leaves the anchors' frames only once they are whole, and completes the best anchor's frame first
    assert whole <= kept["frame"] if len(whole) <= budget else kept["frame"] <= whole
    assert {i for i in range(lay.n_visual) if f[i] == f[anchors[0]]} <= kept["frame"]
    assert len(frames) < len({f[i] for i in kept["context"]})  # the context fill spreads over more frames


def test_frame_debias_subtracts_each_frames_median_without_a_reference_pass(qwen):
    from sharp_vlm.methods.experimental.rules import frame_medians
    from sharp_vlm.models.qwen_vl import QwenVLAdapter

    model, inputs = qwen
    (lay,) = QwenVLAdapter(model).find_layouts(inputs, inputs["input_ids"].shape[1], 1)
    with sv.apply(model, ShaRPLab(retain=0.15, debias="frame", dedup=False)) as h, torch.no_grad():
        model(**inputs)
    stage = h.last_stats.stages[0]
    rec = stage.samples[0]
    raw = rec.raw_scores.float() / rec.raw_scores.float().sum()
    assert torch.allclose(rec.scores, raw - frame_medians(raw, lay.frame_ids), atol=1e-7)
    assert torch.allclose(frame_medians(rec.scores, lay.frame_ids), torch.zeros(lay.n_visual), atol=1e-7)
    top = torch.sort(torch.topk(rec.scores, 19).indices).values
    assert torch.equal(stage.kept[0].cpu(), top.cpu())
    assert stage.costs.reference_flops == 0 and stage.costs.bias_cache is None
    assert not ShaRPLab(debias="frame").reference_pass
