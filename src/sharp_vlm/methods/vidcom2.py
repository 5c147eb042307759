"""VidCom2 (Liu et al., "Video Compression Commander: Plug-and-Play Inference Acceleration for Video Large Language
Models", EMNLP 2025).

Read from the authors' repository xuyang-liu16/VidCom2 at commit 944a17d (`token_compressor/vidcom2/vidcom2.py`,
`token_compressor/vidcom2/models/{llava,qwen2_5_vl}.py`); the algorithm is the initial commit's
(`e1ce784:llava/model/vidcom2.py`, mode `negtive_video_mean_and_global_mean`).

The authors' rule, before the LLM on the projector output (after the model's own 2-D pooling):
1. keep the half of the channels with the lowest variance over all the video's tokens (`int(C * 0.5)`);
2. L2-normalise each token over those channels;
3. score each token by a multi-scale Gaussian similarity, ``sum_a exp(-||x - c||^2 / (2a))`` for
   a in {1/8, 1/4, 1/2, 1, 2}, to the video centre c (mean of all normalised tokens) and to its frame centre (mean
   of the frame's normalised tokens);
4. frame uniqueness ``u_t = -mean(video similarity of frame t)``; ``p = softmax((u - max u) / 0.01)``;
   per-frame share ``base x (1 + p_t - mean p)``, at most 1;
5. per frame, keep the ``round(share x tokens per frame)`` (at least 1) tokens with the lowest sum of the two
   similarities (the most distinct); no merge.

Deviations:
- count: the per-frame counts sum to exactly `view.budget` (the engine's one budget rule) with `base = budget / N`
  (N: the tokens reaching the stage); the authors round each frame on its own, so their total drifts (1553 instead
  of 1568 for 32 frames of 196 at 0.25). Rule (`apportion`): each frame's target ``share x its tokens`` is floored
  (clamped to [minimum, its tokens]); the tokens still owed go one at a time to the frames with the largest
  remainder ``target - count`` that have room (ties: the earlier frame), and a surplus (from the minimums) is taken
  back from the frames with the largest ``count - target`` above their minimum (ties: the later frame).
- minimum: every frame keeps at least 1 token when the budget is at least the number of frames (the authors'
  `clamp(min=1)`); with fewer tokens than frames, the budget goes to the frames with the largest targets.
- frames may differ in size (images beside a video with `targets="all"`, several videos): a frame's target is its
  share of its own token count; the authors assume one fixed count per frame.
- ties inside a frame go to the lower index (a stable sort), and the channel set to the lower channel index; the
  authors' `topk` order on ties is unspecified.
- the LLaVA-Video mapper's row newlines are not visual tokens in our layouts: they are never pruned, as theirs.
- positions: as the authors with `positions="auto"`: contiguous on LLaVA-style 1-D positions, the original M-RoPE
  ids on Qwen2.5-VL.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..checks import check_number
from ..core.selection import Selection
from .base import PreLLMMethod, SampleView, register

ALPHAS = (0.125, 0.25, 0.5, 1.0, 2.0)  # the authors' Gaussian scales 2^-3 .. 2^1
CHANNEL_SHARE = 0.5  # the share of lowest-variance channels kept (fixed in the authors' code)


def apportion(targets: torch.Tensor, low: torch.Tensor, high: torch.Tensor, total: int) -> torch.Tensor:
    """Integer counts in [low, high] summing to exactly `total`, near the real `targets` (largest remainder).

    Counts start at floor(target) clamped to [low, high]; while the sum is short, one more goes to each of the
    frames with room and the largest ``target - count`` (ties: lower index first), as many as are owed; while it is
    over, one less to the frames above `low` with the largest ``count - target`` (ties: higher index first).
    Requires ``sum(low) <= total <= sum(high)``.
    """
    t = targets.detach().to("cpu", torch.float64)
    lo, hi = low.to("cpu", torch.long), high.to("cpu", torch.long)
    if not (int(lo.sum()) <= total <= int(hi.sum())):
        raise ValueError(f"cannot apportion {total} within [{int(lo.sum())}, {int(hi.sum())}]")
    k = torch.minimum(torch.maximum(torch.floor(t).long(), lo), hi)
    idx = torch.arange(t.numel())
    diff = total - int(k.sum())
    while diff > 0:
        room = idx[k < hi]
        order = torch.sort(-(t[room] - k[room]), stable=True).indices
        take = room[order[:diff]]
        k[take] += 1
        diff -= take.numel()
    while diff < 0:
        over = idx[k > lo].flip(0)  # reversed, so that the stable sort prefers the later frame on ties
        order = torch.sort(-(k[over] - t[over]), stable=True).indices
        take = over[order[:-diff]]
        k[take] -= 1
        diff += take.numel()
    return k


def proportional(total: int, weights: torch.Tensor, high: torch.Tensor | None = None) -> torch.Tensor:
    """Integer counts summing to exactly `total`, in proportion to `weights` (`apportion`: largest remainder), each
    in [0, high] (default: the weights themselves, e.g. the tokens of each frame)."""
    high = weights if high is None else high
    return apportion(total * weights.double() / weights.sum().clamp(min=1), torch.zeros_like(high), high, total)


def authors_or_proportional(wanted: torch.Tensor, room: torch.Tensor, total: int) -> torch.Tensor:
    """An author's per-group counts `wanted` where they add up to `total`, else `total` spread in proportion to
    them (each group at most its `room`)."""
    return wanted if int(wanted.sum()) == total else proportional(total, wanted, room)


def rank_within_groups(groups: torch.Tensor, scores: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Indices of the `counts[g]` lowest `scores` of each group g (ties: lower index), sorted ascending.

    groups: (N,) group index 0..G-1 per element; counts: (G,) how many each group keeps.
    """
    order = torch.sort(scores, stable=True).indices
    order = order[torch.sort(groups[order], stable=True).indices]  # by group, then score, then index
    g = groups[order]
    sizes = torch.bincount(groups, minlength=counts.numel())
    starts = torch.cumsum(sizes, 0) - sizes
    rank = torch.arange(order.numel(), device=order.device) - starts[g]
    return torch.sort(order[rank < counts.to(order.device)[g]]).values


def _gaussian(dist_sq: torch.Tensor) -> torch.Tensor:
    return sum(torch.exp(-dist_sq / (2 * a)) for a in ALPHAS)


def vidcom2_scores(hidden: torch.Tensor, frames: torch.Tensor, n_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(video similarity, frame similarity) per token: the authors' multi-scale Gaussian similarity of each token,
    normalised over the lowest-variance half of the channels, to the video centre and to its frame's centre."""
    x = hidden.float()
    k = max(1, int(x.shape[-1] * CHANNEL_SHARE))
    channels = torch.sort(x.var(dim=0, unbiased=False), stable=True).indices[:k]
    f = F.normalize(x[:, channels], dim=-1)
    video_centre = f.mean(dim=0, keepdim=True)
    sizes = torch.bincount(frames, minlength=n_frames).clamp(min=1).to(f.dtype)
    frame_centre = torch.zeros(n_frames, k, dtype=f.dtype, device=f.device).index_add_(0, frames, f) / sizes[:, None]
    vid = _gaussian(((f - video_centre) ** 2).sum(-1))
    frame = _gaussian(((f - frame_centre[frames]) ** 2).sum(-1))
    return vid, frame


def frame_shares(uniqueness: torch.Tensor, base: float, temperature: float) -> torch.Tensor:
    """The authors' per-frame shares: ``base x (1 + p - mean p)`` with p the softmax of uniqueness / T, at most 1."""
    p = torch.softmax((uniqueness - uniqueness.max()) / temperature, dim=0)
    return (base * (1 + p - p.mean())).clamp(max=1.0)


@register("vidcom2")
@dataclass
class VidCom2(PreLLMMethod):
    """VidCom2: per-frame budgets from frame uniqueness, then the most distinct tokens of each frame.

    temperature: the softmax temperature of the frame budgets (the authors' 0.01: close to one-hot, so the most
        unique frame gets about twice the base share and the others slightly less).
    """

    retain: float = 0.25
    temperature: float = 0.01

    def validate(self) -> None:
        super().validate()
        check_number(self.temperature, "temperature", 0.0, low_open=True)

    def select(self, view: SampleView) -> Selection:
        n, budget = view.n_visual, view.budget
        if budget >= n:
            return Selection(torch.arange(n, device=view.device))
        _, frames = torch.unique(view.layout.frame_ids.to(view.device), return_inverse=True)
        n_frames = int(frames.max()) + 1
        vid, frame = vidcom2_scores(view.hidden, frames, n_frames)
        sizes = torch.bincount(frames, minlength=n_frames)
        uniqueness = -torch.zeros(n_frames, dtype=vid.dtype, device=vid.device).index_add_(0, frames, vid) / sizes
        shares = frame_shares(uniqueness, budget / n, float(self.temperature))
        low = torch.full((n_frames,), 1 if budget >= n_frames else 0, dtype=torch.long)
        counts = apportion(shares.cpu().double() * sizes.cpu().double(), low, sizes.cpu(), budget)
        similarity = vid + frame
        keep = rank_within_groups(frames, similarity, counts)
        return Selection(keep, scores=-similarity)  # scores: distinctness, higher is kept first within a frame
