"""Contiguous positions after a stage before the decoder: the kept rows renumbered without gaps, as if the prompt
had been built without the dropped tokens (what most pre-LLM methods' own code does).

Only 1-D rotary positions: each row's position moves down by the number of dropped rows before it, the rotary
tables are recomputed by the decoder's own rotary module, and decoding continues that many positions earlier.
"""

from __future__ import annotations

import torch

from ..models.base import Adapter
from .prefill import Prefill
from .rows import take


def renumber(pre: Prefill, position_ids: torch.Tensor | None, adapter: Adapter, hidden: torch.Tensor) -> None:
    """After a layer-0 stage: set `pre`'s positions (over the original rows), rotary tables and decode shift."""
    batch, seq_len = pre.batch, pre.seq_len
    device = hidden.device
    if isinstance(position_ids, torch.Tensor) and position_ids.dim() == 2 and position_ids.shape[-1] == seq_len:
        pos = position_ids.to(device).expand(batch, -1)
    else:  # the decoder numbers the prompt 0..S-1
        pos = torch.arange(seq_len, device=device).expand(batch, -1)
    kept = torch.zeros(batch, seq_len, dtype=torch.bool, device=device)
    kept.scatter_(1, pre.rows.rows.to(device), True)
    # dropped rows before each row (a row is dropped when a stage removed it)
    before = torch.cumsum((~kept).long(), dim=1) - (~kept).long()
    pre.position_ids = pos - before
    pre.position_shift = (~kept).long().sum(dim=1)
    pre.pos_emb = adapter.position_embeddings(hidden, pre.position_ids)
    pre.pos_emb_cur = tuple(take(t, pre.rows.rows) for t in pre.pos_emb)
