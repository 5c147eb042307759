"""Fill order that keeps the context of the tokens a selection already holds.

An object in a frame is several neighbouring patches (in the text probe, a caption is several neighbouring
tokens); a token kept alone loses what it depends on. :func:`context_key` ranks every token by how close it
lies to a kept "anchor" in its own frame's grid, and among equally close tokens by how early that anchor was
chosen, so a fill step that follows the key grows regions around the best anchors first.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def context_key(
    anchors: torch.Tensor,
    frame_ids: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    radius: int = 1,
) -> torch.Tensor:
    """(N,) float key, higher = fill first.

    Args:
        anchors: indices of the kept tokens in the order they were chosen (best first).
        frame_ids, rows, cols: (N,) frame index and grid coordinates of every token.
        radius: largest Chebyshev distance (in grid cells, same frame only) that counts as context.

    A token at distance ``d <= radius`` from an anchor gets ``(radius + 1 - d) * (A + 1) + (A - i)``, where
    ``i`` is the rank of the best anchor at that distance and ``A`` the number of anchors: nearer rings first,
    inside a ring the context of better anchors first. Tokens farther from every anchor (and the anchors
    themselves) get 0.
    """
    n = frame_ids.numel()
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    key = torch.zeros(n, dtype=torch.float32, device=frame_ids.device)
    a = anchors.numel()
    if n == 0 or a == 0 or radius == 0:
        return key
    f, r, c = frame_ids.long(), rows.long(), cols.long()
    shape = (int(f.max()) + 1, int(r.max()) + 1, int(c.max()) + 1)
    # anchor value A - i (> 0) on a per-frame grid, 0 where there is no anchor; max-pooling 3x3 once per ring
    # spreads each anchor's value one cell further inside its frame only
    grid = torch.zeros(shape, dtype=torch.float32, device=frame_ids.device)
    ai = anchors.to(frame_ids.device).long()
    grid[f[ai], r[ai], c[ai]] = torch.arange(a, 0, -1, dtype=torch.float32, device=frame_ids.device)
    reached = torch.zeros(n, dtype=torch.bool, device=frame_ids.device)
    reached[ai] = True  # anchors keep key 0
    for d in range(1, radius + 1):
        grid = F.max_pool2d(grid[:, None], kernel_size=3, stride=1, padding=1)[:, 0]
        best = grid[f, r, c]
        new = (best > 0) & ~reached
        key[new] = (radius + 1 - d) * (a + 1) + best[new]
        reached |= new
    return key
