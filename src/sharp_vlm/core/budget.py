"""The one rule for how many visual tokens a stage keeps.

The engine, the FLOPs model, the benchmark and the probe all call :func:`keep_count`, so a reported budget
is always the budget that ran.
"""

from __future__ import annotations

import math


def keep_count(retain: float, n_original: int, n_available: int | None = None) -> int:
    """Visual tokens a stage keeps: ``retain x n_original`` rounded half up, at least 1, at most ``n_available``.

    ``retain`` is a share of the prompt's original visual tokens (not of what reaches the stage), so the stages
    of a schedule state cumulative budgets. Half-way values round up (retain 0.5 of 5 keeps 3), unlike Python's
    ``round``, which rounds half to even. A sample without visual tokens keeps none.
    """
    available = n_original if n_available is None else n_available
    if n_original <= 0 or available <= 0:
        return 0
    return max(1, min(available, math.floor(retain * n_original + 0.5)))
