"""The read-only view a stage method gets of one sample at its stage."""

from __future__ import annotations

from typing import Protocol

import torch

from ..config import SegmentMask
from ..core.layout import VisualLayout
from ..core.select import top_indices
from .stats import SampleRecord


class ScoreSource(Protocol):
    """Batch-level scores of one stage, computed once per option set (engine.stage.StageScorer)."""

    def attention(self, query: str, mask: SegmentMask | None, rope: bool, content_free: bool) -> torch.Tensor: ...

    def reference(
        self, query: str, mask: SegmentMask | None, rope: bool, cache: tuple[int, str | None] | None
    ) -> torch.Tensor: ...


class SampleView:
    """What a stage method sees of sample `index`.

    layer: the stage's decoder layer (0 = before the decoder).
    budget: how many visual tokens to keep (the engine's rule, `core.budget.keep_count`).
    layout: the sample's surviving visual tokens (original positions, frame ids, grid coordinates).
    hidden: (N, D) their hidden states entering the layer (input embeddings at layer 0), gathered on first use.
    n_original: how many visual tokens the prompt had.
    """

    def __init__(
        self,
        layer: int,
        index: int,
        budget: int,
        layout: VisualLayout,
        batch_hidden: torch.Tensor,
        visual_rows: torch.Tensor,
        n_original: int,
        scores: ScoreSource,
        record: SampleRecord,
    ):
        self.layer = layer
        self.index = index
        self.budget = budget
        self.layout = layout
        self.n_original = n_original
        self._batch_hidden = batch_hidden
        self._visual_rows = visual_rows
        self._hidden: torch.Tensor | None = None
        self._scores = scores
        self._record = record

    @property
    def hidden(self) -> torch.Tensor:
        if self._hidden is None:
            self._hidden = self._batch_hidden[self.index, self._visual_rows]
        return self._hidden

    @property
    def device(self) -> torch.device:
        return self._batch_hidden.device

    @property
    def n_visual(self) -> int:
        return int(self._visual_rows.numel())

    def attention_scores(self, query: str = "last", mask: SegmentMask | None = None, rope: bool = True) -> torch.Tensor:
        """(N,) attention from the query rows to each visual token at this layer (mean over heads).

        query="last": the last prompt token; "text": mean over the text after the video. mask: score under a
        segment-aware mask. rope=False: q.k without the rotary embedding. Computed beside the attention kernel from
        the layer's own norm, q/k projections and rotary embedding.
        """
        out = self._scores.attention(query, mask, rope, False)[self.index]
        self._record.raw_scores = out
        return out

    def reference_scores(
        self,
        query: str = "last",
        mask: SegmentMask | None = None,
        rope: bool = True,
        cache: tuple[int, str | None] | None = None,
    ) -> torch.Tensor:
        """(N,) the same scores for the prompt with content-free (black) frames: the positional bias.

        Runs layers 0..K-1 once more on the reference input (~K/L of a dense prefill) unless `cache=(size,
        directory)` finds it cached for this model, layout and prompt length.
        """
        out = self._scores.reference(query, mask, rope, cache)[self.index]
        self._record.bias = out
        return out

    def positional_prior(self, query: str = "last", mask: SegmentMask | None = None) -> torch.Tensor:
        """(N,) scores from content-free queries and keys at the real positions (RoPE only)."""
        out = self._scores.attention(query, mask, True, True)[self.index]
        self._record.bias = out
        return out

    def top(self, scores: torch.Tensor, budget: int | None = None) -> torch.Tensor:
        """Indices of the `budget` (default: the stage's) highest scores, sorted."""
        return top_indices(scores, self.budget if budget is None else budget).to(self.device)
