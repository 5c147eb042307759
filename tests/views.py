"""Sample views for the selection tests of methods that read only the hidden states (the methods before the
decoder, similarity merges): a grid layout, a view of it over random tensors, the layouts every such method is
checked on, and the answer to compare the engine with on the tiny Qwen2.5-VL of `conftest.qwen25`, with its merge
written out by hand for the oracle."""

from __future__ import annotations

import torch

import sharp_vlm as sv
from oracle import Prompt, qwen_prompt
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


QWEN_VIDEO = VisualItem("video", 0, 8, 4, 4)  # conftest.qwen25's video: 8 temporal patches of 4 x 4 tokens


def qwen_answer(model, inputs, method: sv.StageMethod) -> tuple[sv.Selection, torch.Tensor, Prompt]:
    """(the method's answer on the decoder's input embeddings at the video rows, those rows, the prompt)."""
    prompt = qwen_prompt(model, inputs)
    rows = torch.nonzero(prompt.visual).flatten()
    lay = VisualLayout.from_grid(rows, [QWEN_VIDEO])
    n = rows.numel()
    answer = method.select(SampleView(0, 0, sv.keep_count(method.retain, n), lay, prompt.embeds, rows, n,
                                      NoScores()))
    return (answer if isinstance(answer, sv.Selection) else sv.Selection(answer)), rows, prompt


def merge_by_hand(sel: sv.Selection, visual_rows: torch.Tensor):
    """For the oracle (`staged_forward(..., merge=)`): each kept row that receives sources becomes
    (a_t h_t + sum w_i h_i) / (a_t + sum w_i), or the plain sum with `normalize=False`; w_i and a_t are 1 where
    the merge gives none."""
    m = sel.merge

    def merge(h, rows):
        out = h.clone()
        index = {int(p): i for i, p in enumerate(rows)}
        weights = [1.0] * m.source.numel() if m.weight is None else m.weight.tolist()
        groups: dict[int, list[tuple[int, float]]] = {}
        for s, t, w in zip(m.source.tolist(), m.target.tolist(), weights, strict=True):
            groups.setdefault(t, []).append((index[int(visual_rows[s])], w))
        for t, members in groups.items():
            own = 1.0 if m.target_weight is None else float(m.target_weight[t])
            acc = own * h[index[int(visual_rows[t])]].float()
            total = own
            for i, w in members:
                acc = acc + w * h[i].float()
                total += w
            out[index[int(visual_rows[t])]] = (acc / total if m.normalize else acc).to(h.dtype)
        return out

    return merge
