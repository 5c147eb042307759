"""Positional debiasing from the sample itself: each frame's typical score is its positional share.

Attention from the query rows falls off with distance (RoPE's long-term decay and the recency of causal
attention), so a frame's tokens share a baseline that depends on where the frame sits, not on what it shows.
The median score of a frame estimates that baseline from the frame's own tokens (most of a frame is not what the
question asks about); subtracting it leaves what a token draws beyond its frame's baseline. Unlike a content-free
reference pass it costs nothing and cannot over- or under-correct one end of the video: the median of every frame
becomes 0.
"""

from __future__ import annotations

import torch

from .scoring import renormalize


def frame_medians(scores: torch.Tensor, frame_ids: torch.Tensor) -> torch.Tensor:
    """(N,) float32: the median score of each token's frame (the lower median for an even count, as torch)."""
    if scores.shape != frame_ids.shape or scores.dim() != 1:
        raise ValueError(f"scores and frame_ids must both be (N,), got {tuple(scores.shape)} and "
                         f"{tuple(frame_ids.shape)}")
    n = scores.numel()
    if n == 0:
        return scores.float()
    s, f = scores.float(), frame_ids.long().to(scores.device)
    if int(f.min()) < 0:
        raise ValueError(f"frame_ids must be >= 0, got {int(f.min())}")
    # sort by frame, then by score inside the frame: each frame is one contiguous run
    by_score = torch.argsort(s, stable=True)
    order = by_score[torch.argsort(f[by_score], stable=True)]
    frames, counts = torch.unique_consecutive(f[order], return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    med = s[order[starts + (counts - 1) // 2]]
    per_frame = torch.zeros(int(f.max()) + 1, dtype=torch.float32, device=s.device)
    per_frame[frames] = med
    return per_frame[f]


def subtract_frame_median(scores: torch.Tensor, frame_ids: torch.Tensor, lam: float = 1.0) -> torch.Tensor:
    """``scores - lam * frame_medians(scores)``, with the scores first renormalised to sum to one."""
    s = renormalize(scores.float())
    return s - lam * frame_medians(s, frame_ids)
