"""The read-only view a selector gets of one stage."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..core.layout import VisualLayout
from ..core.select import top_indices


class StageView:
    """What a stage can see.

    hidden: (B, S_cur, D) hidden states entering the stage's layer (input embeddings at layer 0).
    layouts: per sample, the visual tokens still present (original positions, frame ids, grid coords).
    n_visual: per sample, how many visual tokens the stage sees; n_original: how many the prompt had.
    """

    def __init__(
        self,
        layer: int,
        hidden: torch.Tensor,
        visual_rows: list[torch.Tensor],
        layouts: list[VisualLayout],
        n_original: list[int],
        scorer: Callable[..., torch.Tensor],
        extras: dict | None = None,
    ):
        self.layer = layer
        self.hidden = hidden
        self.visual_rows = visual_rows
        self.layouts = layouts
        self.n_original = n_original
        self._scorer = scorer
        self.extras = extras if extras is not None else {}  # per-stage records a method wants in the stats

    @property
    def device(self) -> torch.device:
        return self.hidden.device

    @property
    def batch(self) -> int:
        return self.hidden.shape[0]

    @property
    def n_visual(self) -> list[int]:
        return [int(r.numel()) for r in self.visual_rows]

    def visual_hidden(self, b: int) -> torch.Tensor:
        """(N_b, D) hidden states of sample b's visual tokens."""
        return self.hidden[b, self.visual_rows[b]]

    def budget(self, retain: float) -> list[int]:
        """Tokens to keep per sample: round(retain x original count), at least 1, at most what is left."""
        return [max(1, min(n, math.floor(retain * n0 + 0.5))) for n, n0 in zip(self.n_visual, self.n_original, strict=True)]

    def attention_scores(self, query: str = "last", **options) -> torch.Tensor:
        """(B, N) attention from the query rows to each visual token at this layer (mean over heads).

        query="last": the last prompt token; "text": mean over the text after the video.
        Computed beside the model's attention kernel from the layer's own norm, q/k projections and RoPE.
        """
        return self._scorer(query=query, **options)

    def reference_scores(self, query: str = "last", **options) -> torch.Tensor:
        """(B, N) the same scores for the prompt with content-free (black) frames: the positional bias.

        Runs layers 0..K-1 once more on the reference input (cost ~K/L of a dense prefill) unless
        `cache=(size, directory)` finds it cached for this layout and prompt length.
        """
        return self._scorer(query=query, source="reference", **options)

    def positional_prior(self, query: str = "last", **options) -> torch.Tensor:
        """(B, N) scores from content-free queries and keys at the real positions (RoPE only)."""
        return self._scorer(query=query, content_free=True, **options)

    @staticmethod
    def top(scores: torch.Tensor, budgets: list[int]) -> list[torch.Tensor]:
        """Per sample, the indices of the `budget` highest scores, sorted."""
        return [top_indices(scores[b], r) for b, r in enumerate(budgets)]
