"""The pre-LLM methods (DivPrune, VidCom2, DyCoke's TTM, the downsampling controls): selection invariants on random
tensors, each method's own rule on a constructed case, option checks, and runs through the engine on a tiny
Qwen2.5-VL against the hand-written pruned forward (tests/oracle.py), alone and (FastVID too) stacked before ShaRP."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import sharp_vlm as sv
from oracle import assert_matches, run_pruned, staged_forward
from sharp_vlm.core.layout import VisualLayout
from sharp_vlm.core.selection import check_selection, merge_rows
from sharp_vlm.methods.divprune import max_min_diverse
from sharp_vlm.methods.downsample import evenly_spaced
from sharp_vlm.methods.dycoke import reference_frames
from sharp_vlm.methods.vidcom2 import apportion, frame_shares, vidcom2_scores
from views import LAYOUTS, merge_by_hand, qwen_answer
from views import grid as _grid
from views import view as _view

pytestmark = pytest.mark.usefixtures("one_thread")


def _selection(method, view) -> sv.Selection:
    answer = method.select(view)
    return answer if isinstance(answer, sv.Selection) else sv.Selection(answer)


METHODS = [sv.DivPrune(), sv.VidCom2(), sv.DyCoke(), sv.Downsample(mode="frames"), sv.Downsample(mode="pool"),
           sv.Downsample(mode="both")]
IDS = ["divprune", "vidcom2", "dycoke", "frames", "pool", "both"]


# ---------------------------------------------------------------- invariants on random tensors
@pytest.mark.parametrize("method", METHODS, ids=IDS)
@pytest.mark.parametrize("name", list(LAYOUTS))
def test_selection_invariants(method, name):
    """Exactly the budget, sorted unique in range, merges from dropped into kept tokens, and deterministic."""
    lay = LAYOUTS[name]
    n = lay.n_visual
    for budget in sorted({1, 2, 3, n // 7, n // 4, n // 3, n // 2, n - 1, n} - {0}):
        view = _view(lay, budget, seed=budget)
        sel = _selection(method, view)
        check_selection(sel, n, budget, method.name, 0)
        again = _selection(method, _view(lay, budget, seed=budget))
        assert torch.equal(sel.keep, again.keep)
        assert (sel.merge is None) == (again.merge is None)
        if sel.merge is not None:
            assert torch.equal(sel.merge.source, again.merge.source)
            assert torch.equal(sel.merge.target, again.merge.target)
        if budget == n:
            assert torch.equal(sel.keep, torch.arange(n)) and sel.merge is None


def test_registered_and_loaded_by_name():
    assert {"divprune", "vidcom2", "dycoke", "downsample"} <= set(sv.methods())
    for cls in (sv.DivPrune, sv.VidCom2, sv.DyCoke, sv.Downsample):
        assert cls.allow_layer_zero and not cls.scores_attention and not cls.reference_pass
        assert cls().layer == 0 and cls().stages()[0].layer == 0
    assert sv.load_config({"method": "downsample", "retain": 0.5, "mode": "pool"}) == sv.Downsample(0.5, mode="pool")
    assert sv.load_config(sv.VidCom2(retain=0.3, temperature=0.1).to_dict()) == sv.VidCom2(0.3, temperature=0.1)


@pytest.mark.parametrize(
    "make",
    [
        lambda: sv.VidCom2(temperature=0),
        lambda: sv.VidCom2(temperature=-1.0),
        lambda: sv.VidCom2(temperature="0.01"),
        lambda: sv.Downsample(mode="spatial"),
        lambda: sv.DivPrune(retain=0),
        lambda: sv.DyCoke(retain=1.5),
        lambda: sv.DyCoke(layer=-1),
        lambda: sv.DyCoke(k=0.7),
        lambda: sv.load_config({"method": "divprune", "ratio": 0.1}),
        lambda: sv.load_config({"method": "vidcom2", "temperature": 0.0}),
    ],
)
def test_bad_options_are_config_errors(make):
    with pytest.raises(sv.ConfigError):
        make()


def test_later_edits_are_checked_again():
    method = sv.Downsample()
    method.mode = "nearest"
    with pytest.raises(sv.ConfigError, match="mode"):
        method.stages()


# ---------------------------------------------------------------- DivPrune
def _authors_greedy(x: torch.Tensor, k: int) -> list[int]:
    """The authors' loop, as their formulation reads: the full 1 - cosine matrix; the first pick has the largest
    second smallest distance of its column; each later pick the largest minimum over the picked rows."""
    f = x / x.norm(dim=1, keepdim=True)
    dist = 1.0 - f @ f.T
    picks: list[int] = []
    for i in range(k):
        scores = torch.topk(dist, 2, dim=0, largest=False).values[1] if i == 0 else dist[picks].min(dim=0).values
        picks.append(int(torch.argmax(scores)))
    return picks


@pytest.mark.parametrize("seed", range(4))
def test_divprune_follows_the_authors_greedy(seed):
    x = torch.randn(60, 12, generator=torch.Generator().manual_seed(seed))
    assert max_min_diverse(x, 25).tolist() == _authors_greedy(x, 25)


def test_divprune_picks_the_farthest_point():
    gen = torch.Generator().manual_seed(0)
    cluster = torch.zeros(10, 3)
    cluster[:, :2] = torch.tensor([1.0, 0.0]) + 0.01 * torch.randn(10, 2, generator=gen)
    far = torch.tensor([[0.0, 0.0, 1.0]])  # orthogonal to the cluster: its nearest neighbour is the farthest
    mid = torch.tensor([[0.6, 0.8, -0.3]])  # near the cluster, but farther from `far` than the cluster is
    x = torch.cat([cluster[:4], far, cluster[4:], mid])
    lay = _grid(("video", 1, 1, 12))
    assert sv.DivPrune().select(_view(lay, 1, hidden=x)).tolist() == [4]
    picks = max_min_diverse(x, 3).tolist()
    assert picks[:2] == [4, 11]  # then the token farthest from it
    f = F.normalize(x, dim=-1)
    nearest = torch.minimum(1 - f @ f[4], 1 - f @ f[11])[torch.arange(12) < 11]
    assert picks[2] == int(torch.argmax(torch.where(torch.arange(11) == 4, -1.0, nearest)))  # then max-min
    assert sv.DivPrune().select(_view(lay, 3, hidden=x)).tolist() == sorted(picks)
    # exact duplicates: still distinct picks
    assert sorted(max_min_diverse(torch.ones(6, 4), 6).tolist()) == list(range(6))


# ---------------------------------------------------------------- VidCom2
def test_apportion_is_exact_and_breaks_ties_by_frame_order():
    hi = torch.full((8,), 16)
    counts = apportion(torch.tensor([3.5] * 5 + [7.5] + [3.5] * 2), torch.ones(8, dtype=torch.long), hi, 32)
    assert counts.tolist() == [4, 4, 4, 4, 3, 7, 3, 3]
    # minimums push the sum over: the surplus comes back from the largest excess, later frames first on ties
    counts = apportion(torch.tensor([0.2, 0.2, 0.2, 5.4]), torch.ones(4, dtype=torch.long), torch.full((4,), 9), 5)
    assert counts.tolist() == [1, 1, 1, 2]
    counts = apportion(torch.tensor([0.0, 9.0]), torch.zeros(2, dtype=torch.long), torch.tensor([4, 4]), 6)
    assert counts.tolist() == [2, 4]  # capped at the frame's tokens; the rest to the frame with room


def test_vidcom2_scores_follow_the_authors_steps():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4 * 6, 10, generator=gen) * torch.linspace(0.1, 3, 10)
    frames = torch.arange(4).repeat_interleave(6)
    vid, frame = vidcom2_scores(x, frames, 4)
    low = torch.argsort(x.var(dim=0, unbiased=False))[:5]  # the 5 lowest-variance channels
    f = x[:, low] / x[:, low].norm(dim=1, keepdim=True)
    alphas = [2.0**k for k in range(-3, 2)]
    for i in range(24):
        c_vid = f.mean(0)
        c_frame = f[frames == frames[i]].mean(0)
        want_vid = sum(torch.exp(-((f[i] - c_vid) ** 2).sum() / (2 * a)) for a in alphas)
        want_frame = sum(torch.exp(-((f[i] - c_frame) ** 2).sum() / (2 * a)) for a in alphas)
        assert torch.allclose(vid[i], want_vid, atol=1e-5) and torch.allclose(frame[i], want_frame, atol=1e-5)
    shares = frame_shares(torch.tensor([0.0, 1.0, 0.2, 0.1]), 0.25, 0.01)
    p = torch.softmax(torch.tensor([0.0, 1.0, 0.2, 0.1]) / 0.01, 0)
    assert torch.allclose(shares, 0.25 * (1 + p - p.mean()))


def test_vidcom2_gives_a_unique_frame_a_larger_budget():
    gen = torch.Generator().manual_seed(2)
    base = torch.randn(16, 32, generator=gen)
    frames = [base + 0.01 * torch.randn(16, 32, generator=gen) for _ in range(8)]
    frames[5] = torch.randn(16, 32, generator=gen)  # the one frame unlike the others
    lay = _grid(("video", 8, 4, 4))
    keep = sv.VidCom2(retain=0.25).select(_view(lay, 32, hidden=torch.cat(frames))).keep
    counts = torch.bincount(lay.frame_ids[keep], minlength=8)
    others = torch.cat([counts[:5], counts[6:]])
    assert int(counts.sum()) == 32 and int(counts[5]) > int(others.max()) and int(others.min()) >= 1
    assert int(counts[5]) == 7  # the authors' share: 0.25 x (1 + 1 - 1/8) x 16 = 7.5, floored
    # as many tokens as frames: the minimum of one each takes the whole budget
    few = sv.VidCom2(retain=0.25).select(_view(lay, 8, hidden=torch.cat(frames))).keep
    assert torch.bincount(lay.frame_ids[few], minlength=8).tolist() == [1] * 8
    # a higher temperature flattens the budgets
    flat = sv.VidCom2(retain=0.25, temperature=100.0).select(_view(lay, 32, hidden=torch.cat(frames))).keep
    assert torch.bincount(lay.frame_ids[flat], minlength=8).tolist() == [4] * 8


def test_vidcom2_keeps_the_most_distinct_tokens_of_a_frame():
    gen = torch.Generator().manual_seed(3)
    x = 0.05 * torch.randn(4 * 16, 16, generator=gen) + torch.ones(16)
    x[16 + 7] = -torch.ones(16)  # far from both its frame's and the video's centre
    lay = _grid(("video", 4, 4, 4))
    keep = sv.VidCom2().select(_view(lay, 4, hidden=x)).keep
    assert 16 + 7 in keep.tolist() and torch.bincount(lay.frame_ids[keep], minlength=4).min() >= 1


def test_vidcom2_with_fewer_tokens_than_frames_keeps_the_most_unique_frames():
    lay = _grid(("video", 8, 2, 2))
    keep = sv.VidCom2().select(_view(lay, 3)).keep
    assert keep.numel() == 3 and torch.unique(lay.frame_ids[keep]).numel() <= 3


def _authors_vidcom2(x: torch.Tensor, n_frames: int, tpf: int, ratio: float) -> list[int]:
    """VidCom2 as the authors' loop keeps tokens (vidcom2.py), on frames of `tpf` tokens: frame uniqueness from the
    video similarity, shares base x (1 + p - mean p) with p = softmax(uniqueness / 0.01), each frame keeping
    round(share x tpf) (at least 1) of its tokens least similar to the video and frame centres. The token
    similarities are `vidcom2_scores`, checked against the authors' steps above."""
    frames = torch.arange(n_frames).repeat_interleave(tpf)
    vid, frame = vidcom2_scores(x, frames, n_frames)
    uniqueness = -vid.view(n_frames, tpf).mean(1)
    p = torch.softmax(uniqueness / 0.01, dim=0)
    shares = ratio * (1 + p - p.mean())
    counts = torch.round(shares * tpf).clamp(min=1).long()
    kept = []
    for f in range(n_frames):
        sim = (vid + frame)[f * tpf:(f + 1) * tpf]
        kept += (f * tpf + torch.topk(sim, int(counts[f]), largest=False).indices).tolist()
    return sorted(kept)


def test_vidcom2_keeps_what_the_authors_loop_keeps_when_their_counts_add_up():
    """Where the authors' rounded per-frame counts add up to the engine's budget (elsewhere the counts are
    apportioned to it: a stated deviation), the kept tokens are theirs."""
    n_frames, side, ratio = 4, 4, 0.25
    lay = _grid(("video", n_frames, side, side))
    budget = sv.keep_count(ratio, lay.n_visual)
    compared = 0
    for seed in range(12):
        x = torch.randn(lay.n_visual, 16, generator=torch.Generator().manual_seed(seed))
        want = _authors_vidcom2(x, n_frames, side * side, ratio)
        if len(want) != budget:
            continue
        assert sv.VidCom2(retain=ratio).select(_view(lay, budget, hidden=x)).keep.tolist() == want, seed
        compared += 1
    assert compared >= 6


# ---------------------------------------------------------------- DyCoke
def test_dycoke_windows_of_four():
    assert reference_frames(10).tolist() == [-1, 0, 0, 2, -1, 4, 4, 6, -1, 8]


def _dycoke_case():
    x = torch.randn(8 * 16, 16, generator=torch.Generator().manual_seed(4))
    t = lambda f, i: 16 * f + i  # noqa: E731  (token i of frame f)
    x[t(1, 5)] = 2 * x[t(0, 5)]  # f1 vs f0: identical direction
    x[t(2, 3)] = x[t(0, 3)]  # f2 vs f0
    x[t(3, 7)] = x[t(2, 7)]  # f3 vs the unpruned f2
    x[t(3, 9)] = x[t(0, 9)]  # f3 is not compared with f0: this one is not redundant
    x[t(5, 0)] = x[t(4, 0)]  # the second window
    return x, t


def test_dycoke_drops_tokens_identical_to_their_reference_counterpart_first():
    x, t = _dycoke_case()
    lay = _grid(("video", 8, 4, 4))
    n = lay.n_visual
    # one token less in each of the 6 compared frames: in each, the one most similar to its counterpart
    dropped = set(range(n)) - set(sv.DyCoke().select(_view(lay, n - 6, hidden=x)).tolist())
    assert len(dropped) == 6 and {t(1, 5), t(2, 3), t(3, 7), t(5, 0)} <= dropped and t(3, 9) not in dropped
    assert {f // 16 for f in dropped} == {1, 2, 3, 5, 6, 7}


def test_dycoke_keeps_reference_frames_whole_and_spreads_the_rest_evenly():
    x, _ = _dycoke_case()
    lay = _grid(("video", 8, 4, 4))
    keep = sv.DyCoke().select(_view(lay, 32 + 6 * 5, hidden=x))
    counts = torch.bincount(lay.frame_ids[keep], minlength=8).tolist()
    assert counts == [16, 5, 5, 5, 16, 5, 5, 5]
    # not even the reference frames fit: evenly spaced tokens of them only
    keep = sv.DyCoke().select(_view(lay, 10, hidden=x))
    assert torch.bincount(lay.frame_ids[keep], minlength=8).tolist() == [5, 0, 0, 0, 5, 0, 0, 0]


def test_dycoke_matches_by_grid_cell_and_keeps_tokens_without_a_counterpart():
    x, t = _dycoke_case()
    lay = _grid(("video", 8, 4, 4))
    # an earlier stage removed f0's token 5: f1's token 5 has no counterpart any more and is kept first
    rest = torch.tensor([i for i in range(lay.n_visual) if i != t(0, 5)])
    sub = lay.subset(rest)
    keep = rest[sv.DyCoke().select(_view(sub, sub.n_visual - 6, hidden=x[rest]))]  # one less per compared frame
    assert t(1, 5) in keep.tolist() and t(2, 3) not in keep.tolist()


def _authors_ttm(x: torch.Tensor, n_frames: int, tpf: int, k: float) -> list[int]:
    """DyCoke's TTM as the authors' loop does it (llava_arch.py, `dycole_ttm`), on frames of `tpf` tokens: pairs
    (f1 against f0, f3 against f2 in every window), then the windows of 4 (f2 against f0), each compared frame
    keeping its int((1 - k) x tpf) tokens least similar to the same index of its reference; kept indices, sorted.
    The released code skips the last window; here every window is pruned, as `sv.DyCoke` does (a stated
    deviation)."""
    frames = [x[i * tpf:(i + 1) * tpf] for i in range(n_frames)]
    keep_n = int((1 - k) * tpf)
    kept = {i: torch.arange(tpf) for i in range(n_frames)}
    for i in range(0, n_frames - 1, 2):  # pairs: the odd frame against the even one before it
        sim = F.cosine_similarity(F.normalize(frames[i], dim=1), F.normalize(frames[i + 1], dim=1), dim=1)
        kept[i + 1] = sim.topk(keep_n, largest=False).indices
    for i in range(0, n_frames - 2, 4):  # windows: f2 against f0
        sim = F.cosine_similarity(frames[i], frames[i + 2], dim=1)
        kept[i + 2] = sim.topk(keep_n, largest=False).indices
    return sorted(int(i * tpf + j) for i, idx in kept.items() for j in idx)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dycoke_keeps_what_the_authors_ttm_keeps(seed):
    n_frames, side, k = 12, 4, 0.75  # a compared frame keeps int(0.25 x 16) = 4 tokens
    tpf = side * side
    lay = _grid(("video", n_frames, side, side))
    x = torch.randn(lay.n_visual, 16, generator=torch.Generator().manual_seed(seed))
    want = _authors_ttm(x, n_frames, tpf, k)
    budget = len(want)  # reference frames whole, the 9 compared frames 4 each: 3 x 16 + 9 x 4
    assert budget == 3 * tpf + 9 * int((1 - k) * tpf)
    assert sv.DyCoke(dp=False).select(_view(lay, budget, hidden=x)).tolist() == want


# ---------------------------------------------------------------- Downsample
def test_evenly_spaced_is_the_centre_of_equal_bins():
    assert evenly_spaced(8, 2).tolist() == [2, 6] and evenly_spaced(8, 8).tolist() == list(range(8))
    assert evenly_spaced(32, 8).tolist() == [2, 6, 10, 14, 18, 22, 26, 30] and evenly_spaced(5, 1).tolist() == [2]


def test_frames_mode_keeps_evenly_spaced_whole_frames():
    lay = _grid(("video", 8, 4, 4))
    keep = sv.Downsample(mode="frames").select(_view(lay, 32)).keep
    assert torch.equal(keep, torch.cat([torch.arange(32, 48), torch.arange(96, 112)]))
    # 8 more: one partial frame, the one farthest from frames 2 and 6 (0 and 4 tie: the earlier), evenly spaced
    keep = sv.Downsample(mode="frames").select(_view(lay, 40)).keep
    partial = torch.arange(1, 16, 2)
    assert torch.equal(keep, torch.sort(torch.cat([partial, torch.arange(32, 48), torch.arange(96, 112)])).values)
    # no whole frame fits: evenly spaced tokens of the middle frame
    keep = sv.Downsample(mode="frames").select(_view(_grid(("video", 5, 4, 4)), 4)).keep
    assert torch.equal(keep, 32 + torch.tensor([2, 6, 10, 14]))


def _cell_means(x: torch.Tensor, lay: VisualLayout) -> dict[int, torch.Tensor]:
    """By hand: the mean of each 2x2 cell, keyed by the cell's top-left token."""
    groups: dict[tuple[int, int, int], list[int]] = {}
    for i in range(lay.n_visual):
        groups.setdefault((int(lay.frame_ids[i]), int(lay.rows[i]) // 2, int(lay.cols[i]) // 2), []).append(i)
    return {min(g): x[g].mean(0) for g in groups.values()}


@pytest.mark.parametrize("grid", [(4, 4), (3, 5)])
def test_pool_mode_merges_each_2x2_cell(grid):
    h, w = grid
    lay = _grid(("video", 6, h, w))
    cells = 6 * ((h + 1) // 2) * ((w + 1) // 2)
    x = torch.randn(lay.n_visual, 8, generator=torch.Generator().manual_seed(6))
    sel = sv.Downsample(mode="pool").select(_view(lay, cells, hidden=x))
    means = _cell_means(x, lay)
    assert sel.keep.tolist() == sorted(means)
    merged = merge_rows(x, torch.arange(lay.n_visual), sel.merge)[sel.keep]
    assert torch.allclose(merged, torch.stack([means[k] for k in sel.keep.tolist()]), atol=1e-6)
    # more budget than cells: every cell pooled, extra members kept unmerged; fewer: whole cells, evenly spread
    more = sv.Downsample(mode="pool").select(_view(lay, cells + 5, hidden=x))
    assert set(means) <= set(more.keep.tolist()) and more.merge.source.numel() == lay.n_visual - cells - 5
    fewer = sv.Downsample(mode="pool").select(_view(lay, 6, hidden=x))
    assert set(fewer.keep.tolist()) <= set(means) and torch.bincount(lay.frame_ids[fewer.keep]).tolist() == [1] * 6
    assert torch.isin(fewer.merge.target, fewer.keep).all()
    assert fewer.merge.source.numel() == sum(
        int(((lay.frame_ids == lay.frame_ids[k]) & (lay.rows // 2 == lay.rows[k] // 2)
             & (lay.cols // 2 == lay.cols[k] // 2)).sum()) - 1 for k in fewer.keep.tolist())


def test_both_mode_drops_frames_then_pools():
    lay = _grid(("video", 8, 4, 4))
    x = torch.randn(lay.n_visual, 8, generator=torch.Generator().manual_seed(7))
    sel = sv.Downsample(mode="both").select(_view(lay, 16, hidden=x))  # 4 frames of 4 cells
    assert torch.unique(lay.frame_ids[sel.keep]).tolist() == [1, 3, 5, 7]
    means = _cell_means(x, lay)
    merged = merge_rows(x, torch.arange(lay.n_visual), sel.merge)[sel.keep]
    assert torch.allclose(merged, torch.stack([means[k] for k in sel.keep.tolist()]), atol=1e-6)
    assert not torch.isin(lay.frame_ids[sel.merge.source], torch.tensor([0, 2, 4, 6])).any()


# ---------------------------------------------------------------- through the engine on a tiny Qwen2.5-VL
# DyCoke's decode-time pruning has its own oracle (tests/test_decode_pruning.py); here its prefill stage alone
@pytest.mark.parametrize("method", [sv.DivPrune(retain=0.25), sv.VidCom2(retain=0.25), sv.DyCoke(retain=0.4, dp=False),
                                    sv.Downsample(retain=0.3, mode="frames"), sv.Downsample(retain=0.25, mode="pool"),
                                    sv.Downsample(retain=0.2, mode="both")], ids=IDS)
def test_engine_matches_the_oracle(qwen25, method):
    model, inputs = qwen25
    want, rows, prompt = qwen_answer(model, inputs, method)
    prefill, stats, out = run_pruned(model, inputs, method, 4)
    (stage,) = stats.stages
    assert stage.layer == 0 and stage.costs.scoring_flops == 0
    assert torch.equal(stage.kept_positions[0], rows[want.keep])
    assert stage.n_merged == [0 if want.merge is None else want.merge.source.numel()]
    merge = None if want.merge is None else {0: merge_by_hand(want, rows)}
    logits, tokens, _ = staged_forward(model, model.model.language_model, prompt, [(0, rows[want.keep])], 4,
                                       merge=merge)
    assert_matches(prefill, out, logits, tokens, 4)


@pytest.mark.parametrize("method", [sv.DivPrune(retain=0.5), sv.VidCom2(retain=0.5), sv.DyCoke(retain=0.5, dp=False),
                                    sv.Downsample(retain=0.5, mode="frames"), sv.Downsample(retain=0.25, mode="pool"),
                                    sv.Downsample(retain=0.5, mode="both"), sv.FastVID(retain=0.5)],
                         ids=[*IDS, "fastvid"])
def test_stacked_before_sharp(qwen25, method):
    """A pre-LLM method then ShaRP at layer 2: the default ShaRP runs; with its mask off (no forward-scope mask)
    both stages equal the oracle."""
    model, inputs = qwen25
    _, stats, out = run_pruned(model, inputs, sv.Schedule([method, sv.ShaRP(retain=0.2, layer=2)]), 2)
    first, second = stats.stages
    assert (first.layer, second.layer) == (0, 2)
    assert first.n_kept == [sv.keep_count(method.retain, 128)] and second.n_kept == [sv.keep_count(0.2, 128)]
    assert torch.isin(second.kept_positions[0], first.kept_positions[0]).all()
    assert out.sequences.shape[1] == inputs["input_ids"].shape[1] + 2

    want, rows, prompt = qwen_answer(model, inputs, method)
    prefill, stats, out = run_pruned(model, inputs, sv.Schedule([method, sv.ShaRP(retain=0.2, layer=2, mask="off")]),
                                     3)
    stages = [(s.layer, s.kept_positions[0]) for s in stats.stages]
    assert torch.equal(stages[0][1], rows[want.keep])
    merge = None if want.merge is None else {0: merge_by_hand(want, rows)}
    logits, tokens, _ = staged_forward(model, model.model.language_model, prompt, stages, 3, merge=merge)
    assert_matches(prefill, out, logits, tokens, 3)
