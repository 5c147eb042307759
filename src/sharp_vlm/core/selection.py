"""What a stage method returns for one sample, and how the engine applies a merge.

Pure tensors: the engine checks a `Selection` against the sample (`check_selection`) and merges with
`merge_rows`; methods build one with `Selection(keep)` or `Selection(keep, Merge(source, target, weight))`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import MethodError


@dataclass
class Merge:
    """Dropped visual tokens folded into kept ones before the drop.

    source: (M,) visual indices of dropped tokens; target: (M,) visual indices of the kept tokens they go into;
    weight: (M,) non-negative weights (default 1); target_weight: (N,) non-negative weight of each kept token's own
    state, indexed by visual index like `source` (default 1; only kept tokens that receive a merge are read).
    A kept token t that receives sources i becomes ``(a_t h_t + sum_i w_i h_i) / (a_t + sum_i w_i)`` (a weighted
    mean; with unit weights, the mean of the token and everything merged into it), or with ``normalize=False`` the
    plain sum ``a_t h_t + sum_i w_i h_i`` (e.g. VisionZip's ``target + mean(assigned)``: w_i = 1 / count). A kept
    token that receives nothing is unchanged.
    """

    source: torch.Tensor
    target: torch.Tensor
    weight: torch.Tensor | None = None
    target_weight: torch.Tensor | None = None
    normalize: bool = True


@dataclass
class DedupCounts:
    """What a deduplicating walk did for one sample."""

    skipped_similar: int
    filled: int
    registers: int


@dataclass
class Selection:
    """One sample's answer: kept visual indices (sorted, unique, exactly the budget) and an optional merge.

    scores: the scores the method ranked by (diagnostics; recorded in the stats).
    dedup: what a deduplication step did (diagnostics).
    """

    keep: torch.Tensor
    merge: Merge | None = None
    scores: torch.Tensor | None = None
    dedup: DedupCounts | None = None


def check_selection(sel: Selection, n: int, budget: int, label: str, sample: int) -> None:
    """Raise `MethodError` (a `SharpError` and a `RuntimeError`) naming the method when `sel` is not a valid
    answer for n tokens and a budget."""
    k = sel.keep
    where = f"{label} (sample {sample})"
    if not isinstance(k, torch.Tensor) or k.dim() != 1 or k.dtype not in (torch.int64, torch.int32):
        raise MethodError(f"{where} must return a 1-D integer tensor of kept indices")
    if k.numel() != budget:
        raise MethodError(f"{where} kept {k.numel()} tokens; the stage's budget is {budget}")
    if k.numel() and (int(k.min()) < 0 or int(k.max()) >= n):
        raise MethodError(f"{where} returned indices outside 0..{n - 1}")
    if k.numel() > 1 and not bool((k[1:] > k[:-1]).all()):
        raise MethodError(f"{where} must return sorted unique indices")
    m = sel.merge
    if m is None:
        return
    if not isinstance(m, Merge) or not all(
        isinstance(t, torch.Tensor) and t.dtype in (torch.int64, torch.int32) for t in (m.source, m.target)
    ):
        raise MethodError(f"{where}: merge must be an sv.Merge of integer index tensors")
    if m.weight is not None and not isinstance(m.weight, torch.Tensor):
        raise MethodError(f"{where}: merge weights must be a tensor")
    if m.source.dim() != 1 or m.target.shape != m.source.shape:
        raise MethodError(f"{where}: merge source and target must be 1-D tensors of one length")
    if m.weight is not None and not _weights_ok(m.weight, m.source.shape):
        raise MethodError(f"{where}: merge weights must be finite and non-negative, one per source")
    if m.target_weight is not None and not _weights_ok(m.target_weight, (n,)):
        raise MethodError(f"{where}: merge target_weight must be a tensor of finite non-negative weights, one per "
                          f"visual token ({n})")
    if not isinstance(m.normalize, bool):
        raise MethodError(f"{where}: merge normalize must be True or False")
    kept = torch.zeros(n, dtype=torch.bool, device=k.device)
    kept[k] = True
    src, dst = m.source.to(k.device), m.target.to(k.device)
    if src.numel() and (int(src.min()) < 0 or int(src.max()) >= n or int(dst.min()) < 0 or int(dst.max()) >= n):
        raise MethodError(f"{where}: merge indices outside 0..{n - 1}")
    if bool(kept[src].any()) or not bool(kept[dst].all()):
        raise MethodError(f"{where}: a merge goes from dropped tokens into kept ones")
    if torch.unique(src).numel() != src.numel():
        raise MethodError(f"{where}: each dropped token merges at most once")


def _weights_ok(w: object, shape: tuple) -> bool:
    return (isinstance(w, torch.Tensor) and tuple(w.shape) == tuple(shape) and bool((w >= 0).all())
            and bool(torch.isfinite(w).all()))


def merge_rows(hidden: torch.Tensor, rows: torch.Tensor, merge: Merge) -> torch.Tensor:
    """Apply `merge` to (S, D) hidden states whose visual token i sits at row rows[i]; returns a new tensor."""
    if merge.source.numel() == 0:
        return hidden
    src = rows[merge.source.to(rows.device)]
    dst = rows[merge.target.to(rows.device)]
    w = (merge.weight if merge.weight is not None else torch.ones(src.numel(), dtype=torch.float32))
    w = w.to(hidden.device, torch.float32)
    own = torch.ones(hidden.shape[0], device=hidden.device, dtype=torch.float32)
    if merge.target_weight is not None:
        receiving = torch.unique(merge.target.to(rows.device))
        own[rows[receiving]] = merge.target_weight.to(hidden.device, torch.float32)[receiving.to(hidden.device)]
    acc = hidden.float() * own[:, None]
    acc.index_add_(0, dst, hidden[src].float() * w[:, None])
    if not merge.normalize:
        return acc.to(hidden.dtype)
    total = own.clone().index_add_(0, dst, w)
    # a kept token whose own and merged weights are all 0 has no state to take: it stays as it was
    empty = total == 0
    acc[empty], total[empty] = hidden[empty].float(), 1.0
    return (acc / total[:, None]).to(hidden.dtype)
