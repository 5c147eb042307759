"""FrameFusion: the merge stage's selection invariants on random tensors, the authors' pairing and merging rule on
a constructed case, stage retains and the layer-averaged retention, option checks, and a run through the engine
on the tiny LLaMA with a declared span against the hand-written pruned forward (tests/oracle.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import sharp_vlm as sv
from cases import BY_NAME, model_and_inputs
from oracle import assert_matches, run_pruned, staged_forward
from sharp_vlm.core.layout import VisualLayout
from sharp_vlm.core.selection import check_selection, merge_rows
from sharp_vlm.methods.framefusion import _SimilarityMerge, cell_predecessors
from views import LAYOUTS
from views import grid as _grid
from views import view as _view

pytestmark = pytest.mark.usefixtures("one_thread")


MERGE = _SimilarityMerge(retain=0.5, layer=0)


# ---------------------------------------------------------------- invariants on random tensors
@pytest.mark.parametrize("name", list(LAYOUTS))
@pytest.mark.parametrize("share", [1.0, 0.9, 0.5, 0.2, 0.01])
def test_merge_stage_keeps_exactly_the_budget_with_valid_merges(name, share):
    lay = LAYOUTS[name]
    n = lay.n_visual
    budget = sv.keep_count(share, n)
    sel = MERGE.select(_view(lay, budget))
    check_selection(sel, n, budget, "framefusion:merge", 0)  # exact budget, sorted unique, valid merge
    src, dst = sel.merge.source, sel.merge.target
    # every merge goes into the same cell of an earlier frame
    assert torch.equal(lay.rows[src], lay.rows[dst]) and torch.equal(lay.cols[src], lay.cols[dst])
    assert bool((lay.frame_ids[dst] < lay.frame_ids[src]).all())
    pred = cell_predecessors(lay.frame_ids, lay.rows, lay.cols)
    first = pred < 0
    assert not bool(torch.isin(torch.nonzero(first).flatten(), src).any())  # first at its cell: never merged
    if budget >= int(first.sum()):
        # within the authors' range every dropped token merges, and no token of a first frame is dropped
        assert src.numel() == n - budget
        assert bool(torch.isin(torch.nonzero(first).flatten(), sel.keep).all())
    again = MERGE.select(_view(lay, budget))
    assert torch.equal(again.keep, sel.keep) and torch.equal(again.merge.source, src)
    assert torch.equal(again.merge.target, dst)


def test_merge_stage_runs_no_side_pass_and_may_run_before_the_decoder():
    assert _SimilarityMerge.scores_attention is False and _SimilarityMerge.allow_layer_zero is True
    stages = sv.FrameFusion().stages()
    assert [s.method.scores_attention for s in stages] == [False, False, True]
    assert [s.scores_previous_layer for s in stages] == [False, False, True]


# ---------------------------------------------------------------- the authors' rule on a constructed case
def _cell(lay: VisualLayout, frame: int, row: int, col: int) -> int:
    hit = (lay.frame_ids == frame) & (lay.rows == row) & (lay.cols == col)
    return int(torch.nonzero(hit).flatten()[0])


def test_identical_tokens_at_one_cell_of_adjacent_frames_merge_first():
    lay = _grid(("video", 4, 2, 2))
    h = torch.randn(lay.n_visual, 32, generator=torch.Generator().manual_seed(1))
    a, b = _cell(lay, 1, 1, 0), _cell(lay, 2, 1, 0)
    h[b] = 3.0 * h[a]  # cosine 1 whatever the norm
    # a token equal to one of another cell is not its partner: it does not merge first
    h[_cell(lay, 1, 0, 1)] = h[_cell(lay, 0, 0, 0)]
    sel = MERGE.select(_view(lay, lay.n_visual - 1, h))
    assert sel.merge.source.tolist() == [b] and sel.merge.target.tolist() == [a]
    assert b not in sel.keep.tolist()
    assert sel.scores[b] == pytest.approx(1.0) and sel.scores[_cell(lay, 0, 1, 0)] == -2.0  # no partner

    # a run of two merged tokens goes into the token before the run; the kept token becomes their plain mean
    c = _cell(lay, 3, 1, 0)
    h[c] = h[a] * 0.5
    sel = MERGE.select(_view(lay, lay.n_visual - 2, h))
    assert sorted(sel.merge.source.tolist()) == [b, c] and sel.merge.target.tolist() == [a, a]
    merged = merge_rows(h, torch.arange(lay.n_visual), sel.merge)
    assert torch.allclose(merged[a], (h[a] + h[b] + h[c]) / 3, atol=1e-6)


def test_partner_is_the_nearest_earlier_token_still_present_at_the_cell():
    lay = _grid(("video", 4, 2, 2))
    gone = torch.tensor([_cell(lay, 1, 0, 0), _cell(lay, 2, 0, 0)])
    rest = torch.tensor([i for i in range(lay.n_visual) if i not in gone.tolist()])
    sub = lay.subset(rest)
    pred = cell_predecessors(sub.frame_ids, sub.rows, sub.cols)
    last = _cell(sub, 3, 0, 0)
    assert pred[last] == _cell(sub, 0, 0, 0)  # frames 1 and 2 merged away earlier: frame 0 absorbed them
    assert pred[_cell(sub, 3, 1, 1)] == _cell(sub, 2, 1, 1)
    assert pred[_cell(sub, 0, 1, 1)] == -1


def test_merges_rank_by_cosine_of_the_hidden_states_entering_the_layer():
    lay = _grid(("video", 6, 3, 3))
    h = torch.randn(lay.n_visual, 24, generator=torch.Generator().manual_seed(2))
    pred = cell_predecessors(lay.frame_ids, lay.rows, lay.cols)
    has = torch.nonzero(pred >= 0).flatten()
    sim = F.cosine_similarity(h[has], h[pred[has]], dim=-1)
    n_merge = 10
    expected = sorted(has[torch.argsort(-sim)[:n_merge]].tolist())
    sel = MERGE.select(_view(lay, lay.n_visual - n_merge, h))
    assert sorted(sel.merge.source.tolist()) == expected


# ---------------------------------------------------------------- schedule and retention
def test_stages_merge_at_successive_layers_then_prune_by_the_previous_layer_attention():
    cfg = sv.FrameFusion()
    assert cfg.stage_retains() == [0.5, 0.475, 0.286]
    assert [(s.layer, s.retain, s.label) for s in cfg.stages()] == [
        (0, 0.5, "framefusion:merge@0"), (1, 0.475, "framefusion:merge@1"), (2, 0.286, "framefusion:prune@2")]
    prune = cfg.stages()[-1].method
    assert isinstance(prune, sv.FastV) and prune.attention_layer == "previous" and prune.query == "last"
    # the authors' cost: a layer average of 0.3 over 28 layers
    assert cfg.layer_averaged_retention() == pytest.approx((0.5 + 0.475 + 26 * 0.286) / 28)
    assert cfg.layer_averaged_retention() == pytest.approx(0.3, abs=5e-4)
    assert cfg.layer_averaged_retention(4) == pytest.approx((0.5 + 0.475 + 2 * 0.286) / 4)
    # retain equal to the last merge share: no pruning stage
    only = sv.FrameFusion(merge_retains=[0.6, 0.4], retain=0.4)
    assert [s.label for s in only.stages()] == ["framefusion:merge@0", "framefusion:merge@1"]
    assert only.layer_averaged_retention(10) == pytest.approx((0.6 + 9 * 0.4) / 10)


def test_from_cost_follows_the_authors_formula():
    cfg = sv.FrameFusion.from_cost(0.3, 28)
    assert cfg.retain == pytest.approx((28 * 0.3 - 0.5 - 0.475) / 26)
    assert cfg.layer_averaged_retention() == pytest.approx(0.3)
    cfg = sv.FrameFusion.from_cost(0.25, 32, merge_retains=[0.5])
    assert cfg.retain == pytest.approx((32 * 0.25 - 0.5) / 31) and cfg.n_layers == 32
    # merges already below the cost: nothing is pruned (the authors' pruning ratio 0)
    assert sv.FrameFusion.from_cost(0.9, 28).retain == pytest.approx(0.475)


def test_config_states_both_retentions_and_round_trips():
    cfg = sv.FrameFusion(retain=0.2, merge_retains=[0.5, 0.4], query="text", n_layers=32)
    d = cfg.to_dict()
    assert d["retain"] == 0.2 and d["layer_averaged_retention"] == pytest.approx(cfg.layer_averaged_retention(32))
    assert sv.load_config(d) == cfg
    assert sv.load_config({"method": "framefusion", "retain": 0.2}) == sv.FrameFusion(retain=0.2)
    with pytest.raises(sv.ConfigError, match="layer_averaged_retention"):
        sv.load_config({**d, "layer_averaged_retention": 0.5})


@pytest.mark.parametrize("bad", [
    {"merge_retains": []}, {"merge_retains": 0.5}, {"merge_retains": [0.4, 0.5]}, {"merge_retains": [0.0]},
    {"merge_retains": [0.5, 1.2]}, {"retain": 0.0}, {"retain": float("nan")},
    {"query": "first"}, {"targets": "audio"}, {"n_layers": 2}, {"n_layers": True}, {"layer": 2},
])
def test_bad_options_are_refused(bad):
    with pytest.raises(sv.ConfigError):
        sv.FrameFusion(**bad)


@pytest.mark.parametrize("args", [dict(cost=0.01), dict(cost=0.0), dict(cost=0.3, retain=0.2),
                                  dict(cost=0.3, n_layers=2), dict(cost=0.3, merge_retains=[])])
def test_from_cost_refuses_what_cannot_be_met(args):
    with pytest.raises(sv.ConfigError):
        sv.FrameFusion.from_cost(**args)


# ---------------------------------------------------------------- through the engine, against the oracle
def _hand_merge(visual: torch.Tensor, start: int, per_frame: int, budget: int, kept_pos: torch.Tensor):
    """For the oracle: the authors' merge written out token by token, checked against the engine's kept set."""

    def merge(h, rows):
        vis = [i for i in range(rows.numel()) if bool(visual[rows[i]])]
        cell = {i: (int(rows[i]) - start) % per_frame for i in vis}
        pred, last = {}, {}
        for i in vis:  # rows are in sequence order: the last one seen at a cell is the nearest earlier frame
            if cell[i] in last:
                pred[i] = last[cell[i]]
            last[cell[i]] = i
        sim = {i: float(F.cosine_similarity(h[i].float(), h[p].float(), dim=0)) for i, p in pred.items()}
        chosen = set(sorted(sim, key=lambda i: (-sim[i], i))[: len(vis) - budget])
        assert [int(rows[i]) for i in vis if i not in chosen] == kept_pos.tolist()
        groups: dict[int, list[int]] = {}
        for i in sorted(chosen):
            root = pred[i]
            while root in chosen:
                root = pred[root]
            groups.setdefault(root, []).append(i)
        out = h.clone()
        for root, members in groups.items():
            out[root] = h[[root] + members].float().mean(0).to(h.dtype)
        return out

    return merge


def test_framefusion_matches_the_oracle_on_llama_span():
    case = BY_NAME["llama_span"]
    model, inputs = model_and_inputs("llama_span")
    cfg = sv.FrameFusion(merge_retains=[0.5, 0.375], retain=0.25, n_layers=4)
    prefill, stats, out = run_pruned(model, inputs, cfg, 4, span=case.span)
    n = case.n_visual
    assert [s.label for s in stats.stages] == ["framefusion:merge@0", "framefusion:merge@1", "framefusion:prune@2"]
    assert [s.n_kept[0] for s in stats.stages] == [sv.keep_count(r, n) for r in (0.5, 0.375, 0.25)]
    assert [s.n_merged[0] for s in stats.stages] == [n - sv.keep_count(0.5, n),
                                                    sv.keep_count(0.5, n) - sv.keep_count(0.375, n), 0]
    assert stats.stages[0].costs.scoring_flops == 0 and stats.stages[2].costs.scoring_flops > 0
    prompt = case.prompt(model, inputs)
    span = case.span
    merge = {s.layer: _hand_merge(prompt.visual, span.start, span.tokens_per_frame, s.n_kept[0], s.kept_positions[0])
             for s in stats.stages[:2]}
    stages = [(s.layer, s.kept_positions[0]) for s in stats.stages]
    logits, tokens, _ = staged_forward(model, case.text_model(model), prompt, stages, 4, merge=merge)
    assert_matches(prefill, out, logits, tokens, 4)
    # the prune stage ranked what the merges left (layer 1's attention from the last prompt token)
    assert stats.stages[2].samples[0].raw_scores.numel() == sv.keep_count(0.375, n)


def test_a_retain_above_the_merges_caps_them_as_the_authors_cost_bound():
    cfg = sv.FrameFusion(retain=0.6)
    assert [(s.layer, s.retain) for s in cfg.stages()] == [(0, 0.6), (1, 0.6)]  # no pruning stage
    assert cfg.layer_averaged_retention(28) == pytest.approx(0.6)
    cfg = sv.FrameFusion(retain=0.49)
    assert [(s.layer, s.retain) for s in cfg.stages()] == [(0, 0.5), (1, 0.49)]
