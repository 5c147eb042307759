"""FastVID: selection invariants on random tensors, the authors' rules on constructed cases (segments, counts,
salience, density peaks, merges), option checks, and runs through the engine on a tiny Qwen2.5-VL against the
hand-written pruned forward (tests/oracle.py), alone and stacked before ShaRP."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import sharp_vlm as sv
from oracle import assert_matches, run_pruned, staged_forward
from sharp_vlm.core.selection import check_selection, merge_rows
from sharp_vlm.methods.fastvid import (
    adjacent_similarity,
    anchor_units,
    density_peaks,
    dynamic_segments,
    merge_weights,
    scaled_distances,
    segment_counts,
)
from views import LAYOUTS, merge_by_hand, qwen_answer
from views import grid as _grid
from views import view as _view

pytestmark = pytest.mark.usefixtures("one_thread")


METHODS = [
    sv.FastVID(),
    sv.FastVID(min_segments=2, threshold=-1.0),  # long segments: several anchor frames in one
    sv.FastVID(min_segments=1, threshold=-1.0, anchor_stride=1, density_share=1.0, beta=0.0),
    sv.FastVID(min_segments=1, threshold=-1.0, duplicate_threshold=-0.2),
]
IDS = ["default", "long_segments", "all_anchors", "duplicate_runs"]


# ---------------------------------------------------------------- invariants on random tensors
@pytest.mark.parametrize("method", METHODS, ids=IDS)
@pytest.mark.parametrize("name", list(LAYOUTS))
def test_selection_invariants(method, name):
    """Exactly the budget, sorted unique in range, valid weighted merges, and deterministic."""
    lay = LAYOUTS[name]
    n = lay.n_visual
    for budget in sorted({1, 2, 3, n // 7, n // 4, n // 3, n // 2, n - 1, n} - {0}):
        view = _view(lay, budget, seed=budget)
        sel = method.select(view)
        check_selection(sel, n, budget, method.name, 0)
        again = method.select(_view(lay, budget, seed=budget))
        assert torch.equal(sel.keep, again.keep)
        assert (sel.merge is None) == (again.merge is None)
        if sel.merge is not None:
            assert torch.equal(sel.merge.source, again.merge.source)
            assert torch.equal(sel.merge.target, again.merge.target)
            assert torch.equal(sel.merge.weight, again.merge.weight)
            assert sel.merge.source.numel() <= n - budget
        if budget == n:
            assert torch.equal(sel.keep, torch.arange(n)) and sel.merge is None


def test_registered_and_loaded_by_name():
    assert "fastvid" in sv.methods()
    assert sv.FastVID.allow_layer_zero and not sv.FastVID.scores_attention and not sv.FastVID.reference_pass
    (stage,) = sv.FastVID().stages()
    assert stage.layer == 0 and stage.positions == "original"  # the authors keep the original positions
    assert sv.load_config({"method": "fastvid", "retain": 0.27, "threshold": 0.84, "duplicate_threshold": 0.95}) == (
        sv.FastVID(0.27, threshold=0.84, duplicate_threshold=0.95))
    method = sv.FastVID(retain=0.2, min_segments=4, anchor_stride=2, beta=0.5)
    assert sv.load_config(method.to_dict()) == method


@pytest.mark.parametrize(
    "make",
    [
        lambda: sv.FastVID(min_segments=0),
        lambda: sv.FastVID(min_segments=2.0),
        lambda: sv.FastVID(threshold=1.5),
        lambda: sv.FastVID(threshold="0.9"),
        lambda: sv.FastVID(density_share=-0.1),
        lambda: sv.FastVID(density_share=1.2),
        lambda: sv.FastVID(anchor_stride=0),
        lambda: sv.FastVID(anchor_stride=True),
        lambda: sv.FastVID(beta=1.1),
        lambda: sv.FastVID(beta=float("nan")),
        lambda: sv.FastVID(duplicate_threshold=2.0),
        lambda: sv.FastVID(positions="contiguous", layer=2),
        lambda: sv.FastVID(retain=0),
        lambda: sv.load_config({"method": "fastvid", "tau": 0.9}),
    ],
)
def test_bad_options_are_config_errors(make):
    with pytest.raises(sv.ConfigError):
        make()


def test_later_edits_are_checked_again():
    method = sv.FastVID()
    method.anchor_stride = 0
    with pytest.raises(sv.ConfigError, match="anchor_stride"):
        method.stages()


# ---------------------------------------------------------------- DySeg
def test_dynamic_segments_cut_at_the_least_similar_pairs_and_below_the_threshold():
    sim = torch.tensor([0.99, 0.98, 0.5, 0.97, 0.95, 0.96, 0.93])
    assert dynamic_segments(sim.clone(), 1, 0.9).tolist() == [0, 0, 0, 1, 1, 1, 1, 1]
    # c = 3: the two least similar pairs are cut as well (0.5 is one of them)
    assert dynamic_segments(sim.clone(), 3, 0.9).tolist() == [0, 0, 0, 1, 1, 1, 1, 2]
    assert dynamic_segments(sim.clone(), 4, 0.9).tolist() == [0, 0, 0, 1, 1, 2, 2, 3]
    # ties: the earlier pair
    assert dynamic_segments(torch.tensor([0.95, 0.95, 0.95]), 2, 0.9).tolist() == [0, 1, 1, 1]
    # fewer frames than segments asked for: every pair is cut; one frame: one segment
    assert dynamic_segments(torch.tensor([0.99, 0.99]), 8, 0.9).tolist() == [0, 1, 2]
    assert dynamic_segments(torch.zeros(0), 8, 0.9).tolist() == [0]


def _two_scenes(frames_per_scene: int = 4, tokens: int = 16, dim: int = 16, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    scenes = [torch.randn(tokens, dim, generator=gen) for _ in range(2)]
    return torch.cat([s + 0.05 * torch.randn(tokens, dim, generator=gen) for s in scenes
                      for _ in range(frames_per_scene)])


def test_a_scene_cut_splits_segments():
    x = _two_scenes()
    lay = _grid(("video", 8, 4, 4))
    means = torch.stack([x[16 * f : 16 * f + 16].mean(0) for f in range(8)])
    sim = adjacent_similarity(means)
    assert int(torch.argmin(sim)) == 3 and float(sim.max()) > 0.9 > float(sim[3])
    sel = sv.FastVID(min_segments=1).select(_view(lay, 32, hidden=x))
    frame = lay.frame_ids
    # two segments of 4 frames, 16 tokens each: 6 anchors (int(16 x 0.4)) on the segment's last frame, 10 salient
    # spread 3, 3, 2, 2
    assert torch.bincount(frame[sel.keep], minlength=8).tolist() == [3, 3, 2, 8, 3, 3, 2, 8]
    src, dst = sel.merge.source, sel.merge.target
    assert src.numel() == 128 - 32 and torch.equal(frame[src] // 4, frame[dst] // 4)  # no merge crosses the cut
    assert set(frame[dst].tolist()) == {3, 7}
    # without the cut (no threshold, one segment): anchors in frames 3 and 7 (every 4th back from the last)
    sel = sv.FastVID(min_segments=1, threshold=-1.0).select(_view(lay, 32, hidden=x))
    assert torch.bincount(frame[sel.keep], minlength=8).tolist() == [3, 3, 3, 9, 2, 2, 2, 8]  # 12 anchors: 6, 6


# ---------------------------------------------------------------- counts
def _authors_counts(frames: int, per_frame: int, d: float, p: int) -> tuple[list[int], list[int]]:
    """The authors' LLaVA-Video counts for one segment of `frames` frames worth `per_frame` tokens each."""
    budget = per_frame * frames
    context = int(budget * d)
    salient = budget - context
    if frames == 1:
        return [salient], [context]
    sal = [salient // frames + (1 if i < salient % frames else 0) for i in range(frames)]
    chunks = -(-frames // p)
    parts = [context // chunks + (1 if i < context % chunks else 0) for i in range(chunks)]
    ctx, k = [], 0
    for i in range(frames):
        ctx.append(parts[k] if i % p == 0 else 0)
        k += i % p == 0
    return sal, ctx[::-1]


@pytest.mark.parametrize("d,p", [(0.4, 4), (0.3, 2), (0.5, 3), (0.4, 1)])
def test_segment_counts_are_the_authors_where_frames_hold_them(d, p):
    size, checked = 49, 0
    for frames in range(1, 13):
        for per_frame in range(1, 20):
            sal, ctx = _authors_counts(frames, per_frame, d, p)
            if max(s + c for s, c in zip(sal, ctx, strict=True)) > size:
                continue  # the authors' code fails there (an anchor frame asked for more than it has)
            got = segment_counts(torch.full((frames,), size), torch.ones(frames, dtype=torch.bool),
                                 per_frame * frames, d, p)
            assert (got[0].tolist(), got[1].tolist()) == (sal, ctx), (frames, per_frame)
            checked += 1
    assert checked > 150


def test_segment_counts_cap_a_full_frame_and_give_the_rest_as_salient():
    assert anchor_units(6, 4).tolist() == [False, True, False, False, False, True]
    sal, ctx = segment_counts(torch.full((4,), 16), torch.ones(4, dtype=torch.bool), 32, 0.4, 4)
    # 12 anchors asked of frame 3, which holds 16 - 5: one more salient token, in the first frame with room
    assert ctx.tolist() == [0, 0, 0, 11] and sal.tolist() == [6, 5, 5, 5]
    sal, ctx = segment_counts(torch.tensor([4, 8, 4]), torch.ones(3, dtype=torch.bool), 16, 1.0, 4)
    assert ctx.tolist() == [0, 0, 4] and sal.tolist() == [4, 8, 0]  # everything fits only as salient tokens
    # near-duplicate runs (frames 0-2, then 3): the run's last frame takes its counts; the others keep nothing
    sal, ctx = segment_counts(torch.full((4,), 16), torch.tensor([False, False, True, True]), 16, 0.4, 4)
    assert sal.tolist() == [0, 0, 5, 5] and ctx.tolist() == [0, 0, 0, 6]


def test_duplicate_frames_count_as_one():
    gen = torch.Generator().manual_seed(8)
    frame = torch.randn(16, 16, generator=gen)
    x = torch.cat([frame, frame, frame, torch.randn(16, 16, generator=gen)])
    lay = _grid(("video", 4, 4, 4))
    method = sv.FastVID(min_segments=1, threshold=-1.0, duplicate_threshold=0.95)
    sel = method.select(_view(lay, 16, hidden=x))
    assert torch.bincount(lay.frame_ids[sel.keep], minlength=4).tolist() == [0, 0, 5, 11]
    plain = sv.FastVID(min_segments=1, threshold=-1.0).select(_view(lay, 16, hidden=x))
    assert torch.bincount(lay.frame_ids[plain.keep], minlength=4).tolist() == [3, 3, 2, 8]


# ---------------------------------------------------------------- ATS, DPC-KNN, DTM
def test_salient_tokens_are_the_most_attended_by_the_frame_mean():
    x = torch.randn(2 * 16, 16, generator=torch.Generator().manual_seed(9))
    lay = _grid(("video", 2, 4, 4))
    sel = sv.FastVID(density_share=0.0).select(_view(lay, 6, hidden=x))
    assert sel.merge is None
    for f in range(2):
        rows = x[16 * f : 16 * f + 16]
        want = torch.topk(rows @ rows.mean(0), 3).indices + 16 * f
        assert sorted(want.tolist()) == sel.keep[3 * f : 3 * f + 3].tolist()
    assert torch.allclose(sel.scores, (x * torch.cat([x[:16].mean(0).expand(16, -1),
                                                      x[16:].mean(0).expand(16, -1)])).sum(-1) / 4)


def test_density_peaks_follow_the_authors_formula():
    x = torch.randn(30, 12, generator=torch.Generator().manual_seed(10))
    dist = torch.tensor([[float((x[i] - x[j]).norm()) / math.sqrt(12) for j in range(30)] for i in range(30)])
    density = torch.exp(-(torch.sort(dist, dim=1).values[:, :4] ** 2).mean(1))
    delta = torch.tensor([min([float(dist[i, j]) for j in range(30) if density[j] > density[i]],
                              default=float(dist.max())) for i in range(30)])
    assert torch.allclose(density_peaks(scaled_distances(x)), delta * density, atol=1e-5)
    # fewer than 4 tokens, and exact duplicates (a tie in density: the lower index is the denser)
    assert density_peaks(scaled_distances(torch.ones(2, 3))).tolist() == [0.0, 0.0]
    score = density_peaks(scaled_distances(torch.tensor([[0.0, 0.0], [0.0, 0.0], [3.0, 0.0]])))
    assert float(score[0]) > float(score[2]) > float(score[1]) == 0.0


def _two_clusters() -> tuple[torch.Tensor, list[int], list[int]]:
    """One frame: a dense cluster of 10 tokens and a smaller one of 5, interleaved in sequence order."""
    gen = torch.Generator().manual_seed(11)
    a, b = 2 * torch.randn(16, generator=gen), 2 * torch.randn(16, generator=gen)
    big = [0, 2, 3, 5, 7, 8, 10, 11, 13, 14]
    small = [1, 4, 6, 9, 12]
    x = torch.empty(15, 16)
    x[big] = a + 0.02 * torch.randn(10, 16, generator=gen)
    x[small] = b + 0.02 * torch.randn(5, 16, generator=gen)
    return x, big, small


@pytest.mark.parametrize("beta", [0.6, 0.0])
def test_a_dense_cluster_is_merged_into_its_anchor(beta):
    x, big, small = _two_clusters()
    lay = _grid(("video", 1, 3, 5))
    sel = sv.FastVID(density_share=1.0, beta=beta).select(_view(lay, 2, hidden=x))
    score = density_peaks(scaled_distances(x))
    anchors = sel.keep.tolist()
    # each cluster's anchor is its densest token (the highest density peak score)
    assert anchors == sorted([max(big, key=lambda i: float(score[i])), max(small, key=lambda i: float(score[i]))])
    merged = merge_rows(x, torch.arange(15), sel.merge)
    for cluster in (big, small):
        (anchor,) = [i for i in anchors if i in cluster]
        others = [i for i in cluster if i != anchor]
        assert sorted(sel.merge.source[sel.merge.target == anchor].tolist()) == others
        alpha = max(1 / (len(others) + 1), beta)  # beta = 0: the plain mean of the cluster
        want = alpha * x[anchor] + (1 - alpha) * x[others].mean(0)
        assert torch.allclose(merged[anchor], want, atol=1e-5)


def test_merge_weights_give_the_authors_update():
    groups = torch.tensor([0, 0, 0, 1, 2, 2])
    w = merge_weights(groups, 4, 0.6)
    # m = 3: alpha = 0.6, each source (0.4 / 3) / 0.6 of the anchor; m = 1: 1 / 2 < 0.6 too
    assert torch.allclose(w, torch.tensor([0.4 / 1.8] * 3 + [0.4 / 0.6] + [0.4 / 1.2] * 2))
    assert torch.allclose(merge_weights(groups, 4, 0.0), torch.ones(6))  # alpha = 1 / (m + 1): the plain mean
    assert torch.equal(merge_weights(groups, 4, 1.0), torch.zeros(6))


def test_several_anchor_frames_each_token_merges_once_into_its_most_similar_anchor():
    x = _two_scenes(frames_per_scene=3, seed=12)
    lay = _grid(("video", 6, 4, 4))
    sel = sv.FastVID(min_segments=1, threshold=-1.0, anchor_stride=3).select(_view(lay, 24, hidden=x))
    src, dst = sel.merge.source, sel.merge.target
    assert set(lay.frame_ids[dst].tolist()) == {2, 5}
    anchors = torch.unique(dst)
    unit = F.normalize(x, dim=-1)
    assert torch.equal(dst, anchors[torch.argmax(unit[src] @ unit[anchors].T, dim=1)])
    # a token whose grid cell is an anchor in its own scene's anchor frame merges into that anchor
    is_anchor = torch.zeros(96, dtype=torch.bool)
    is_anchor[anchors] = True
    counterpart = 16 * (3 * (lay.frame_ids[src] // 3) + 2) + src % 16
    has = is_anchor[counterpart]
    assert int(has.sum()) >= 10 and torch.equal(dst[has], counterpart[has])


# ---------------------------------------------------------------- through the engine on a tiny Qwen2.5-VL
ENGINE = [sv.FastVID(retain=0.25), sv.FastVID(retain=0.3, min_segments=2, threshold=-1.0, anchor_stride=2)]


@pytest.mark.parametrize("method", ENGINE, ids=["default", "long_segments"])
def test_engine_matches_the_oracle(qwen25, method):
    model, inputs = qwen25
    want, rows, prompt = qwen_answer(model, inputs, method)
    assert want.merge is not None and want.merge.source.numel() > 0
    prefill, stats, out = run_pruned(model, inputs, method, 4)
    (stage,) = stats.stages
    assert stage.layer == 0 and stage.costs.scoring_flops == 0
    assert torch.equal(stage.kept_positions[0], rows[want.keep])
    assert stage.n_merged == [want.merge.source.numel()]
    logits, tokens, _ = staged_forward(model, model.model.language_model, prompt, [(0, rows[want.keep])], 4,
                                       merge={0: merge_by_hand(want, rows)})
    assert_matches(prefill, out, logits, tokens, 4)
