"""DivPrune (Alvar et al., "DivPrune: Diversity-based Visual Token Pruning for Large Multimodal Models", CVPR 2025).

Read from the authors' repository vbdi/divprune at commit 799e2d95 (`LLaVA/llava/model/llava_arch.py`,
`pairwise_cosine_similarity` and `DivPrune`; `run_Divprune.sh`).

The authors' rule: before the LLM, on the projector output at the visual rows, with distances ``1 - cosine`` of the
L2-normalised features, pick tokens greedily: the first is the token whose nearest neighbour is farthest, each later
one the token whose distance to the nearest already-picked token is largest (max-min diversity). Kept tokens are not
modified (no merge); the selection is global over all visual tokens, with no per-frame rule.

Deviations:
- count: the engine's one budget rule (`view.budget`: retain x original count, rounded half up, at least 1); the
  authors keep ``int(round(ratio x N))`` with Python's round (half to even) and no minimum.
- the first pick takes the nearest neighbour distance with each token's distance to itself set to +inf; the authors
  take the second smallest value of each column, which is the same unless rounding makes a token's distance to
  itself exceed its distance to an exact duplicate (then both are ~0 anyway).
- picked tokens are excluded from later picks explicitly; the authors rely on their zero distance to themselves, so
  with exact duplicates (every remaining distance 0) their loop can pick a token twice. Ties go to the lower index
  (`argmax`'s first maximum, as theirs).
- a zero feature vector normalises to zero (distance 1 to everything) instead of dividing by zero.
- video: the authors' code is image-only (LLaVA-1.5/1.6, batch 0, a fixed 35-token system prompt); here the tokens
  of every frame the stage prunes form one set, which is what their rule does on one long image sequence.
- positions: `positions="auto"` renumbers the kept tokens contiguously on 1-D rotary positions (as the authors'
  LLaVA) and keeps Qwen-VL's 3-D M-RoPE positions original (the authors have no Qwen code).

Cost: the (N, N) distance matrix, O(N^2) memory, as the authors'.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .base import PreLLMMethod, SampleView, register


def max_min_diverse(features: torch.Tensor, budget: int) -> torch.Tensor:
    """Indices (in pick order) of `budget` rows of `features` (N, D) chosen by greedy max-min on 1 - cosine."""
    n = features.shape[0]
    budget = max(0, min(budget, n))
    if budget == 0:
        return torch.zeros(0, dtype=torch.long, device=features.device)
    if n == 1:
        return torch.zeros(1, dtype=torch.long, device=features.device)
    f = F.normalize(features.float(), dim=-1)
    dist = 1.0 - f @ f.T
    dist.fill_diagonal_(float("inf"))
    picks = torch.empty(budget, dtype=torch.long, device=features.device)
    # first: the token whose nearest neighbour is farthest (the matrix is symmetric: rows or columns alike)
    picks[0] = torch.argmax(dist.min(dim=0).values)
    # each token's distance to the nearest picked token; picked tokens are -inf so they are never picked again
    nearest = dist[picks[0]].clone()
    nearest[picks[0]] = float("-inf")
    for i in range(1, budget):
        p = torch.argmax(nearest)
        picks[i] = p
        nearest = torch.minimum(nearest, dist[p])
        nearest[p] = float("-inf")
    return picks


@register("divprune")
@dataclass
class DivPrune(PreLLMMethod):
    """DivPrune: keep the max-min diverse subset of the visual tokens (greedy on 1 - cosine of their features).

    At layer 0 (the default) the features are the decoder's input embeddings at the visual rows (the projector
    output), as the authors'; at a later layer, the hidden states entering it. Text-agnostic; no attention pass.
    """

    retain: float = 0.1

    def select(self, view: SampleView) -> torch.Tensor:
        if view.budget >= view.n_visual:
            return torch.arange(view.n_visual, device=view.device)
        picks = max_min_diverse(view.hidden, view.budget)
        return torch.sort(picks).values.to(view.device)
