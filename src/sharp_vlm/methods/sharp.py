"""ShaRP: shallow-layer pruning with segment-aware masking, positional debiasing and token deduplication.

Reconstructed from the paper's abstract and summaries (arXiv 2512.05385); its equations and hyperparameters are
not public. The defaults were chosen by measurement (docs/method.md says which and why). Options that were
measured and not adopted live in `methods/experimental` (`ShaRPLab`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..checks import check_bool, check_choice, check_int, check_number
from ..core.context import context_key
from ..core.dedup import center, dedup_select
from ..core.scoring import subtract_bias
from ..core.selection import DedupCounts, Selection
from ..errors import ConfigError
from .base import SampleView, SegmentMask, StageMethod, register

_LAB = "sharp_vlm.methods.experimental.ShaRPLab (method name 'sharp_lab')"
_CACHE = "sv.apply(model, cfg, bias_cache=sv.BiasCache(size, directory))"


@register("sharp")
@dataclass
class ShaRP(StageMethod):
    """ShaRP at decoder layer `layer`, keeping `retain` of the visual tokens.

    C1 mask / segment_frames: segment-aware attention in layers 0..K-1 and in the scoring step. A segment is a
        frame (Qwen's temporal patch of 2 frames), or `segment_frames` consecutive ones. "bidirectional": a visual
        token sees its whole segment and causally what comes before it; "local": only its segment and the prefix
        before the video; "off": the model's causal mask.
    C2 debias / lam: subtract lam x the scores of a content-free reference pass (black frames at the same layout
        and positions, layers 0..K-1 once more), both renormalised over the visual tokens ("reference"), or not
        ("off"). To pay the reference pass once per layout and prompt, apply with a bias cache: `sv.apply(model,
        cfg, bias_cache=sv.BiasCache())`.
    C3 dedup / dedup_tau / max_registers: walk the tokens by debiased score, skip one whose cosine to a kept token
        exceeds tau, keep at most `max_registers` norm-outlier (register) tokens. The cosine compares the states
        minus their mean over the sample's visual tokens: the states share a large common component under which
        unrelated tokens reach cosine > 0.9.
    fill: when the walk runs out of distinct tokens, the rest of the budget goes to the grid neighbours (same
        frame, the 8 cells around) of the walked tokens, the best walked tokens' first, then by score
        ("context"), or by score alone ("score"). A kept token keeps what it depends on (a caption's key beside
        its value; the patches around an object's peak).
    query: the rows that score: "text" (the mean over the text after the video: the question and the answer
        prompt) or "last" (the last prompt token only, as FastV).
    """

    retain: float = 0.1
    layer: int = 2
    segment_frames: int = 1
    mask: str = "bidirectional"
    debias: str = "reference"
    lam: float = 1.0
    dedup: bool = True
    dedup_tau: float = 0.95
    max_registers: int = 1
    fill: str = "context"
    query: str = "text"

    choices: ClassVar[dict[str, tuple[str, ...]]] = {
        "mask": ("bidirectional", "local", "off"), "debias": ("reference", "off"), "fill": ("context", "score")}
    # values measured and not adopted: ShaRPLab takes them
    lab_values: ClassVar[dict[str, tuple[str, ...]]] = {
        "debias": ("frame", "pre_rope", "rope_only"), "fill": ("frame", "distinct")}
    # options measured and not adopted, and the deployment choices that were options once: where each went
    moved_options: ClassVar[dict[str, str]] = {
        **{name: _LAB for name in ("mask_scope", "combine", "dedup_window", "dedup_features", "context_radius",
                                   "context_share")},
        "cache_size": _CACHE,
        "cache_dir": _CACHE,
    }

    @property
    def reference_pass(self) -> bool:  # type: ignore[override]
        return self.uses_reference and self.retain < 1.0  # retain=1.0 keeps all without selecting

    @property
    def uses_reference(self) -> bool:
        return self.debias == "reference"

    def validate(self) -> None:
        super().validate()
        if self.debias == "cached":
            raise ConfigError(f"debias='cached' is not a method option: use debias='reference' and {_CACHE}")
        for what, choices in self.choices.items():
            value = getattr(self, what)
            if isinstance(value, str) and value in self.lab_values.get(what, ()):
                raise ConfigError(f"{what}={value!r} is experimental: use {_LAB}")
            check_choice(value, choices, what)
        check_choice(self.query, ("last", "text"), "query")
        check_int(self.segment_frames, "segment_frames", 1)
        check_number(self.lam, "lam", 0.0)
        check_bool(self.dedup, "dedup")
        check_number(self.dedup_tau, "dedup_tau", 0.0, 1.0, low_open=True)
        check_int(self.max_registers, "max_registers", 0)

    def _mask(self) -> SegmentMask | None:
        return None if self.mask == "off" else SegmentMask(self.mask, "forward", self.segment_frames)

    def segment_mask(self) -> SegmentMask | None:
        # retain=1.0 turns pruning off entirely, so the shallow layers keep the model's own causal mask
        mask = self._mask()
        return None if mask is None or mask.scope != "forward" or self.retain >= 1.0 else mask

    def select(self, view: SampleView) -> Selection:
        scores = self.scores(view)  # C1 (through the mask) and C2
        if not self.dedup:
            return Selection(view.top(scores), scores=scores)
        return self.deduplicate(view, scores)  # C3 and the fill

    def scores(self, view: SampleView) -> torch.Tensor:
        """(N,) the ranking: attention under the segment mask, minus lam x the reference pass's (debias)."""
        mask = self._mask()
        scores = view.attention_scores(query=self.query, mask=mask)
        if self.debias == "reference":
            scores = subtract_bias(scores, view.reference_scores(query=self.query, mask=mask), self.lam)
        return scores

    def deduplicate(self, view: SampleView, scores: torch.Tensor) -> Selection:
        """The walk by score over the centred states, then the fill."""
        lay = view.layout
        fill_key = None
        if self.fill == "context":
            def fill_key(anchors: torch.Tensor) -> torch.Tensor:
                return context_key(anchors, lay.frame_ids, lay.rows, lay.cols)

        res = dedup_select(scores, center(view.hidden), view.budget, self.dedup_tau, self.max_registers,
                           candidates=view.n_visual, fill_key=fill_key)
        counts = DedupCounts(res.n_skipped_similar, res.n_filled, int(res.registers.numel()))
        return Selection(res.keep.to(view.device), scores=scores, dedup=counts)
