"""One prefill call: how it starts (layouts, rows, query rows) and its state while it runs through the layers."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ..core.layout import VisualLayout
from ..core.tower import TowerFeatures
from ..errors import InputError, NoVisualTokensError
from ..methods.base import TARGET_KINDS
from ..models.base import Adapter
from ..models.vision_attention import TowerAttention
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
    layer_pad: dict[int, torch.Tensor | None] = field(default_factory=dict)  # ... which of them are a stage's padding
    layer_kwargs: dict[int, dict[str, Any]] = field(default_factory=dict)  # what the shallow layers were given
    mask_cache: dict[tuple[int, int], Any] = field(default_factory=dict)  # gathered 4-D masks
    segment_kwargs: tuple[int, dict[str, Any]] | None = None  # (stages done, what the masked layers get)
    started: float = 0.0  # perf_counter at the decoder's start: times the layers before the first stage
    previous_hidden: torch.Tensor | None = None  # input of layer K-1, for a stage that scores with its attention
    position_ids: torch.Tensor | None = None  # (B, S) renumbered positions over the original rows (contiguous)
    position_shift: torch.Tensor | None = None  # (B,) how much earlier decoding continues (contiguous)
    tower: TowerAttention | None = None  # the capture of the vision tower's attention, when a stage reads it
    tower_frames: torch.Tensor | None = None  # what it captured for this prompt, per frame
    tower_features: list[TowerFeatures] | None = None  # ... per sample over its original visual tokens

    def vision(self, index: int) -> TowerFeatures:
        """Sample `index`'s tower attention over its current visual tokens."""
        if self.tower_features is None:
            full = self.full_layouts or self.layouts
            frames = sum(it.t for lay in full for it in lay.items)
            if self.expand > 1 and self.tower_frames is not None and self.tower_frames.shape[0] != frames:
                # generate() repeated the prompts for beams after the tower encoded them once each
                self.tower_features = [f for f in self.tower.features(self.tower_frames, full[:: self.expand])
                                       for _ in range(self.expand)]
            else:
                self.tower_features = self.tower.features(self.tower_frames, full)
        return self.tower_features[index].subset(self.rows.visual_orig[index].to(
            self.tower_features[index].received.device))

    @property
    def pruned(self) -> bool:
        return self.stages_done > 0

    def current_layouts(self) -> list[VisualLayout]:
        """Per sample, the layout of the visual tokens still present."""
        return [lay.subset(o) for lay, o in zip(self.layouts, self.rows.visual_orig, strict=True)]


def sync(t: torch.Tensor) -> None:
    """Wait for the GPU, so that a timer reads the work done, not the work queued."""
    if t.is_cuda:
        torch.cuda.synchronize(t.device)


# kwargs of the outer call with one row per sample (what generate() repeats for beams)
_PER_SAMPLE = ("input_ids", "inputs_embeds", "attention_mask", "mm_token_type_ids")


def unexpanded(call: dict[str, Any], batch: int, generate_batch: int | None) -> tuple[int, dict[str, Any]]:
    """generate() repeats each prompt for beams or num_return_sequences but hands the forward the grids and image
    sizes of the unexpanded prompts: (repeat factor, the call with one row per prompt)."""
    factor = batch // generate_batch if generate_batch else 1
    if factor > 1 and batch == factor * generate_batch:
        return factor, {k: v[::factor] if k in _PER_SAMPLE and isinstance(v, torch.Tensor) and v.shape[0] == batch
                        else v for k, v in call.items()}
    return 1, call


def start_prefill(adapter: Adapter, call: dict[str, Any], ref: torch.Tensor, targets: str,
                  prompt_len: int | None, generate_batch: int | None) -> Prefill:
    """A new prefill's record: each sample's layout (found on the unexpanded prompts, repeated as generate()
    repeated them), the rows, the query rows (the last real prompt token) and an empty stats record."""
    batch, seq_len = ref.shape[0], ref.shape[1]
    factor, one = unexpanded(call, batch, generate_batch)
    # the layouts of the unexpanded prompts, repeated as generate() repeated the prompts
    full = [lay for lay in adapter.find_layouts(one, seq_len, batch // factor) for _ in range(factor)]
    if not any(lay.n_visual for lay in full):
        raise NoVisualTokensError(
            "no visual tokens in the prompt: nothing to prune. Build the inputs from a message with a video "
            "(or, for a decoder-only model, declare the video span)"
        )
    layouts = [lay.of_kinds(TARGET_KINDS[targets]) for lay in full]
    if not any(lay.n_visual for lay in layouts):
        kinds = sorted({it.kind for lay in full for it in lay.items})
        raise InputError(
            f"the prompt has {' and '.join(kinds)} tokens but the method prunes targets={targets!r}; "
            f"set targets='all' (or {kinds[0]!r}) on the method config"
        )
    device = ref.device
    mask2d = call.get("attention_mask")
    key_valid = (
        torch.ones(batch, seq_len, dtype=torch.bool, device=device)
        if mask2d is None or mask2d.dim() != 2
        else mask2d[:, -seq_len:].bool().to(device)
    )
    prompt_len = prompt_len if prompt_len is not None and prompt_len <= seq_len else seq_len
    # the last real prompt token: a right-padded batch ends some samples with padding
    last_valid = seq_len - 1 - key_valid.flip(1).int().argmax(dim=1)
    query_last = torch.clamp(last_valid, max=prompt_len - 1).to(torch.long)
    pre = Prefill(
        batch=batch,
        seq_len=seq_len,
        layouts=layouts,
        full_layouts=full,
        rows=PrefillRows.start(layouts, key_valid, query_last),
        stats=CallStats(batch, seq_len, [lay.n_visual for lay in layouts]),
        call=one,
        expand=factor,
    )
    sync(ref)
    pre.started = time.perf_counter()
    return pre
