"""HoliTom (Shao et al., "HoliTom: Holistic Token Merging for Fast Video Large Language Models", 2025).

Read from the authors' repository cokeshao/HoliTom at commit e9b2972 (`holitom/llava_arch.py`: `select_static_windows`,
`get_static_dynamic_features`, `holitom`, `merge_tokens_by_attention_density`, `merge_tokens_by_density`,
`merge_tokens_by_clustering`, `cluster_dpc_knn`; `holitom/modeling_qwen2.py`, `Qwen2Model_holitom.forward`; the
vision side in `LLaVA-NeXT/llava/model/multimodal_encoder/siglip_encoder.py`; `scripts/` for the settings).

The authors' rule, on the projector output after the model's 2-D pooling (LLaVA-OneVision / LLaVA-Video):
1. global temporal segmentation: ``sim[t, p]`` = cosine of frame t and frame t+1 at grid position p; a segment
   [s, e] saves ``(#positions whose sim stays above tau from s to e) x (e - s)`` tokens; a dynamic programme over
   the whole video picks the segments that save the most (ties: the shorter segment, the strict ``>``);
2. the retention is raised to ``R' = min(1, R / (1 - saved / total))`` for what is left;
3. in a segment of L > 1 frames, a position whose similarity stays above tau is static: its L tokens become their
   mean (placed in the segment's first frame); the static tokens of a segment are clustered by DPC-KNN
   (``round(n_static x R')`` centres, k = min(7, centres)) and every other static token joins its nearest centre:
   a centre becomes ``beta x centre + (1 - beta) x mean(joined)`` (beta = 0.6; a centre nothing joined stays);
4. every frame keeps ``ceil(n_dynamic x R')`` of its dynamic tokens, those receiving the most attention in the
   vision tower's last layer (SigLIP: mean over heads and all queries, pooled like the features); with D > 0 a
   share D of them would instead be DPC-KNN centres of the rest (the scripts keep D = 0);
5. inside the LLM (HOLITOM_k = 18, HOLITOM_r = 0.5): at layer k, keep ``round(L (1 - r))`` visual tokens ranked by
   the last token's attention in layer k - 1 (mean over heads); each other token goes to its most cosine-similar
   kept token (states entering layer k), one at a time in sequence order, as ``kept = (kept + token) / 2``.

Implementation here and deviations:
- count: the outer stage keeps exactly `view.budget` (the engine's one budget rule for R); the authors' per-frame
  and per-segment counts are taken as they are when they add up to it, else spread in proportion to them (largest
  remainder, `vidcom2.apportion`). The in-LLM stage keeps the engine's ``keep_count(R (1 - r))`` of the original
  tokens; the authors round L (1 - r) over the span reaching layer k, newline tokens included (ours are not
  visual tokens and are never pruned).
- merges are one `Merge` per stage: each static token, and each token of a cluster, is a source of its centre's
  first-frame token with the weight that gives the authors' state (all weights sum to 1: a weighted mean); the
  in-LLM running average is the weighted mean ``2^-m h_t + sum_j 2^-(m-j+1) h_j`` over the m tokens merged into
  t in sequence order.
- ties: DPC-KNN density ties go to the lower index (the authors add uniform noise of 1e-6), attention and distance
  ties to the lower index.
- order and positions: tokens keep their sequence order (a segment's static tokens in its first frame, as the
  authors' grid mode for LLaVA-Video; their OneVision path puts a segment's static tokens before its dynamic
  ones). Positions: `positions="auto"` before the decoder (contiguous on 1-D rotary positions, as the authors'
  LLaVA), original inside it (as the authors' in-LLM stage).
- several videos in one prompt: each is segmented on its own and the budget is spread over them in proportion to
  their tokens. Frames of one video must share one grid (the same-position similarity needs it).
- defaults: R = 0.15 and tau = 0.8 (the README's example and the LLaVA-Video-7B script; the OneVision-7B script
  pairs R = 0.10 with tau = 0.65), beta 0.6, K 7, D 0, k = 18, r = 0.5. On a decoder of L layers the layers see on
  average ``R (k + (L - k)(1 - r)) / L`` of the visual tokens (`layer_averaged_retention`; 0.82 R at 28 layers).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ..checks import check_choice, check_int, check_layer, check_number, check_retain
from ..core.layout import VisualLayout
from ..core.selection import Merge, Selection
from ..errors import InputError
from .base import POSITIONS, TARGETS, Method, PreLLMMethod, SampleView, Stage, StageMethod, register
from .fastvid import density_peaks, scaled_distances
from .vidcom2 import authors_or_proportional, proportional

AUTHORS_LAYERS = 28  # the Qwen2-7B decoder of the authors' LLaVA-OneVision / LLaVA-Video


def static_windows(similarity: torch.Tensor, tau: float) -> tuple[list[tuple[int, int]], int]:
    """The authors' segmentation: ([(first, last) frame of each segment], tokens saved) from (T - 1, P)
    adjacent-frame similarities at each grid position."""
    t = similarity.shape[0] + 1
    above = (similarity > tau).float()
    saved = torch.zeros(t, t)
    for s in range(t - 1):
        still = torch.cumprod(above[s:], dim=0).sum(-1)  # positions static from s through s + 1 + i
        saved[s, s + 1:] = still.cpu() * torch.arange(1, t - s)
    best = torch.zeros(t)
    start = torch.zeros(t, dtype=torch.long)
    for i in range(t):
        value, first = (best[i - 1] if i else torch.tensor(0.0)), i
        for j in range(i - 2, -2, -1):  # windows of 2, 3, ... frames ending at i; strict > keeps the shorter
            current = (best[j] if j >= 0 else 0.0) + saved[j + 1, i]
            if current > value:
                value, first = current, j + 1
        best[i], start[i] = value, first
    segments, i = [], t - 1
    while i >= 0:
        segments.append((int(start[i]), i))
        i = int(start[i]) - 1
    return segments[::-1], int(best[-1])


def cluster(features: torch.Tensor, count: int, knn: int) -> tuple[torch.Tensor, torch.Tensor]:
    """DPC-KNN: (sorted centre indices, the centre index each row joins) for `count` centres."""
    dist = scaled_distances(features)
    score = density_peaks(dist, min(knn, count))
    centres = torch.sort(torch.sort(-score, stable=True).indices[:count]).values
    return centres, centres[torch.argmin(dist[:, centres], dim=1)]


@dataclass
class _Outer(PreLLMMethod):
    """HoliTom before the decoder (built by `HoliTom.stages`)."""

    threshold: float = 0.8
    beta: float = 0.6
    knn: int = 7
    contextual_share: float = 0.0
    reads_vision: ClassVar[bool] = True

    def select(self, view: SampleView) -> Selection:
        n, dev, lay = view.n_visual, view.device, view.layout
        attention = view.vision_attention("mean").to(dev).float()
        x = view.hidden.float()
        ends = torch.cumsum(torch.tensor([it.t for it in lay.items]), 0).to(dev)
        video = torch.bucketize(lay.frame_ids.to(dev), ends, right=True)  # the item each token's frame belongs to
        members = [torch.nonzero(video == v).flatten() for v in torch.unique(video).tolist()]
        sizes = torch.tensor([m.numel() for m in members])
        budgets = proportional(view.budget, sizes)
        plan = Plan(n)
        for idx, budget in zip(members, budgets.tolist(), strict=True):
            self._video(x[idx], attention[idx], lay.subset(idx), idx, budget, plan)
        return plan.selection(dev, attention)

    def _video(self, x: torch.Tensor, attention: torch.Tensor, lay: VisualLayout, index: torch.Tensor,
               budget: int, plan: Plan) -> None:
        _, frames = torch.unique(lay.frame_ids.to(x.device), return_inverse=True)
        t = int(frames.max()) + 1
        order = torch.argsort(frames, stable=True)
        p = x.shape[0] // t
        cells = (lay.rows * (int(lay.cols.max()) + 1) + lay.cols).to(x.device)[order]
        if p * t != x.shape[0] or not bool((cells.view(t, p) == cells[:p]).all()):
            raise InputError(
                "HoliTom compares tokens at the same grid position across frames, so every frame of a video must "
                "reach it whole; run it before the decoder, first in a schedule"
            )
        grid, att, idx = x[order].view(t, p, -1), attention[order].view(t, p), index[order].view(t, p)
        unit = F.normalize(grid, dim=-1)
        similarity = (unit[:-1] * unit[1:]).sum(-1)
        segments, saved = static_windows(similarity, float(self.threshold))
        share = min(float(self.retain) / ((t * p - saved) / (t * p)), 1.0)
        groups = []  # (count the authors keep, the group)
        for s, e in segments:
            static = (torch.all(similarity[s:e] > self.threshold, dim=0) if e > s
                      else torch.zeros(p, dtype=torch.bool, device=x.device))
            positions = torch.nonzero(static).flatten()
            if positions.numel():
                groups.append((round(positions.numel() * share), self._static(grid, idx, s, e, positions)))
            dynamic = torch.nonzero(~static).flatten()
            for f in range(s, e + 1):
                groups.append((math.ceil(dynamic.numel() * share), self._dynamic(grid[f], att[f], idx[f], dynamic)))
        room = torch.tensor([g.room for _, g in groups], dtype=torch.long)
        wanted = torch.tensor([w for w, _ in groups], dtype=torch.long).clamp(max=room)
        target = min(budget, int(room.sum()))
        counts = authors_or_proportional(wanted, room, target)
        for (_, group), count in zip(groups, counts.tolist(), strict=True):
            group.keep(count, plan)
        plan.extra += budget - target  # more than the merged video holds: un-merge the most attended tokens

    def _static(self, grid: torch.Tensor, idx: torch.Tensor, s: int, e: int, positions: torch.Tensor) -> Group:
        span = e - s + 1
        means = grid[s: e + 1, positions].mean(0)

        def keep(count: int, plan: Plan) -> None:
            if count == 0:
                return
            centres, joined = cluster(means, count, self.knn)
            for c in centres.tolist():
                others = torch.nonzero((joined == c) & (torch.arange(positions.numel(), device=grid.device) != c))
                others = others.flatten()
                own = float(self.beta) if others.numel() else 1.0
                target = idx[s, positions[c]]
                plan.keep(target)
                # the centre's L tokens carry `own` of the state, the joined positions' tokens the rest, evenly
                plan.merge(idx[s + 1: e + 1, positions[c]], target, own / span, own / span)
                if others.numel():
                    plan.merge(idx[s: e + 1][:, positions[others]].flatten(), target,
                               (1 - own) / (others.numel() * span))

        return Group(keep, positions.numel())

    def _dynamic(self, feats: torch.Tensor, att: torch.Tensor, idx: torch.Tensor, dynamic: torch.Tensor) -> Group:
        def keep(count: int, plan: Plan) -> None:
            if count == 0:
                return
            dominant = round(count * (1 - float(self.contextual_share)))
            ranked = torch.sort(-att[dynamic], stable=True).indices
            for d in dynamic[ranked[:dominant]].tolist():
                plan.keep(idx[d])
            rest = dynamic[torch.sort(ranked[dominant:]).values]
            if count > dominant:
                centres, joined = cluster(feats[rest], count - dominant, self.knn)
                for c in centres.tolist():
                    others = torch.nonzero(joined == c).flatten()
                    others = others[others != c]
                    plan.keep(idx[rest[c]])
                    if others.numel():
                        plan.merge(idx[rest[others]], idx[rest[c]], (1 - float(self.beta)) / others.numel(),
                                   float(self.beta))

        return Group(keep, dynamic.numel())


@dataclass
class Group:
    """One of the authors' count groups: a segment's static tokens, or one frame's dynamic tokens."""

    keep: Any  # (count, plan) -> None: keep `count` of the group's tokens in the plan
    room: int


class Plan:
    """Kept tokens and merge sources collected over the groups of one sample (n visual tokens)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.extra = 0  # tokens to keep beyond the groups' (a budget above what the merged video holds)
        self.kept: list[int] = []
        self.sources: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []
        self.weights: list[torch.Tensor] = []
        self.own: dict[int, float] = {}

    def keep(self, index: torch.Tensor | int) -> None:
        self.kept.append(int(index))

    def merge(self, sources: torch.Tensor, target: torch.Tensor, weight: float, own: float | None = None) -> None:
        sources = sources.flatten()
        self.sources.append(sources)
        self.targets.append(torch.full_like(sources, int(target)))
        self.weights.append(torch.full((sources.numel(),), float(weight)))
        if own is not None:
            self.own[int(target)] = own

    def selection(self, device: torch.device, attention: torch.Tensor) -> Selection:
        kept = torch.zeros(self.n, dtype=torch.bool, device=device)
        kept[torch.tensor(self.kept, dtype=torch.long, device=device)] = True
        if self.extra:  # the most attended of the rest, taken out of the merges they were in
            rest = torch.nonzero(~kept).flatten()
            kept[rest[torch.sort(-attention[rest], stable=True).indices[: self.extra]]] = True
        keep = torch.nonzero(kept).flatten()
        if not self.sources:
            return Selection(keep, scores=attention)
        sources, targets = torch.cat(self.sources).to(device), torch.cat(self.targets).to(device)
        weights = torch.cat(self.weights).to(device)
        still = ~kept[sources]
        own = torch.ones(self.n)
        for t, w in self.own.items():
            own[t] = w
        merge = Merge(sources[still], targets[still], weights[still], target_weight=own.to(device))
        return Selection(keep, merge, scores=attention)


@dataclass
class _InnerMerge(StageMethod):
    """HoliTom inside the decoder (built by `HoliTom.stages`): keep by layer K-1's last-token attention, merge each
    other token into its most similar kept token by a running average in sequence order."""

    @property
    def scores_previous_layer(self) -> bool:  # type: ignore[override]
        return True

    def select(self, view: SampleView) -> Selection:
        keep = view.top(view.attention_scores(query="last", layer="previous"))
        dropped = torch.ones(view.n_visual, dtype=torch.bool, device=view.device)
        dropped[keep] = False
        rest = torch.nonzero(dropped).flatten()
        unit = F.normalize(view.hidden.float(), dim=-1)
        target = keep[torch.argmax(unit[rest] @ unit[keep].T, dim=1)]
        return Selection(keep, running_average(rest, target, view.n_visual))


def running_average(sources: torch.Tensor, targets: torch.Tensor, n: int) -> Merge:
    """The merge that equals ``t = (t + s) / 2`` applied for each (s, t) in order: with m sources, t keeps 2^-m of
    itself and the j-th source (1-based) 2^-(m - j + 1)."""
    m = torch.bincount(targets, minlength=n)
    seen = torch.zeros(n, dtype=torch.long, device=targets.device)
    later = torch.empty_like(sources)
    for i, t in enumerate(targets.tolist()):  # how many of t's sources come after this one
        seen[t] += 1
        later[i] = m[t] - seen[t]
    weight = torch.pow(2.0, -(later + 1).double()).float()
    own = torch.pow(2.0, -m.double()).float()
    return Merge(sources, targets, weight, target_weight=own)


@register("holitom")
@dataclass
class HoliTom(Method):
    """HoliTom: global temporal segmentation and merging, attention-ranked dynamic tokens and clustered static
    tokens before the decoder, then a merge by attention and similarity at `merge_layer`.

    retain: R, the share of the visual tokens reaching the decoder (0.15). threshold: tau, the same-position
    similarity above which a token is static (0.8). beta: the share a cluster centre keeps of itself (0.6). knn:
    the DPC-KNN neighbourhood (7). contextual_share: D, the share of each frame's dynamic budget given to cluster
    centres instead of attention (0). merge_layer: k (18), or None for no merge in the decoder; merge_ratio: r,
    the share of the tokens reaching layer k that are merged away there (0.5). positions: of the stage before
    the decoder ("auto"). n_layers: the depth over which `layer_averaged_retention` is stated (28).
    """

    retain: float = 0.15
    threshold: float = 0.8
    beta: float = 0.6
    knn: int = 7
    contextual_share: float = 0.0
    merge_layer: int | None = 18
    merge_ratio: float = 0.5
    positions: str = "auto"
    targets: str = "video"
    n_layers: int = AUTHORS_LAYERS

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        check_retain(self.retain)
        check_number(self.threshold, "threshold", -1.0, 1.0)
        check_number(self.beta, "beta", 0.0, 1.0)
        check_int(self.knn, "knn", 1)
        check_number(self.contextual_share, "contextual_share", 0.0, 1.0)
        if self.merge_layer is not None:
            check_layer(self.merge_layer)
        check_number(self.merge_ratio, "merge_ratio", 0.0, 1.0)
        check_choice(self.positions, POSITIONS, "positions")
        check_choice(self.targets, TARGETS, "targets")
        check_int(self.n_layers, "n_layers", 1)

    def layer_averaged_retention(self, n_layers: int | None = None) -> float:
        """The mean over the decoder's layers of the share of the original visual tokens each one sees."""
        n = self.n_layers if n_layers is None else n_layers
        k = n if self.merge_layer is None else min(self.merge_layer, n)
        return float(self.retain) * (k + (n - k) * (1 - float(self.merge_ratio))) / n

    def stages(self) -> list[Stage]:
        self.validate()
        outer = _Outer(retain=float(self.retain), threshold=self.threshold, beta=self.beta, knn=self.knn,
                       contextual_share=self.contextual_share, positions=self.positions, targets=self.targets)
        out = [dataclasses.replace(st, label=f"{self.name}:outer") for st in outer.stages()]
        if self.merge_layer is not None and self.merge_ratio > 0:
            inner = _InnerMerge(retain=float(self.retain) * (1 - float(self.merge_ratio)), layer=self.merge_layer,
                                targets=self.targets)
            out += [dataclasses.replace(st, label=f"{self.name}:merge@{self.merge_layer}") for st in inner.stages()]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.name, **dataclasses.asdict(self),
                "layer_averaged_retention": self.layer_averaged_retention()}
