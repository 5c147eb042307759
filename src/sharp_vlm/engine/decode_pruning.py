"""Attention pruning at decode steps (`DecodePruning`, DyCoke's dynamic pruning): at each step with one new token
per sample, score the visual keys by the attention the new token paid them in layer L-1, let the method choose,
and hide the others from layers >= L for this step only. The cache keeps every key; masking them out of the
softmax is what gathering the kept keys into a smaller cache computes."""

from __future__ import annotations

from typing import Any

import torch

from ..core.budget import keep_count
from ..core.scoring import attention_probs
from ..core.selection import Selection, check_selection
from ..methods.base import DecodePruning, DecodeView
from ..models.base import Adapter
from .decode import Decode


def choose(dec: Decode, pruning: DecodePruning, adapter: Adapter, cache: Any,
           position_embeddings: tuple[torch.Tensor, torch.Tensor]) -> list[int | None]:
    """Set `dec.hidden_positions` for this step; returns per sample how many visual keys of layer L's cache stay
    attended (None: all). Only the visual keys layer L holds are chosen from (an in-decoder stage at or before L
    may have dropped some that layer L-1 still holds)."""
    source = pruning.layer - 1
    parts = adapter.attention_parts(source)
    hidden = dec.pruning_input
    cos, sin = position_embeddings
    q = parts.rotary(parts.queries(parts.norm(hidden)), cos, sin)  # (B, H, 1, hd)
    keys = cache.layers[source].keys  # as the cache holds them: projected, normed and rotated
    cols = dec.columns(source)  # (B, K) original positions of those keys
    allowed = dec.valid(source, cols)[:, None, :]
    probs = attention_probs(q, keys, parts.scaling, allowed, parts.softcap)[:, 0]  # (B, K)
    hide = torch.zeros_like(cols, dtype=torch.bool)
    held = dec.columns(pruning.layer).to(cols.device)  # what layer L's cache holds
    kept: list[int | None] = []
    for b in range(cols.shape[0]):
        visual = torch.isin(cols[b], dec.visual_positions[b].to(cols.device)) & torch.isin(cols[b], held[b])
        scores = probs[b, visual]
        previous = dec.previous_scores[b]
        dec.previous_scores[b] = scores
        n = int(scores.numel())
        if n == 0:
            kept.append(None)
            continue
        budget = keep_count(pruning.retain, n, n)
        choice = pruning.method.decode_select(DecodeView(b, scores, previous, budget))
        if choice is None:
            kept.append(None)
            continue
        check_selection(Selection(choice), n, budget, f"{pruning.method.name} (decode)", b)
        dropped = torch.ones(n, dtype=torch.bool, device=cols.device)
        dropped[choice.to(cols.device)] = False
        hide[b, torch.nonzero(visual).flatten()[dropped]] = True
        kept.append(budget)
    # hidden by original position, so that every layer >= L hides the same tokens whatever its cache holds
    dec.hidden_positions = [cols[b, hide[b]] for b in range(cols.shape[0])]
    return kept
