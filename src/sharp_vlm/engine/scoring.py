"""The scoring side pass: attention of a few query rows over the current keys at a layer, beside the kernel.

Recomputed from the layer's own parts (the adapter's `AttentionParts`: norm, q/k projections and norms, rotary,
scaling, soft-capping, sliding window); only the query rows are materialised, never an S x S matrix.
"""

from __future__ import annotations

import torch

from ..core.layout import VisualLayout
from ..core.masks import segment_allowed
from ..core.scoring import attention_probs
from ..methods.base import SegmentMask
from ..models.base import AttentionParts
from .rows import PrefillRows


def _constant_like(x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """(B, H, T, hd) -> the same shape filled, per head, with one vector of the heads' mean norm over the rows
    `valid` (B, T) (all rows when None: padding would otherwise move a sample's mean)."""
    norm = x.float().norm(dim=-1)  # (B, H, T)
    if valid is None:
        mean = norm.mean(dim=-1)
    else:
        w = valid[:, None, :].to(norm.dtype)
        mean = (norm * w).sum(dim=-1) / w.sum(dim=-1).clamp(min=1)
    return (mean[..., None, None] / x.shape[-1] ** 0.5).expand_as(x).to(x.dtype)


def query_probs(
    parts: AttentionParts,
    hidden: torch.Tensor,
    cos_sin: tuple[torch.Tensor, torch.Tensor],
    rows: PrefillRows,
    layouts: list[VisualLayout],
    query: str = "last",
    rope: bool = True,
    mask: SegmentMask | None = None,
    content_free: bool = False,
    all_layouts: list[VisualLayout] | None = None,
) -> torch.Tensor:
    """(B, S_cur) attention probabilities over the current keys, averaged over heads and query rows.

    `hidden` are the states entering the layer. Text query rows are causal; with `mask`, rows follow the segment
    mask. content_free: every query and key becomes a constant vector of the same mean norm per head, so the
    result depends on the positions only (the RoPE-only prior). `layouts`: the tokens the stage prunes (their
    segments); `all_layouts`: every visual token (the text query starts after the last of them).
    """
    x = parts.norm(hidden)
    s = x.shape[1]
    k = parts.keys(x)
    key_valid = rows.valid()
    if content_free:
        k = _constant_like(k, key_valid)
    cos, sin = (t.expand(rows.batch, *t.shape[1:]) for t in cos_sin)  # a batch-1 rotary table is shared
    if rope:
        k = parts.rotary(k, cos, sin)
    seg = rows.segment_ids(layouts, mask.frames_per_segment) if mask is not None and mask.mode != "off" else None
    out = []
    for b, qrows in enumerate(rows.query_rows(query, all_layouts or layouts)):
        q = parts.queries(x[b : b + 1, qrows])
        if content_free:
            q = _constant_like(q)
        if rope:
            q = parts.rotary(q, cos[b : b + 1, qrows], sin[b : b + 1, qrows])
        if seg is None:
            allowed = torch.arange(s, device=x.device)[None, :] <= qrows[:, None]  # causal in current rows
        else:
            allowed = segment_allowed(seg[b], mask.mode, rows=qrows)
        allowed = allowed & key_valid[b][None, :]
        if parts.sliding_window is not None:
            orig = rows.rows[b]
            allowed = allowed & (orig[None, :] > orig[qrows][:, None] - parts.sliding_window)
        out.append(attention_probs(q, k[b : b + 1], parts.scaling, allowed[None], parts.softcap)[0].mean(dim=0))
    return torch.stack(out)


def visual_scores(probs: torch.Tensor, rows: PrefillRows) -> torch.Tensor:
    """(B, S_cur) probabilities -> (B, N) over each sample's surviving visual tokens (zeros past a sample's own
    count when the samples hold different counts)."""
    width = max(rows.n_visual, default=0)
    out = probs.new_zeros(rows.batch, width)
    for b in range(rows.batch):
        out[b, : rows.visual_rows[b].numel()] = probs[b, rows.visual_rows[b]]
    return out
