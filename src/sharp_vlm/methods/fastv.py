"""FastV (Chen et al., "An Image is Worth 1/2 Tokens After Layer 2", ECCV 2024).

Authors' code read: github.com/pkunlp-icler/FastV at d1659729 (modeling_llama.py of the in-place variant and of
the llava-hf port, the eval scripts). What it does there: at decoder layer K the visual tokens are ranked by the
attention that layer K-1 has just computed (the attention weights of the previous layer's forward), from the last
prompt token, averaged over heads; the top ones are kept with their original position ids; layers >= K see only
them.

Deviations, all stated:
- Count: the authors keep `round(N x (1 - R))` with R the pruned share (the llava-hf port; absolute counts in the
  scripts). Here `retain` goes through the library's one budget rule, `keep_count` (half-way rounded up, at least
  1), so every method is compared at the same kept count.
- Query: "last" is the authors' rule (the last prompt token); "text" (the mean over the text after the video) is
  an option of this library, not the authors'.
- `attention_layer="stage"` ranks with layer K's own attention over its input (the same rows, layer K's q/k)
  instead: the rule this library used before it followed the authors; kept as a named option for comparison.
- The authors compute the attention weights with eager attention; here they are recomputed beside the kernel
  from layer K-1's input with its own norm, q/k projections and rotary embedding (equal to the eager weights:
  tested against `output_attentions` on every family).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..checks import check_choice
from .base import SampleView, StageMethod, register


@register("fastv")
@dataclass
class FastV(StageMethod):
    """FastV: keep the visual tokens the last prompt token attended to most in layer K-1 (mean over heads), from
    layer K on.

    retain / layer: share of the visual tokens kept and the layer that first sees only them (the authors' video
    setting: K=2, half of the tokens pruned). query: "last" (the authors') or "text". attention_layer:
    "previous" (layer K-1's attention, the authors') or "stage" (layer K's own attention over its input).
    """

    retain: float = 0.5
    layer: int = 2
    query: str = "last"
    attention_layer: str = "previous"

    def validate(self) -> None:
        super().validate()
        check_choice(self.query, ("last", "text"), "query")
        check_choice(self.attention_layer, ("previous", "stage"), "attention_layer")

    @property
    def scores_previous_layer(self) -> bool:  # type: ignore[override]
        return self.attention_layer == "previous"

    def select(self, view: SampleView) -> torch.Tensor:
        return view.top(view.attention_scores(query=self.query, layer=self.attention_layer))
