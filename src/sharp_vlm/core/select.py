"""Generic selection rules over per-sample visual scores. Every result is a sorted index tensor."""

from __future__ import annotations

import torch


def top_indices(scores: torch.Tensor, budget: int) -> torch.Tensor:
    """The `budget` highest-scoring indices of a 1-D tensor, sorted ascending (ties: lower index)."""
    n = scores.numel()
    budget = max(0, min(budget, n))
    # a stable sort on the negated scores breaks ties by position, so results are deterministic
    order = torch.sort(-scores.float(), stable=True).indices
    return torch.sort(order[:budget]).values


def uniform_indices(frame_ids: torch.Tensor, budget: int) -> torch.Tensor:
    """Evenly spaced tokens inside every frame, with the budget spread over frames.

    Frames get floor/ceil(budget / n_frames) tokens (the remainder goes to evenly spaced frames);
    inside a frame the kept tokens are evenly spaced over its tokens in sequence order.
    """
    n = frame_ids.numel()
    budget = max(0, min(budget, n))
    frames, counts = torch.unique_consecutive(frame_ids, return_counts=True)
    n_frames = frames.numel()
    base, extra = divmod(budget, n_frames)
    per_frame = torch.full((n_frames,), base, dtype=torch.long)
    if extra:
        per_frame[torch.linspace(0, n_frames - 1, extra).round().long()] += 1
    per_frame = torch.minimum(per_frame, counts.cpu())
    # frames that are too small hand their unused budget to the others, in order
    short = budget - int(per_frame.sum())
    while short > 0:
        room = counts.cpu() - per_frame
        give = torch.clamp(room, max=1) * (torch.cumsum(torch.clamp(room, max=1), 0) <= short)
        if int(give.sum()) == 0:
            break
        per_frame += give
        short -= int(give.sum())
    starts = torch.cumsum(counts.cpu(), 0) - counts.cpu()
    picked = []
    for s, c, k in zip(starts.tolist(), counts.tolist(), per_frame.tolist(), strict=True):
        if k > 0:
            # centre of k equal bins over the frame's c tokens
            offs = ((torch.arange(k, dtype=torch.float64) + 0.5) * c / k).floor().long()
            picked.append(offs + s)
    if not picked:
        return torch.zeros(0, dtype=torch.long, device=frame_ids.device)
    return torch.sort(torch.cat(picked)).values.to(frame_ids.device)


def random_indices(n: int, budget: int, generator: torch.Generator) -> torch.Tensor:
    budget = max(0, min(budget, n))
    return torch.sort(torch.randperm(n, generator=generator)[:budget]).values
