"""ShaRP's reference pass: the same prompt with content-free frames through the layers before a stage.

The adapter builds the content-free decoder input (black frames through the model's own vision tower, or the
family's equivalent); the layers then run with exactly the masks and positions the real input had, after the
same layer-0 stages (merges included). The bias-cache key names the weights, layer, options and layout.
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


def fingerprint(model: nn.Module, adapter: Adapter) -> tuple:
    """Identifies the weights for the on-disk bias cache without hashing the whole model: the shape and a slice of
    every parameter of the first decoder layer (norm weights alone can be all ones)."""
    cfg = adapter.text_model().config
    params = [(tuple(p.shape), float(p.detach().flatten()[:64].float().sum()))
              for p in adapter.layers()[0].parameters()]
    return (type(model).__name__, getattr(cfg, "_name_or_path", ""), tuple(params))


def bias_key(cache: BiasCache, fp: tuple, layer: int, query: str, rope: bool, mask: SegmentMask | None,
             pre: Prefill, reference: tuple = ()) -> str:
    """The cached bias's key: weights, layer, options, layout, layer-0 stages, what the reference input
    depends on (`reference`: the adapter's reference_key and the user's reference function, by name), and the
    prompt text the reference pass reads exactly: every token before the first visual token (system prompt,
    template) and the query token. Only the text between the video and the query token may differ between
    requests that share a bias, so a cached bias never comes from another template, system prompt or query."""
    # what layer-0 stages did to the reference prompt (kept rows, merges) is part of the key
    ops = []
    for op in pre.ops_before_decoder:
        ops.append(op.idx)
        for m in op.merges:
            if m is not None:
                ops += [m[0], m[1].source, m[1].target] + ([m[1].weight] if m[1].weight is not None else [])
    return cache.key(
        fp, layer, query, rope, mask, reference, pre.rows.rows, pre.rows.query_last,
        *[lay.positions for lay in pre.layouts], *[tuple(lay.items) for lay in pre.layouts], *ops, *_prompt_text(pre),
    )


def _prompt_text(pre: Prefill) -> list[torch.Tensor]:
    """Per prompt: the decoder input (ids or embeddings) before its first visual token, and at its query token."""
    x = pre.decoder_input
    if x is None:
        return []
    out = []
    for b in range(0, pre.batch, pre.expand):
        lay = pre.full_layouts[b] if pre.full_layouts is not None else pre.layouts[b]
        first = int(lay.positions.min()) if lay.positions.numel() else x.shape[1]
        out += [x[b, :first], x[b, int(pre.rows.query_last[b])]]
    return out


def reference_hidden(
    adapter: Adapter,
    pre: Prefill,
    stage_layer: int,
    reference_fn: ReferenceFn | None,
    bypass_hooks: Callable[[], AbstractContextManager],
) -> torch.Tensor:
    """Hidden states entering `stage_layer` for the same prompt with content-free frames."""
    if any(0 < s.layer < stage_layer for s in pre.stats.stages):
        raise ConfigError("a reference pass cannot follow an in-decoder stage; put the debiased stage first")
    x = pre.decoder_input
    embeds = x if x.is_floating_point() else adapter.embed(x)
    # one reference per prompt (pre.call has one row per prompt), repeated for generate()'s beams
    f = pre.expand
    one, layouts = embeds[::f], pre.full_layouts[::f]
    ref = reference_fn(one, layouts, pre.call) if reference_fn else None
    if ref is None:
        ref = adapter.reference_embeds(one, layouts, pre.call)
    h = ref.to(embeds.dtype).repeat_interleave(f, dim=0)
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
