"""Peak memory of one measured region: CUDA allocator statistics on a GPU, the process's resident set on a CPU.

On the CPU torch keeps no allocator statistics, so the peak is the process's resident high-water mark (VmHWM),
which Linux resets on request (writing 5 to /proc/self/clear_refs). It includes the weights and everything
else the process holds; ``added_bytes`` is the part above what was resident when the region started, i.e.
what the prefill and decode themselves needed. Freed heap memory is handed back to the system first
(glibc ``malloc_trim``), so that what an earlier run freed but the allocator kept does not hide this run's
needs. Where neither source exists the numbers are None.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import re
from pathlib import Path
from typing import Any

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int | None:
    try:
        match = re.search(rf"^{field}:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def _release_free_heap() -> None:
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: the start RSS may then include freed memory, and added_bytes under-reads


def _reset_rss_peak() -> bool:
    _release_free_heap()
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


class PeakMemory:
    """``with PeakMemory(device) as m: ...`` then ``m.result()``: peak and added bytes, and how they were read."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")
        self.source: str | None = None
        self.start = self.peak = None

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start, self.source = torch.cuda.memory_allocated(), "cuda_max_memory_allocated"
        elif _reset_rss_peak():
            rss = _status_kib("VmRSS")
            if rss is not None:
                self.start, self.source = rss * 1024, "process_rss_high_water"
        return self

    def __exit__(self, *exc: object) -> None:
        if self.source == "cuda_max_memory_allocated":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        elif self.source == "process_rss_high_water":
            hwm = _status_kib("VmHWM")
            self.peak = hwm * 1024 if hwm is not None else None

    def result(self) -> dict[str, Any]:
        added = self.peak - self.start if self.peak is not None and self.start is not None else None
        return {"peak_bytes": self.peak, "added_bytes": added, "memory_source": self.source}
