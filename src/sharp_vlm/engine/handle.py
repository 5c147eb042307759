"""`sv.apply`: attach a method to one loaded model instance, and undo it."""

from __future__ import annotations

import copy
import functools
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, InputError, SharpError
from ..methods.base import Method
from ..models.base import ReferenceFn
from ..models.generic import SpanSource
from ..models.registry import adapter_for
from .bias_cache import BiasCache
from .hooks import Engine
from .stats import CallStats

_ATTR = "_sharp_vlm_handle"


def _refuse_pickle(protocol: int) -> Any:
    raise SharpError("a model with a pruning method attached cannot be pickled or saved whole (its hooks are local "
                     "functions): handle.remove() first, or save it before sv.apply")


class Handle:
    """A method attached to one model instance. Use as a context manager or call `remove()`."""

    def __init__(
        self,
        model: nn.Module,
        method: Method,
        span: SpanSource | None = None,
        trim_kv: bool = False,
        reference: ReferenceFn | None = None,
        bias_cache: BiasCache | None = None,
    ):
        if hasattr(model, "_orig_mod") and type(model).__name__ == "OptimizedModule":
            raise ConfigError(
                "sv.apply was given a torch.compile'd model; apply the method to the model first and compile after "
                "(sv.apply(model, cfg), then torch.compile(model)): the hooks must be in place when it compiles"
            )
        if not isinstance(method, Method):
            raise ConfigError(f"expected a method config such as sv.FastV(...), got {type(method).__name__}")
        self.model = model
        self.method = method
        self.adapter = adapter_for(model, span)
        if span is not None and not hasattr(self.adapter, "span"):
            raise ConfigError(
                f"{type(model).__name__} finds its visual tokens from its inputs; span= is only for decoder-only "
                "LMs, drop it"
            )
        if bias_cache is not None and not isinstance(bias_cache, BiasCache):
            raise ConfigError(
                f"bias_cache={bias_cache!r} must be an sv.BiasCache(size, directory) (or None for a reference pass "
                "per request)"
            )
        self.trim_kv = trim_kv
        self.reference = reference
        self.bias_cache = bias_cache
        self._attached = False
        self._attach()

    # the declared span of a decoder-only model can change per prompt
    @property
    def span(self) -> SpanSource | None:
        return getattr(self.adapter, "span", None)

    @span.setter
    def span(self, value: SpanSource | None) -> None:
        if not hasattr(self.adapter, "span"):
            raise ConfigError(f"{type(self.model).__name__} finds its visual tokens itself; no span to declare")
        self.adapter.span = value

    @property
    def last_stats(self) -> CallStats | None:
        """Stats of the most recent prefill: visual counts, kept indices per stage, timings."""
        return self.engine.last_stats

    def _attach(self) -> None:
        """A fresh engine on the model (also when a removed handle is entered again)."""
        if getattr(self.model, _ATTR, None) is not None:
            raise ConfigError("this model already has a pruning method attached; remove() the other handle first")
        self.engine = Engine(self.model, self.method, self.adapter, trim_kv=self.trim_kv, reference_fn=self.reference,
                             bias_cache=self.bias_cache)
        self._orig_generate = self.model.__dict__.get("generate")
        self.engine.attach()
        generate = type(self.model).generate
        engine = self.engine

        @functools.wraps(generate)
        def generate_with_prompt_length(*args: Any, **kwargs: Any) -> Any:
            # the query row is the last *prompt* token, also when generate runs without a KV cache
            ref = kwargs.get("input_ids", args[0] if args else None)
            if ref is None:
                ref = kwargs.get("inputs_embeds")
            engine.guard.enter()  # before the per-call state below is written
            try:
                _check_beams(engine, self.model, kwargs)
                # generate() may encode the video before its first forward: refuse a batch before that
                self.adapter.check_batch(dict(kwargs, input_ids=args[0]) if args else kwargs)
                engine.prompt_len = int(ref.shape[1]) if isinstance(ref, torch.Tensor) else None
                engine.generate_batch = int(ref.shape[0]) if isinstance(ref, torch.Tensor) else None
                engine.generate_call = {k: kwargs.get(k) for k in self.adapter.generate_kwargs}
                return generate(self.model, *args, **kwargs)
            finally:
                engine.prompt_len = engine.generate_batch = None
                engine.generate_call = {}
                engine.guard.exit()

        self.model.generate = generate_with_prompt_length
        # a copy of the hooks would run the original model's engine: a deep copy is made of the unpatched model,
        # and pickling (the hooks are local functions) is refused with what to do
        self.model.__deepcopy__ = self._unpatched_copy
        self.model.__reduce_ex__ = _refuse_pickle
        setattr(self.model, _ATTR, self)
        self._attached = True

    def _unpatched_copy(self, memo: dict) -> nn.Module:
        stats = self.engine.last_stats
        self.remove()
        try:
            return copy.deepcopy(self.model, memo)
        finally:
            self._attach()
            self.engine.last_stats = stats

    def remove(self) -> None:
        """Detach every hook and restore the model exactly as it was."""
        if not self._attached:
            return
        self.engine.detach()
        if self._orig_generate is None:
            del self.model.generate
        else:
            self.model.generate = self._orig_generate
        for name in (_ATTR, "__deepcopy__", "__reduce_ex__"):
            delattr(self.model, name)
        self._attached = False

    def __enter__(self) -> Handle:
        # a removed handle entered again (e.g. `with handle:` in a loop) attaches again rather than run unpruned
        if not self._attached:
            self._attach()
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def _check_beams(engine: Engine, model: nn.Module, kwargs: dict[str, Any]) -> None:
    """Decode pruning keeps each row's last scores; beam search reorders the rows every step, so refuse it."""
    if engine.decode_pruning is None:
        return
    config = kwargs.get("generation_config") or getattr(model, "generation_config", None)
    beams = kwargs.get("num_beams") or getattr(config, "num_beams", 1) or 1
    if int(beams) > 1:
        raise InputError(
            f"{engine.decode_pruning.method.name} prunes attention while decoding, which follows each row from step "
            "to step; beam search reorders the rows, so use greedy or sampled decoding, or turn decode pruning off "
            "(e.g. sv.DyCoke(dp=False))"
        )


def apply(
    model: nn.Module,
    method: Method,
    *,
    span: SpanSource | None = None,
    trim_kv: bool = False,
    reference: ReferenceFn | None = None,
    bias_cache: BiasCache | None = None,
) -> Handle:
    """Attach `method` to this model instance (no class is patched).

    span: for a plain decoder-only LM, where the video is (`sv.VideoSpan`) or a function of the call's kwargs.
    trim_kv: after prefill, also drop pruned tokens from the KV cache of the layers before the first stage.
    reference: for positional debiasing, a function (inputs_embeds, layouts, call_kwargs) -> inputs_embeds with
        the visual tokens replaced by content-free ones; default: black frames through the model's vision
        encoder (Qwen-VL), the pad-token embedding (decoder-only LMs).
    bias_cache: an `sv.BiasCache` that keeps the reference pass's scores per (weights, layout, prompt around the
        video), so that the pass is paid once; share one cache between the `apply` calls that should reuse it.
        None: a reference pass per request.
    """
    return Handle(model, method, span=span, trim_kv=trim_kv, reference=reference, bias_cache=bias_cache)
