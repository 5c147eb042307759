"""Segment-aware causal attention masks.

Every token of a sample carries a segment id: ``-1`` for non-visual tokens (system prompt,
text, padding) and an index ``>= 0`` for visual tokens. A segment is one frame or ``k``
consecutive frames (see :func:`group_segments`). Segments are contiguous runs in the
sequence whose ids increase along it; several videos or images in one sample use disjoint
ids.

The masks are boolean matrices ``allowed[i, j]`` (query ``i`` may attend to key ``j``):

* ``"off"`` -- plain causal attention, ``j <= i``.
* ``"bidirectional"`` -- a visual token attends to every token of its own segment (also
  later ones) and causally to everything before its segment. Text stays causal.
* ``"local"`` -- a visual token attends only to its own segment (both directions) and to
  the prefix before the first visual token of the sequence. Text stays causal.

The diagonal is always allowed. Padding is not handled here: combine the result with the
padding mask of the batch before use.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

MaskMode = Literal["off", "bidirectional", "local"]
MASK_MODES: tuple[str, ...] = ("off", "bidirectional", "local")


def _as_rows(rows: torch.Tensor | Sequence[int] | None, seq_len: int, device: torch.device) -> torch.Tensor:
    if rows is None:
        return torch.arange(seq_len, device=device)
    rows_t = torch.as_tensor(rows, dtype=torch.long, device=device).reshape(-1)
    if rows_t.numel() and (int(rows_t.min()) < 0 or int(rows_t.max()) >= seq_len):
        raise ValueError(
            f"rows must lie in [0, {seq_len}), got min {int(rows_t.min())} max {int(rows_t.max())}"
        )
    return rows_t


def _allowed(segment_ids: torch.Tensor, mode: str, rows: torch.Tensor | Sequence[int] | None) -> torch.Tensor:
    """Batched core: ``segment_ids`` (B, S) -> allowed (B, Q, S)."""
    if mode not in MASK_MODES:
        raise ValueError(f"unknown mask mode {mode!r}; expected one of {MASK_MODES}")
    seg = segment_ids.long()
    bsz, seq_len = seg.shape
    device = seg.device
    keys = torch.arange(seq_len, device=device)
    q_pos = _as_rows(rows, seq_len, device)
    causal = keys[None, :] <= q_pos[:, None]  # (Q, S)
    if mode == "off":
        return causal.unsqueeze(0).expand(bsz, -1, -1).clone()

    seg_q = seg[:, q_pos]  # (B, Q)
    q_visual = (seg_q >= 0).unsqueeze(-1)  # (B, Q, 1)
    # Same segment, restricted to visual queries so that text (-1) never matches text.
    same = (seg_q.unsqueeze(-1) == seg.unsqueeze(1)) & q_visual  # (B, Q, S)

    if mode == "bidirectional":
        # Segments are contiguous, so "causal or same segment" is exactly
        # "everything before the segment plus the whole segment" for visual queries.
        return same | causal.unsqueeze(0)

    # local: own segment + prefix before the first visual token; text rows stay causal.
    visual = seg >= 0
    first_visual = torch.where(
        visual.any(dim=1),
        visual.int().argmax(dim=1),
        torch.full((bsz,), seq_len, dtype=torch.long, device=device),
    )
    prefix = keys.view(1, 1, -1) < first_visual.view(-1, 1, 1)  # (B, 1, S)
    # A visual query lies in its own segment, so ``same`` already holds the diagonal.
    return torch.where(q_visual, same | prefix, causal.unsqueeze(0))


def segment_allowed(
    segment_ids: torch.Tensor,
    mode: MaskMode | str,
    rows: torch.Tensor | Sequence[int] | None = None,
) -> torch.Tensor:
    """Boolean attention pattern for one sample.

    Args:
        segment_ids: LongTensor (S,), ``-1`` for non-visual tokens, segment index ``>= 0``
            for visual tokens.
        mode: ``"off"``, ``"bidirectional"`` or ``"local"`` (see the module docstring).
        rows: optional query positions (Q,); only these rows are built.

    Returns:
        BoolTensor (S, S), or (Q, S) with ``rows``; ``allowed[i, j]`` is True when query
        ``i`` may attend to key ``j``. Row ``r`` with ``rows`` equals row ``rows[r]`` of the
        full matrix.
    """
    if segment_ids.dim() != 1:
        raise ValueError(f"segment_ids must be 1-D (S,), got shape {tuple(segment_ids.shape)}")
    return _allowed(segment_ids.unsqueeze(0), mode, rows)[0]


def batched_segment_allowed(
    segment_ids: torch.Tensor,
    mode: MaskMode | str,
    rows: torch.Tensor | Sequence[int] | None = None,
) -> torch.Tensor:
    """:func:`segment_allowed` over a batch: ``segment_ids`` (B, S) -> BoolTensor (B, S, S).

    With ``rows`` (Q,), the same query positions are built for every sample: (B, Q, S).
    """
    if segment_ids.dim() != 2:
        raise ValueError(f"segment_ids must be 2-D (B, S), got shape {tuple(segment_ids.shape)}")
    return _allowed(segment_ids, mode, rows)


def group_segments(frame_ids: torch.Tensor, k: int) -> torch.Tensor:
    """Group per-token frame ids into segments of ``k`` consecutive frames.

    ``frame_ids`` has any shape, holds ``-1`` for non-visual tokens and frame numbers
    ``0, 1, 2, ...`` (numbered per sample) for visual tokens. Frame ``f`` goes to segment
    ``f // k``; ``-1`` stays ``-1``. ``k = 1`` returns the frame ids unchanged.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    frame_ids = frame_ids.long()
    return torch.where(frame_ids >= 0, torch.div(frame_ids, k, rounding_mode="floor"), -1)


def to_attention_mask(
    allowed: torch.Tensor,
    dtype: torch.dtype = torch.float32,
    kind: Literal["bool", "additive"] | str = "bool",
) -> torch.Tensor:
    """Turn an allowed pattern into a 4-D attention mask of shape (B, 1, Q, S).

    ``allowed`` may be (Q, S), (B, Q, S) or already (B, 1, Q, S).

    * ``kind="bool"``: BoolTensor, True = attend (the convention of
      ``torch.nn.functional.scaled_dot_product_attention``); ``dtype`` is ignored.
    * ``kind="additive"``: float mask of ``dtype`` for eager attention, 0 where allowed and
      ``torch.finfo(dtype).min`` elsewhere (a finite minimum avoids NaN rows in softmax).
    """
    if allowed.dim() == 2:
        allowed = allowed[None, None]
    elif allowed.dim() == 3:
        allowed = allowed[:, None]
    elif allowed.dim() != 4 or allowed.shape[1] != 1:
        raise ValueError(f"allowed must be (Q, S), (B, Q, S) or (B, 1, Q, S), got {tuple(allowed.shape)}")
    allowed = allowed.bool()
    if kind == "bool":
        return allowed
    if kind == "additive":
        if not dtype.is_floating_point:
            raise ValueError(f"additive masks need a floating dtype, got {dtype}")
        mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
        return mask.masked_fill(~allowed, torch.finfo(dtype).min)
    raise ValueError(f"kind must be 'bool' or 'additive', got {kind!r}")


def hide_padding(allowed: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
    """An allowed pattern (B, 1, S, S) over rows with padding rows `pad` (B, S) taken out: no row attends to a
    padding row, and a padding row attends only to itself (a finite state that nothing reads)."""
    allowed = allowed & ~pad[:, None, None, :] & ~pad[:, None, :, None]
    eye = torch.eye(pad.shape[1], dtype=torch.bool, device=pad.device)
    return allowed | (eye[None, None] & pad[:, None, :, None])


def allowed_of(mask: torch.Tensor) -> torch.Tensor:
    """A 4-D attention mask (bool, True = attend; or additive float) -> its bool allowed pattern."""
    return mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min / 2
