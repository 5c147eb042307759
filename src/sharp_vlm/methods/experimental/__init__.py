"""Options of ShaRP that were measured and not adopted, kept runnable for comparison: `ShaRPLab`.

docs/method.md ("Measured") and docs/notes/ hold the measurements that retired each one.
"""

from .sharp_lab import ShaRPLab

__all__ = ["ShaRPLab"]
