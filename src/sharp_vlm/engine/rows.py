"""Prefill row bookkeeping: which original positions the current rows are, and where each visual token sits.

Pure tensors (no model): a stage's kept and merged tokens turn into one gather index over the rows, applied
alike to hidden states, positions, masks and whatever else is per row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.layout import VisualLayout
from ..core.selection import Merge, Selection, merge_rows
from ..errors import ConfigError


def take(x: torch.Tensor, rows: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Gather per-sample rows along `dim` (rows: (B, T) indices); broadcasts a batch-1 x."""
    b = rows.shape[0]
    if x.shape[0] == 1 and b > 1:
        x = x.expand(b, *x.shape[1:])
    idx = rows.view(b, *([1] * (dim - 1)), rows.shape[1], *([1] * (x.dim() - dim - 1)))
    idx = idx.expand(*x.shape[:dim], rows.shape[1], *x.shape[dim + 1 :])
    return torch.gather(x, dim, idx.to(x.device))


@dataclass
class PrefillRows:
    """The rows of one prefill as stages remove them.

    rows: (B, S_cur) original sequence position of each current row.
    visual_rows: per sample, the current row of each surviving visual token (ascending).
    visual_orig: per sample, the original visual index (0..N-1) of each surviving visual token.
    key_valid: (B, S) over the original positions, False on padding.
    query_last: (B,) original position of the last prompt token.
    pad: (B, S_cur) True on the rows a stage added in front of a sample that kept fewer rows than the longest one
        (a copy of its first row, never a key, never a query, never scored), or None while every sample has
        as many rows.
    """

    rows: torch.Tensor
    visual_rows: list[torch.Tensor]
    visual_orig: list[torch.Tensor]
    key_valid: torch.Tensor
    query_last: torch.Tensor
    pad: torch.Tensor | None = None

    @classmethod
    def start(cls, layouts: list[VisualLayout], key_valid: torch.Tensor, query_last: torch.Tensor) -> PrefillRows:
        batch, seq_len = key_valid.shape
        device = key_valid.device
        return cls(
            rows=torch.arange(seq_len, device=device).expand(batch, -1),
            visual_rows=[lay.positions.to(device) for lay in layouts],
            visual_orig=[torch.arange(lay.n_visual, device=device) for lay in layouts],
            key_valid=key_valid,
            query_last=query_last,
        )

    @property
    def batch(self) -> int:
        return self.rows.shape[0]

    @property
    def n_visual(self) -> list[int]:
        return [int(r.numel()) for r in self.visual_rows]

    def valid(self) -> torch.Tensor:
        """(B, S_cur) False on padding rows (the prompt's and a stage's)."""
        valid = take(self.key_valid, self.rows)
        return valid if self.pad is None else valid & ~self.pad

    def query_rows(self, query: str, layouts: list[VisualLayout]) -> list[torch.Tensor]:
        """Per sample, the current rows of the query tokens: the last prompt token ("last") or the text after the
        last visual token ("text"; a prompt that ends with visual tokens falls back to its last token). `layouts`:
        every visual token of the prompt, whatever the stages prune."""
        if query not in ("last", "text"):
            raise ConfigError(f"query={query!r} must be 'last' or 'text'")
        out = []
        for b, lay in enumerate(layouts):
            orig = self.rows[b]
            last = torch.searchsorted(orig, self.query_last[b : b + 1])
            if query == "text":
                after = (orig > lay.positions.max()) & (orig <= self.query_last[b]) & self.key_valid[b, orig]
                if self.pad is not None:
                    after &= ~self.pad[b]
                sel = torch.nonzero(after).flatten()
                last = sel if sel.numel() else last
            out.append(last)
        return out

    def segment_ids(self, layouts: list[VisualLayout], frames_per_segment: int) -> torch.Tensor:
        """(B, S_cur) segment id of each current row (-1 for text)."""
        seq_len = self.key_valid.shape[1]
        full = torch.stack([lay.segment_ids(seq_len, frames_per_segment) for lay in layouts])
        return take(full, self.rows)

    def apply(self, selections: list[Selection], device: torch.device) -> RowOp:
        """Record a stage's answer: every non-visual row stays, a visual row stays when its token is kept.

        Samples that keep different numbers of tokens are padded on the left to the longest (decoding continues
        at the right end of every row). Returns the operation to run on the (B, S_cur, ...) tensors of the old
        rows (merge, then gather).
        """
        idx_list, merges, kept_rows = [], [], []
        for b, sel in enumerate(selections):
            keep = sel.keep.to(device)
            drop = torch.zeros(self.rows.shape[1], dtype=torch.bool, device=device)
            if self.pad is not None:
                drop |= self.pad[b]  # an earlier stage's padding is laid out anew
            drop[self.visual_rows[b]] = True
            drop[self.visual_rows[b][keep]] = False
            idx_list.append(torch.nonzero(~drop).flatten())
            kept_rows.append(self.visual_rows[b][keep])
            merges.append(None if sel.merge is None else (self.visual_rows[b], sel.merge))
        width = max(int(i.numel()) for i in idx_list)
        pads = [width - int(i.numel()) for i in idx_list]
        idx = torch.stack([torch.cat([i[:1].expand(p), i]) for i, p in zip(idx_list, pads, strict=True)])
        for b, sel in enumerate(selections):
            self.visual_orig[b] = self.visual_orig[b][sel.keep.to(device)]
            self.visual_rows[b] = torch.searchsorted(idx_list[b], kept_rows[b]) + pads[b]
        self.rows = take(self.rows, idx)
        if any(pads):
            self.pad = torch.arange(width, device=device)[None, :] < torch.tensor(pads, device=device)[:, None]
        else:
            self.pad = None
        return RowOp(idx, merges)


@dataclass
class RowOp:
    """One stage's change of the rows: optional per-sample merges (over the old rows), then a gather."""

    idx: torch.Tensor  # (B, S_new) indices into the old rows
    merges: list[tuple[torch.Tensor, Merge] | None]  # per sample: (visual rows, merge) or None

    def run(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, S_old, D) hidden states -> (B, S_new, D)."""
        if any(m is not None for m in self.merges):
            hidden = torch.stack(
                [hidden[b] if m is None else merge_rows(hidden[b], m[0], m[1]) for b, m in enumerate(self.merges)]
            )
        return take(hidden, self.idx)
