"""Running one stage: budget, per-sample selection, checks, merge and gather, timing and stats.

A method only answers `select(view)` for one sample; everything else of a stage happens here, the same way
for every method.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager

import torch

from ..core.budget import keep_count
from ..core.selection import Selection, check_selection
from ..core.tower import TowerFeatures
from ..errors import ConfigError
from ..flops import DecoderShape, prefill_flops, scoring_flops
from ..methods.base import SampleView, SegmentMask, Stage
from ..models.base import Adapter, ReferenceFn
from .bias_cache import BiasCache
from .prefill import Prefill, sync
from .reference import bias_keys, reference_hidden, reference_input, weights_fingerprint
from .rows import take
from .scoring import query_probs, visual_scores
from .stats import SampleRecord, StageCosts, StageStats


class StageScorer:
    """Scores of one stage for the whole batch, computed once per option set and timed into `costs`."""

    def __init__(
        self,
        stage: Stage,
        hidden: torch.Tensor,
        pre: Prefill,
        adapter: Adapter,
        shape: DecoderShape,
        costs: StageCosts,
        reference_fn: ReferenceFn | None,
        bypass_hooks: Callable[[], AbstractContextManager],
        bias_cache: BiasCache | None = None,
    ):
        self.stage, self.hidden, self.pre, self.adapter = stage, hidden, pre, adapter
        self.shape, self.costs = shape, costs
        self.reference_fn, self.bypass_hooks = reference_fn, bypass_hooks
        self.bias_cache = bias_cache
        self.layouts = pre.current_layouts()
        self._memo: dict[tuple, torch.Tensor] = {}

    def _check_layer(self) -> None:
        if self.stage.layer == 0:
            raise ConfigError(
                f"{self.stage.label} scores by attention and cannot run at layer 0 (before the decoder); "
                "use layer >= 1"
            )

    def _flops(self, query: str, dense_layers: int = 0) -> list[int]:
        """Per sample, a side pass's FLOPs over its own rows (a batch's padding is not counted) and query rows;
        with `dense_layers`, a reference pass's: those layers dense on its rows, then the side pass."""
        rows = self.pre.rows
        lengths = rows.valid().sum(dim=1).tolist()
        queries = rows.query_rows(query, self.pre.full_layouts)
        return [scoring_flops(self.shape, int(n), int(q.numel()))["total"]
                + sum(prefill_flops(self.shape, int(n))["layers"][:dense_layers])
                for n, q in zip(lengths, queries, strict=True)]

    def _scores(self, hidden: torch.Tensor, query: str, mask: SegmentMask | None, rope: bool,
                content_free: bool, layer: int | None = None) -> torch.Tensor:
        parts = self.adapter.attention_parts(self.stage.layer if layer is None else layer)
        probs = query_probs(parts, hidden, self.pre.pos_emb_cur, self.pre.rows, self.pre.layouts, query, rope, mask,
                            content_free, self.pre.full_layouts)
        out = visual_scores(probs, self.pre.rows)
        sync(out)
        return out

    def attention(self, query: str, mask: SegmentMask | None, rope: bool, content_free: bool,
                  previous: bool = False) -> torch.Tensor:
        self._check_layer()
        key = ("input", query, mask, rope, content_free, previous)
        if key not in self._memo:
            t = time.perf_counter()
            if previous:
                if self.pre.previous_hidden is None:
                    raise ConfigError(f"{self.stage.label} asks for layer K-1's attention but does not say "
                                      "scores_previous_layer, so the engine did not keep that layer's input")
                # layer K-1 saw the same rows as layer K (no stage runs between them)
                scores = self._scores(self.pre.previous_hidden, query, mask, rope, content_free, self.stage.layer - 1)
            else:
                scores = self._scores(self.hidden, query, mask, rope, content_free)
            self._memo[key] = scores
            self.costs.scoring_seconds += time.perf_counter() - t
            self.costs.add_flops(self._flops(query), reference=False)
        return self._memo[key]

    def vision(self, index: int) -> TowerFeatures:
        if self.pre.tower is None:
            raise ConfigError(f"{self.stage.label} asks for the vision tower's attention but does not say "
                              "reads_vision, so the engine did not capture it")
        return self.pre.vision(index)

    def reference(self, query: str, mask: SegmentMask | None, rope: bool) -> torch.Tensor:
        self._check_layer()
        key = ("reference", query, mask, rope)
        if key in self._memo:
            return self._memo[key]
        t = time.perf_counter()
        layer = self.stage.layer
        ref = reference_input(self.adapter, self.pre, layer, self.reference_fn)
        store, ckeys = self.bias_cache, []
        if store is not None:
            weights = weights_fingerprint(self.adapter.layers()[: layer + 1])
            ckeys = bias_keys(weights, layer, query, rope, mask, self.pre, ref)
            n = self.pre.rows.n_visual
            hits = [store.get(k, (n[b],)) for b, k in enumerate(ckeys)]
            self.costs.bias_cache = "hit" if all(h is not None for h in hits) else "miss"
            if self.costs.bias_cache == "hit":  # every sample's bias is known: no reference pass
                out = hits[0].new_zeros(self.pre.batch, max(n, default=0)).to(self.hidden.device)
                for b, h in enumerate(hits):
                    out[b, : n[b]] = h.to(out.device)
                self._memo[key] = out
                self.costs.reference_seconds += time.perf_counter() - t
                return out
        ref_hidden = reference_hidden(self.adapter, self.pre, layer, ref, self.bypass_hooks)
        out = self._scores(ref_hidden, query, mask, rope, False)
        for b, k in enumerate(ckeys):
            store.put(k, out[b, : self.pre.rows.n_visual[b]])
        self.costs.reference_seconds += time.perf_counter() - t
        self.costs.add_flops(self._flops(query, dense_layers=layer), reference=True)
        self._memo[key] = out
        return out


def select_all(stage: Stage, hidden: torch.Tensor, pre: Prefill, scorer: StageScorer, costs: StageCosts,
               ) -> tuple[list[Selection], list[SampleRecord]]:
    """The method's answer for every sample, checked against the engine's budget."""
    rows = pre.rows
    layouts = scorer.layouts
    selections, records = [], []
    t0 = time.perf_counter()
    for b in range(pre.batch):
        n0, n = pre.stats.n_visual[b], rows.n_visual[b]
        budget = keep_count(stage.retain, n0, n)
        record = SampleRecord()
        if budget == n:  # everything stays: nothing to choose (retain=1.0 is exactly the unpatched model)
            sel = Selection(torch.arange(n, device=hidden.device))
        else:
            view = SampleView(stage.layer, b, budget, layouts[b], hidden, rows.visual_rows[b], n0, scorer)
            answer = stage.method.select(view)
            record.raw_scores, record.bias = view.raw_scores, view.bias
            sel = answer if isinstance(answer, Selection) else Selection(answer)
            check_selection(sel, n, budget, stage.label, b)
        record.scores, record.dedup = sel.scores, sel.dedup
        selections.append(sel)
        records.append(record)
    sync(hidden)
    costs.select_seconds = time.perf_counter() - t0 - costs.scoring_seconds - costs.reference_seconds
    return selections, records


def run_stage(stage: Stage, hidden: torch.Tensor, pre: Prefill, scorer: StageScorer, costs: StageCosts,
              started: float) -> torch.Tensor:
    """Select, merge and gather at `stage`; updates `pre` and its stats; returns the hidden states of the kept rows."""
    n_in = pre.rows.n_visual
    selections, records = select_all(stage, hidden, pre, scorer, costs)
    op = pre.rows.apply(selections, hidden.device)
    hidden = op.run(hidden)
    pre.pos_emb_cur = tuple(take(t, pre.rows.rows) for t in pre.pos_emb)
    if stage.layer == 0:
        pre.ops_before_decoder.append(op)
    pre.stages_done += 1
    sync(hidden)
    pre.stats.stages.append(
        StageStats(
            layer=stage.layer,
            label=stage.label,
            n_in=n_in,
            n_kept=[int(s.keep.numel()) for s in selections],
            kept=[o.clone() for o in pre.rows.visual_orig],
            kept_positions=[lay.positions[o] for lay, o in zip(pre.layouts, pre.rows.visual_orig, strict=True)],
            seconds=time.perf_counter() - started,
            costs=costs,
            samples=records,
            n_merged=[0 if s.merge is None else int(s.merge.source.numel()) for s in selections],
        )
    )
    return hidden

