"""FastVID (Shen et al., "FastVID: Dynamic Density Pruning for Fast Video Large Language Models", NeurIPS 2025).

Read from the authors' repository LunarShen/FastVID at commit a40a109 (the three model ports:
`fastvid_llavavideo/LLaVA-NeXT/llava/model/language_model/modeling_qwen2.py` (`Qwen2Model.forward`, the plain
per-segment version), `fastvid_llavaonevision/LLaVA-NeXT/llava/model/language_model/modeling_qwen2.py` (the
parallelised LLaVA-OneVision version), `fastvid_qwen25vl/lmms-eval/lmms_eval/models/qwenvlutils/
modeling_qwen2_5_vl.py` (`Qwen2_5_VLForConditionalGeneration.forward` and the vision tower's last block), the
vision side in `fastvid_llavaonevision/LLaVA-NeXT/llava/model/{llava_arch.py,multimodal_encoder/siglip_encoder.py}`,
and `*/scripts/eval.sh` for the settings).

The authors' rule, before the LLM on the projector output (after the model's own 2-D pooling):
1. DySeg (dynamic temporal segmentation): a global feature per frame, L2-normalised; the cosine of each pair of
   adjacent frames; cut after the c - 1 least similar pairs and after every pair below tau. The segments are the
   runs of frames between cuts.
2. Budget: each frame is worth ``int(r x tokens per frame)``; a segment of L frames keeps L times that, of which
   ``int(segment budget x d)`` are context (anchor) tokens and the rest salient tokens.
3. ATS: the salient tokens are spread evenly over the segment's frames (remainder to the first frames); each frame
   keeps its tokens of highest vision-encoder attention, unmodified.
4. Anchor frames: every p-th frame counted back from the segment's last frame (the last, the last - p, ...); the
   context count is split evenly over them (remainder to the latest anchor frame first).
5. STPrune (DPC-KNN on the frame's non-salient tokens): distances ``||x_i - x_j|| / sqrt(D)``; density
   ``exp(-mean of the squared distances to the 4 nearest tokens, the token itself included)``; delta = the distance
   to the nearest denser token (for the densest: the largest distance in the frame); the anchors are the tokens
   of highest ``delta x density``.
6. DTM (merge): every other non-salient token of the segment is assigned to its most cosine-similar anchor; an
   anchor a with m tokens assigned becomes ``alpha a + (1 - alpha) mean(assigned)``, ``alpha = max(1 / (m + 1),
   beta)``. Salient tokens are neither merged nor merged into.
7. Kept tokens keep their original positions (all three ports pass the kept indices as position ids).

Settings in the authors' scripts: LLaVA-OneVision (32 frames) and LLaVA-Video (64 frames): r = 0.10, c = 8,
tau = 0.9, d = 0.4, p = 4, beta = 0.6; Qwen2.5-VL: r = 0.27 (24.1% kept in practice), tau = 0.84, and
`DySeg_ignore` = 0.95 (`duplicate_threshold` here), the rest alike. With beta = 0.6 >= 1/2, alpha is always beta.

Implementation here and deviations:
- features: the frame's global feature is the mean of its projector-output tokens, as the authors' Qwen2.5-VL port;
  the LLaVA ports use SigLIP's attention-pooling head output, which the decoder input does not contain.
- salience (ATS): the engine hands a layer-0 method the decoder's input embeddings only, not the vision encoder's
  attention (the authors': SigLIP's pooling-head probe attention, pooled to the token grid, on LLaVA; the last
  vision block's frame-mean query over 2x2-pooled keys on Qwen2.5-VL). Here a token's salience is the same kind of
  mean-query attention on what the stage sees: ``x_i . mean(frame) / sqrt(D)`` (the ranking of the softmax over
  the frame), with no learned projections.
- count: the total is exactly `view.budget` (the engine's one budget rule). The budget is split over the segments
  in proportion to their tokens (largest remainder, ties: the earlier segment; `vidcom2.apportion`); inside a
  segment, context = ``int(segment budget x d)`` (the authors' LLaVA-Video rule), salient = the rest, each split in
  proportion to the frames' tokens with the authors' remainder order (salient: earlier frames first; context:
  later anchor frames first). Where a frame cannot hold its share (high retain, `duplicate_threshold`, small
  frames), it is capped (salient at its tokens, context at its tokens left after its salient ones) and what is
  left becomes extra salient tokens of the segment's frames in proportion to their room. The authors' ports
  round per frame (their total falls below r x N) and would fail on an anchor frame asked for more than it holds.
- merge: each dropped token merges once, into its most similar anchor among **all** the segment's anchors. The
  authors merge per anchor frame: every non-salient token of the segment (other anchor frames' anchors too) goes
  into one anchor of each anchor frame, which a `Merge` (each dropped token into one kept token, kept tokens
  never merged) cannot express. With one anchor frame per segment (segments of at most p frames, and every
  single-frame segment) the two are the same. The update is exact: an anchor with m tokens assigned takes merge
  weight ``(1 - alpha) / (alpha m)`` for each, which gives ``alpha a + (1 - alpha) mean(assigned)``.
- the LLaVA-OneVision port differs from the other two in ways not followed here: it counts the anchor itself
  among its assigned tokens (``alpha a + (1 - alpha) mean(a and assigned)``) and gives every frame the same
  salient count ``int(r N_f) - int(int(r N_f) d)``, with the per-frame context of a segment floored.
- ties: the authors add uniform noise of 1e-6 to the density; here a tie in density goes to the lower index (it
  counts as denser), and ties in salience, score, similarity or the c - 1 cuts to the lower index.
- fewer than 4 candidate tokens in a frame: the density uses as many as there are (the authors' `topk` fails);
  fewer than c frames: every pair is cut.
- `duplicate_threshold` (the Qwen2.5-VL port's `DySeg_ignore`, off by default): inside a segment, runs of frames
  whose adjacent similarity is at least the threshold count as one frame, the run's last: it takes the run's
  counts and the run's other frames keep nothing of their own (their tokens are merged). The port's extra cap of
  context at half a frame is not applied.
- frames are segmented in order over all the frames the stage prunes (several videos, or images with
  `targets="all"`, form one sequence: a change of item is cut only where the similarity says so); frames may
  differ in size (each takes shares in proportion to its tokens).
- newlines: the authors' LLaVA-Video port keeps a row's newline token only where the row keeps a token; newline
  tokens are not visual tokens in our layouts and are never pruned.
- positions: `"original"` by default, as the authors' three ports (the other pre-LLM methods default to `"auto"`).

Cost: per anchor frame an (m, m) distance matrix over its non-salient tokens; per segment a (pool x anchors)
cosine matrix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..checks import check_int, check_number
from ..core.selection import Merge, Selection
from .base import PreLLMMethod, SampleView, register
from .vidcom2 import proportional, rank_within_groups

KNN = 4  # the authors' neighbourhood of the density: the token itself and its 3 nearest tokens


def adjacent_similarity(global_features: torch.Tensor) -> torch.Tensor:
    """(T - 1,) cosine of each frame's global feature with the next frame's."""
    g = F.normalize(global_features.float(), dim=-1)
    return (g[:-1] * g[1:]).sum(-1)


def dynamic_segments(similarity: torch.Tensor, min_segments: int, threshold: float) -> torch.Tensor:
    """(T,) segment id per frame from the (T - 1,) adjacent similarities: a cut after each of the
    `min_segments - 1` least similar pairs (ties: the earlier pair) and after every pair below `threshold`."""
    cut = similarity < threshold
    k = min(min_segments - 1, similarity.numel())
    if k > 0:
        cut[torch.sort(similarity, stable=True).indices[:k]] = True
    zero = torch.zeros(1, dtype=torch.long, device=similarity.device)
    return torch.cat([zero, torch.cumsum(cut.long(), 0)])


def anchor_units(n_units: int, stride: int) -> torch.Tensor:
    """(n_units,) which units of a segment receive context tokens: every `stride`-th counted back from the last."""
    return (n_units - 1 - torch.arange(n_units)) % stride == 0


def segment_counts(sizes: torch.Tensor, representative: torch.Tensor, budget: int, density_share: float,
                   stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(salient, context) counts per frame of one segment, summing to exactly `budget` (<= sizes.sum()).

    sizes: (L,) tokens per frame; representative: (L,) the frames that take counts (without duplicate runs, all).
    Context ``int(budget x density_share)`` goes to the anchor units (every `stride`-th representative counted
    back from the last; later ones first on ties), the rest as salient to all representatives (earlier first);
    each in proportion to the frames' tokens. A frame holds at most its tokens; what does not fit becomes extra
    salient tokens of the segment's frames in proportion to their room.
    """
    sizes = sizes.to("cpu", torch.long)
    salient = torch.zeros_like(sizes)
    context = torch.zeros_like(sizes)
    context_total = int(budget * density_share)  # the authors' int()
    rep = torch.nonzero(representative.cpu()).flatten()
    high = sizes[rep]
    s_total = min(budget - context_total, int(high.sum()))
    salient[rep] = proportional(s_total, high)
    anchors = rep[anchor_units(rep.numel(), stride)].flip(0)  # latest first: the remainder goes there first
    room = sizes[anchors] - salient[anchors]
    c_total = min(context_total, int(room.sum()))
    if c_total:
        context[anchors] = proportional(c_total, sizes[anchors], room)
    left = budget - int(salient.sum()) - int(context.sum())
    if left:
        room = sizes - salient - context
        salient += proportional(left, room)
    return salient, context


def scaled_distances(features: torch.Tensor) -> torch.Tensor:
    """(m, m) ``||x_i - x_j|| / sqrt(D)`` between the rows of `features` (m, D): the distances of DPC-KNN."""
    x = features.float()
    return torch.cdist(x[None], x[None])[0] / math.sqrt(x.shape[1])


def density_peaks(dist: torch.Tensor, knn: int = KNN) -> torch.Tensor:
    """(m,) the DPC-KNN score ``delta x density`` of m rows from their `scaled_distances` (FastVID's, HoliTom's,
    FlashVID's): density ``exp(-mean squared distance to the knn nearest rows, itself included)``; delta: the
    distance to the nearest denser row (ties in density: the lower index is denser), or the largest distance of
    all for the densest row.
    """
    m = dist.shape[0]
    near = torch.topk(dist, min(knn, m), dim=-1, largest=False).values
    density = torch.exp(-(near**2).mean(-1))
    rank = torch.empty(m, dtype=torch.long, device=dist.device)
    rank[torch.sort(-density, stable=True).indices] = torch.arange(m, device=dist.device)
    denser = rank[None, :] < rank[:, None]  # [i, j]: j is denser than i
    delta = torch.where(denser, dist, dist.max()).min(-1).values
    return delta * density


def merge_weights(groups: torch.Tensor, n_anchors: int, beta: float) -> torch.Tensor:
    """(M,) merge weights of sources assigned to anchors `groups` (M,) so that an anchor with m sources becomes
    ``alpha a + (1 - alpha) mean(sources)``, ``alpha = max(1 / (m + 1), beta)``: each source weighs
    ``(1 - alpha) / (alpha m)`` against the anchor's 1."""
    m = torch.bincount(groups, minlength=n_anchors).float().clamp(min=1)
    alpha = torch.clamp(1.0 / (m + 1), min=beta)
    return ((1 - alpha) / (alpha * m))[groups]


@register("fastvid")
@dataclass
class FastVID(PreLLMMethod):
    """FastVID: dynamic temporal segments, then per segment salient tokens and density-peak anchors that the other
    tokens of the segment merge into.

    min_segments: c, at least this many segments (the c - 1 least similar adjacent frames are always cut; 8).
    threshold: tau, also cut wherever adjacent frames' cosine is below it (0.9; the authors' Qwen2.5-VL: 0.84).
    density_share: d, the share of each segment's budget kept as density anchors (0.4).
    anchor_stride: p, every p-th frame counted back from a segment's last frame takes anchors (4).
    beta: the least weight an anchor keeps of itself when tokens merge into it (0.6).
    duplicate_threshold: None (default, the LLaVA ports) or the Qwen2.5-VL port's 0.95: runs of frames at least
        this similar count as one frame inside a segment.
    """

    retain: float = 0.1
    positions: str = "original"
    min_segments: int = 8
    threshold: float = 0.9
    density_share: float = 0.4
    anchor_stride: int = 4
    beta: float = 0.6
    duplicate_threshold: float | None = None

    def validate(self) -> None:
        super().validate()
        check_int(self.min_segments, "min_segments", 1)
        check_number(self.threshold, "threshold", -1.0, 1.0)
        check_number(self.density_share, "density_share", 0.0, 1.0)
        check_int(self.anchor_stride, "anchor_stride", 1)
        check_number(self.beta, "beta", 0.0, 1.0)
        if self.duplicate_threshold is not None:
            check_number(self.duplicate_threshold, "duplicate_threshold", -1.0, 1.0)

    def select(self, view: SampleView) -> Selection:
        n, budget, dev = view.n_visual, view.budget, view.device
        if budget >= n:
            return Selection(torch.arange(n, device=dev))
        _, frames = torch.unique(view.layout.frame_ids.to(dev), return_inverse=True)
        n_frames = int(frames.max()) + 1
        x = view.hidden.float()
        sizes = torch.bincount(frames, minlength=n_frames)
        means = torch.zeros(n_frames, x.shape[1], device=dev).index_add_(0, frames, x) / sizes[:, None]
        salience = (x * means[frames]).sum(-1) / math.sqrt(x.shape[1])

        similarity = adjacent_similarity(means)
        segments = dynamic_segments(similarity, self.min_segments, float(self.threshold)).cpu()
        representative = torch.ones(n_frames, dtype=torch.bool)
        if self.duplicate_threshold is not None:
            # a run of near-duplicate frames ends where the next frame differs enough, or at a segment's end
            representative[:-1] = (similarity.cpu() < self.duplicate_threshold) | (segments[1:] != segments[:-1])

        n_segments = int(segments.max()) + 1
        sizes_cpu = sizes.cpu()
        seg_sizes = torch.zeros(n_segments, dtype=torch.long).index_add_(0, segments, sizes_cpu)
        seg_budget = proportional(budget, seg_sizes)
        salient_count = torch.zeros(n_frames, dtype=torch.long)
        context_count = torch.zeros(n_frames, dtype=torch.long)
        for s in range(n_segments):
            fr = torch.nonzero(segments == s).flatten()
            sal, ctx = segment_counts(sizes_cpu[fr], representative[fr], int(seg_budget[s]),
                                      float(self.density_share), self.anchor_stride)
            salient_count[fr], context_count[fr] = sal, ctx

        kept = torch.zeros(n, dtype=torch.bool, device=dev)
        kept[rank_within_groups(frames, -salience, salient_count.to(dev))] = True
        is_anchor = torch.zeros(n, dtype=torch.bool, device=dev)
        for f in torch.nonzero(context_count).flatten().tolist():
            candidates = torch.nonzero((frames == f) & ~kept).flatten()
            score = density_peaks(scaled_distances(x[candidates]))
            is_anchor[candidates[torch.sort(-score, stable=True).indices[: int(context_count[f])]]] = True
        kept |= is_anchor

        token_segment = segments.to(dev)[frames]
        sources, targets, weights = [], [], []
        unit = F.normalize(x, dim=-1)
        for s in range(n_segments):
            in_segment = token_segment == s
            anchors = torch.nonzero(in_segment & is_anchor).flatten()
            pool = torch.nonzero(in_segment & ~kept).flatten()
            if anchors.numel() == 0 or pool.numel() == 0:
                continue  # nothing to merge into: the segment's other tokens are dropped
            group = torch.argmax(unit[pool] @ unit[anchors].T, dim=1)  # first maximum: the earlier anchor
            sources.append(pool)
            targets.append(anchors[group])
            weights.append(merge_weights(group, anchors.numel(), float(self.beta)))
        keep = torch.nonzero(kept).flatten()
        if not sources:
            return Selection(keep, scores=salience)
        return Selection(keep, Merge(torch.cat(sources), torch.cat(targets), torch.cat(weights)), scores=salience)
