"""Sample views over random tensors, for the selection tests of methods that read only the hidden states (the
methods before the decoder, similarity merges): a grid layout, a view of it, and the layouts every such method is
checked on."""

from __future__ import annotations

import torch

from sharp_vlm.core.layout import VisualItem, VisualLayout
from sharp_vlm.methods.base import SampleView


class NoScores:
    """A score source that must not be asked: the method under test runs no attention or reference pass."""

    def attention(self, *args, **kwargs):
        raise AssertionError("the method asked for attention scores")

    def reference(self, *args, **kwargs):
        raise AssertionError("the method asked for reference scores")


def grid(*items: tuple[str, int, int, int]) -> VisualLayout:
    """A layout of (kind, frames, rows, cols) items back to back, the visual rows starting at 3."""
    out, start = [], 0
    for kind, t, h, w in items:
        out.append(VisualItem(kind, start, t, h, w))
        start += t * h * w
    return VisualLayout.from_grid(torch.arange(3, 3 + start), out)


def view(layout: VisualLayout, budget: int, hidden: torch.Tensor | None = None, seed: int = 0,
         dim: int = 16) -> SampleView:
    """A view of `layout` with `budget`; hidden states random (seeded) unless given."""
    n = layout.n_visual
    if hidden is None:
        hidden = torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))
    # the batch's rows: 3 text rows before the visual ones, 2 after
    batch = torch.cat([torch.randn(3, hidden.shape[1]), hidden, torch.randn(2, hidden.shape[1])])[None]
    return SampleView(0, 0, budget, layout, batch, torch.arange(3, 3 + n), n, NoScores())


def subset_layout() -> VisualLayout:
    """What a later stage sees: an image before the video left out (`targets="video"`: frame ids from 1), and a
    quarter of the video's tokens already pruned."""
    lay = grid(("image", 1, 2, 3), ("video", 6, 4, 4)).of_kinds(("video",))
    keep = torch.sort(torch.randperm(lay.n_visual, generator=torch.Generator().manual_seed(5))[:72]).values
    return lay.subset(keep)


LAYOUTS = {
    "video": grid(("video", 8, 4, 4)),
    "odd_frames_and_an_image": grid(("video", 7, 3, 5), ("image", 1, 2, 3), ("video", 2, 4, 4)),
    "one_frame": grid(("video", 1, 5, 5)),
    "a_row_per_frame": grid(("video", 5, 1, 8)),  # a declared span: one row of tokens per frame
    "after_an_earlier_stage": subset_layout(),
}
