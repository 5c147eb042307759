"""Pure tensor rules that only `ShaRPLab`'s options use (no transformers import, tested on random tensors).

- `with_neighbors`: features for `dedup_features="neighbors"` and the second walk of `fill="distinct"`.
- `distinct_key`: the second walk of `fill="distinct"`.
- `frame_key`: `fill="frame"`.
- `frame_medians`, `subtract_frame_median`: `debias="frame"`, positional debiasing from the sample itself: each
  frame's typical score is its positional share.

  Attention from the query rows falls off with distance (RoPE's long-term decay and the recency of causal
  attention), so a frame's tokens share a baseline that depends on where the frame sits, not on what it shows.
  The median score of a frame estimates that baseline from the frame's own tokens (most of a frame is not what the
  question asks about); subtracting it leaves what a token draws beyond its frame's baseline. Unlike a content-free
  reference pass it costs nothing and cannot over- or under-correct one end of the video: the median of every frame
  becomes 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...core.context import context_key
from ...core.dedup import dedup_select
from ...core.scoring import renormalize


def with_neighbors(
    feats: torch.Tensor, frame_ids: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor
) -> torch.Tensor:
    """(N, 2D): each token's unit feature beside the unit mean of its grid neighbours (same frame, the 8 cells
    around it), scaled by the token's own norm (so norm-outlier registers stay outliers), in float32.

    The cosine of two such rows is the mean of the two cosines, so two tokens are near-duplicates only when they
    and their surroundings are: at a shallow layer a state is mostly its own token (patch), and the same token
    in another place (a digit of a frame header, the same digit in a tally) is not the same content. A token
    without neighbours, or whose neighbours cancel out, stands in for its own surroundings. Memory is O(N x D):
    the neighbours are gathered through a grid of token indices, not a grid of features.
    """
    n = feats.shape[0]
    u = F.normalize(feats.float(), dim=-1)
    around = torch.zeros_like(u)
    if n:
        f, r, c = (t.to(u.device).long() for t in (frame_ids, rows, cols))
        h, w = int(r.max()) + 1, int(c.max()) + 1
        # empty cells (and a border around every frame) point at an extra zero row
        index = torch.full((int(f.max()) + 1, h + 2, w + 2), n, dtype=torch.long, device=u.device)
        index[f, r + 1, c + 1] = torch.arange(n, device=u.device)
        padded = torch.cat([u, u.new_zeros(1, u.shape[1])])
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                if dr or dc:
                    around += padded[index[f, r + 1 + dr, c + 1 + dc]]
    norm = around.norm(dim=-1, keepdim=True)
    around = torch.where(norm > 1e-6, around / norm.clamp_min(1e-6), u)
    return torch.cat([u, around], dim=-1) * feats.float().norm(dim=-1, keepdim=True)


def distinct_key(
    anchors: torch.Tensor, scores: torch.Tensor, feats: torch.Tensor, budget: int, tau: float
) -> torch.Tensor:
    """(N,) float key: 1 for the tokens a second walk keeps, 0 elsewhere (and on the anchors).

    The second walk starts from the ``anchors`` (kept first, in their order) and goes on by score over ``feats``,
    e.g. :func:`with_neighbors` features, on which fewer tokens are duplicates than in the first walk; it stops
    after ``budget`` tokens, so it costs about N x budget similarities.
    """
    n = scores.numel()
    key = torch.zeros(n, dtype=torch.float32, device=scores.device)
    if n == 0 or anchors.numel() == 0:
        return key
    s = scores.float().clone()
    s = torch.where(torch.isnan(s), torch.full_like(s, float("-inf")), s)
    ai = anchors.to(s.device).long()
    top = s[torch.isfinite(s)].max() if torch.isfinite(s).any() else s.new_zeros(())
    s[ai] = top + 1 + torch.arange(ai.numel(), 0, -1, dtype=torch.float32, device=s.device)
    res = dedup_select(s, feats, budget, tau, max_registers=n, candidates=n)
    walked = res.keep[~torch.isin(res.keep, res.filled)]
    key[walked] = 1.0
    key[ai] = 0.0
    return key


def frame_key(
    anchors: torch.Tensor,
    frame_ids: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    radius: int = 1,
) -> torch.Tensor:
    """(N,) float key: :func:`context_key`'s rings first, then the rest of the anchors' frames, best anchor's first.

    A token outside every ring gets ``A - i``, where ``i`` is the rank of the best anchor in its frame (``A``
    anchors); the ring keys are all above ``A``, so every ring comes before any frame. Tokens of frames without an
    anchor, and the anchors themselves, get 0.
    """
    key = context_key(anchors, frame_ids, rows, cols, radius)
    a = anchors.numel()
    if frame_ids.numel() == 0 or a == 0:
        return key
    f = frame_ids.long()
    ai = anchors.to(f.device).long()
    best = torch.zeros(int(f.max()) + 1, dtype=torch.float32, device=f.device)
    best.scatter_reduce_(0, f[ai], torch.arange(a, 0, -1, dtype=torch.float32, device=f.device), reduce="amax")
    frame = best[f]
    frame[ai] = 0.0
    return torch.where(key > 0, key, frame)


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
