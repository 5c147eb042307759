"""The vision tower's own attention, captured while the tower runs (for VisionZip, HoliTom, FlashVID).

A forward pre-hook on one tower layer's attention module recomputes, from the module's own q/k projections (and
q/k norms), the softmax attention of every frame, and keeps per patch: the attention it receives from the [CLS]
query (towers with a [CLS] token: CLIP, InternViT), the attention it receives on average over all queries (the
authors' rule for SigLIP, which has no [CLS]), and its key averaged over heads (VisionZip's merge metric). The
adapter maps the patch grid onto the model's visual tokens with the model's own pooling (bilinear, average pool,
pixel shuffle), so every number belongs to exactly one decoder token. The tower runs once: nothing is recomputed
outside the call.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..core.layout import VisualLayout
from ..core.tower import TowerFeatures
from ..errors import InputError, SharpError

CHUNK = 8  # frames per attention matrix: bounds the (chunk, heads, T, T) probabilities


def check_patch_features(strategy: object, label: str, family: str) -> None:
    """The projector must read patch tokens only (the [CLS] token dropped), so each maps onto a decoder token."""
    if strategy != "default":
        raise SharpError(f"{label}: the projector of this {family} reads the [CLS] token too (vision_feature_select_"
                         f"strategy={strategy!r}); the tower's attention maps onto patch tokens only")


def feature_layer(config_layer: object, n_layers: int, family: str) -> int:
    """The index of the tower layer whose output the projector reads (`vision_feature_layer` is an index into the
    hidden states, whose first entry is the embeddings)."""
    if not isinstance(config_layer, int):
        raise SharpError(f"{family}: vision_feature_layer={config_layer!r} concatenates several layers; the tower's "
                         "attention is read for a single feature layer only")
    index = config_layer % (n_layers + 1) - 1
    if index < 0:
        raise SharpError(f"{family}: vision_feature_layer={config_layer} reads the patch embeddings, which no "
                         "attention layer produced")
    return index


class TowerAttention:
    """Capture of one tower attention module during the outer model call.

    module: the attention module (q_proj, k_proj, head_dim or num_heads, scale; optional q_norm/k_norm over the
    whole width, as InternViT). has_cls: the tower's sequence starts with a [CLS] token, which the projector drops.
    to_tokens: (F, P, C) per-patch values -> (F, n, C) per visual token, with the model's own pooling.
    """

    def __init__(self, module: nn.Module, has_cls: bool, to_tokens: Callable[[torch.Tensor], torch.Tensor],
                 family: str):
        self.module, self.has_cls, self.to_tokens, self.family = module, has_cls, to_tokens, family
        self.heads = int(getattr(module, "num_heads", 0) or module.config.num_attention_heads)
        self._frames: list[torch.Tensor] = []

    def attach(self) -> torch.utils.hooks.RemovableHandle:
        return self.module.register_forward_pre_hook(self._capture, with_kwargs=True)

    def take(self) -> torch.Tensor | None:
        """At a prefill's start: the frames the tower encoded since the last call (generate() encodes the video
        before its first forward), which are this prompt's; later runs (a reference pass's black frames) are not."""
        frames = torch.cat(self._frames) if self._frames else None
        self._frames = []
        return frames

    def clear(self) -> None:
        """At a call's end: what the tower encoded during it is not the next prompt's video."""
        self._frames = []

    def _project(self, proj: str, norm: str, x: torch.Tensor) -> torch.Tensor:
        out = getattr(self.module, proj)(x)
        norm_module = getattr(self.module, norm, None)
        if norm_module is not None:
            out = norm_module(out)
        return out.view(x.shape[0], x.shape[1], self.heads, -1).transpose(1, 2).float()

    @torch.no_grad()
    def _capture(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        first = 1 if self.has_cls else 0
        out = []
        for chunk in hidden.split(CHUNK):
            q, k = self._project("q_proj", "q_norm", chunk), self._project("k_proj", "k_norm", chunk)
            probs = torch.softmax(q @ k.transpose(-1, -2) * float(self.module.scale), dim=-1)  # (F, H, T, T)
            received = probs.mean(1).mean(1)[:, first:, None]
            cls = probs[:, :, 0, first:].mean(1)[..., None] if self.has_cls else received
            keys = k.mean(1)[:, first:]
            out.append(self.to_tokens(torch.cat([received, cls, keys], dim=-1)))
        self._frames.append(torch.cat(out))

    def features(self, frames: torch.Tensor | None, layouts: list[VisualLayout]) -> list[TowerFeatures]:
        """Per sample, the `take`n frames over its visual tokens (every visual token must be a video frame)."""
        if frames is None:
            raise InputError(
                f"{self.family}: the vision tower did not run for this prompt, so its attention is unknown; pass the "
                "pixel values (not precomputed features, mm_encoder_outputs or inputs_embeds) with a method that "
                "reads the tower"
            )
        out, seen = [], 0
        for b, lay in enumerate(layouts):
            parts = []
            for item in lay.items:
                if item.kind != "video" or item.h * item.w != frames.shape[1]:
                    raise InputError(
                        f"sample {b}: methods that read the vision tower's attention take prompts whose visual "
                        f"tokens are video frames only; this one has a {item.kind} of {item.t} x {item.h} x "
                        f"{item.w} tokens beside {frames.shape[1]}-token frames"
                    )
                parts.append(frames[seen: seen + item.t].reshape(-1, frames.shape[-1]))
                seen += item.t
            per = torch.cat(parts) if parts else frames.new_zeros(0, frames.shape[-1])
            out.append(TowerFeatures(per[:, 0], per[:, 1] if self.has_cls else None, per[:, 2:]))
        if seen != frames.shape[0]:
            raise InputError(f"{self.family}: the tower encoded {frames.shape[0]} frames but the prompts hold {seen}; "
                             "pass the pixel values the processor made for these prompts")
        return out


class GivenTower:
    """Tower attention declared with the prompt (a decoder-only LM's `VideoSpan.tower`): nothing is captured."""

    def __init__(self, declared: Callable[[], TowerFeatures]):
        self.declared = declared

    def attach(self) -> GivenTower:
        return self  # nothing to hook; `remove` undoes nothing

    def remove(self) -> None:
        pass

    def take(self) -> None:
        return None

    def clear(self) -> None:
        pass

    def features(self, frames: None, layouts: list[VisualLayout]) -> list[TowerFeatures]:
        feats = self.declared()
        return [feats for _ in layouts]
