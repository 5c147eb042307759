"""Segment-aware attention for the shallow layers without a dense S x S mask.

A dense boolean mask forces the attention kernel to compute (and mask) every query-key pair: on a 6k-token
video prompt the two masked shallow layers then cost about a third more than the causal ones, which is most
of what a cheap selection saves. The segment masks have a block structure instead (see ``core.masks``):

* a visual query of a segment spanning rows ``[a, b)`` attends to every key before ``b`` ("bidirectional"),
  or to the keys before the first visual row plus ``[a, b)`` ("local"): no mask at all inside that block;
* a text query attends causally.

So the rows split into runs (one per segment, one per stretch of text), each an unmasked or causal attention
over a prefix of the keys, run by the fused SDPA kernel. The result equals SDPA with the dense mask up to
float rounding. It is registered under its own name in transformers' attention registry and set, per model
instance, on the masked layers only; a call without runs (decoding, padded or mixed batches) is plain SDPA
with the mask it is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

SEGMENT_ATTENTION = "sharp_vlm_segment_sdpa"
RUNS_KWARG = "sharp_vlm_segment_runs"


@dataclass(frozen=True)
class SegmentRuns:
    """Rows of one prefill as runs ``(start, end, is_segment)`` covering ``0..S``, and the mask mode."""

    mode: str
    runs: tuple[tuple[int, int, bool], ...]
    prefix_end: int  # first visual row: the prefix that "local" segments see


def segment_runs(segment_ids: torch.Tensor, mode: str) -> SegmentRuns | None:
    """Runs of a (B, S) segment-id matrix (-1 for text), or None where the block form does not apply.

    None when the samples' runs differ (each sample would need its own kernel calls) or when a segment id
    appears in two separate runs (then its rows are not one block).
    """
    if mode not in ("bidirectional", "local") or segment_ids.dim() != 2 or segment_ids.shape[1] == 0:
        return None
    if bool((segment_ids != segment_ids[:1]).any()):
        return None
    ids, counts = torch.unique_consecutive(segment_ids[0].cpu(), return_counts=True)
    ends = torch.cumsum(counts, 0).tolist()
    ids = ids.tolist()
    seg_ids = [i for i in ids if i >= 0]
    if len(seg_ids) != len(set(seg_ids)):
        return None
    runs, start = [], 0
    for sid, end in zip(ids, ends, strict=True):
        runs.append((start, end, sid >= 0))
        start = end
    first_visual = next((a for a, _, seg in runs if seg), ends[-1])
    return SegmentRuns(mode, tuple(runs), first_visual)


def _causal_tail(a: int, b: int, device: torch.device) -> torch.Tensor:
    # rows a..b-1 over keys 0..b-1: causal aligned to the bottom right
    return torch.arange(b, device=device)[None, :] <= torch.arange(a, b, device=device)[:, None]


def segment_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers attention function: (B, H, S, hd) inputs -> ((B, S, H, hd) output, None)."""
    runs: SegmentRuns | None = kwargs.pop(RUNS_KWARG, None)
    if runs is None or query.shape[2] != key.shape[2] or runs.runs[-1][1] != query.shape[2]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    # grouped-query heads are shared inside the kernel: no copy of K/V per query head (15% faster on the CPU)
    gqa = getattr(module, "num_key_value_groups", 1) > 1
    out = torch.empty_like(query)
    for a, b, is_segment in runs.runs:
        q, mask, causal = query[:, :, a:b], None, False
        if is_segment and runs.mode == "local":
            k = torch.cat([key[:, :, : runs.prefix_end], key[:, :, a:b]], dim=2)
            v = torch.cat([value[:, :, : runs.prefix_end], value[:, :, a:b]], dim=2)
        else:
            k, v = key[:, :, :b], value[:, :, :b]
            if not is_segment and a == 0:
                causal = b > 1
            elif not is_segment and b - a > 1:
                mask = _causal_tail(a, b, query.device)
        out[:, :, a:b] = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal, scale=scaling, enable_gqa=gqa
        )
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(SEGMENT_ATTENTION, segment_attention)
