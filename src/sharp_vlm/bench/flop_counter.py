"""Measured FLOPs through ``torch.utils.flop_counter``, with SDPA counted on CPU too.

torch registers FLOP formulas for the CUDA SDPA kernels (flash, memory-efficient, cuDNN) but
not for ``aten._scaled_dot_product_flash_attention_for_cpu``, the kernel that
``F.scaled_dot_product_attention`` dispatches to on CPU; without a formula its FLOPs count as 0.
:func:`register_cpu_sdpa_flop_formula` registers torch's own SDPA formulas for it, so CPU and
GPU runs are counted the same way: matrix products only, 2 FLOPs per multiply-add, and the
full ``n_query x n_kv`` attention rectangle whatever the mask.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils import flop_counter as _fc

_aten = torch.ops.aten


def register_cpu_sdpa_flop_formula() -> None:
    """Register torch's SDPA flop formulas for the CPU flash-attention kernels (idempotent)."""
    # The CPU ops take (query, key, value, ...) / (grad_out, query, key, value, ...) first,
    # like the CUDA ones, so torch's shape-wrapped formulas apply as they are.
    pairs = [
        (_aten._scaled_dot_product_flash_attention_for_cpu, _fc.sdpa_flop),
        (_aten._scaled_dot_product_flash_attention_for_cpu_backward, _fc.sdpa_backward_flop),
    ]
    for op, formula in pairs:
        if op not in _fc.flop_registry:
            _fc.register_flop_formula(op, get_raw=True)(formula)


def count_flops(fn: Callable[[], Any]) -> int:
    """Run ``fn()`` under ``FlopCounterMode`` and return the FLOPs it executed.

    The caller chooses grad mode (wrap ``fn`` in ``torch.no_grad()`` for inference).
    """
    register_cpu_sdpa_flop_formula()
    with _fc.FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def count_flops_by_op(fn: Callable[[], Any]) -> dict[str, int]:
    """Like :func:`count_flops`, split by aten op name (for checking what was counted)."""
    register_cpu_sdpa_flop_formula()
    with _fc.FlopCounterMode(display=False) as counter:
        fn()
    return {str(op): int(v) for op, v in counter.get_flop_counts()["Global"].items()}
