"""Where the visual tokens are in one sample, and how they group into frames.

Pure data: adapters build it from model inputs; selectors and masks read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class VisualItem:
    """One image or video in a sample: its grid of LLM tokens (t frames/temporal patches x h x w)."""

    kind: str  # "video" | "image"
    start: int  # index of its first token among the sample's visual tokens
    t: int
    h: int
    w: int

    @property
    def n_tokens(self) -> int:
        return self.t * self.h * self.w


@dataclass
class VisualLayout:
    """Visual tokens of one sample.

    positions: sequence positions of the visual tokens, ascending, shape (N,).
    frame_ids: frame (or temporal patch) index per visual token, numbered across the sample, shape (N,).
    rows, cols: spatial coordinates inside the frame, shape (N,).
    items: the images/videos, in sequence order.
    """

    positions: torch.Tensor
    frame_ids: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor
    items: list[VisualItem] = field(default_factory=list)

    @property
    def n_visual(self) -> int:
        return int(self.positions.numel())

    @property
    def n_frames(self) -> int:
        return int(self.frame_ids.max().item()) + 1 if self.n_visual else 0

    def subset(self, idx: torch.Tensor) -> VisualLayout:
        """The layout restricted to the visual tokens `idx` (indices into this layout)."""
        return VisualLayout(
            self.positions[idx], self.frame_ids[idx], self.rows[idx], self.cols[idx], list(self.items)
        )

    def of_kinds(self, kinds: tuple[str, ...]) -> VisualLayout:
        """The layout restricted to the tokens of items of these kinds ("video", "image"); its items are those
        items, their starts counted among the kept tokens."""
        keep = torch.zeros(self.n_visual, dtype=torch.bool, device=self.positions.device)
        items, seen = [], 0
        for it in self.items:
            if it.kind in kinds:
                keep[it.start : it.start + it.n_tokens] = True
                items.append(VisualItem(it.kind, seen, it.t, it.h, it.w))
                seen += it.n_tokens
        idx = torch.nonzero(keep).flatten()
        return VisualLayout(self.positions[idx], self.frame_ids[idx], self.rows[idx], self.cols[idx], items)

    def segment_ids(self, seq_len: int, frames_per_segment: int = 1) -> torch.Tensor:
        """Per-sequence-position segment id (-1 for non-visual), segments of k consecutive frames."""
        seg = torch.full((seq_len,), -1, dtype=torch.long, device=self.positions.device)
        seg[self.positions] = torch.div(self.frame_ids, frames_per_segment, rounding_mode="floor")
        return seg

    @staticmethod
    def from_grid(positions: torch.Tensor, items: list[VisualItem]) -> VisualLayout:
        """Build frame/row/col ids from consecutive items laid out t-major, then rows, then cols."""
        frames, rows, cols = [], [], []
        frame_offset = 0
        for it in items:
            t, h, w = torch.meshgrid(
                torch.arange(it.t), torch.arange(it.h), torch.arange(it.w), indexing="ij"
            )
            frames.append(t.reshape(-1) + frame_offset)
            rows.append(h.reshape(-1))
            cols.append(w.reshape(-1))
            frame_offset += it.t
        dev = positions.device
        if not items:
            empty = torch.zeros(0, dtype=torch.long, device=dev)
            return VisualLayout(positions, empty, empty, empty, [])
        return VisualLayout(
            positions,
            torch.cat(frames).to(dev),
            torch.cat(rows).to(dev),
            torch.cat(cols).to(dev),
            list(items),
        )
