"""ShaRP's reference pass: the same prompt with content-free frames through the layers before a stage.

The adapter builds the content-free decoder input (black frames through the model's own vision tower, or the
family's equivalent; a user's `reference=` function instead); the layers then run with exactly the masks and
positions the real input had, after the same layer-0 stages (merges included). A bias cache keys the result by
everything the pass reads, per sample (`bias_keys`).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import torch
from torch import nn

from ..errors import ConfigError
from ..methods.base import SegmentMask
from ..models.base import Adapter, ReferenceFn
from .bias_cache import BiasCache
from .prefill import Prefill
from .segment_attention import RUNS_KWARG

_SAMPLE = 4096  # values read from each weight tensor for its fingerprint


def weights_fingerprint(layers: list[nn.Module]) -> list[torch.Tensor]:
    """Evenly strided values of every parameter of `layers` (the ones a reference pass and its scoring run):
    a fine-tune changes them, and reading ~4k values per tensor is cheap beside the pass itself."""
    out = []
    for layer in layers:
        for p in layer.parameters():
            flat = p.detach().reshape(-1)
            out.append(flat[:: max(1, flat.numel() // _SAMPLE)])
    return out


def bias_keys(weights: list[torch.Tensor], layer: int, query: str, rope: bool, mask: SegmentMask | None,
              pre: Prefill, reference: torch.Tensor) -> list[str]:
    """Per sample, the cached bias's key: everything the reference pass and its scoring read of that sample, so
    that a prompt shares its bias alone or in any batch.

    The weights of layers 0..K (`weights_fingerprint`), the reference input at the visual rows (so the vision
    tower, the projector and a user's `reference=` function are all in it), the layer and scoring options, the
    sample's layout, rows and the layer-0 stages' merges, counted from its first real token (a batch's left
    padding moves them all alike, which rotary attention does not see), and the prompt text the pass reads
    exactly: every token before the first visual token (system prompt, template) and the query token. Only the
    text between the video and the query token may differ between requests that share a bias.
    """
    valid = pre.rows.valid()
    starts = pre.rows.key_valid.int().argmax(dim=1).tolist()  # each sample's first real token
    text = _prompt_text(pre, starts)
    keys = []
    for b, start in enumerate(starts):
        lay, full = pre.layouts[b], pre.full_layouts[b]
        merges = []  # what layer-0 stages merged (which rows they kept is in the rows below)
        for op in pre.ops_before_decoder:
            m = op.merges[b]
            if m is not None:
                merges += [m[1].source, m[1].target, m[1].normalize, "weight", m[1].weight, "target_weight",
                           m[1].target_weight]
        positions = ("original positions" if pre.position_ids is None
                     else pre.position_ids[b, start:] - pre.position_ids[b, start])
        keys.append(BiasCache.key(
            *weights, layer, query, rope, mask, pre.rows.rows[b][valid[b]] - start, pre.rows.query_last[b] - start,
            lay.positions - start, tuple(lay.items), *merges, *text[b // pre.expand],
            reference[b // pre.expand, full.positions],
            # a layer-0 stage that renumbered the rows moves the reference pass's positions too
            positions,
        ))
    return keys


def _prompt_text(pre: Prefill, starts: list[int]) -> list[list[torch.Tensor]]:
    """Per prompt: the decoder input (ids or embeddings) from its first real token (`starts`, per row) to its first
    visual token, and at its query token."""
    x = pre.decoder_input
    if x is None:
        return [[] for _ in range(0, pre.batch, pre.expand)]
    out = []
    for b in range(0, pre.batch, pre.expand):
        lay = pre.full_layouts[b] if pre.full_layouts is not None else pre.layouts[b]
        first = int(lay.positions.min()) if lay.positions.numel() else x.shape[1]
        out.append([x[b, starts[b]:first], x[b, int(pre.rows.query_last[b])]])
    return out


def reference_input(adapter: Adapter, pre: Prefill, stage_layer: int, reference_fn: ReferenceFn | None,
                    ) -> torch.Tensor:
    """(prompts, S, D) the decoder input of each prompt with content-free frames (before any layer-0 stage)."""
    if any(0 < s.layer < stage_layer for s in pre.stats.stages):
        raise ConfigError("a reference pass cannot follow an in-decoder stage; put the debiased stage first")
    x = pre.decoder_input
    embeds = x if x.is_floating_point() else adapter.embed(x)
    # one reference per prompt (pre.call has one row per prompt), repeated for generate()'s beams later
    one, layouts = embeds[:: pre.expand], pre.full_layouts[:: pre.expand]
    ref = reference_fn(one, layouts, pre.call) if reference_fn else None
    if ref is None:
        ref = adapter.reference_embeds(one, layouts, pre.call)
    return ref.to(embeds.dtype)


def reference_hidden(
    adapter: Adapter,
    pre: Prefill,
    stage_layer: int,
    reference: torch.Tensor,
    bypass_hooks: Callable[[], AbstractContextManager],
) -> torch.Tensor:
    """Hidden states entering `stage_layer` for the reference input (`reference_input`)."""
    h = reference.repeat_interleave(pre.expand, dim=0)
    for op in pre.ops_before_decoder:
        h = op.run(h)
    state = adapter.reference_state(pre.full_layouts, pre.call, pre.batch, pre.seq_len)
    layers = adapter.layers()
    with bypass_hooks(), torch.no_grad():
        for i in range(stage_layer):
            kw = pre.layer_kwargs[i]
            runs = {RUNS_KWARG: kw[RUNS_KWARG]} if kw.get(RUNS_KWARG) is not None else {}
            out = layers[i](
                h,
                attention_mask=kw["attention_mask"],
                position_embeddings=pre.pos_emb_cur,
                position_ids=kw["position_ids"],
                cache=None,
                use_cache=False,
                **runs,
            )
            h = out[0] if isinstance(out, tuple) else out
            h = adapter.after_layer(i, h, pre.rows.rows, state)
    return h
