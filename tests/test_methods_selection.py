"""Selection invariants of the simple methods, on random tensors."""

from __future__ import annotations

import pytest
import torch

import sharp_vlm as sv
from sharp_vlm.core.layout import VisualItem, VisualLayout
from sharp_vlm.core.select import random_indices, top_indices, uniform_indices
from sharp_vlm.methods.base import SampleView


class FixedScores:
    """A score source with fixed attention scores (no model)."""

    def __init__(self, scores):
        self.scores = scores

    def attention(self, query, mask, rope, content_free, previous=False):
        return self.scores

    def reference(self, query, mask, rope):
        return torch.zeros_like(self.scores)


def _view(n_frames=8, per_frame=16, seed=0, retain=0.25):
    gen = torch.Generator().manual_seed(seed)
    n = n_frames * per_frame
    layout = VisualLayout.from_grid(torch.arange(5, 5 + n), [VisualItem("video", 0, n_frames, 4, per_frame // 4)])
    hidden = torch.randn(1, n + 10, 8, generator=gen)
    scores = torch.rand(1, n, generator=gen)
    budget = sv.keep_count(retain, n)
    return SampleView(2, 0, budget, layout, hidden, layout.positions, n, FixedScores(scores)), scores


@pytest.mark.parametrize("seed", range(5))
def test_top_indices_are_the_best(seed):
    s = torch.rand(200, generator=torch.Generator().manual_seed(seed))
    k = top_indices(s, 37)
    assert k.numel() == 37 and torch.equal(k, torch.sort(k).values)
    rest = torch.ones(200, dtype=torch.bool)
    rest[k] = False
    assert s[k].min() >= s[rest].max()


def test_top_indices_ties_prefer_earlier_tokens():
    assert top_indices(torch.zeros(10), 3).tolist() == [0, 1, 2]


@pytest.mark.parametrize("budget", [1, 7, 8, 13, 64, 100, 128])
def test_uniform_spreads_budget_over_frames(budget):
    frames = torch.arange(8).repeat_interleave(16)
    k = uniform_indices(frames, budget)
    assert k.numel() == budget and k.unique().numel() == budget
    per_frame = torch.bincount(frames[k], minlength=8)
    assert per_frame.max() - per_frame.min() <= 1


def test_uniform_handles_small_frames():
    frames = torch.tensor([0, 1, 1, 1, 1, 1, 2, 2])
    k = uniform_indices(frames, 6)
    assert k.numel() == 6 and frames[k].tolist().count(0) == 1


def test_random_is_seeded_sorted_unique():
    a = random_indices(100, 30, torch.Generator().manual_seed(1))
    b = random_indices(100, 30, torch.Generator().manual_seed(1))
    c = random_indices(100, 30, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.unique().numel() == 30 and torch.equal(a, torch.sort(a).values)


def test_keep_count_rounds_half_up_within_bounds():
    assert sv.keep_count(0.1, 128) == 13 and sv.keep_count(1e-6, 128) == 1 and sv.keep_count(1.0, 128) == 128
    assert sv.keep_count(0.5, 5) == 3 and sv.keep_count(0.5, 7) == 4  # Python's round() would give 2 and 4
    assert sv.keep_count(0.5, 5, n_available=2) == 2 and sv.keep_count(0.3, 0) == 0


def test_method_selectors_on_a_view():
    view, scores = _view()
    assert view.budget == 32
    fast = sv.FastV(retain=0.25).select(view)
    assert torch.equal(fast, top_indices(scores[0], 32))
    uni = sv.UniformPrune(retain=0.25).select(view)
    assert torch.bincount(view.layout.frame_ids[uni]).tolist() == [4] * 8
    rnd = sv.RandomPrune(retain=0.25, seed=3).select(view)
    assert rnd.numel() == 32 and torch.equal(rnd, sv.RandomPrune(retain=0.25, seed=3).select(view))


def test_registry_and_config_loading(tmp_path):
    assert {"none", "fastv", "random", "uniform"} <= set(sv.methods())
    cfg = sv.load_config({"method": "fastv", "retain": 0.1, "layer": 3})
    assert cfg == sv.FastV(retain=0.1, layer=3)
    path = tmp_path / "m.yaml"
    path.write_text("method: uniform\nretain: 0.5\nlayer: 0\n")
    assert sv.load_config(path) == sv.UniformPrune(retain=0.5, layer=0)
    assert sv.load_config('{"method": "random", "seed": 4}') == sv.RandomPrune(seed=4)
    assert sv.load_config(sv.FastV(retain=0.2).to_dict()) == sv.FastV(retain=0.2)


def test_layout_from_grid():
    items = [VisualItem("video", 0, 2, 2, 3), VisualItem("image", 12, 1, 2, 2)]
    lay = VisualLayout.from_grid(torch.arange(100, 116), items)
    assert lay.frame_ids.tolist() == [0] * 6 + [1] * 6 + [2] * 4
    assert lay.rows.tolist()[:6] == [0, 0, 0, 1, 1, 1] and lay.cols.tolist()[:6] == [0, 1, 2, 0, 1, 2]
    seg = lay.segment_ids(120, frames_per_segment=2)
    assert seg[:100].eq(-1).all() and seg[100:112].eq(0).all() and seg[112:116].eq(1).all()


def test_every_registered_method_runs_from_every_command_by_name():
    """`sharp run --method X`, `sharp eval --methods X`, `sharp probe --methods X`, `sharp bench --variants X`:
    each builds X from its name at the command's retain with the method's own default layer."""
    from sharp_vlm.bench.latency import variant
    from sharp_vlm.eval.runner import EvalConfig
    from sharp_vlm.loading import build_method
    from sharp_vlm.probe.run import ProbeConfig, check_probe

    names = sorted(set(sv.methods()) - {"none", "schedule"})
    assert {"divprune", "dycoke", "fastv", "fastvid", "framefusion", "pdrop", "sharp", "vidcom2", "visionzip",
            "holitom", "flashvid"} <= set(names)
    for name in names:
        own = build_method(name, 0.25)
        assert build_method(name, 0.25, None).stages() == own.stages()
        (run,) = [v for v in EvalConfig(model="m", data="d", methods=[name], retains=[0.25]).variants()
                  if v.method != "none"]
        assert run.config.stages() == own.stages()
        if any(st.reads_vision for st in own.stages()):  # the probe's text frames have no tower: refused up front
            with pytest.raises(sv.ConfigError, match="no tower"):
                check_probe(ProbeConfig(methods=[name], retains=[0.25], n=1))
        else:
            plan = check_probe(ProbeConfig(methods=[name], retains=[0.25], n=1))
            assert plan[-1].config.stages() == own.stages()
        at = own.stages()[0].layer
        assert variant(f"{name}@{at}", 0.25, 2).config.stages()[0].layer == at
