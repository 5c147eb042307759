"""ShaRP: shallow-layer pruning with segment-aware masking, positional debiasing and token deduplication.

Reconstructed from the paper's abstract and summaries (arXiv 2512.05385); its equations and hyperparameters
are not public. Every choice the paper leaves open is an option here; see docs/method.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ..config import (
    ConfigError,
    SegmentMask,
    StageMethod,
    check_bool,
    check_choice,
    check_int,
    check_number,
    register,
)
from ..core.context import context_key, frame_key
from ..core.debias import subtract_frame_median
from ..core.dedup import center, dedup_select, distinct_key, with_neighbors
from ..core.scoring import renormalize
from ..core.selection import DedupCounts, Selection
from ..engine.view import SampleView

MASKS = ("bidirectional", "local", "off")
SCOPES = ("forward", "score")
DEBIAS = ("reference", "cached", "frame", "pre_rope", "rope_only", "off")
COMBINE = ("subtract", "ratio")
DEDUP_FEATURES = ("hidden", "centered", "neighbors")
FILLS = ("score", "context", "frame", "distinct")


@register("sharp")
@dataclass
class ShaRP(StageMethod):
    """ShaRP at decoder layer `layer`, keeping `retain` of the visual tokens.

    C1 mask / mask_scope / segment_frames: segment-aware attention among each segment's tokens (a frame, or
        Qwen's temporal patch; `segment_frames` groups k of them), in layers 0..K-1 and the scoring step
        ("forward") or only in scoring ("score").
    C2 debias / lam / combine: subtract lam x the scores of a content-free reference ("reference": per request;
        "cached": reused per layout and prompt length), subtract lam x each frame's median score ("frame": no
        reference pass; every frame's typical token scores 0, so neither end of the video is over-corrected; a
        frame is the layout's frame, Qwen's temporal patch of 2 frames),
        score without RoPE ("pre_rope"), or divide by a RoPE-only prior ("rope_only"). combine="ratio" uses
        log s - lam x log b instead of s - lam x b (both renormalised over the visual tokens): attention relative
        to what the position alone would get; it applies to "reference" and "cached" only.
    C3 dedup / dedup_tau / max_registers: greedy walk by score that skips tokens with cosine > tau to a kept one
        and keeps at most `max_registers` norm-outlier (register) tokens. The walk covers all visual tokens
        (`dedup_window=None`) or only the top `dedup_window` by score: a needle ranked below the window is then
        reachable only by the fill step, which takes the best remaining scores. `dedup_features="centered"`
        compares the states minus their mean over the sample's visual tokens: the states share a large common
        component (massive-activation dimensions), under which unrelated tokens reach cosine > 0.9.
        `dedup_features="neighbors"` also compares the centred states' grid neighbours (the cosine is the mean
        of the token's and its surroundings'): at a shallow layer a state is mostly its own token, so the same
        token in another place (a digit in a frame header and in a tally) is a duplicate otherwise.
    fill / context_radius / context_share: when the walk runs out of distinct tokens, the rest of the budget goes
        to the grid neighbours (same frame, Chebyshev distance <= `context_radius`) of the walked tokens, the best
        walked tokens' neighbours first, and then by score ("context"), or by score alone ("score"); "frame"
        goes on from the neighbours to the rest of the walked tokens' frames, whole, the best token's frame first,
        and only then by score, so a larger budget adds whole frames rather than fragments; "distinct" goes on
        from the neighbours to a second walk from the walked tokens by score that compares neighbour features
        (as `dedup_features="neighbors"`; the same token in another place counts as new), and then by score.
        A kept token keeps what it depends on (a caption's key beside its value; the patches around an object's peak).
        `context_share` > 0 stops the walk early to reserve that share of the budget for context.
    query: the rows that score, "text" (default: the mean over the text after the video, the question and the
        answer prompt) or "last" (the last prompt token only, as FastV). One token's attention at a shallow layer
        follows the words it happens to be; the whole question names what to look for.
    """

    retain: float = 0.1
    layer: int = 2
    segment_frames: int = 1
    mask: str = "bidirectional"
    mask_scope: str = "forward"
    debias: str = "reference"
    lam: float = 1.0
    combine: str = "subtract"
    dedup: bool = True
    dedup_tau: float = 0.95
    max_registers: int = 1
    dedup_window: int | None = None
    dedup_features: str = "centered"
    fill: str = "context"
    context_radius: int = 1
    context_share: float = 0.0
    query: str = "text"
    cache_size: int = 64
    cache_dir: str | None = None

    @property
    def reference_pass(self) -> bool:  # type: ignore[override]
        return self.debias == "reference" and self.retain < 1.0  # retain=1.0 keeps all without selecting

    @property
    def uses_reference(self) -> bool:
        return self.debias in ("reference", "cached")

    def validate(self) -> None:
        super().validate()
        check_choice(self.mask, MASKS, "mask")
        check_choice(self.mask_scope, SCOPES, "mask_scope")
        check_choice(self.debias, DEBIAS, "debias")
        check_choice(self.query, ("last", "text"), "query")
        check_choice(self.combine, COMBINE, "combine")
        if self.combine != "subtract" and self.debias not in ("reference", "cached"):
            raise ConfigError(f"combine={self.combine!r} combines with a reference bias: use debias='reference' or "
                              f"'cached' (debias={self.debias!r} has its own rule)")
        check_choice(self.dedup_features, DEDUP_FEATURES, "dedup_features")
        check_choice(self.fill, FILLS, "fill")
        check_int(self.context_radius, "context_radius", 1)
        check_number(self.context_share, "context_share", 0.0, 0.9)
        if self.context_share > 0 and self.fill == "score":
            raise ConfigError(f"context_share={self.context_share} reserves budget for context: set fill='context', "
                              f"'frame' or 'distinct'")
        check_int(self.segment_frames, "segment_frames", 1)
        check_number(self.dedup_tau, "dedup_tau", 0.0, 1.0, low_open=True)
        check_int(self.max_registers, "max_registers", 0)
        check_number(self.lam, "lam", 0.0)
        check_bool(self.dedup, "dedup")
        if self.dedup_window is not None:
            check_int(self.dedup_window, "dedup_window (None: all tokens)", 1)
        check_int(self.cache_size, "cache_size", 1)
        if self.cache_dir is not None and not isinstance(self.cache_dir, (str, os.PathLike)):
            raise ConfigError(f"cache_dir={self.cache_dir!r} must be a directory path or None")

    def _mask(self) -> SegmentMask | None:
        if self.mask == "off":
            return None
        return SegmentMask(self.mask, self.mask_scope, self.segment_frames)

    def segment_mask(self) -> SegmentMask | None:
        # retain=1.0 turns pruning off entirely, so the shallow layers keep the model's own causal mask
        mask = self._mask()
        if mask is None or mask.scope != "forward" or self.retain >= 1.0:
            return None
        return mask

    def select(self, view: SampleView) -> Selection:
        mask = self._mask()
        rope = self.debias != "pre_rope"
        scores = view.attention_scores(query=self.query, mask=mask, rope=rope)
        if self.debias in ("reference", "cached"):
            cache = (self.cache_size, self.cache_dir) if self.debias == "cached" else None
            bias = view.reference_scores(query=self.query, mask=mask, rope=rope, cache=cache)
            scores = _combine(scores, bias, self.lam, self.combine)
        elif self.debias == "frame":
            scores = subtract_frame_median(scores, view.layout.frame_ids, self.lam)
        elif self.debias == "rope_only":
            prior = view.positional_prior(query=self.query, mask=mask)
            scores = _combine(scores, prior, 1.0, "ratio")
        if not self.dedup:
            return Selection(view.top(scores), scores=scores)
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


def _combine(scores: torch.Tensor, bias: torch.Tensor, lam: float, how: str) -> torch.Tensor:
    s, b = renormalize(scores.float()), renormalize(bias.float())
    if how == "subtract":
        return s - lam * b
    tiny = torch.finfo(torch.float32).tiny
    return torch.log(s.clamp_min(tiny)) - lam * torch.log(b.clamp_min(tiny))
