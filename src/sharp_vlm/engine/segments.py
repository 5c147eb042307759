"""The segment-aware mask of the shallow layers, as the attention kernel gets it.

Where the block-wise kernel (segment_attention.py) applies (no padding, one layout for the batch, a kernel that
was switched) the masked layers get its runs; otherwise a dense mask over the current rows.
"""

from __future__ import annotations

from typing import Any

import torch

from ..core.masks import segment_allowed, to_attention_mask
from ..methods.base import SegmentMask
from .prefill import Prefill
from .segment_attention import RUNS_KWARG, segment_runs


def segment_kwargs(pre: Prefill, mask: SegmentMask, block_kernel: bool, eager: bool, dtype: torch.dtype) -> dict:
    """What a segment-masked layer gets over the current rows (computed once per stage, then reused)."""
    if pre.segment_kwargs is None or pre.segment_kwargs[0] != pre.stages_done:
        seg = pre.rows.segment_ids(pre.layouts, mask.frames_per_segment)
        valid = pre.rows.valid()
        runs = segment_runs(seg, mask.mode) if block_kernel and bool(valid.all()) else None
        if runs:
            kwargs: dict[str, Any] = {"attention_mask": None, RUNS_KWARG: runs}
        else:
            kwargs = {"attention_mask": dense_mask(seg, valid, mask.mode, eager, dtype)}
        pre.segment_kwargs = (pre.stages_done, kwargs)
    return pre.segment_kwargs[1]


def dense_mask(seg: torch.Tensor, valid: torch.Tensor, mode: str, eager: bool, dtype: torch.dtype) -> Any:
    """Dense segment-aware mask (B, 1, S, S) over the current rows; padding keys stay masked."""
    allowed = torch.stack([segment_allowed(s, mode) for s in seg])
    allowed &= valid[:, None, :]
    allowed |= torch.eye(seg.shape[1], dtype=torch.bool, device=allowed.device)[None]
    return to_attention_mask(allowed, dtype, "additive" if eager else "bool")
