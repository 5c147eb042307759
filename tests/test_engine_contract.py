"""The stage contract: row bookkeeping on tensors, what the engine accepts from a method, the one budget rule,
the adapter registry, schedules as configs."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

import sharp_vlm as sv
from sharp_vlm.bench.latency import _kv_lens
from sharp_vlm.core.layout import VisualItem, VisualLayout
from sharp_vlm.core.selection import check_selection, merge_rows
from sharp_vlm.engine.rows import PrefillRows
from sharp_vlm.flops import stages_to_removals
from sharp_vlm.methods.experimental import ShaRPLab
from sharp_vlm.models.registry import adapter_for
from sharp_vlm.testing import tiny_llama


def _rows(batch=2, prefix=3, n=12, suffix=4):
    seq = prefix + n + suffix
    lay = VisualLayout.from_grid(torch.arange(prefix, prefix + n), [VisualItem("video", 0, 3, 2, 2)])
    valid = torch.ones(batch, seq, dtype=torch.bool)
    return PrefillRows.start([lay] * batch, valid, torch.full((batch,), seq - 1)), lay


def test_rows_gather_keeps_text_and_kept_visual_rows_in_order():
    rows, lay = _rows()
    keep = [torch.tensor([0, 5, 11]), torch.tensor([1, 2, 7])]
    op = rows.apply([sv.Selection(k) for k in keep], torch.device("cpu"))
    assert rows.rows[0].tolist() == [0, 1, 2, 3, 8, 14, 15, 16, 17, 18]
    assert rows.rows[1].tolist() == [0, 1, 2, 4, 5, 10, 15, 16, 17, 18]
    for b in range(2):
        assert torch.equal(rows.rows[b, rows.visual_rows[b]], lay.positions[keep[b]])
        assert torch.equal(rows.visual_orig[b], keep[b])
    hidden = torch.arange(19.0)[None, :, None].expand(2, -1, 3)
    assert torch.equal(op.run(hidden)[..., 0], rows.rows.float())
    # a second stage indexes the survivors; visual_orig stays in the prompt's numbering
    rows.apply([sv.Selection(torch.tensor([2])), sv.Selection(torch.tensor([0]))], torch.device("cpu"))
    assert rows.visual_orig[0].tolist() == [11] and rows.visual_orig[1].tolist() == [1]
    assert rows.rows[0].tolist() == [0, 1, 2, 14, 15, 16, 17, 18]


def test_merge_rows_is_a_weighted_mean():
    h = torch.tensor([[1.0], [2.0], [4.0], [8.0]])
    rows = torch.tensor([0, 1, 2, 3])
    out = merge_rows(h, rows, sv.Merge(torch.tensor([1, 2]), torch.tensor([0, 0]), torch.tensor([1.0, 2.0])))
    assert out[0].item() == pytest.approx((1 + 2 + 2 * 4) / 4) and torch.equal(out[1:], h[1:])


def test_merge_rows_with_a_target_weight_and_as_a_plain_sum():
    h = torch.tensor([[1.0], [2.0], [4.0], [8.0]])
    rows = torch.tensor([0, 1, 2, 3])
    own = torch.tensor([0.5, 1.0, 3.0, 1.0])
    mean = sv.Merge(torch.tensor([1, 3]), torch.tensor([0, 2]), torch.tensor([1.0, 1.0]), target_weight=own)
    out = merge_rows(h, rows, mean)
    assert out[0].item() == pytest.approx((0.5 * 1 + 2) / 1.5) and out[2].item() == pytest.approx((3 * 4 + 8) / 4)
    plain = sv.Merge(torch.tensor([1, 3]), torch.tensor([0, 0]), torch.tensor([0.5, 0.5]), normalize=False)
    out = merge_rows(h, rows, plain)
    assert out[0].item() == pytest.approx(1 + (2 + 8) / 2)  # VisionZip: target + mean(joined)
    assert torch.equal(out[1:], h[1:])  # dropped rows are left as they were; a kept row with no source too


@pytest.mark.parametrize(
    "sel, message",
    [
        (sv.Selection(torch.tensor([0, 1])), "budget is 3"),
        (sv.Selection(torch.tensor([2, 1, 0])), "sorted unique"),
        (sv.Selection(torch.tensor([0, 1, 9])), "outside 0..7"),
        (sv.Selection(torch.tensor([0.0, 1.0, 2.0])), "integer tensor"),
        (sv.Selection(torch.tensor([0, 1, 2]), sv.Merge(torch.tensor([1]), torch.tensor([0]))), "dropped tokens into"),
        (sv.Selection(torch.tensor([0, 1, 2]), sv.Merge(torch.tensor([3, 3]), torch.tensor([0, 1]))), "at most once"),
        (sv.Selection(torch.tensor([0, 1, 2]), sv.Merge(torch.tensor([3]), torch.tensor([0]), torch.tensor([-1.0]))),
         "non-negative"),
        (sv.Selection(torch.tensor([0, 1, 2]), sv.Merge(torch.tensor([3]), torch.tensor([0]),
                                                        target_weight=torch.ones(3))), "one per visual token"),
        (sv.Selection(torch.tensor([0, 1, 2]), sv.Merge(torch.tensor([3]), torch.tensor([0]),
                                                        target_weight=torch.full((8,), float("inf")))),
         "target_weight"),
    ],
)
def test_check_selection_names_the_method(sel, message):
    with pytest.raises(RuntimeError, match=message) as err:
        check_selection(sel, 8, 3, "mymethod", 0)
    assert "mymethod (sample 0)" in str(err.value)


@dataclass
class KeepsTooMany(sv.StageMethod):
    scores_attention = False

    def select(self, view):
        return torch.arange(view.budget + 1)


def test_engine_enforces_the_budget():
    model = tiny_llama()
    span = sv.VideoSpan(start=2, n_frames=4, tokens_per_frame=8)
    with (sv.apply(model, KeepsTooMany(retain=0.25, layer=1), span=span),
          pytest.raises(RuntimeError, match="budget is 8")):
        model(input_ids=torch.randint(3, 100, (1, 40)))


@pytest.mark.parametrize("n", [1, 5, 7, 13, 33])
@pytest.mark.parametrize("retains", [(0.5,), (0.3,), (0.5, 0.25), (0.7, 0.5, 0.1)])
def test_engine_flops_and_bench_agree_on_kept_counts(n, retains):
    model = tiny_llama(layers=4)
    span = sv.VideoSpan(start=3, n_frames=n, tokens_per_frame=1)
    steps = [sv.UniformPrune(retain=r, layer=i) for i, r in enumerate(retains)]
    method = sv.Schedule(steps) if len(steps) > 1 else steps[0]
    seq = 3 + n + 4
    with sv.apply(model, method, span=span) as handle, torch.no_grad():
        model(input_ids=torch.randint(3, 100, (1, seq)))
    engine = [s.n_kept[0] for s in handle.last_stats.stages]
    removals = stages_to_removals([(s.layer, s.retain) for s in method.stages()], n)
    flops, left = [], n
    for _, removed in removals:
        left -= removed
        flops.append(left)
    assert engine == flops == [sv.keep_count(r, n) for r in retains]
    assert _kv_lens(4, seq, n, method, trim=False)[-1] == seq - n + engine[-1]


def test_half_way_retain_rounds_up_everywhere():
    assert sv.keep_count(0.5, 5) == 3
    assert stages_to_removals([(2, 0.5)], 5) == [(2, 2)]


def test_subclass_of_a_supported_model_gets_its_adapter():
    from transformers import LlamaForCausalLM

    class MyLlama(LlamaForCausalLM):
        pass

    base = tiny_llama()
    model = MyLlama(base.config).eval()
    assert type(adapter_for(model)).__name__ == "GenericAdapter"
    span = sv.VideoSpan(start=2, n_frames=4, tokens_per_frame=8)
    with sv.apply(model, sv.FastV(retain=0.25, layer=1), span=span) as h, torch.no_grad():
        model(input_ids=torch.randint(3, 100, (1, 40)))
    assert h.last_stats.stages[0].n_kept == [8]


def test_schedule_config_rules_and_loading(tmp_path):
    s = sv.Schedule([sv.UniformPrune(retain=0.5, layer=0), sv.ShaRP(retain=0.2, layer=2)])
    assert [(st.layer, st.retain) for st in s.stages()] == [(0, 0.5), (2, 0.2)]
    assert sv.load_config(s.to_dict()) == s
    path = tmp_path / "s.yaml"
    path.write_text("method: schedule\nsteps:\n  - {method: fastv, retain: 0.5, layer: 1}\n"
                    "  - {method: fastv, retain: 0.25, layer: 3}\n")
    assert sv.load_config(path) == sv.Schedule([sv.FastV(retain=0.5, layer=1), sv.FastV(retain=0.25, layer=3)])
    with pytest.raises(sv.ConfigError, match="strictly increasing"):
        sv.Schedule([sv.FastV(retain=0.5, layer=2), sv.FastV(retain=0.2, layer=2)])
    with pytest.raises(sv.ConfigError, match="must not increase"):
        sv.Schedule([sv.FastV(retain=0.2, layer=1), sv.FastV(retain=0.5, layer=2)])
    with pytest.raises(sv.ConfigError, match="at least one"):
        sv.Schedule([])
    with pytest.raises(sv.ConfigError, match="prunes nothing"):
        sv.Schedule([sv.NoPrune()])
    with pytest.raises(sv.ConfigError, match="methods such as"):
        sv.Schedule([sv.Schedule([sv.FastV()])])
    # a method of several stages is a step like any other; its stages join the order and retain rules
    both = sv.Schedule([sv.HoliTom(retain=0.5, merge_layer=None), sv.PDrop(retain=0.05, layers=[4, 8, 12])])
    assert [st.layer for st in both.stages()] == [0, 4, 8, 12]
    with pytest.raises(sv.ConfigError, match="strictly increasing"):
        sv.Schedule([sv.HoliTom(retain=0.5), sv.FastV(retain=0.1, layer=2)])
    with pytest.raises(sv.ConfigError, match="at most one stage"):
        sv.Schedule([sv.ShaRP(retain=0.5, layer=1), sv.ShaRP(retain=0.2, layer=3)])
    with pytest.raises(sv.ConfigError, match="steps"):
        sv.load_config({"method": "schedule", "stages": []})


def test_config_edited_after_construction_is_checked_at_apply():
    model = tiny_llama()
    cfg = sv.FastV(retain=0.5, layer=1)
    cfg.retain = 5
    with pytest.raises(sv.ConfigError, match="outside"):
        sv.apply(model, cfg, span=sv.VideoSpan(2, 4, 8))
    assert "generate" not in model.__dict__


def test_decoder_family_without_an_adapter_is_refused_with_the_supported_list():
    from transformers import Gemma2Config, Gemma2ForCausalLM

    cfg = Gemma2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=8, pad_token_id=0)
    with pytest.raises(sv.UnsupportedModelError,
                       match="Gemma2ForCausalLM is not supported; supported: .*LlamaForCausalLM"):
        sv.apply(Gemma2ForCausalLM(cfg), sv.FastV(), span=sv.VideoSpan(0, 2, 2))


def test_registering_a_class_again_replaces_its_adapter():
    from transformers import LlamaForCausalLM

    from sharp_vlm.models import registry
    from sharp_vlm.models.generic import GenericAdapter

    class Mine(GenericAdapter):
        name = "mine"

    before = registry._ADAPTERS[LlamaForCausalLM]
    registry.register_adapter(LlamaForCausalLM, Mine)
    try:
        assert type(adapter_for(tiny_llama())) is Mine
    finally:
        registry._ADAPTERS[LlamaForCausalLM] = before
    assert type(adapter_for(tiny_llama())) is GenericAdapter


def test_config_edited_after_apply_is_refused_not_half_read():
    model = tiny_llama()
    cfg = sv.FastV(retain=0.5, layer=1)
    with sv.apply(model, cfg, span=sv.VideoSpan(2, 4, 8)), torch.no_grad():
        cfg.retain = 0.25
        with pytest.raises(sv.ConfigError, match="changed after sv.apply"):
            model(input_ids=torch.randint(3, 100, (1, 40)))


def test_a_score_scope_or_off_mask_leaves_the_shallow_layers_alone():
    for mask in (ShaRPLab(retain=0.2, mask_scope="score"), ShaRPLab(retain=0.2, mask="off")):
        assert mask.stages()[0].segment_mask is None
    assert sv.ShaRP(retain=0.2).stages()[0].segment_mask.scope == "forward"


def test_a_reference_debiased_stage_cannot_follow_an_in_decoder_stage():
    with pytest.raises(sv.ConfigError, match="cannot follow an in-decoder stage"):
        sv.Schedule([sv.FastV(retain=0.5, layer=1), sv.ShaRP(retain=0.2, layer=3, mask="off")])
    sv.Schedule([sv.UniformPrune(retain=0.5, layer=0), sv.ShaRP(retain=0.2, layer=2)])
    sv.Schedule([sv.FastV(retain=0.5, layer=1), sv.ShaRP(retain=0.2, layer=3, mask="off", debias="off")])


def test_flops_count_scoring_and_reference_per_stage():
    from sharp_vlm.flops import DecoderShape, reference_pass_flops, scoring_flops

    shape = DecoderShape(64, 128, 4, 4, 2, 16, 100)
    stages = [(0, 0.5), (2, 0.2)]
    both = method_flops_for(shape, stages, scoring=True, reference_pass=False)
    per = method_flops_for(shape, stages, scoring=[False, True], reference_pass=[False, True])
    assert both["scoring"] == scoring_flops(shape, 200, 1)["total"] + scoring_flops(shape, 150, 1)["total"]
    assert per["scoring"] == scoring_flops(shape, 150, 1)["total"]
    assert per["reference"] == reference_pass_flops(shape, 200, 2, 1)["total"]
    # each stage scores with its own query rows (e.g. a last-token stage, then a question-rows stage)
    rows = method_flops_for(shape, stages, scoring=True, reference_pass=[True, True], n_query=[1, 6])
    assert rows["scoring"] == scoring_flops(shape, 200, 1)["total"] + scoring_flops(shape, 150, 6)["total"]
    assert rows["reference"] == (reference_pass_flops(shape, 200, 2, 6)["total"]
                                 + scoring_flops(shape, 200, 1)["total"])
    with pytest.raises(ValueError, match="one per stage"):
        method_flops_for(shape, stages, n_query=[1])


def method_flops_for(shape, stages, **kw):
    from sharp_vlm.flops import method_flops

    return method_flops(shape, 200, 100, stages, **kw)


def test_a_stage_that_keeps_everything_costs_no_scoring():
    from sharp_vlm.flops import DecoderShape, scoring_flops

    shape = DecoderShape(64, 128, 4, 4, 2, 16, 100)
    flops = method_flops_for(shape, [(0, 0.5), (2, 0.5)], scoring=[False, True], reference_pass=[False, True])
    assert flops["scoring"] == 0 and flops["reference"] == 0
    model = tiny_llama()
    method = sv.Schedule([sv.UniformPrune(retain=0.5, layer=0), sv.ShaRP(retain=0.5, layer=2, mask="off")])
    with sv.apply(model, method, span=sv.VideoSpan(2, 4, 8)) as h, torch.no_grad():
        model(input_ids=torch.randint(3, 100, (1, 40)))
    assert h.last_stats.stages[1].costs.scoring_flops == 0 and h.last_stats.stages[1].costs.reference_flops == 0
    # the same schedule with a stage that does select pays its scoring
    paid = method_flops_for(shape, [(0, 0.5), (2, 0.25)], scoring=[False, True], reference_pass=[False, True])
    assert paid["scoring"] == scoring_flops(shape, 150, 1)["total"] and paid["reference"] > 0
