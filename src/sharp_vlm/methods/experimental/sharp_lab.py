"""`ShaRPLab`: ShaRP with every option that was measured and not adopted (docs/method.md, "ShaRPLab: measured,
not adopted")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ...checks import check_choice, check_int, check_number
from ...core.context import context_key
from ...core.dedup import center, dedup_select
from ...core.scoring import renormalize
from ...core.selection import DedupCounts, Selection
from ...errors import ConfigError
from ..base import SampleView, SegmentMask, register
from ..sharp import ShaRP
from .rules import distinct_key, frame_key, subtract_frame_median, with_neighbors


@register("sharp_lab")
@dataclass
class ShaRPLab(ShaRP):
    """ShaRP (same defaults, same results) plus the options that lost a measurement.

    mask_scope: "forward" (ShaRP's), or "score": the segment mask in the scoring step only.
    debias: also "frame" (subtract lam x each frame's median score: no reference pass), "pre_rope" (score q.k
        without the rotary embedding), "rope_only" (divide by the scores of content-free queries and keys at the
        real positions). combine="ratio": log s - lam x log b instead of s - lam x b (with debias="reference").
    dedup_window: walk only the top `dedup_window` tokens by score (None: all); the rest is reachable by the fill.
    dedup_features: "centered" (ShaRP's), "hidden" (the raw states) or "neighbors" (each centred state beside the
        mean of its grid neighbours: the same token in another place is then not a duplicate).
    fill: also "frame" (after the neighbours, the rest of the walked tokens' frames, whole, the best token's frame
        first) and "distinct" (after the neighbours, a second walk from the walked tokens on neighbour features).
    context_radius: the neighbours' Chebyshev radius. context_share > 0: stop the walk early to leave that share
        of the budget to the fill.
    """

    mask_scope: str = "forward"
    combine: str = "subtract"
    dedup_window: int | None = None
    dedup_features: str = "centered"
    context_radius: int = 1
    context_share: float = 0.0

    choices: ClassVar[dict[str, tuple[str, ...]]] = {
        what: values + ShaRP.lab_values.get(what, ()) for what, values in ShaRP.choices.items()}
    lab_values: ClassVar[dict[str, tuple[str, ...]]] = {}
    moved_options: ClassVar[dict[str, str]] = {
        k: v for k, v in ShaRP.moved_options.items() if k in ("cache_size", "cache_dir")}

    def validate(self) -> None:
        super().validate()
        check_choice(self.mask_scope, ("forward", "score"), "mask_scope")
        check_choice(self.combine, ("subtract", "ratio"), "combine")
        if self.combine != "subtract" and self.debias != "reference":
            raise ConfigError(f"combine={self.combine!r} combines with a reference bias: use debias='reference' "
                              f"(debias={self.debias!r} has its own rule)")
        check_choice(self.dedup_features, ("hidden", "centered", "neighbors"), "dedup_features")
        check_int(self.context_radius, "context_radius", 1)
        check_number(self.context_share, "context_share", 0.0, 0.9)
        if self.context_share > 0 and self.fill == "score":
            raise ConfigError(f"context_share={self.context_share} reserves budget for context: set fill='context', "
                              f"'frame' or 'distinct'")
        if self.dedup_window is not None:
            check_int(self.dedup_window, "dedup_window (None: all tokens)", 1)

    def _mask(self) -> SegmentMask | None:
        return None if self.mask == "off" else SegmentMask(self.mask, self.mask_scope, self.segment_frames)

    def scores(self, view: SampleView) -> torch.Tensor:
        if self.debias == "reference" and self.combine == "subtract":
            return super().scores(view)
        mask = self._mask()
        scores = view.attention_scores(query=self.query, mask=mask, rope=self.debias != "pre_rope")
        if self.debias == "reference":
            return _ratio(scores, view.reference_scores(query=self.query, mask=mask), self.lam)
        if self.debias == "frame":
            return subtract_frame_median(scores, view.layout.frame_ids, self.lam)
        if self.debias == "rope_only":
            return _ratio(scores, view.positional_prior(query=self.query, mask=mask), 1.0)
        return scores

    def deduplicate(self, view: SampleView, scores: torch.Tensor) -> Selection:
        lay = view.layout
        centred = None if self.dedup_features == "hidden" else center(view.hidden)
        feats = view.hidden if centred is None else centred
        if self.dedup_features == "neighbors":
            feats = with_neighbors(centred, lay.frame_ids, lay.rows, lay.cols)
        fill_key = None
        if self.fill != "score":
            key = frame_key if self.fill == "frame" else context_key

            def fill_key(anchors: torch.Tensor) -> torch.Tensor:
                ring = key(anchors, lay.frame_ids, lay.rows, lay.cols, self.context_radius)
                if self.fill != "distinct":
                    return ring
                # ring keys are > number of anchors >= 1, so every ring comes before the second walk's tokens
                near = feats if self.dedup_features == "neighbors" else with_neighbors(
                    center(view.hidden) if centred is None else centred, lay.frame_ids, lay.rows, lay.cols)
                # room for the rings' tokens, which the second walk may also visit, and the whole fill
                room = view.budget + int((ring > 0).sum())
                second = distinct_key(anchors, scores, near, room, self.dedup_tau)
                return torch.where(ring > 0, ring, second.to(ring.device))
        res = dedup_select(scores, feats, view.budget, self.dedup_tau, self.max_registers,
                           candidates=self.dedup_window or view.n_visual, fill_key=fill_key,
                           fill_share=self.context_share)
        counts = DedupCounts(res.n_skipped_similar, res.n_filled, int(res.registers.numel()))
        return Selection(res.keep.to(view.device), scores=scores, dedup=counts)


def _ratio(scores: torch.Tensor, bias: torch.Tensor, lam: float) -> torch.Tensor:
    """log s - lam x log b, both renormalised over the visual tokens: attention relative to the position's own."""
    s, b = renormalize(scores.float()), renormalize(bias.float())
    tiny = torch.finfo(torch.float32).tiny
    return torch.log(s.clamp_min(tiny)) - lam * torch.log(b.clamp_min(tiny))
