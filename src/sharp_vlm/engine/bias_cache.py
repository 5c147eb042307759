"""Positional-bias scores cached per (weights, visual layout, prompt around the video): the reference pass is
paid once.

A deployment choice, not a method option: `sv.apply(model, cfg, bias_cache=cache)`. Give the same `BiasCache` to
every `sv.apply` that should share it (the common `with sv.apply(...)` per request); its keys name the weights,
layer, options and layout, so one cache can serve several models and methods.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from pathlib import Path

import torch

from ..checks import check_int
from ..errors import ConfigError


class BiasCache:
    """A bounded in-memory LRU of bias tensors, optionally backed by a directory of .pt files."""

    def __init__(self, size: int = 64, directory: str | Path | None = None):
        check_int(size, "BiasCache size", 1)
        if directory is not None and not isinstance(directory, (str, os.PathLike)):
            raise ConfigError(f"BiasCache directory={directory!r} must be a directory path or None")
        self.size = size
        self.directory = Path(directory) if directory else None
        self._mem: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(*parts: object) -> str:
        h = hashlib.sha1()
        for p in parts:
            if isinstance(p, torch.Tensor):
                h.update(p.detach().cpu().contiguous().numpy().tobytes())
                h.update(str(tuple(p.shape)).encode())
            else:
                h.update(repr(p).encode())
            h.update(b"|")
        return h.hexdigest()

    def get(self, key: str) -> torch.Tensor | None:
        if key in self._mem:
            self._mem.move_to_end(key)
            self.hits += 1
            return self._mem[key]
        if self.directory is not None and (self.directory / f"{key}.pt").exists():
            value = torch.load(self.directory / f"{key}.pt", weights_only=True)
            self._remember(key, value)
            self.hits += 1
            return value
        self.misses += 1
        return None

    def put(self, key: str, value: torch.Tensor) -> None:
        value = value.detach()
        self._remember(key, value)
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            torch.save(value.cpu(), self.directory / f"{key}.pt")

    def _remember(self, key: str, value: torch.Tensor) -> None:
        self._mem[key] = value
        self._mem.move_to_end(key)
        while len(self._mem) > self.size:
            self._mem.popitem(last=False)
