"""Downsampling controls: fewer frames, coarser frames, or both, at the same token budget as a pruning method.

No paper defines these as a method; they stand for what a model's own settings would do at the same count: frame
sampling (`max_frames_num` in the LLaVA/lmms-eval scripts) and spatial pooling (LLaVA-OneVision/LLaVA-Video's
`get_2dPool` after the projector, stride 2), as read in the VidCom2 repository xuyang-liu16/VidCom2 at commit
944a17d (`llava/model/llava_arch.py`, `get_2dPool`).

Modes, all to exactly `view.budget` tokens:
- "frames": whole frames kept, evenly spaced: the most frames m whose evenly spaced set (frame
  ``floor((2j + 1) T / 2m)`` for j < m, the centre of m equal bins over the T frames) fits the budget.
- "pool": each frame's grid pooled in 2x2 cells: a kept token is the mean of its cell (a `Merge` into the cell's
  first token in sequence order, its top-left, whose position the merged token keeps). Odd edges give cells of 1
  or 2 tokens, averaged over the tokens they have.
- "both": frames dropped as in "frames", counted in pooled cells, and the kept frames pooled.

Completing a budget that whole frames or cells do not reach (deterministic):
- frames / both: the budget left after the whole frames goes to the dropped frames one at a time, the one farthest
  from any kept frame first (with no kept frame, the one nearest the middle first; ties: the earlier frame), each
  giving evenly spaced tokens (cells in "both") of its own, centre-of-bins as above, until the budget is spent.
  With frames of one size this is one partial frame.
- pool (and both, when all frames pooled give fewer cells than the budget): with fewer cells than the budget, the
  extra tokens are cell members kept unmerged, evenly spaced over the frames (`core.select.uniform_indices` over
  the non-first members); with more cells than the budget, whole cells are dropped, the kept ones evenly spaced
  over the frames and inside each frame (`uniform_indices` over the cells in sequence order).

Deviations from the models' own pooling: a mean over 2x2 cells of the tokens reaching the stage (the model's
projector output at layer 0), where LLaVA-OneVision interpolates bilinearly to ceil(h/2) x ceil(w/2) and the
pooled tokens get their own contiguous positions; here the merged token takes its cell's first token's place
(renumbered contiguously with the rest under `positions="auto"` on 1-D positions, original on M-RoPE). A token
off the grid (a negative row or column) is a cell of its own. Frames dropped here were still encoded by the vision
tower.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..checks import check_choice
from ..core.select import uniform_indices
from ..core.selection import Merge, Selection
from .base import PreLLMMethod, SampleView, register

MODES = ("frames", "pool", "both")


def evenly_spaced(n: int, k: int) -> torch.Tensor:
    """k of 0..n-1, the centre of k equal bins: ``floor((2j + 1) n / 2k)`` (exact integer arithmetic)."""
    return ((2 * torch.arange(k) + 1) * n) // (2 * k) if k > 0 else torch.zeros(0, dtype=torch.long)


def frame_units(unit_frame: torch.Tensor, budget: int) -> torch.Tensor:
    """Which units (tokens or cells, their frames `unit_frame` 0..T-1) to keep, sorted: the most evenly spaced
    whole frames that fit `budget`, then units of the dropped frames (module docstring)."""
    frame = unit_frame.cpu()
    order = torch.sort(frame, stable=True).indices  # the units of each frame together, in sequence order
    sizes = torch.bincount(frame)
    n_frames = sizes.numel()
    starts = torch.cumsum(sizes, 0) - sizes
    whole = torch.zeros(0, dtype=torch.long)
    for m in range(n_frames, 0, -1):
        pick = evenly_spaced(n_frames, m)
        if int(sizes[pick].sum()) <= budget:
            whole = pick
            break
    left = budget - int(sizes[whole].sum())
    chosen = [torch.arange(int(starts[t]), int(starts[t] + sizes[t])) for t in whole.tolist()]
    if left > 0:
        t = torch.arange(n_frames)
        dropped = t[~torch.isin(t, whole)]
        if whole.numel():  # farthest from the kept frames first
            key = -(dropped[:, None] - whole[None, :]).abs().min(dim=1).values
        else:  # nearest the middle first
            key = (2 * dropped - (n_frames - 1)).abs()
        for f in dropped[torch.sort(key, stable=True).indices].tolist():
            k = min(left, int(sizes[f]))
            chosen.append(int(starts[f]) + evenly_spaced(int(sizes[f]), k))
            left -= k
            if left == 0:
                break
    slots = torch.cat(chosen) if chosen else torch.zeros(0, dtype=torch.long)
    return torch.sort(order[slots]).values.to(unit_frame.device)


@register("downsample")
@dataclass
class Downsample(PreLLMMethod):
    """Downsampling control at the same token budget: whole frames dropped evenly ("frames"), 2x2 spatial pooling
    of each frame's grid as a merge ("pool"), or both ("both"). See the module docstring for the exact rules."""

    retain: float = 0.25
    mode: str = "frames"

    def validate(self) -> None:
        super().validate()
        check_choice(self.mode, MODES, "mode")

    def select(self, view: SampleView) -> Selection:
        n, budget, dev = view.n_visual, view.budget, view.device
        if budget >= n:
            return Selection(torch.arange(n, device=dev))
        lay = view.layout
        _, frames = torch.unique(lay.frame_ids.to(dev), return_inverse=True)
        idx = torch.arange(n, device=dev)
        if self.mode == "frames":
            return Selection(frame_units(frames, budget))
        unit, first = _cells(frames, lay.rows.to(dev), lay.cols.to(dev))
        n_units = first.numel()
        if budget <= n_units:
            pick = frame_units(frames[first], budget) if self.mode == "both" else uniform_indices(frames[first], budget)
            keep = first[pick.to(dev)]
            kept_unit = torch.zeros(n_units, dtype=torch.bool, device=dev)
            kept_unit[pick.to(dev)] = True
            members = kept_unit[unit]
        else:  # every cell, plus members kept unmerged
            is_first = torch.zeros(n, dtype=torch.bool, device=dev)
            is_first[first] = True
            others = idx[~is_first]
            extra = others[uniform_indices(frames[others], budget - n_units).to(dev)]
            keep = torch.sort(torch.cat([first, extra])).values
            members = torch.ones(n, dtype=torch.bool, device=dev)
        merged = members.clone()
        merged[keep] = False
        source = idx[merged]
        target = first[unit[source]]
        return Selection(keep, Merge(source, target) if source.numel() else None)


def _cells(frames: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(unit per token, first token of each unit): 2x2 cells of each frame's grid, numbered in the order of their
    first tokens; a token off the grid is a unit of its own."""
    n, dev = frames.numel(), frames.device
    on_grid = (rows >= 0) & (cols >= 0)
    cell_cols = (int(cols.max()) // 2 + 1) if bool(on_grid.any()) else 1
    cell_rows = (int(rows.max()) // 2 + 1) if bool(on_grid.any()) else 1
    key = frames * (cell_rows * cell_cols) + (rows // 2) * cell_cols + cols // 2
    # off-grid tokens get keys past every cell's, one each
    key = torch.where(on_grid, key, (int(frames.max()) + 1) * cell_rows * cell_cols + torch.arange(n, device=dev))
    _, inverse = torch.unique(key, return_inverse=True)
    n_keys = int(inverse.max()) + 1
    first_of_key = torch.full((n_keys,), n, dtype=torch.long, device=dev)
    first_of_key = first_of_key.scatter_reduce(0, inverse, torch.arange(n, device=dev), reduce="amin")
    order = torch.argsort(first_of_key)  # units in the order of their first tokens
    rank = torch.empty_like(order)
    rank[order] = torch.arange(n_keys, device=dev)
    return rank[inverse], first_of_key[order]
