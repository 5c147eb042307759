"""FlashVID (Fan et al., "FlashVID: Efficient Video Large Language Models via Training-free Tree-based Spatiotemporal
Token Merging", ICLR 2026).

Read from the authors' repository Fanziyang-v/FlashVID at commit 1d37422 (`flashvid/utils.py`: `flashvid_compression`,
`segment`, `additional_segment`, `segment_compression`, `spatiotemporal_compression`, `dpc_knn`, `fastv_prune`;
`flashvid/token_selection.py`: `attn_div_v2_based_token_selection`; `flashvid/siglip_encoder.py`; `flashvid/
__init__.py` and `scripts/` for the settings).

The authors' rule, on the projector output after the model's 2-D pooling (LLaVA-OneVision / LLaVA-Video), with
R the retention ratio and N the tokens per frame:
1. DySeg: cut the video after every adjacent pair of frames whose mean features' cosine is below 0.9, and after
   the least similar other pairs until there are at least 8 segments (`fastvid.dynamic_segments`, the same rule);
2. per frame ``budget = ceil(N R expansion)`` (expansion 1.25), of which ``ceil(budget alpha)`` (alpha 0.7) by
   ADTS and the rest by TSTM;
3. ADTS (per frame, v2 for LLaVA): distances ``(1 - cosine)`` between the frame's tokens, each column j scaled by
   token j's vision-tower attention (SigLIP's last layer, mean over heads and queries, pooled like the features)
   and by its event relevance ``mean_c x_j . mean(frame c)`` over the segment's frames; first the token whose
   nearest other token is farthest, then greedy max-min;
4. TSTM (segments of several frames, ADTS tokens left out): each token of frame t links to its most similar token
   of frame t-1 when their cosine is above 0.8 (a softer threshold when fewer than ``budget x frames`` tokens would
   remain); the unlinked tokens are roots; a root becomes ``(root + every token of its tree) / (1 + its direct
   children)`` - the authors' count (a mean only for trees of depth 1);
5. spatial merge: ``ratio = (TSTM tokens of the segment) / roots``; when below 1, each frame's roots form
   ``ceil(roots x ratio)`` DPC-KNN clusters (k = min(7, clusters)), each the mean of its members at its centre;
6. inside the LLM at layer 20: keep ``ceil(L x 0.3)`` visual tokens by the last token's attention in layer 19.
   Layers 0-19 see 1.25 R and layers 20-27 0.375 R of the tokens: R on average over the 28 layers.

Implementation here and deviations:
- count: the stage before the decoder keeps exactly `view.budget` of ``min(1, R x expansion)`` (the engine's one
  budget rule), split over the frames in proportion to their tokens (largest remainder); ADTS takes
  ``ceil(k_f alpha)`` of a frame's k_f; the clusters of a segment are the authors' per-frame ``ceil`` counts when
  they add up to its TSTM tokens, else spread in proportion to them (largest remainder). In the LLM the engine's
  ``keep_count(R x expansion x 0.3)`` of the original tokens; the authors ceil over what reaches layer 20.
- ADTS picks each token once (the authors' v2 loop does not exclude picked tokens, which can pick one twice when
  every remaining distance is at most 0); ties go to the lower index. v1 (the authors' Qwen2.5-VL selection) is
  not offered: the Qwen-VL adapters do not expose the tower's attention.
- a one-frame segment clusters its tokens other than the ADTS ones (the authors' code clusters all of them, so an
  ADTS token is kept twice).
- where the roots of a segment are fewer than its TSTM tokens (ties at the soft threshold), the most attended
  merged tokens are kept unmerged to fill the budget.
- DPC-KNN density ties go to the lower index (the authors add uniform noise of 1e-6).
- merges are one `Merge` (normalize=False) whose weights give each kept token the authors' state as a sum over
  the original tokens.
- order and positions: tokens keep their sequence order (the authors sort by global index too); `positions="auto"`:
  contiguous on 1-D rotary positions before the decoder (the authors' LLaVA), original inside it.
- defaults: the authors' LLaVA settings (R = 0.25, expansion 1.25, alpha 0.7, temporal 0.8, segment 0.9, 8
  segments, layer 20, 0.3). `retain` is the layer-averaged retention over `n_layers` = 28; the share reaching the
  decoder is `input_retention` (both are stated in the config).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ..checks import check_choice, check_int, check_layer, check_number, check_retain
from ..core.selection import Merge, Selection
from .base import POSITIONS, TARGETS, Method, PreLLMMethod, SampleView, Stage, register
from .fastv import FastV
from .fastvid import adjacent_similarity, dynamic_segments
from .holitom import cluster
from .vidcom2 import authors_or_proportional, proportional

AUTHORS_LAYERS = 28  # the Qwen2-7B decoder of the authors' LLaVA-OneVision / LLaVA-Video


def adts(x: torch.Tensor, attention: torch.Tensor, relevance: torch.Tensor, count: int) -> torch.Tensor:
    """The authors' v2 selection of `count` rows of one frame's features `x` (m, D): greedy max-min over
    ``(1 - cosine) x attention_j x relevance_j`` (column j scaled), first the row whose nearest other row is
    farthest. Returns indices in pick order."""
    m = x.shape[0]
    unit = F.normalize(x.float(), dim=-1)
    dist = (1 - unit @ unit.T) * (attention.float() * 1e6 * relevance.float())[None, :]
    eye = torch.eye(m, dtype=torch.bool, device=x.device)
    first = torch.where(eye, torch.inf, dist).min(0).values if m > 1 else torch.zeros(1, device=x.device)
    picked = [int(torch.argmax(first))]
    nearest = dist[picked[0]].clone()
    taken = torch.zeros(m, dtype=torch.bool, device=x.device)
    taken[picked[0]] = True
    for _ in range(1, count):
        pick = int(torch.argmax(torch.where(taken, -torch.inf, nearest)))
        picked.append(pick)
        taken[pick] = True
        nearest = torch.minimum(nearest, dist[pick])
    return torch.tensor(picked, dtype=torch.long, device=x.device)


def tstm(x: torch.Tensor, frames: torch.Tensor, selected: torch.Tensor, threshold: float, lower_bound: int
         ) -> torch.Tensor:
    """(n,) the parent of each token of one segment (-1: a root or an ADTS token): its most cosine-similar
    non-selected token of the previous frame when above `threshold`, or the softer threshold that leaves at least
    `lower_bound` tokens unlinked (the authors' rule)."""
    n = x.shape[0]
    unit = F.normalize(x.float(), dim=-1)
    best = torch.full((n,), -1.0, device=x.device)
    match = torch.full((n,), -1, dtype=torch.long, device=x.device)
    for f in range(1, int(frames.max()) + 1):
        here = torch.nonzero((frames == f) & ~selected).flatten()
        before = torch.nonzero((frames == f - 1) & ~selected).flatten()
        if here.numel() and before.numel():
            value, index = (unit[here] @ unit[before].T).max(dim=1)
            best[here], match[here] = value, before[index]
    linked = best > threshold
    if int((~linked).sum()) < lower_bound:
        soft = torch.topk(best, n - lower_bound).values[-1] if n > lower_bound else torch.tensor(1.0)
        linked = best > max(float(soft), -1.0 + 1e-6)
    return torch.where(linked, match, torch.full_like(match, -1))


@dataclass
class _Outer(PreLLMMethod):
    """FlashVID before the decoder (built by `FlashVID.stages`)."""

    alpha: float = 0.7
    temporal_threshold: float = 0.8
    segment_threshold: float = 0.9
    min_segments: int = 8
    knn: int = 7
    reads_vision: ClassVar[bool] = True

    def select(self, view: SampleView) -> Selection:
        n, dev = view.n_visual, view.device
        attention = view.vision_attention("mean").to(dev).float()
        x = view.hidden.float()
        _, frames = torch.unique(view.layout.frame_ids.to(dev), return_inverse=True)
        sizes = torch.bincount(frames)
        t = sizes.numel()
        means = torch.zeros(t, x.shape[1], device=dev).index_add_(0, frames, x) / sizes[:, None]
        segments = dynamic_segments(adjacent_similarity(means), self.min_segments, float(self.segment_threshold))
        sizes_cpu = sizes.cpu()
        budgets = proportional(view.budget, sizes_cpu)
        keep = torch.zeros(n, dtype=torch.bool, device=dev)
        own = torch.ones(n, device=dev)
        weight = torch.zeros(n, device=dev)
        target = torch.full((n,), -1, dtype=torch.long, device=dev)
        extra = 0
        for s in torch.unique(segments).tolist():
            seg_frames = torch.nonzero(segments == s).flatten().tolist()
            members = torch.nonzero(torch.isin(frames, torch.tensor(seg_frames, device=dev))).flatten()
            counts = budgets[seg_frames]
            extra += self._segment(x[members], attention[members], frames[members] - seg_frames[0], means[seg_frames],
                                   counts, members, keep, own, weight, target)
        if extra:  # the most attended merged tokens, kept as they are
            rest = torch.nonzero(~keep).flatten()
            chosen = rest[torch.sort(-attention[rest], stable=True).indices[:extra]]
            keep[chosen], target[chosen], own[chosen] = True, -1, 1.0
        sources = torch.nonzero((target >= 0) & ~keep).flatten()
        kept = torch.nonzero(keep).flatten()
        if not sources.numel():
            return Selection(kept, scores=attention)
        return Selection(kept, Merge(sources, target[sources], weight[sources], target_weight=own, normalize=False),
                         scores=attention)

    def _segment(self, x: torch.Tensor, attention: torch.Tensor, frames: torch.Tensor, frame_means: torch.Tensor,
                 counts: torch.Tensor, index: torch.Tensor, keep: torch.Tensor, own: torch.Tensor,
                 weight: torch.Tensor, target: torch.Tensor) -> int:
        """Fill one segment's kept tokens and merge weights (over the sample's indices); returns the tokens its
        roots fell short by."""
        relevance = (x @ frame_means.T).mean(-1)  # mean over the segment's frames of x . mean(frame)
        selected = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        sttm = []
        for f, k in enumerate(counts.tolist()):
            member = torch.nonzero(frames == f).flatten()
            a = min(math.ceil(k * float(self.alpha)), k)
            if a:
                selected[member[adts(x[member], attention[member], relevance[member], a)]] = True
            sttm.append(k - a)
        keep[index[selected]] = True
        total = sum(sttm)
        if total == 0:
            return 0
        if len(counts) > 1:
            parent = tstm(x, frames, selected, float(self.temporal_threshold), int(counts.sum()))
        else:
            parent = torch.full((x.shape[0],), -1, dtype=torch.long, device=x.device)
        roots = (parent < 0) & ~selected
        # the tree: every linked token's root (parents sit one frame earlier), and each root's direct children
        root_of = torch.where(roots, torch.arange(x.shape[0], device=x.device), -1)
        for f in range(1, len(counts)):
            here = torch.nonzero((frames == f) & (parent >= 0)).flatten()
            root_of[here] = root_of[parent[here]]
        children = torch.bincount(parent[parent >= 0], minlength=x.shape[0]).float()
        tree = torch.nonzero(root_of >= 0).flatten()
        state = torch.zeros_like(x).index_add_(0, root_of[tree], x[tree]) / (1 + children)[:, None]
        root_index = torch.nonzero(roots).flatten()
        per_frame = torch.bincount(frames[root_index], minlength=len(counts))
        ratio = total / max(int(root_index.numel()), 1)
        if ratio >= 1:
            clusters = per_frame
        else:
            wanted = torch.ceil(per_frame.double() * ratio).long().cpu()
            clusters = authors_or_proportional(wanted, per_frame.cpu(), total)
        centre_of = torch.full((x.shape[0],), -1, dtype=torch.long, device=x.device)
        for f, c in enumerate(clusters.tolist()):
            mine = root_index[frames[root_index] == f]
            if c == 0 or mine.numel() == 0:
                continue
            if c >= mine.numel():
                centre_of[mine] = mine
                continue
            centres, joined = cluster(state[mine], c, self.knn)
            joined[centres] = centres  # a centre joins its own cluster (the authors' scatter)
            centre_of[mine] = mine[joined]
        in_cluster = centre_of >= 0
        size = torch.bincount(centre_of[in_cluster], minlength=x.shape[0]).float()
        # a kept centre is the mean of its members' states: each original token of a member's tree weighs
        # 1 / (cluster size x (1 + the member's direct children))
        token_root = torch.where(root_of >= 0, root_of, 0)
        token_centre = torch.where(root_of >= 0, centre_of[token_root], -1)
        coefficient = 1 / (size[token_centre.clamp(min=0)] * (1 + children[token_root]))
        placed = token_centre >= 0
        centres = torch.unique(token_centre[placed])
        keep[index[centres]] = True
        own[index[centres]] = coefficient[centres]
        sources = torch.nonzero(placed & ~torch.isin(torch.arange(x.shape[0], device=x.device), centres)).flatten()
        target[index[sources]] = index[token_centre[sources]]
        weight[index[sources]] = coefficient[sources]
        return max(0, total - int(centres.numel()))


@register("flashvid")
@dataclass
class FlashVID(Method):
    """FlashVID: per segment, attention-and-diversity tokens plus tree-merged, clustered tokens before the decoder,
    then attention pruning at `prune_layer`.

    retain: R, the share of the visual tokens the decoder layers see on average over `n_layers` (0.25); the share
    reaching the decoder is ``input_retention = min(1, R x expansion)`` (expansion 1.25). alpha: the share of a
    frame's budget chosen by attention and diversity (0.7). temporal_threshold: the cosine above which a token
    joins its match in the previous frame (0.8). segment_threshold / min_segments: DySeg (0.9, 8). prune_layer:
    the layer of the in-LLM pruning (20; None: none), keeping `llm_retain` (0.3) of what reaches it. knn: DPC-KNN
    neighbourhood (7). positions: of the stage before the decoder ("auto").
    """

    retain: float = 0.25
    expansion: float = 1.25
    alpha: float = 0.7
    temporal_threshold: float = 0.8
    segment_threshold: float = 0.9
    min_segments: int = 8
    prune_layer: int | None = 20
    llm_retain: float = 0.3
    knn: int = 7
    positions: str = "auto"
    targets: str = "video"
    n_layers: int = AUTHORS_LAYERS

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        check_retain(self.retain)
        check_number(self.expansion, "expansion", 0.0, low_open=True)
        check_number(self.alpha, "alpha", 0.0, 1.0)
        check_number(self.temporal_threshold, "temporal_threshold", -1.0, 1.0)
        check_number(self.segment_threshold, "segment_threshold", -1.0, 1.0)
        check_int(self.min_segments, "min_segments", 1)
        if self.prune_layer is not None:
            check_layer(self.prune_layer)
        check_retain(self.llm_retain, "llm_retain")
        check_int(self.knn, "knn", 1)
        check_choice(self.positions, POSITIONS, "positions")
        check_choice(self.targets, TARGETS, "targets")
        check_int(self.n_layers, "n_layers", 1)

    @property
    def input_retention(self) -> float:
        """The share of the original visual tokens reaching the decoder."""
        return min(1.0, float(self.retain) * float(self.expansion))

    def layer_averaged_retention(self, n_layers: int | None = None) -> float:
        """The mean over the decoder's layers of the share of the original visual tokens each one sees."""
        n = self.n_layers if n_layers is None else n_layers
        k = n if self.prune_layer is None else min(self.prune_layer, n)
        return self.input_retention * (k + (n - k) * float(self.llm_retain)) / n

    def stages(self) -> list[Stage]:
        self.validate()
        outer = _Outer(retain=self.input_retention, alpha=self.alpha, temporal_threshold=self.temporal_threshold,
                       segment_threshold=self.segment_threshold, min_segments=self.min_segments, knn=self.knn,
                       positions=self.positions, targets=self.targets)
        out = [dataclasses.replace(st, label=f"{self.name}:outer") for st in outer.stages()]
        if self.prune_layer is not None and self.llm_retain < 1:
            prune = FastV(retain=self.input_retention * float(self.llm_retain), layer=self.prune_layer,
                          attention_layer="previous", targets=self.targets)
            out += [dataclasses.replace(st, label=f"{self.name}:prune@{self.prune_layer}") for st in prune.stages()]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.name, **dataclasses.asdict(self), "input_retention": self.input_retention,
                "layer_averaged_retention": self.layer_averaged_retention()}
