"""Decoding after a pruned prefill: per KV cache, which original positions each layer holds and where decoding
continues; each layer gets a mask over exactly the keys its cache holds."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

import torch

from ..core.masks import to_attention_mask
from ..errors import InputError
from .rows import take


@dataclass
class Decode:
    cache: weakref.ref
    seq_len: int
    next_pos: torch.Tensor  # (B,) next position id
    layer_rows: list[torch.Tensor | None]  # per layer: original prefill positions in its cache (None: all)
    layer_pad: list[torch.Tensor | None]  # per layer: which of those are a stage's padding rows (None: none)
    steps: int = 0  # decoded tokens already in the cache
    attn2d: torch.Tensor | None = None  # (B, total) validity of the keys, None when there is no padding
    q_len: int = 0
    # attention pruning at decode steps (engine/decode_pruning.py)
    pruned_from: int | None = None  # the first layer whose attention is pruned (None: no decode pruning)
    visual_positions: list[torch.Tensor] = field(default_factory=list)  # per sample, the prunable visual tokens
    previous_scores: list[torch.Tensor | None] = field(default_factory=list)  # per sample, the last step's scores
    pruning_input: torch.Tensor | None = None  # this step's input of layer pruned_from - 1
    hidden_positions: list[torch.Tensor] | None = None  # per sample, the keys layers >= pruned_from skip this step
    stats: Any = None  # the prefill's CallStats: decode pruning adds one entry per step

    def start_step(self, q_len: int, mask: Any) -> None:
        """A decoder call with `q_len` new tokens and the caller's 2-D attention mask (or None)."""
        total = self.seq_len + self.steps + q_len
        if isinstance(mask, torch.Tensor) and mask.dim() == 2:
            attn2d = mask[:, -total:].bool()
            self.attn2d = None if bool(attn2d.all()) else attn2d  # no padding: the unpatched kernel path
        elif mask is None:
            self.attn2d = None
        else:
            raise InputError(
                f"decoding after a pruned prefill needs a 2-D attention mask (or none); got {type(mask).__name__}"
            )
        self.q_len = q_len

    def advance(self) -> None:
        """At the start of a step: count its tokens and forget the last step's decode pruning."""
        self.next_pos = self.next_pos + self.q_len
        self.steps += self.q_len
        self.pruning_input = self.hidden_positions = None

    def columns(self, i: int) -> torch.Tensor:
        """(B, K) original positions of layer i's keys once this step's tokens are in its cache (prefill rows, then
        decoded; `advance` has counted this step already)."""
        b = self.next_pos.shape[0]
        device = self.next_pos.device
        rows = self.layer_rows[i]
        if rows is None:
            rows = torch.arange(self.seq_len, device=device).expand(b, -1)
        new = torch.arange(self.seq_len, self.seq_len + self.steps, device=device).expand(b, -1)
        return torch.cat([rows.to(device), new], dim=1)

    def valid(self, i: int, cols: torch.Tensor) -> torch.Tensor:
        """(B, K) False on padding keys; `cols`: the last K of `columns(i)` (a sliding window's)."""
        valid = (torch.ones_like(cols, dtype=torch.bool) if self.attn2d is None
                 else take(self.attn2d.to(cols.device), cols))
        pad = self.layer_pad[i]
        if pad is None:
            return valid
        pad = torch.cat([pad.to(cols.device), pad.new_zeros(pad.shape[0], self.steps)], dim=1)
        return valid & ~pad[:, -cols.shape[1]:]

    def layer_mask(self, i: int, eager: bool, dtype: torch.dtype) -> Any:
        """The mask of layer i for this step (None where the kernel's causal default is exact)."""
        q = self.q_len
        hiding = self.hidden_positions is not None and self.pruned_from is not None and i >= self.pruned_from
        if self.attn2d is None and q == 1 and not hiding and self.layer_pad[i] is None:
            return None
        device = self.next_pos.device
        cols = self.columns(i)  # original positions of this layer's keys after the update
        cache = self.cache()
        held = getattr(cache.layers[i], "keys", None) if cache is not None else None
        if held is not None:
            # a sliding-window layer keeps only its last keys: the attention sees those and this step's
            n_keys = held.shape[-2] + q
            cols = cols[:, -n_keys:] if n_keys < cols.shape[1] else cols
        valid = self.valid(i, cols)
        if hiding:
            hidden = torch.stack([torch.isin(cols[b], h.to(device)) for b, h in enumerate(self.hidden_positions)])
            valid = valid & ~hidden
        kv = cols.shape[1]
        past = kv - q
        causal = torch.arange(kv, device=device)[None, :] <= (past + torch.arange(q, device=device))[:, None]
        allowed = valid[:, None, :] & causal[None]
        return to_attention_mask(allowed, dtype, "additive" if eager else "bool")


def trim_shallow(cache: Any, layer_rows: list[torch.Tensor | None], layer_pad: list[torch.Tensor | None],
                 stage_layer: int) -> tuple[list[torch.Tensor | None], list[torch.Tensor | None]]:
    """Drop from the KV of the layers before the first in-decoder stage (at `stage_layer`) the tokens it pruned, so
    that they hold what that stage's layer holds (saves decode memory); their padding rows become that layer's. A
    layer already pruned by a stage before the decoder holds a subset of the rows: its keys are found by position
    among them."""
    keep = layer_rows[stage_layer]
    rows, pads = list(layer_rows), list(layer_pad)
    for i in range(stage_layer):
        held = layer_rows[i]
        # (B, T) indices into layer i's cache: the original positions where it holds every row, else their place
        # (the last of equal positions: where layer i has padding rows, they come before the row they copy)
        idx = keep if held is None else torch.stack(
            [torch.searchsorted(h, k, right=True) - 1 for h, k in zip(held, keep, strict=True)])
        lay = cache.layers[i]
        lay.keys = take(lay.keys, idx, dim=2)
        lay.values = take(lay.values, idx, dim=2)
        rows[i], pads[i] = keep, layer_pad[stage_layer]
    return rows, pads
