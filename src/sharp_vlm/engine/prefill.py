"""The state of one prefill call while it runs through the decoder layers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..core.layout import VisualLayout
from .rows import PrefillRows, RowOp
from .stats import CallStats


@dataclass
class Prefill:
    batch: int
    seq_len: int
    layouts: list[VisualLayout]  # the visual tokens the stages prune (their targets), per sample
    rows: PrefillRows
    stats: CallStats
    call: dict[str, Any]  # the outer model call's kwargs (grids, masks) for the adapter, one row per prompt
    expand: int = 1  # generate()'s repeat of each prompt (beams, num_return_sequences): rows per prompt
    full_layouts: list[VisualLayout] | None = None  # every visual token (the reference input replaces them all)
    decoder_input: torch.Tensor | None = None  # the decoder's inputs_embeds, or its input_ids
    adapter_state: Any = None  # what the adapter adds inside the decoder (Adapter.prefill_state)
    pos_emb: tuple[torch.Tensor, torch.Tensor] | None = None  # (cos, sin) of the original rows
    pos_emb_cur: tuple[torch.Tensor, torch.Tensor] | None = None  # ... of the current rows
    stages_done: int = 0
    ops_before_decoder: list[RowOp] = field(default_factory=list)  # layer-0 stages, replayed by the reference pass
    layer_rows: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> original rows its KV holds
    layer_kwargs: dict[int, dict[str, Any]] = field(default_factory=dict)  # what the shallow layers were given
    mask_cache: dict[tuple[int, int], Any] = field(default_factory=dict)  # gathered 4-D masks
    segment_kwargs: tuple[int, dict[str, Any]] | None = None  # (stages done, what the masked layers get)
    started: float = 0.0  # perf_counter at the decoder's start: times the layers before the first stage

    @property
    def pruned(self) -> bool:
        return self.stages_done > 0

    def current_layouts(self) -> list[VisualLayout]:
        """Per sample, the layout of the visual tokens still present."""
        return [lay.subset(o) for lay, o in zip(self.layouts, self.rows.visual_orig, strict=True)]
