"""The engine: per-instance forward hooks that dispatch each call to the module that owns its state.

Data flow of one prefill (nothing is patched on classes):
  outer model pre-hook   -> remember the call's kwargs (input_ids, grids, attention mask)
  decoder pre-hook       -> the adapter finds the visual layout; a `Prefill` record starts (prefill.py, rows.py)
  layer i pre-hook       -> i before a forward-masked stage: segment mask (segments.py)
                            i is a stage layer: score, select, merge, gather (stage.py, scoring.py, reference.py)
                            i after a stage: hand the layer the gathered positions and mask
  decoder post-hook      -> remember, per KV cache, which original positions each layer holds (decode.py)
During decoding the decoder pre-hook sets positions to (unpruned length + t) and the layer hooks give each
layer a mask over exactly the keys its cache holds.
"""

from __future__ import annotations

import contextlib
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from ..core.masks import allowed_of, hide_padding, to_attention_mask
from ..errors import ConfigError, InputError, SharpError
from ..flops import DecoderShape
from ..methods.base import Method, SegmentMask, Stage
from ..models.base import Adapter, ReferenceFn
from .bias_cache import BiasCache
from .decode import Decode, trim_shallow
from .decode_pruning import choose
from .positions import renumber
from .prefill import Prefill, start_prefill, sync
from .rows import take
from .segment_attention import RUNS_KWARG, SEGMENT_ATTENTION
from .segments import segment_kwargs
from .stage import StageScorer, run_stage
from .stats import CallStats, StageCosts


def _matches(mask: Any, ids: Any) -> bool:
    return isinstance(mask, torch.Tensor) and isinstance(ids, torch.Tensor) and mask.shape == ids.shape


class CallGuard:
    """One call at a time on a patched model: a call's state (its kwargs, its prefill) lives on the engine, so a
    second thread's call would read the first one's. A thread may nest (generate() calls the forward)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owner: int | None = None
        self._depth = 0

    def enter(self) -> None:
        me = threading.get_ident()
        if self._owner == me:
            self._depth += 1
            return
        if not self._lock.acquire(blocking=False):
            raise SharpError(
                "this patched model is already running a call in another thread, and one sv.apply handle serves "
                "one call at a time; serialise the calls (a lock or a queue), or give each thread its own model "
                "(copy.deepcopy(model) gives an unpatched copy to apply the method to)"
            )
        self._owner, self._depth = me, 1

    def exit(self) -> None:
        if self._owner != threading.get_ident():
            return  # this thread was refused at enter(): it holds nothing
        self._depth -= 1
        if self._depth == 0:
            self._owner = None
            self._lock.release()


class Engine:
    def __init__(
        self,
        model: nn.Module,
        method: Method,
        adapter: Adapter,
        trim_kv: bool = False,
        reference_fn: ReferenceFn | None = None,
        bias_cache: BiasCache | None = None,
    ):
        self.model = model
        self.method = method
        self.adapter = adapter
        self.trim_kv = trim_kv
        self.reference_fn = reference_fn
        self.bias_cache = bias_cache
        self.stages: list[Stage] = method.stages()
        self.decode_pruning = method.decode_pruning()
        # a sliding window counts positions and keeps only the window's keys in the cache
        self.windowed = any(adapter.attention_parts(i).sliding_window is not None for i in range(adapter.n_layers))
        self.stage_at = {s.layer: s for s in self.stages}
        self._validate()
        # a stage that reads the vision tower's attention: the adapter captures it while the tower runs
        reader = next((s for s in self.stages if s.reads_vision), None)
        self.tower = adapter.vision_attention(reader.label) if reader is not None else None
        # trim_kv: the first stage inside the decoder (one before it leaves nothing to trim on its own)
        self.trim_to = next((s.layer for s in self.stages if s.layer > 0), None)
        self.last_stage = self.stages[-1].layer if self.stages else 0
        masked = [s for s in self.stages if s.segment_mask is not None]
        # a stage's forward-scope segment mask covers every decoder layer before it
        self.seg: SegmentMask | None = masked[-1].segment_mask if masked else None
        self.seg_until = masked[-1].layer if masked else 0
        self.targets = self.stages[0].targets if self.stages else "all"
        # a stage before the decoder whose kept rows are renumbered without gaps (engine/positions.py)
        zero = self.stage_at.get(0)
        # auto: contiguous where positions are 1-D and no sliding window counts them
        self.renumber = zero is not None and (
            zero.positions == "contiguous" or (zero.positions == "auto" and not adapter.mrope and not self.windowed))
        self._eager = adapter.attention_implementation() == "eager"
        self._masks_4d = adapter.attention_implementation() in ("eager", "sdpa")  # what a padded batch needs
        self._dtype = adapter.dtype()
        # the config as attached: a later edit must be applied again, not half-read (the kernels were chosen)
        self._config = method.to_dict()
        self._block_kernel = False
        self._in_reference = False
        self._shape: DecoderShape | None = None
        self._restore: list[Callable[[], None]] = []
        self._handles: list[Any] = []
        self.last_stats: CallStats | None = None
        self._call: dict[str, Any] = {}
        self.prompt_len: int | None = None  # set by the generate() wrapper: the query is the last prompt token
        self.generate_call: dict[str, Any] = {}
        self.generate_batch: int | None = None  # the batch of the generate() call, before beams expand it
        self._pre: Prefill | None = None
        self.guard = CallGuard()
        self._decodes: dict[int, Decode] = {}
        self._dec: Decode | None = None

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
        dp = self.decode_pruning
        if dp is not None and not 1 <= dp.layer < n:
            raise ConfigError(
                f"{dp.method.name}: decode pruning from layer {dp.layer} needs 1 <= layer < {n} (the decoder's "
                "depth): it chooses from the attention of the layer before"
            )
        if self.windowed and dp is not None:
            raise ConfigError(
                f"{dp.method.name}: decode pruning is not supported on a decoder with sliding-window attention (its "
                "cache keeps only the window); turn decode pruning off (e.g. sv.DyCoke(dp=False))"
            )
        for s in self.stages:
            if s.layer > 0 and s.positions == "contiguous":
                raise ConfigError(f"{s.label}: positions='contiguous' renumbers the rows before the decoder; it needs "
                                  f"layer=0, got layer={s.layer}")
        zero = self.stage_at.get(0)
        if zero is not None and zero.positions == "contiguous" and self.adapter.mrope:
            raise ConfigError(
                f"{zero.label}: positions='contiguous' renumbers 1-D positions; this model's 3-D M-RoPE positions "
                "stay original (positions='auto' or 'original')"
            )
        if zero is not None and zero.positions == "contiguous" and self.windowed:
            raise ConfigError(
                f"{zero.label}: positions='contiguous' is not supported on a decoder with sliding-window "
                "attention (the window would count the original positions); use positions='original'"
            )

    def attach(self) -> None:
        tm = self.adapter.text_model()
        self._handles.append(self.model.register_forward_pre_hook(self._outer_pre, with_kwargs=True))
        # always_call: a call that raised still frees the model for the next one
        self._handles.append(self.model.register_forward_hook(self._outer_post, always_call=True))
        self._handles.append(tm.register_forward_pre_hook(self._decoder_pre, with_kwargs=True))
        if self.tower is not None:
            self._handles.append(self.tower.attach())
        self._handles.append(tm.register_forward_hook(self._decoder_post, with_kwargs=True))
        for i, layer in enumerate(self.adapter.layers()):
            self._handles.append(layer.register_forward_pre_hook(self._layer_pre(i), with_kwargs=True))
            if self.adapter.adds_inside_decoder():
                self._handles.append(layer.register_forward_hook(self._layer_post(i)))
        if self.seg is not None and not self._eager:
            # block-wise SDPA (segment_attention.py) instead of a dense mask; FlashAttention takes no arbitrary
            # mask, so it switches too. Eager keeps the dense additive mask (its exact computation was asked for).
            for i in range(self.seg_until):
                self._restore.append(self.adapter.use_attention(i, SEGMENT_ATTENTION))
            self._block_kernel = True

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        for restore in self._restore:
            restore()
        self._restore.clear()
        self._handles.clear()
        self._decodes.clear()
        self._call = {}
        self._block_kernel = False
        self._pre = self._dec = None

    @contextlib.contextmanager
    def _bypass(self) -> Iterator[None]:
        """The reference pass calls layers with fully prepared arguments: the layer hooks stand aside."""
        self._in_reference = True
        try:
            yield
        finally:
            self._in_reference = False

    def shape(self) -> DecoderShape:
        if self._shape is None:
            self._shape = DecoderShape.from_config(self.adapter.text_model().config)
        return self._shape

    # ---------------------------------------------------------------- hooks
    def _outer_pre(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self.guard.enter()
        if kwargs.get("labels") is not None:
            raise InputError(
                "labels= (a training loss over every position) is not supported while pruning: the pruned rows "
                "have no logits. Compute the loss without the handle (handle.remove()), or generate/score without "
                "labels"
            )
        call = dict(kwargs)
        if args:
            call.setdefault("input_ids", args[0])
        # generate() encodes the video once and may not forward the grids or an all-ones mask to the model:
        # take them from the generate() call when this forward lacks them
        for key, value in self.generate_call.items():
            if call.get(key) is None and value is not None:
                if key == "attention_mask" and not _matches(value, call.get("input_ids")):
                    continue
                call[key] = value
        self.adapter.check_batch(call)
        self._call = call

    def _outer_post(self, module: nn.Module, args: tuple, output: Any) -> None:
        if self.tower is not None:
            self.tower.clear()
        self.guard.exit()

    def _decoder_pre(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        embeds = kwargs.get("inputs_embeds")
        ids = kwargs.get("input_ids", args[0] if args else None)
        ref = embeds if embeds is not None else ids
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if cache is not None and getattr(cache, "is_compileable", False):
            raise InputError(
                f"a {type(cache).__name__} (fixed-size KV cache, e.g. generate(cache_implementation='static')) cannot "
                "hold a pruned prefill, whose layers keep different numbers of keys; use the default dynamic cache"
            )
        past = cache.get_seq_length() if cache is not None else 0
        self._pre = self._dec = None
        if past > 0:
            dec = self._decodes.get(id(cache))
            if dec is not None and dec.cache() is cache:
                if ref.shape[1] > 1 and self._has_visual_tokens():
                    raise InputError(
                        "new visual tokens cannot be appended to a KV cache filled by a pruned prefill (multi-turn "
                        "with a new video); start a new conversation (a new cache) with the whole prompt"
                    )
                dec.start_step(ref.shape[1], kwargs.get("attention_mask"))
                pos = self.adapter.decode_position_ids(dec.next_pos, ref.shape[1])
                dec.advance()
                self._dec = dec
                # the decoder computes its RoPE from these positions; its own mask is replaced per layer
                return args, dict(kwargs, position_ids=pos, attention_mask=None)
            if self._has_visual_tokens():
                raise InputError(
                    "this prompt with visual tokens continues an existing KV cache that was not filled by the "
                    "pruning engine; pruning must start from an empty cache"
                )
            return None
        self._start_prefill(ref)
        if self.tower is not None:
            self._pre.tower, self._pre.tower_frames = self.tower, self.tower.take()
        # the decoder input, for a reference pass; input ids are embedded only when one runs
        self._pre.decoder_input = embeds if embeds is not None else ids
        kwargs, self._pre.adapter_state = self.adapter.prefill_state(kwargs)
        return args, kwargs

    def _decoder_post(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        pre, self._pre = self._pre, None
        self._call = {}  # the call's tensors (its KV cache too) are not kept past the call
        if self._dec is not None:
            self._dec = None
            return
        if pre is None:
            return
        self.last_stats = pre.stats
        cache = getattr(output, "cache", None) or getattr(output, "past_key_values", None)
        if cache is None:
            return
        next_pos = self.adapter.next_positions(kwargs.get("position_ids"), pre.batch, pre.seq_len)
        if pre.position_shift is not None:
            next_pos = next_pos.to(pre.position_shift.device) - pre.position_shift
        layer_rows = [pre.layer_rows.get(i) for i in range(self.adapter.n_layers)]
        layer_pad = [pre.layer_pad.get(i) for i in range(self.adapter.n_layers)]
        if self.trim_kv and self.trim_to is not None:
            layer_rows, layer_pad = trim_shallow(cache, layer_rows, layer_pad, self.trim_to)
        for key, dec in list(self._decodes.items()):
            if dec.cache() is None:
                del self._decodes[key]
        device = pre.rows.rows.device
        dec = Decode(weakref.ref(cache), pre.seq_len, next_pos.to(device), layer_rows, layer_pad, stats=pre.stats)
        if self.decode_pruning is not None:
            dec.pruned_from = self.decode_pruning.layer
            dec.visual_positions = [lay.positions for lay in pre.layouts]
            dec.previous_scores = [None] * pre.batch
        self._decodes[id(cache)] = dec

    def _layer_pre(self, i: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
            if self._in_reference:
                return None
            dec = self._dec
            if dec is not None:
                if dec.pruned_from is not None and dec.q_len == 1:  # decode pruning acts on one-token steps
                    if i == dec.pruned_from - 1:
                        dec.pruning_input = args[0] if args else kwargs["hidden_states"]
                    elif i == dec.pruned_from:
                        kept = choose(dec, self.decode_pruning, self.adapter, dec.cache(),
                                      kwargs["position_embeddings"])
                        dec.stats.decode_kept.append(kept)
                return args, dict(kwargs, attention_mask=dec.layer_mask(i, self._eager, self._dtype))
            pre = self._pre
            if pre is None:
                return None
            if pre.pos_emb is None:
                pre.pos_emb = pre.pos_emb_cur = kwargs.get("position_embeddings")
            if i in self.stage_at:
                args, kwargs = self._stage(self.stage_at[i], args, kwargs)
            if pre.pruned:
                kwargs = self._gathered_kwargs(kwargs)
                pre.layer_rows[i] = pre.rows.rows
                pre.layer_pad[i] = pre.rows.pad
            if self.seg is not None and i < self.seg_until:
                kwargs = dict(kwargs, **segment_kwargs(pre, self.seg, self._block_kernel, self._eager, self._dtype))
            if i < self.last_stage:
                pre.layer_kwargs[i] = {k: kwargs.get(k) for k in ("attention_mask", "position_ids", RUNS_KWARG)}
            following = self.stage_at.get(i + 1)
            if following is not None and following.scores_previous_layer:
                # what this layer attends over, after any stage here: the rows the next stage prunes
                pre.previous_hidden = args[0] if args else kwargs["hidden_states"]
            return args, kwargs

        return hook

    def _layer_post(self, i: int):
        def hook(module: nn.Module, args: tuple, output: Any) -> Any:
            pre = self._pre
            if self._in_reference or pre is None:
                return None
            h = output[0] if isinstance(output, tuple) else output
            h = self.adapter.after_layer(i, h, pre.rows.rows, pre.adapter_state)
            return (h, *output[1:]) if isinstance(output, tuple) else h

        return hook

    # ---------------------------------------------------------------- prefill
    def _has_visual_tokens(self) -> bool:
        """Whether the current call's new tokens include visual ones (a call that continues a cache)."""
        ids = self._call.get("input_ids")
        if ids is None:
            return False
        call = dict(self._call)
        mask = call.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.dim() == 2:
            call["attention_mask"] = mask[:, -ids.shape[1]:]  # the mask also covers the cached tokens
        return self.adapter.continuation_has_visual(call, ids.shape[1], ids.shape[0])

    def _start_prefill(self, ref: torch.Tensor) -> None:
        if self.method.to_dict() != self._config:
            raise ConfigError(
                "the method's config was changed after sv.apply attached it; apply it again "
                "(handle.remove(); sv.apply(model, cfg)) so the change is checked and takes effect"
            )
        self._pre = start_prefill(self.adapter, self._call, ref, self.targets, self.prompt_len, self.generate_batch)

    def _stage(self, stage: Stage, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        pre = self._pre
        hidden = args[0] if args else kwargs["hidden_states"]
        sync(hidden)
        t0 = time.perf_counter()
        costs = StageCosts()
        if not pre.stats.stages:
            costs.layers_before_seconds = t0 - pre.started
        scorer = StageScorer(stage, hidden, pre, self.adapter, self.shape(), costs, self.reference_fn, self._bypass,
                             self.bias_cache)
        hidden = run_stage(stage, hidden, pre, scorer, costs, t0)
        if stage.layer == 0 and self.renumber:
            renumber(pre, kwargs.get("position_ids"), self.adapter, hidden)
        if args:
            return (hidden, *args[1:]), kwargs
        return args, dict(kwargs, hidden_states=hidden)

    def _gathered_kwargs(self, kwargs: dict) -> dict:
        pre = self._pre
        rows = pre.rows.rows
        out = dict(kwargs)
        out["position_embeddings"] = pre.pos_emb_cur
        pid = kwargs.get("position_ids") if pre.position_ids is None else pre.position_ids
        if isinstance(pid, torch.Tensor) and pid.shape[-1] == pre.seq_len:
            out["position_ids"] = take(pid, rows) if pid.dim() == 2 else pid
        mask = kwargs.get("attention_mask")
        if mask is not None and not (isinstance(mask, torch.Tensor) and mask.dim() == 4):
            raise InputError(
                f"attention mask of type {type(mask).__name__} is not supported by the pruning engine; "
                "load the model with attn_implementation='sdpa' or 'eager'"
            )
        if pre.rows.pad is not None and not self._masks_4d:
            raise InputError(
                f"the samples of this batch keep different numbers of tokens, which needs a 4-D attention mask that "
                f"{self.adapter.attention_implementation()} does not take; load the model with "
                "attn_implementation='sdpa' or 'eager', or run these videos one at a time"
            )
        if mask is not None or pre.rows.pad is not None:
            key = (None if mask is None else id(mask), pre.stages_done)
            if key not in pre.mask_cache:
                pre.mask_cache[key] = self._rows_mask(mask)
            out["attention_mask"] = pre.mask_cache[key]
        return self.adapter.gather_layer_kwargs(out, lambda t, dim: take(t, rows, dim=dim))

    def _rows_mask(self, mask: torch.Tensor | None) -> torch.Tensor:
        """The layer's 4-D mask over the current rows: the model's own mask gathered (its causal default where it
        gave none), with a stage's padding rows taken out."""
        rows, pad = self._pre.rows.rows, self._pre.rows.pad
        if mask is not None:
            mask = take(take(mask, rows, dim=2), rows, dim=3)
            if pad is None:
                return mask
            kind = "bool" if mask.dtype == torch.bool else "additive"
            return to_attention_mask(hide_padding(allowed_of(mask), pad), mask.dtype, kind)
        s = rows.shape[1]
        causal = torch.ones(s, s, dtype=torch.bool, device=rows.device).tril()
        allowed = hide_padding(causal[None, None].expand(rows.shape[0], 1, s, s), pad)
        return to_attention_mask(allowed, self._dtype, "additive" if self._eager else "bool")
