"""VisionZip (Yang et al., "VisionZip: Longer is Better but Not Necessary in Vision Language Models", CVPR 2025).

Read from the authors' repository dvlab-research/VisionZip at commit 3151f6d (`visionzip/clip_encoder.py`,
`CLIPVisionTower_VisionZip.forward`; `visionzip/utils.py`, `CLIPAttention_forward` and `apply_info`;
`visionzip/main.py`, `visionzip()`).

The authors' rule, per image, in the vision tower's layer whose output feeds the projector (CLIP's penultimate):
1. dominant tokens: the patches receiving the most attention from the [CLS] query (softmax over all keys, [CLS]
   included; summed over heads), plus [CLS] itself;
2. contextual tokens: the other patches, in their original order, with the layer's keys averaged over heads and
   L2-normalised as the metric; ``step = max(1, M // c)`` and the targets are the first c of ``range(0, M, step)``
   of those M patches; every other patch goes to its most similar target (dot product of the normalised keys,
   first maximum);
3. a contextual token is ``target + mean(patches assigned to it)`` (a target with none stays as it is) - a sum,
   not a weighted mean: this is what `sv.Merge(normalize=False)` is for;
4. the counts are set per image: 54 + 10, 108 + 20, 162 + 30 (dominant with [CLS] + contextual) for 64, 128,
   192 tokens (the paper's settings), i.e. contextual = 10/64 of the total.

Implementation here and deviations:
- tokens: our visual tokens are the decoder's (after the model's pooling); the tower's attention and keys are
  mapped onto them with that pooling (`SampleView.vision_attention`, `vision_keys`). The projector drops [CLS] in
  every supported family, so [CLS] is not kept and all dominant tokens are patches.
- video: the authors' code is image-only (LLaVA-1.5 / LLaVA-NeXT); each frame is compressed as one image, as the
  video ports of the method do. Budget: `view.budget` (the engine's one budget rule) is split over the frames in
  proportion to their tokens (largest remainder, ties: the earlier frame); each frame keeps
  ``round(k x contextual_share)`` contextual tokens of its k (half up) and the rest as dominant.
- towers without [CLS] (SigLIP: LLaVA-OneVision, LLaVA-Video): the dominant tokens are ranked by the attention
  each patch receives on average over all queries (the rule HoliTom's and FlashVID's code use on SigLIP).
- the merge acts on the decoder's input embeddings (after the projector and the model's pooling); the authors sum
  tower features before their MLP projector, so a contextual token here is the sum of projected tokens, not the
  projection of a sum (on LLaVA-OneVision the pooling after the projector leaves no tower-space token per
  decoder token to sum).
- order and positions: kept tokens stay in their original order (contextual tokens where their target was); the
  authors put the contextual tokens after the dominant ones. Positions: `positions="auto"` (contiguous on 1-D
  rotary positions, as the authors' LLaVA; original on Qwen's M-RoPE, where the tower is not exposed anyway).
- ties in attention go to the lower index (the authors' `topk` leaves them unspecified).
- default retain 0.25 (the authors give no video setting; 64 / 128 / 192 of 576 are 11 / 22 / 33%).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..checks import check_number
from ..core.selection import Merge, Selection
from .base import PreLLMMethod, SampleView, register
from .vidcom2 import proportional

CONTEXTUAL_SHARE = 10 / 64  # the authors' 54 + 10 / 108 + 20 / 162 + 30


def evenly_spaced_targets(m: int, c: int) -> torch.Tensor:
    """The authors' contextual targets among m candidates: the first c of range(0, m, max(1, m // c))."""
    return torch.arange(0, m, max(1, m // c))[:c]


def contextual_merge(keys: torch.Tensor, candidates: torch.Tensor, c: int) -> tuple[torch.Tensor, Merge]:
    """(targets, merge) for c contextual tokens among `candidates` (indices, original order) by their keys."""
    picked = evenly_spaced_targets(candidates.numel(), c).to(candidates.device)
    is_target = torch.zeros(candidates.numel(), dtype=torch.bool, device=candidates.device)
    is_target[picked] = True
    targets, rest = candidates[is_target], candidates[~is_target]
    unit = F.normalize(keys.float(), dim=-1)
    group = torch.argmax(unit[rest] @ unit[targets].T, dim=1)
    counts = torch.bincount(group, minlength=targets.numel()).clamp(min=1).float()
    return targets, Merge(rest, targets[group], 1.0 / counts[group], normalize=False)


@register("visionzip")
@dataclass
class VisionZip(PreLLMMethod):
    """VisionZip: per frame, the tokens the vision tower attends to most (dominant) plus a few contextual tokens,
    each the sum of an evenly spaced target and the mean of the other tokens most similar to it.

    contextual_share: the share of each frame's tokens that are contextual (10/64, the authors' 54 + 10).
    """

    contextual_share: float = CONTEXTUAL_SHARE
    reads_vision = True

    def validate(self) -> None:
        super().validate()
        check_number(self.contextual_share, "contextual_share", 0.0, 1.0)

    def select(self, view: SampleView) -> Selection:
        budget, dev = view.budget, view.device
        attention = view.vision_attention("cls").to(dev)
        keys = view.vision_keys().to(dev)
        _, frames = torch.unique(view.layout.frame_ids.to(dev), return_inverse=True)
        sizes = torch.bincount(frames).cpu()
        counts = proportional(budget, sizes)
        keep, merges = [], []
        for f in range(sizes.numel()):
            members = torch.nonzero(frames == f).flatten()
            k = int(counts[f])
            if k >= members.numel():
                keep.append(members)
                continue
            c = math.floor(k * float(self.contextual_share) + 0.5)
            order = torch.sort(-attention[members].float(), stable=True).indices
            dominant = members[order[: k - c]]
            keep.append(dominant)
            if c:
                candidates = members[torch.sort(order[k - c:]).values]
                targets, merge = contextual_merge(keys, candidates, c)
                keep.append(targets)
                merges.append(merge)
        kept = torch.sort(torch.cat(keep)).values
        if not merges:
            return Selection(kept, scores=attention)
        merge = Merge(*(torch.cat([getattr(m, f) for m in merges]) for f in ("source", "target", "weight")),
                      normalize=False)
        return Selection(kept, merge, scores=attention)
