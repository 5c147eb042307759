"""The engine: forward hooks that run a method's stages inside the decoder.

Data flow of one prefill (all per-instance hooks, nothing patched on classes):
  outer model pre-hook   -> remember the call's kwargs (input_ids, grids, attention mask)
  decoder pre-hook       -> find the visual layout, start a prefill record
  layer i pre-hook       -> i < first stage: segment mask (if the method asks for it)
                            i is a stage layer: score, select, gather hidden states/positions/masks
                            i after a stage: hand the layer the gathered positions and mask
  decoder post-hook      -> remember, per KV cache, which original positions each layer holds
During decoding the decoder pre-hook sets positions to (unpruned length + t) and the layer hooks give
each layer a mask over exactly the keys its cache holds.
"""

from __future__ import annotations

import copy
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..bench.flops import DecoderShape, prefill_flops, scoring_flops
from ..config import Method, SegmentMask, Stage
from ..core.layout import VisualLayout
from ..core.masks import segment_allowed, to_attention_mask
from ..core.scoring import apply_rotary, attention_probs
from ..errors import ConfigError, InputError
from ..models.base import Adapter
from .bias_cache import BiasCache
from .segment_attention import RUNS_KWARG, SEGMENT_ATTENTION, segment_runs
from .stats import CallStats, StageStats
from .view import StageView


def _take(x: torch.Tensor, rows: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Gather per-sample rows along `dim` (rows: (B, T) indices); broadcasts a batch-1 x."""
    b = rows.shape[0]
    if x.shape[0] == 1 and b > 1:
        x = x.expand(b, *x.shape[1:])
    idx = rows.view(b, *([1] * (dim - 1)), rows.shape[1], *([1] * (x.dim() - dim - 1)))
    idx = idx.expand(*x.shape[:dim], rows.shape[1], *x.shape[dim + 1 :])
    return torch.gather(x, dim, idx.to(x.device))


def _matches(mask: Any, ids: Any) -> bool:
    return isinstance(mask, torch.Tensor) and isinstance(ids, torch.Tensor) and mask.shape == ids.shape


def _add(record: dict[str, Any], key: str, value: float) -> None:
    record[key] = record.get(key, 0) + value


def _elapsed(t0: float, out: torch.Tensor) -> float:
    _sync(out)
    return time.perf_counter() - t0


def _constant_like(x: torch.Tensor) -> torch.Tensor:
    """(B, H, T, hd) -> the same shape filled, per head, with one vector of the heads' mean norm."""
    norm = x.float().norm(dim=-1).mean(dim=-1, keepdim=True)[..., None]  # (B, H, 1, 1)
    return (norm / x.shape[-1] ** 0.5).expand_as(x).to(x.dtype)


def _sync(t: torch.Tensor) -> None:
    if t.is_cuda:
        torch.cuda.synchronize(t.device)


@dataclass
class _Prefill:
    """State of one prefill call while it runs through the layers."""

    batch: int
    seq_len: int
    layouts: list[VisualLayout]
    key_valid: torch.Tensor  # (B, S) bool, False on padding
    query_last: torch.Tensor  # (B,) original position of the last prompt token
    rows: torch.Tensor  # (B, S_cur) original positions of the current rows
    visual_rows: list[torch.Tensor]  # per sample: current row of each surviving visual token
    visual_orig: list[torch.Tensor]  # per sample: original visual index of each surviving visual token
    stats: CallStats
    pos_emb: tuple[torch.Tensor, torch.Tensor] | None = None  # original (cos, sin)
    pos_emb_cur: tuple[torch.Tensor, torch.Tensor] | None = None
    pruned: bool = False
    layer_rows: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> rows its KV holds
    mask_cache: dict[tuple[int, int], Any] = field(default_factory=dict)
    segment_kwargs: tuple[int, dict[str, Any]] | None = None  # (stages done, what the masked layers get)
    layer_kwargs: dict[int, dict[str, Any]] = field(default_factory=dict)  # what shallow layers were given
    embeds: torch.Tensor | None = None  # decoder input, for the reference pass
    started: float = 0.0  # perf_counter at the decoder's start: times the layers before the first stage


@dataclass
class _Decode:
    """Per KV cache: what each layer holds, and where decoding continues."""

    cache: weakref.ref
    seq_len: int
    next_pos: torch.Tensor  # (B,) next position id
    layer_rows: list[torch.Tensor | None]  # per layer: original prefill positions in its cache (None: all)
    steps: int = 0  # decoded tokens already in the cache
    attn2d: torch.Tensor | None = None
    q_len: int = 0


class Engine:
    def __init__(
        self,
        model: nn.Module,
        method: Method,
        adapter: Adapter,
        trim_kv: bool = False,
        reference_fn: Any = None,
    ):
        self.model = model
        self.reference_fn = reference_fn
        self.method = method
        self.adapter = adapter
        self.trim_kv = trim_kv
        self.stages: list[Stage] = method.stages()
        self.seg: SegmentMask | None = method.segment_mask()
        self._validate()
        self.stage_at = {s.layer: s for s in self.stages}
        self.first_stage = self.stages[0].layer if self.stages else adapter.n_layers
        self.last_stage = self.stages[-1].layer if self.stages else 0
        # a method's segment mask covers the layers before its (last) stage
        self.seg_until = self.last_stage if self.stages else adapter.n_layers
        self._segment_forward = self.seg is not None and self.seg.scope == "forward" and self.seg.mode != "off"
        self._in_reference = False
        self._decoder_shape: DecoderShape | None = None
        self._swapped: list[tuple[nn.Module, Any]] = []
        self.last_stats: CallStats | None = None
        self._call: dict[str, Any] = {}
        self._prompt_len: int | None = None
        self._generate_call: dict[str, Any] = {}
        self._pre: _Prefill | None = None
        self._decodes: dict[int, _Decode] = {}
        self._dec: _Decode | None = None
        self._handles: list[Any] = []

    # ---------------------------------------------------------------- setup
    def _validate(self) -> None:
        n = self.adapter.n_layers
        layers = [s.layer for s in self.stages]
        for s in self.stages:
            if s.layer >= n:
                raise ConfigError(
                    f"{s.label}: layer={s.layer} is beyond the model's depth; this decoder has {n} layers, "
                    f"so use a layer in 1..{n - 1} (0 prunes before the decoder)"
                )
        if layers != sorted(set(layers)):
            raise ConfigError(f"stage layers must be strictly increasing, got {layers}")

    def attach(self) -> None:
        tm = self.adapter.text_model()
        self._handles.append(self.model.register_forward_pre_hook(self._outer_pre, with_kwargs=True))
        self._handles.append(tm.register_forward_pre_hook(self._decoder_pre, with_kwargs=True))
        self._handles.append(tm.register_forward_hook(self._decoder_post, with_kwargs=True))
        for i, layer in enumerate(self.adapter.layers()):
            self._handles.append(layer.register_forward_pre_hook(self._layer_pre(i), with_kwargs=True))
        if self._segment_forward:
            self._use_masked_kernel()

    def _use_masked_kernel(self) -> None:
        """The segment-masked layers run block-wise SDPA (engine.segment_attention) instead of a dense mask.

        Per instance, on those layers only; FlashAttention takes no arbitrary mask, so it switches too. Eager
        attention keeps the dense additive mask (whoever picked eager wants its exact computation).
        """
        if self._attn_impl() == "eager":
            return
        for layer in list(self.adapter.layers())[: self.seg_until]:
            attn = layer.self_attn
            cfg = copy.copy(attn.config)
            cfg._attn_implementation = SEGMENT_ATTENTION
            self._swapped.append((attn, attn.config))
            attn.config = cfg

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        for attn, cfg in self._swapped:
            attn.config = cfg
        self._swapped.clear()
        self._handles.clear()
        self._decodes.clear()
        self._pre = self._dec = None

    # ---------------------------------------------------------------- hooks
    def _outer_pre(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        call = dict(kwargs)
        if args:
            call.setdefault("input_ids", args[0])
        # generate() encodes the video once and may not forward the grids or an all-ones mask to the model:
        # take them from the generate() call when this forward lacks them
        for key, value in self._generate_call.items():
            if call.get(key) is None and value is not None:
                if key == "attention_mask" and not _matches(value, call.get("input_ids")):
                    continue
                call[key] = value
        self._call = call

    def _decoder_pre(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        embeds = kwargs.get("inputs_embeds")
        ids = kwargs.get("input_ids", args[0] if args else None)
        ref = embeds if embeds is not None else ids
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        past = cache.get_seq_length() if cache is not None else 0
        self._pre = self._dec = None
        if past > 0:
            dec = self._decodes.get(id(cache))
            if dec is not None and dec.cache() is cache:
                return self._start_decode(dec, ref, args, kwargs)
            if self._has_visual_tokens():
                raise InputError(
                    "this prompt with visual tokens continues an existing KV cache that was not filled by the "
                    "pruning engine; pruning must start from an empty cache"
                )
            return None
        self._start_prefill(ref)
        if self._pre is not None:
            self._pre.embeds = embeds if embeds is not None else self.adapter.text_model().embed_tokens(ids)
        return None

    def _decoder_post(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        pre, self._pre = self._pre, None
        if self._dec is not None:
            self._dec = None
            return
        if pre is None:
            return
        self.last_stats = pre.stats
        cache = getattr(output, "cache", None) or getattr(output, "past_key_values", None)
        if cache is None:
            return
        pos = kwargs.get("position_ids")
        if pos is None:  # the decoder numbered the prompt 0..S-1
            next_pos = torch.full((pre.batch,), pre.seq_len, device=pre.rows.device)
        else:
            # decoding continues one past the last prompt token (not past the largest id: Qwen's temporal
            # ids can exceed the text ids)
            if pos.dim() == 3:
                pos = pos[-3:].amax(0)
            next_pos = pos.expand(pre.batch, -1)[:, -1] + 1
        layer_rows: list[torch.Tensor | None] = [pre.layer_rows.get(i) for i in range(self.adapter.n_layers)]
        if self.trim_kv and self.stages:
            layer_rows = self._trim(cache, layer_rows)
        for key, dec in list(self._decodes.items()):
            if dec.cache() is None:
                del self._decodes[key]
        self._decodes[id(cache)] = _Decode(weakref.ref(cache), pre.seq_len, next_pos.to(torch.long), layer_rows)

    def _trim(self, cache: Any, layer_rows: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
        """Drop pruned tokens from the KV of the layers before the first stage (saves decode memory)."""
        first = next(r for r in layer_rows if r is not None)
        out = list(layer_rows)
        for i in range(self.first_stage):
            lay = cache.layers[i]
            lay.keys = _take(lay.keys, first, dim=2)
            lay.values = _take(lay.values, first, dim=2)
            out[i] = first
        return out

    def _layer_pre(self, i: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
            if self._in_reference:
                return None  # the reference pass calls layers with fully prepared arguments
            if self._dec is not None:
                return self._decode_layer(i, args, kwargs)
            pre = self._pre
            if pre is None:
                return None
            if pre.pos_emb is None:
                pre.pos_emb = pre.pos_emb_cur = kwargs.get("position_embeddings")
            if i in self.stage_at:
                args, kwargs = self._run_stage(self.stage_at[i], args, kwargs)
            if pre.pruned:
                kwargs = self._gathered_kwargs(kwargs)
                pre.layer_rows[i] = pre.rows
            if self._segment_forward and i < self.seg_until:
                kwargs = dict(kwargs, **self._segment_kwargs())
            if i < self.last_stage:
                pre.layer_kwargs[i] = {k: kwargs.get(k) for k in ("attention_mask", "position_ids", RUNS_KWARG)}
            return args, kwargs

        return hook

    # ---------------------------------------------------------------- prefill
    def _has_visual_tokens(self) -> bool:
        try:
            ids = self._call.get("input_ids")
            seq = ids.shape[1] if ids is not None else 0
            return any(lay.n_visual for lay in self.adapter.find_layouts(self._call, seq, 1))
        except InputError:
            return False

    def _start_prefill(self, ref: torch.Tensor) -> None:
        batch, seq_len = ref.shape[0], ref.shape[1]
        layouts = self.adapter.find_layouts(self._call, seq_len, batch)
        if not any(lay.n_visual for lay in layouts):
            raise InputError(
                "no visual tokens in the prompt: nothing to prune. Build the inputs from a message with a video "
                "(or, for a decoder-only model, declare the video span)"
            )
        if batch > 1 and len({lay.n_visual for lay in layouts}) > 1:
            raise InputError(
                f"a batch of videos with different token counts ({[lay.n_visual for lay in layouts]}) is not "
                "supported yet; batch videos of one size together or run them one at a time"
            )
        device = ref.device
        mask2d = self._call.get("attention_mask")
        key_valid = (
            torch.ones(batch, seq_len, dtype=torch.bool, device=device)
            if mask2d is None or mask2d.dim() != 2
            else mask2d[:, -seq_len:].bool().to(device)
        )
        prompt_len = self._prompt_len if self._prompt_len is not None and self._prompt_len <= seq_len else seq_len
        query_last = torch.full((batch,), prompt_len - 1, dtype=torch.long, device=device)
        rows = torch.arange(seq_len, device=device).expand(batch, -1)
        self._pre = _Prefill(
            batch=batch,
            seq_len=seq_len,
            layouts=layouts,
            key_valid=key_valid,
            query_last=query_last,
            rows=rows,
            visual_rows=[lay.positions.to(device) for lay in layouts],
            visual_orig=[torch.arange(lay.n_visual, device=device) for lay in layouts],
            stats=CallStats(batch, seq_len, [lay.n_visual for lay in layouts]),
        )
        _sync(ref)
        self._pre.started = time.perf_counter()

    def _segment_ids(self, pre: _Prefill, frames_per_segment: int) -> torch.Tensor:
        return torch.stack([lay.segment_ids(pre.seq_len, frames_per_segment) for lay in pre.layouts])

    def _segment_kwargs(self) -> dict[str, Any]:
        """What the segment-masked layers get over the current rows: the runs of the block-wise kernel where it
        applies (no padding, one layout for the batch, a kernel that was switched), else a dense mask."""
        pre = self._pre
        key = len(pre.stats.stages)
        if pre.segment_kwargs is None or pre.segment_kwargs[0] != key:
            seg = _take(self._segment_ids(pre, self.seg.frames_per_segment), pre.rows)
            runs = None
            if self._swapped and bool(_take(pre.key_valid, pre.rows).all()):
                runs = segment_runs(seg, self.seg.mode)
            kwargs = {"attention_mask": None, RUNS_KWARG: runs} if runs else {"attention_mask": self._segment_mask(seg)}
            pre.segment_kwargs = (key, kwargs)
        return pre.segment_kwargs[1]

    def _segment_mask(self, seg: torch.Tensor) -> Any:
        """Dense segment-aware mask for the shallow layers, over the current rows (padding keys stay masked)."""
        pre = self._pre
        allowed = torch.stack([segment_allowed(s, self.seg.mode) for s in seg])
        allowed &= _take(pre.key_valid, pre.rows)[:, None, :]
        allowed |= torch.eye(seg.shape[1], dtype=torch.bool, device=allowed.device)[None]
        kind = "additive" if self._attn_impl() == "eager" else "bool"
        return to_attention_mask(allowed, self._dtype(), kind)

    def _shape(self) -> DecoderShape:
        if self._decoder_shape is None:
            self._decoder_shape = DecoderShape.from_config(self.adapter.text_model().config)
        return self._decoder_shape

    def _fingerprint(self) -> tuple:
        """Identifies the weights for the on-disk bias cache without hashing the whole model."""
        cfg = self.adapter.text_model().config
        w = self.adapter.layers()[0].self_attn.q_proj.weight
        return (type(self.model).__name__, getattr(cfg, "_name_or_path", ""), tuple(w.shape),
                float(w.detach().flatten()[:64].float().sum()))

    def _attn_impl(self) -> str:
        return getattr(self.adapter.text_model().config, "_attn_implementation", "sdpa") or "sdpa"

    def _dtype(self) -> torch.dtype:
        return next(self.adapter.text_model().parameters()).dtype

    def _run_stage(self, stage: Stage, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        pre = self._pre
        hidden = args[0] if args else kwargs["hidden_states"]
        _sync(hidden)
        t0 = time.perf_counter()
        layer = self.adapter.layers()[stage.layer] if stage.layer < self.adapter.n_layers else None
        extras: dict[str, Any] = {}
        if not pre.stats.stages:
            # the layers before the first stage, segment mask included: what a method's mask costs shows here
            extras["layers_before_seconds"] = t0 - pre.started

        def scorer(
            query: str = "last",
            rope: bool = True,
            mask: SegmentMask | None = None,
            source: str = "input",
            content_free: bool = False,
            cache: tuple[int, str | None] | None = None,
        ) -> torch.Tensor:
            if stage.layer == 0:
                raise ConfigError(
                    f"{stage.label} scores by attention and cannot run at layer 0 (before the decoder); use layer >= 1"
                )
            n_query = int(sum(r.numel() for r in self.query_rows(query)))
            flops = scoring_flops(self._shape(), pre.rows.shape[1], n_query)["total"] * pre.batch
            if source == "input":
                t = time.perf_counter()
                out = self.scores(layer, hidden, query=query, rope=rope, mask=mask, content_free=content_free)
                _add(extras, "scoring_seconds", _elapsed(t, out))
                _add(extras, "scoring_flops", flops)
                return out
            if source != "reference":
                raise ConfigError(f"source={source!r} must be 'input' or 'reference'")
            t = time.perf_counter()
            key = None
            if cache is not None:
                bias_cache = BiasCache.shared(*cache)
                key = bias_cache.key(
                    self._fingerprint(), stage.layer, query, rope, mask, pre.rows, pre.query_last,
                    *[lay.positions for lay in pre.layouts], *[tuple(lay.items) for lay in pre.layouts],
                )
                hit = bias_cache.get(key)
                if hit is not None:
                    extras["bias_cache"] = "hit"
                    _add(extras, "reference_seconds", time.perf_counter() - t)
                    return hit.to(hidden.device)
                extras["bias_cache"] = "miss"
            ref_hidden = self.reference_hidden(stage.layer)
            out = self.scores(layer, ref_hidden, query=query, rope=rope, mask=mask)
            if key is not None:
                bias_cache.put(key, out)
            dense = prefill_flops(self._shape(), pre.rows.shape[1])["layers"][: stage.layer]
            _add(extras, "reference_seconds", _elapsed(t, out))
            _add(extras, "reference_flops", (sum(dense) + flops) * pre.batch)
            return out

        layouts = [lay.subset(o) for lay, o in zip(pre.layouts, pre.visual_orig, strict=True)]
        view = StageView(stage.layer, hidden, list(pre.visual_rows), layouts, pre.stats.n_visual, scorer, extras)
        n_in = view.n_visual
        keep = stage.select(view)
        self._check_keep(stage, keep, view)
        # new current rows: every non-visual row plus the kept visual rows, in sequence order
        new_rows_idx = []
        for b in range(pre.batch):
            is_vis = torch.zeros(pre.rows.shape[1], dtype=torch.bool, device=hidden.device)
            is_vis[pre.visual_rows[b]] = True
            kept_vis = torch.zeros_like(is_vis)
            kept_vis[pre.visual_rows[b][keep[b].to(hidden.device)]] = True
            new_rows_idx.append(torch.nonzero(~is_vis | kept_vis).flatten())
        idx = torch.stack(new_rows_idx)  # (B, S_new) indices into the current rows
        for b in range(pre.batch):
            k = keep[b].to(hidden.device)
            pre.visual_orig[b] = pre.visual_orig[b][k]
            # position of each kept visual row inside the new row list
            pre.visual_rows[b] = torch.searchsorted(idx[b], pre.visual_rows[b][k])
        pre.rows = _take(pre.rows, idx)
        hidden = _take(hidden, idx)
        pre.pos_emb_cur = tuple(_take(t, pre.rows) for t in pre.pos_emb)
        pre.pruned = True
        _sync(hidden)
        seconds = time.perf_counter() - t0
        pre.stats.stages.append(
            StageStats(
                layer=stage.layer,
                label=stage.label,
                n_in=n_in,
                n_kept=[int(k.numel()) for k in keep],
                kept=[o.clone() for o in pre.visual_orig],
                kept_positions=[lay.positions[o] for lay, o in zip(pre.layouts, pre.visual_orig, strict=True)],
                seconds=seconds,
                parts=extras,
            )
        )
        args = (hidden, *args[1:]) if args else args
        if not args:
            kwargs = dict(kwargs, hidden_states=hidden)
        return args, kwargs

    @staticmethod
    def _check_keep(stage: Stage, keep: list[torch.Tensor], view: StageView) -> None:
        for b, (k, n) in enumerate(zip(keep, view.n_visual, strict=True)):
            if k.dim() != 1 or (k.numel() and (int(k.min()) < 0 or int(k.max()) >= n)):
                raise RuntimeError(f"{stage.label} returned indices outside 0..{n - 1} for sample {b}")
            if k.numel() > 1 and not bool((k[1:] > k[:-1]).all()):
                raise RuntimeError(f"{stage.label} must return sorted unique indices (sample {b})")
        if len({int(k.numel()) for k in keep}) > 1:
            raise InputError("samples of a batch kept different token counts; run them one at a time")

    def _gathered_kwargs(self, kwargs: dict) -> dict:
        pre = self._pre
        out = dict(kwargs)
        out["position_embeddings"] = pre.pos_emb_cur
        pid = kwargs.get("position_ids")
        if isinstance(pid, torch.Tensor) and pid.shape[-1] == pre.seq_len:
            out["position_ids"] = _take(pid, pre.rows) if pid.dim() == 2 else pid
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.dim() == 4:
            key = (id(mask), len(pre.stats.stages))
            if key not in pre.mask_cache:
                pre.mask_cache[key] = _take(_take(mask, pre.rows, dim=2), pre.rows, dim=3)
            out["attention_mask"] = pre.mask_cache[key]
        elif mask is not None and not isinstance(mask, torch.Tensor):
            raise InputError(
                f"attention mask of type {type(mask).__name__} is not supported by the pruning engine; "
                "load the model with attn_implementation='sdpa' or 'eager'"
            )
        return out

    # ---------------------------------------------------------------- scoring
    def query_rows(self, query: str) -> list[torch.Tensor]:
        """Per sample, the current rows of the query tokens."""
        pre = self._pre
        if query not in ("last", "text"):
            raise ConfigError(f"query={query!r} must be 'last' or 'text'")
        rows = []
        for b, lay in enumerate(pre.layouts):
            orig = pre.rows[b]
            last = torch.searchsorted(orig, pre.query_last[b : b + 1])
            if query == "text":
                after = (orig > lay.positions.max()) & (orig <= pre.query_last[b]) & pre.key_valid[b, orig]
                sel = torch.nonzero(after).flatten()
                last = sel if sel.numel() else last  # a prompt that ends with the video: use its last token
            rows.append(last)
        return rows

    def scores(
        self,
        layer: nn.Module,
        hidden: torch.Tensor,
        query: str = "last",
        rope: bool = True,
        mask: SegmentMask | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        content_free: bool = False,
    ) -> torch.Tensor:
        """(B, N) attention from the query rows to the visual tokens, layer `layer`, mean over heads/rows."""
        probs = self.query_probs(layer, hidden, query, rope, mask, position_embeddings, content_free)
        pre = self._pre
        return torch.stack([probs[b, pre.visual_rows[b]] for b in range(pre.batch)])

    def query_probs(
        self,
        layer: nn.Module,
        hidden: torch.Tensor,
        query: str = "last",
        rope: bool = True,
        mask: SegmentMask | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        content_free: bool = False,
    ) -> torch.Tensor:
        """(B, S_cur) attention probabilities over all current keys, averaged over heads and query rows.

        Uses layer `layer`'s input norm, q/k projections (and q/k norms), and RoPE, on `hidden`
        (the states entering that layer). Text query rows are causal; with `mask`, rows follow the segment mask.
        content_free: replace every query and key by a constant vector of the same mean norm per head, so the
        result depends on the positions only (the RoPE-only prior).
        """
        pre = self._pre
        attn = layer.self_attn
        x = layer.input_layernorm(hidden)
        bsz, s, _ = x.shape
        hd = attn.head_dim
        k = attn.k_proj(x).view(bsz, s, -1, hd)
        if hasattr(attn, "k_norm"):
            k = attn.k_norm(k)
        k = k.transpose(1, 2)
        if content_free:
            k = _constant_like(k)
        cos, sin = position_embeddings if position_embeddings is not None else pre.pos_emb_cur
        if rope:
            k = apply_rotary(k, cos, sin)
        key_valid = _take(pre.key_valid, pre.rows)
        seg = None
        if mask is not None and mask.mode != "off":
            seg = _take(self._segment_ids(pre, mask.frames_per_segment), pre.rows)
        out = []
        for b, qrows in enumerate(self.query_rows(query)):
            q = attn.q_proj(x[b : b + 1, qrows]).view(1, qrows.numel(), -1, hd)
            if hasattr(attn, "q_norm"):
                q = attn.q_norm(q)
            q = q.transpose(1, 2)
            if content_free:
                q = _constant_like(q)
            if rope:
                q = apply_rotary(q, cos[b : b + 1, qrows], sin[b : b + 1, qrows])
            if seg is None:
                allowed = torch.arange(s, device=x.device)[None, :] <= qrows[:, None]  # causal in current rows
            else:
                allowed = segment_allowed(seg[b], mask.mode, rows=qrows)
            allowed = (allowed & key_valid[b][None, :])[None]
            out.append(attention_probs(q, k[b : b + 1], float(attn.scaling), allowed)[0].mean(dim=0))
        return torch.stack(out)

    def reference_hidden(self, stage_layer: int) -> torch.Tensor:
        """Hidden states entering `stage_layer` for the same prompt with content-free frames.

        The adapter swaps the visual embeddings for those of black frames (same layout, same token count);
        layers 0..K-1 then run with exactly the masks and positions the real input had.
        """
        pre = self._pre
        if any(0 < s.layer < stage_layer for s in self.stages):
            raise ConfigError("a reference pass cannot follow an in-decoder stage; put the debiased stage first")
        ref = self.reference_fn(pre.embeds, pre.layouts, self._call) if self.reference_fn else None
        if ref is None:
            ref = self.adapter.reference_embeds(pre.embeds, pre.layouts, self._call)
        h = _take(ref.to(pre.embeds.dtype), pre.rows)
        layers = self.adapter.layers()
        self._in_reference = True
        try:
            with torch.no_grad():
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
        finally:
            self._in_reference = False
        return h

    # ---------------------------------------------------------------- decode
    def _start_decode(self, dec: _Decode, ref: torch.Tensor, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        q = ref.shape[1]
        mask = kwargs.get("attention_mask")
        total = dec.seq_len + dec.steps + q
        if isinstance(mask, torch.Tensor) and mask.dim() == 2:
            attn2d = mask[:, -total:].bool()
            if bool(attn2d.all()):
                attn2d = None  # no padding: same kernel path as the unpatched model
        elif mask is None:
            attn2d = None
        else:
            raise InputError(
                "decoding after a pruned prefill needs a 2-D attention mask (or none); got "
                f"{type(mask).__name__}"
            )
        pos = self.adapter.decode_position_ids(dec.next_pos, q)
        dec.attn2d, dec.q_len = attn2d, q
        self._dec = dec
        out = dict(kwargs, position_ids=pos, attention_mask=None)
        # the decoder computes its RoPE from these positions; its own mask is replaced per layer
        dec.next_pos = dec.next_pos + q
        dec.steps += q
        return args, out

    def _decode_layer(self, i: int, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        dec = self._dec
        q = dec.q_len
        rows = dec.layer_rows[i]
        b = dec.next_pos.shape[0]
        device = dec.next_pos.device
        if rows is None:
            rows = torch.arange(dec.seq_len, device=device).expand(b, -1)
        new = torch.arange(dec.seq_len, dec.seq_len + dec.steps, device=device).expand(b, -1)
        cols = torch.cat([rows, new], dim=1)  # original positions of this layer's keys after the update
        if dec.attn2d is None and q == 1:
            mask = None
        else:
            valid = (
                torch.ones_like(cols, dtype=torch.bool) if dec.attn2d is None else _take(dec.attn2d.to(device), cols)
            )
            kv = cols.shape[1]
            past = kv - q
            causal = torch.arange(kv, device=device)[None, :] <= (past + torch.arange(q, device=device))[:, None]
            allowed = valid[:, None, :] & causal[None]
            kind = "additive" if self._attn_impl() == "eager" else "bool"
            mask = to_attention_mask(allowed, self._dtype(), kind)
        return args, dict(kwargs, attention_mask=mask)
