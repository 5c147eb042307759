"""Any Hugging Face decoder-only LM, with the visual span declared by the caller.

Used when frames reach the decoder as ordinary tokens or embeddings (e.g. the needle probe):
the caller says where the video is, the engine prunes it like a Video LLM's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..core.layout import VisualItem, VisualLayout
from ..core.tower import TowerFeatures
from ..errors import ConfigError, InputError, UnsupportedModelError
from .base import Adapter
from .vision_attention import GivenTower


@dataclass(frozen=True)
class VideoSpan:
    """A video of `n_frames` frames x `tokens_per_frame` tokens starting at sequence position `start`.

    tower: what a vision tower's attention would say about each of the span's tokens, for methods that read it
    (VisionZip, HoliTom, FlashVID); a decoder-only LM has no tower, so without it those methods refuse to run.
    `sharp bench` passes a random stand-in (the decoder's cost does not depend on which tokens are kept).
    """

    start: int
    n_frames: int
    tokens_per_frame: int
    tower: TowerFeatures | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        for name, low in (("start", 0), ("n_frames", 1), ("tokens_per_frame", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ConfigError(f"VideoSpan {name}={value!r} must be an integer >= {low}")
        if self.tower is not None and (not isinstance(self.tower, TowerFeatures)
                                       or self.tower.received.numel() != self.n_tokens):
            raise ConfigError(f"VideoSpan tower must be a TowerFeatures over the span's {self.n_tokens} tokens")

    @property
    def n_tokens(self) -> int:
        return self.n_frames * self.tokens_per_frame

    def layout(self, device: torch.device | str = "cpu") -> VisualLayout:
        pos = torch.arange(self.start, self.start + self.n_tokens, device=device)
        return VisualLayout.from_grid(pos, [VisualItem("video", 0, self.n_frames, 1, self.tokens_per_frame)])


SpanSource = VideoSpan | Callable[[dict[str, Any]], VideoSpan]


class GenericAdapter(Adapter):
    name = "generic"

    def __init__(self, model: nn.Module, span: SpanSource | None):
        super().__init__(model)
        self.span = span
        self.last_span: VideoSpan | None = None  # the span of the latest prompt (its tower, if declared)

    def text_model(self) -> nn.Module:
        return self.model.model

    def find_layouts(self, call: dict[str, Any], seq_len: int, batch: int) -> list[VisualLayout]:
        if self.span is None:
            raise InputError(
                "no visual span declared for this decoder-only model: set `handle.span = sv.VideoSpan(start, "
                "n_frames, tokens_per_frame)` (or pass span= to sv.apply) before calling it"
            )
        span = self.span(call) if callable(self.span) else self.span
        if not isinstance(span, VideoSpan):
            raise InputError(
                f"the span function returned {type(span).__name__}, not an sv.VideoSpan; return "
                "sv.VideoSpan(start, n_frames, tokens_per_frame) for every prompt"
            )
        if span.start < 0 or span.start + span.n_tokens > seq_len:
            raise InputError(
                f"the declared video span [{span.start}, {span.start + span.n_tokens}) does not fit in the "
                f"input of {seq_len} tokens; declare the span of this prompt"
            )
        mask = call.get("attention_mask")
        if mask is not None and not bool(mask[:, span.start : span.start + span.n_tokens].all()):
            raise InputError("the declared video span covers padding tokens; left-pad so the spans align")
        device = next(self.model.parameters()).device
        self.last_span = span
        return [span.layout(device) for _ in range(batch)]

    def vision_attention(self, label: str) -> GivenTower:
        """No tower runs: the attention comes with the declared span (`VideoSpan.tower`), or the method refuses."""
        if isinstance(self.span, VideoSpan) and self.span.tower is None:
            super().vision_attention(label)

        def declared() -> TowerFeatures:
            span = self.last_span
            if span is None or span.tower is None:
                raise UnsupportedModelError(
                    f"{label} reads the vision tower's attention; this prompt's VideoSpan declares none (a "
                    "decoder-only LM has no tower): pass VideoSpan(..., tower=sv.TowerFeatures(...))"
                )
            return span.tower

        return GivenTower(declared)

    def continuation_has_visual(self, call: dict[str, Any], seq_len: int, batch: int) -> bool:
        """Never: the declared span locates the video of a prompt that starts from an empty cache, so the tokens
        of a later call are text to this adapter."""
        return False

    def reference_embeds(
        self, embeds: torch.Tensor, layouts: list[VisualLayout], call: dict[str, Any]
    ) -> torch.Tensor:
        """Every visual token becomes the pad token (EOS when there is none): a "blank" frame for a text LM."""
        cfg = self.model.config
        token = cfg.pad_token_id if cfg.pad_token_id is not None else cfg.eos_token_id
        if isinstance(token, (list, tuple)):
            token = token[0] if token else None
        if token is None:
            raise ConfigError(
                "the reference pass needs a neutral token to stand in for the frames, and this model's config sets "
                "neither pad_token_id nor eos_token_id; set one, or pass reference= to sv.apply"
            )
        blank = self.embed(torch.tensor([int(token)], device=embeds.device))[0].to(embeds.dtype)
        out = embeds.clone()
        for b, lay in enumerate(layouts):
            out[b, lay.positions] = blank
        return out
