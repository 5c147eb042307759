"""Positional-bias scores cached per (model, visual layout, prompt length): the reference pass is paid once.

The in-memory store is shared by every handle with the same cache settings in the process (`BiasCache.shared`),
so that the common `with sv.apply(...)` per request still hits it; its keys name the weights, layer and layout.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from pathlib import Path

import torch


class BiasCache:
    """A bounded in-memory LRU of bias tensors, optionally backed by a directory of .pt files."""

    _instances: dict[tuple[int, Path | None], BiasCache] = {}

    @classmethod
    def shared(cls, size: int = 64, directory: str | Path | None = None) -> BiasCache:
        """The process-wide cache for these settings."""
        key = (size, Path(directory) if directory else None)
        if key not in cls._instances:
            cls._instances[key] = cls(size, directory)
        return cls._instances[key]

    @classmethod
    def forget_all(cls) -> None:
        """Drop every shared in-memory cache (files on disk stay)."""
        cls._instances.clear()

    def __init__(self, size: int = 64, directory: str | Path | None = None):
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
