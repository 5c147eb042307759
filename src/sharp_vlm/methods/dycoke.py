"""DyCoke (Tao et al., "DyCoke: Dynamic Compression of Tokens for Fast Video Large Language Models", CVPR 2025):
its temporal token merging (TTM) stage before the LLM and its dynamic pruning (DP) while decoding.

Read from the authors' repository KD-TAO/DyCoke at commit dd746349 (`llava/model/llava_arch.py`, `dycole_ttm`;
`llava/model/language_model/modeling_qwen2.py`, `PrunableDynamicCache`, for DP; `lmms_eval/models/llava_onevision.py`,
`llava/model/builder.py` for the defaults).

The authors' TTM, on the projector output after LLaVA-OV's 2-D pooling: the frames go in windows of 4
[f0, f1, f2, f3]; f0 is kept whole, f1 and f2 are compared with f0, f3 with the unpruned f2. Tokens are compared
one to one with the token at the same spatial index of that reference frame (cosine of the normalised features),
and a compared frame keeps its ``int((1 - K) x tokens per frame)`` tokens least similar to their counterparts
(K = 0.7 in their evaluation). Redundant tokens are dropped, not merged, despite the name.

The authors' DP, at each decoding step with one new token: the attention the new token paid in layer L-1 (mean
over heads) ranks the image tokens, and layers >= L attend to the top ``int(N x (1 - P))`` of them (and every text
and generated token); when that attention has cosine >= 0.9 with the previous step's, the step uses every image
token. The choice is made again at every step (L = 3, P = 0.8 in their evaluation).

Deviations:
- count: the total is `view.budget` (the engine's one budget rule), not the per-frame K. While the budget covers
  the reference frames (f0 of each window), they are kept whole and the rest of the budget is spread over the
  compared frames so that each keeps the same share of its tokens (``(budget - reference tokens) / compared
  tokens``), apportioned exactly by largest remainder (`vidcom2.apportion`; ties: the earlier frame), each frame
  keeping its least similar tokens. Below that, only the reference frames keep tokens: evenly spaced ones, the
  budget spread evenly over them (`core.select.uniform_indices`). For a video whose frame count is a multiple of 4
  and whose frames are equal, the authors' K corresponds to ``retain = 1/4 + 3/4 x (1 - K)``: K = 0.7 is
  retain 0.475 (the default here).
- frames: the windows follow the frames the stage prunes, in order (several videos or images with
  `targets="all"` are windowed as one sequence). The last window is treated like the others, and an odd last frame
  is kept; the released code skips the last full window (`range(0, T - 4, 4)`: for 32 frames f30 stays whole) and
  drops an odd last frame entirely.
- pairing: by grid coordinates (same row and column of the reference frame), which is the authors' same index for
  frames of one grid. A token with no counterpart (frames of different grids, a counterpart pruned by an earlier
  stage, a token off the grid) counts as the least similar, so it is kept first.
- ties go to the lower index; kept tokens stay in sequence order (the authors keep `topk` order inside a frame).
- DP masks the keys not chosen out of the attention of layers >= L for the step (the same softmax as the authors'
  gather of the kept keys into a smaller cache), through the engine's decode pruning (`DecodePruning`); its count
  is `keep_count(dp_retain, N)` over the N visual tokens in layer L-1's cache. The previous step's attention is
  forgotten at each new generation (the authors' is never reset between samples). A call with several new tokens
  (a later text turn) and `generate(use_cache=False)` are not pruned by DP.
- positions: `positions="auto"` renumbers contiguously on 1-D rotary positions (as the authors' LLaVA-OV) and keeps
  Qwen-VL's 3-D M-RoPE positions original (the authors have no Qwen code).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..checks import check_bool, check_int, check_number, check_retain
from ..core.select import uniform_indices
from .base import DecodePruning, DecodeView, PreLLMMethod, SampleView, register
from .vidcom2 import apportion, rank_within_groups

WINDOW = 4  # the authors' window of frames


def reference_frames(n_frames: int) -> torch.Tensor:
    """(T,) the frame each frame is compared with (-1: a reference frame, kept whole): f1, f2 -> f0, f3 -> f2."""
    t = torch.arange(n_frames)
    offset = torch.tensor([0, 1, 2, 1])[t % WINDOW]
    return torch.where(offset == 0, torch.full_like(t, -1), t - offset)


def counterpart_similarity(hidden: torch.Tensor, frames: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                           ref_of: torch.Tensor) -> torch.Tensor:
    """(N,) cosine of each token to the token at its grid cell in its frame's reference frame; -inf where it has
    none (a token of a reference frame, off the grid, or whose counterpart is absent)."""
    n, dev = frames.numel(), hidden.device
    on_grid = (rows >= 0) & (cols >= 0)
    n_rows = int(rows.max()) + 1 if bool(on_grid.any()) else 1
    n_cols = int(cols.max()) + 1 if bool(on_grid.any()) else 1
    cells = n_rows * n_cols
    # one slot per (frame, row, col): the token there, or -1
    table = torch.full(((int(frames.max()) + 1) * cells,), -1, dtype=torch.long, device=dev)
    key = frames * cells + rows.clamp(min=0) * n_cols + cols.clamp(min=0)
    table[key[on_grid]] = torch.arange(n, device=dev)[on_grid]
    ref = ref_of.to(dev)[frames]
    has = on_grid & (ref >= 0)
    partner = torch.full((n,), -1, dtype=torch.long, device=dev)
    partner[has] = table[ref[has] * cells + rows[has] * n_cols + cols[has]]
    sim = torch.full((n,), float("-inf"), dtype=torch.float32, device=dev)
    found = partner >= 0
    if bool(found.any()):
        f = F.normalize(hidden.float(), dim=-1)
        sim[found] = (f[found] * f[partner[found]]).sum(-1)
    return sim


@register("dycoke")
@dataclass
class DyCoke(PreLLMMethod):
    """DyCoke: temporal token merging (TTM) before the decoder, then dynamic pruning (DP) while decoding.

    TTM: in windows of 4 frames, drop the tokens most similar to the same grid cell of their reference frame (f1,
    f2 vs f0; f3 vs f2), keeping the reference frames whole while the budget allows.
    DP (`dp=True`, the authors' default): at every decode step, layers >= `dp_layer` attend only to the
    `dp_retain` share of the visual tokens the new token attended to most in layer `dp_layer` - 1 (mean over
    heads); a step whose attention to them has cosine >= `dp_similarity` with the previous step's attends to all
    of them. The authors' evaluation defaults: L = 3, P = 0.8 (dp_retain = 1 - P = 0.2), 0.9.
    """

    retain: float = 0.475
    dp: bool = True
    dp_layer: int = 3
    dp_retain: float = 0.2
    dp_similarity: float = 0.9

    def validate(self) -> None:
        super().validate()
        check_bool(self.dp, "dp")
        check_int(self.dp_layer, "dp_layer", 1)
        check_retain(self.dp_retain, "dp_retain")
        check_number(self.dp_similarity, "dp_similarity", -1.0, 1.0)

    def decode_pruning(self) -> DecodePruning | None:
        return DecodePruning(self.dp_layer, float(self.dp_retain), self) if self.dp else None

    def decode_select(self, view: DecodeView) -> torch.Tensor | None:
        if view.previous is not None and view.previous.shape == view.scores.shape:
            similarity = F.cosine_similarity(view.scores.float(), view.previous.float(), dim=0)
            if float(similarity) >= self.dp_similarity:
                return None  # as the authors: a step like the last one attends to every visual token
        return view.top(view.scores)

    def select(self, view: SampleView) -> torch.Tensor:
        n, budget, dev = view.n_visual, view.budget, view.device
        if budget >= n:
            return torch.arange(n, device=dev)
        lay = view.layout
        _, frames = torch.unique(lay.frame_ids.to(dev), return_inverse=True)
        n_frames = int(frames.max()) + 1
        ref_of = reference_frames(n_frames)
        is_ref = (ref_of < 0).to(dev)[frames]
        n_ref = int(is_ref.sum())
        if budget < n_ref:  # not even the reference frames fit: evenly spaced tokens of them
            ref_idx = torch.nonzero(is_ref).flatten()
            return ref_idx[uniform_indices(frames[ref_idx], budget).to(dev)]
        sim = counterpart_similarity(view.hidden, frames, lay.rows.to(dev), lay.cols.to(dev), ref_of)
        sizes = torch.bincount(frames, minlength=n_frames).cpu()
        compared = ref_of >= 0
        share = (budget - n_ref) / (n - n_ref)
        targets = torch.where(compared, sizes.double() * share, sizes.double())
        low = torch.where(compared, torch.zeros_like(sizes), sizes)  # reference frames: whole
        counts = apportion(targets, low, sizes, budget)
        # least similar first: rank by similarity ascending inside each frame (reference frames keep all)
        return rank_within_groups(frames, sim, counts)
