"""Positional-bias scores cached by everything the reference pass reads: the pass is paid once.

A deployment choice, not a method option: `sv.apply(model, cfg, bias_cache=cache)`. Give the same `BiasCache` to
every `sv.apply` that should share it (the common `with sv.apply(...)` per request); its keys name, per sample,
the weights, the content-free input, layer, options and layout (`engine/reference.bias_keys`: a prompt shares its
bias alone or in a batch), so one cache can serve several models and methods. With a directory, entries are also
files that other processes read: each is written to a temporary file and renamed, so a reader sees a whole file
or none, and a file that does not hold what its key promises (cut, garbage, wrong shape, not finite) is a miss
that is recomputed and rewritten.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
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
        if self.directory is not None:
            _make_folder(self.directory)
        self._mem: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._disk_failed = False
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(*parts: object) -> str:
        """A hash of the parts: tensors by dtype, shape and bytes (any dtype, bf16 too), the rest by repr."""
        h = hashlib.sha1()
        for p in parts:
            if isinstance(p, torch.Tensor):
                t = p.detach().cpu().contiguous().reshape(-1)
                h.update(f"{t.dtype}{tuple(p.shape)}".encode())
                h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
            else:
                h.update(repr(p).encode())
            h.update(b"|")
        return h.hexdigest()

    def get(self, key: str, shape: tuple[int, ...] | None = None) -> torch.Tensor | None:
        """The cached bias, or None; a file that is not a finite tensor of `shape` counts as a miss."""
        if key in self._mem:
            self._mem.move_to_end(key)
            self.hits += 1
            return self._mem[key]
        value = self._read(key, shape) if self.directory is not None else None
        if value is None:
            self.misses += 1
            return None
        self._remember(key, value)
        self.hits += 1
        return value

    def put(self, key: str, value: torch.Tensor) -> None:
        value = value.detach()
        self._remember(key, value)
        if self.directory is None or self._disk_failed:
            return
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".tmp", dir=self.directory)
            with os.fdopen(fd, "wb") as fh:
                torch.save(value.cpu(), fh)
            os.replace(tmp, self.directory / f"{key}.pt")  # readers see the whole file or none
        except OSError as err:
            self._disk_failed = True
            warnings.warn(f"the bias cache cannot write to {self.directory} ({err.strerror or err}); it keeps "
                          "going in memory only", stacklevel=2)

    def _read(self, key: str, shape: tuple[int, ...] | None) -> torch.Tensor | None:
        path = self.directory / f"{key}.pt"
        if not path.is_file():
            return None
        try:
            value = torch.load(path, weights_only=True)
        except Exception as err:  # noqa: BLE001  (any unreadable file is a miss: it is recomputed)
            return self._bad(path, f"unreadable ({type(err).__name__})")
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            return self._bad(path, "not a tensor of scores")
        if shape is not None and tuple(value.shape) != tuple(shape):
            return self._bad(path, f"shape {tuple(value.shape)}, expected {tuple(shape)}")
        if not bool(torch.isfinite(value).all()):
            return self._bad(path, "not finite")
        return value

    @staticmethod
    def _bad(path: Path, why: str) -> None:
        warnings.warn(f"bias cache file {path} is {why}; recomputing it", stacklevel=3)
        return None

    def _remember(self, key: str, value: torch.Tensor) -> None:
        self._mem[key] = value
        self._mem.move_to_end(key)
        while len(self._mem) > self.size:
            self._mem.popitem(last=False)


def _make_folder(folder: Path) -> None:
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"BiasCache directory {folder} is a file; give a folder (or None for memory only)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"BiasCache directory {folder} cannot be created ({err.strerror or err}); give a "
                          "writable folder (or None for memory only)") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"BiasCache directory {folder} is not writable; give a writable folder (or None for "
                          "memory only)")
