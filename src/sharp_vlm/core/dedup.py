"""Score-ordered token deduplication with a cap on register tokens.

Given importance scores and features for ``N`` visual tokens, :func:`dedup_select` keeps
``min(budget, N)`` of them with the following greedy semantics:

1. *Registers* are tokens whose feature L2 norm is an outlier:
   ``norm > mean + register_sigma * std`` over the ``N`` tokens (population std).
2. Tokens are walked in descending score order, ties broken by the lower index. A token is
   skipped when its cosine similarity with an already kept token exceeds ``tau``
   (checked first; such a token counts in ``n_skipped_similar``). Otherwise a register is
   skipped once ``max_registers`` registers are kept. Otherwise the token is kept. The walk
   stops as soon as ``budget`` tokens are kept.
3. If fewer than ``budget`` tokens survive the walk, the best remaining non-register tokens
   by score are added (``n_filled``), then the best remaining registers if still short.
   Tokens added by the fill step are not checked for similarity. A ``fill_key`` reorders the fill step (e.g. the
   grid neighbours of the walked tokens first, :mod:`sharp_vlm.core.context`), and ``fill_share`` stops the walk
   early to leave that share of the budget to it.

Candidate window: the walk only visits the top ``M`` tokens by score, where ``M`` is
``candidates`` or ``min(N, max(4 * budget, 256))``. Tokens ranked below ``M`` are never
walked; they can only enter through the fill step. Pass ``candidates=N`` for the exact walk
over all tokens.

The walk is vectorised and runs in chunks of ``chunk`` ranks, so it costs about
``visited x budget`` similarities instead of ``M x M``, and stops at the chunk where the
budget fills. A chunk's tokens similar to an already kept token are blocked with one matrix
product; inside the chunk, with ``C[i, j] = (sim[i, j] > tau and j ranked before i)``, the
greedy result is the unique fixed point of
``keep_i = not blocked_i and not any_j(keep_j and C[i, j]) and register_cap_ok_i(keep_{<i})``.
Each entry depends only on earlier ranks, so iterating from "keep all unblocked" settles at
least one more rank per iteration and converges within ``chunk`` iterations (usually a handful).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass
class DedupResult:
    """Outcome of :func:`dedup_select`.

    Attributes:
        keep: LongTensor of kept indices into ``0..N-1``, sorted ascending, unique, exactly
            ``min(budget, N)`` of them.
        n_filled: how many of ``keep`` were added by the fill step (not by the walk).
        registers: LongTensor of all indices flagged as registers (sorted ascending),
            whether kept or not.
        n_skipped_similar: tokens the walk skipped for similarity before it stopped.
        filled: LongTensor of the ``n_filled`` indices added by the fill step, in the order
            they were added (best first); a subset of ``keep``.
    """

    keep: torch.Tensor
    n_filled: int
    registers: torch.Tensor
    n_skipped_similar: int
    filled: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))


def center(feats: torch.Tensor) -> torch.Tensor:
    """``feats`` minus their mean over the N tokens (in float32, returned in the input dtype).

    Hidden states share a large common component (massive-activation dimensions); cosine similarity on the raw
    states then calls unrelated tokens near-duplicates. Centred, it compares what differs between the tokens,
    and deduplication no longer depends on any offset that every token shares.
    """
    return (feats.float() - feats.float().mean(0, keepdim=True)).to(feats.dtype)


def register_mask(feats: torch.Tensor, register_sigma: float = 3.0) -> torch.Tensor:
    """BoolTensor (N,): True where the feature norm exceeds ``mean + register_sigma * std``.

    Norms are computed in float32; ``std`` is the population std (no NaN for N = 1).
    """
    norms = feats.float().norm(dim=-1)
    if norms.numel() == 0:
        return torch.zeros(0, dtype=torch.bool, device=feats.device)
    mean = norms.mean()
    std = norms.std(correction=0)
    return norms > mean + register_sigma * std


def _greedy_walk(
    conflict: torch.Tensor,
    is_reg: torch.Tensor,
    max_registers: int,
    blocked_before: torch.Tensor | None = None,
    registers_kept: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed point of the greedy walk over one chunk of ranked candidates.

    ``conflict`` is (M, M) float with 1 where ``j < i`` and ``sim[i, j] > tau``; ``is_reg``
    is (M,) bool; ``blocked_before`` marks tokens similar to a token kept in an earlier chunk,
    and ``registers_kept`` counts the registers kept there. Returns ``(keep, blocked)``: ``keep``
    as if the walk never stopped, and ``blocked`` marking tokens skipped for similarity.
    """
    m = conflict.shape[0]
    reg_i = is_reg.int()
    before = torch.zeros(m, dtype=torch.bool, device=conflict.device) if blocked_before is None else blocked_before
    keep = ~before
    # Rank i is settled after i + 1 iterations, so M + 1 evaluations always reach the fixed point.
    for _ in range(m + 1):
        blocked = before | (conflict.mv(keep.float()) > 0)
        kept_reg = keep.int() * reg_i
        regs_before = registers_kept + torch.cumsum(kept_reg, 0) - kept_reg
        new_keep = ~blocked & (~is_reg | (regs_before < max_registers))
        if torch.equal(new_keep, keep):
            break
        keep = new_keep
    return keep, blocked


def _similar(a: torch.Tensor, b: torch.Tensor, tau: float) -> torch.Tensor:
    # clamped so that tau >= 1 never matches, whatever the rounding of unit vectors
    return (a @ b.T).clamp_(-1.0, 1.0) > tau


def _walk(
    f: torch.Tensor, is_reg: torch.Tensor, n_keep: int, tau: float, max_registers: int, chunk: int
) -> tuple[torch.Tensor, int]:
    """Greedy walk over the ranked, unit-normalised candidate features ``f`` (M, D).

    Returns the kept candidate positions (rank order, at most ``n_keep``) and how many visited
    tokens were skipped for similarity before the walk stopped.
    """
    m = f.shape[0]
    kept: list[torch.Tensor] = []
    kept_feats = f[:0]
    n_kept = n_skipped = regs = 0
    for start in range(0, m, chunk):
        fc, reg_c = f[start : start + chunk], is_reg[start : start + chunk]
        before = _similar(fc, kept_feats, tau).any(dim=1) if n_kept else None
        conflict = _similar(fc, fc, tau).tril_(diagonal=-1).float()
        keep, blocked = _greedy_walk(conflict, reg_c, max_registers, before, regs)
        pos = torch.nonzero(keep).flatten()
        if n_kept + pos.numel() >= n_keep:
            pos = pos[: n_keep - n_kept]
            # the walk stops at the token that fills the budget: later ranks were never visited
            n_skipped += int(blocked[: int(pos[-1]) + 1].sum())  # pos is not empty: n_kept < n_keep
            kept.append(pos + start)
            break
        n_skipped += int(blocked.sum())
        kept.append(pos + start)
        kept_feats = torch.cat([kept_feats, fc[keep]])
        n_kept += pos.numel()
        regs += int((keep & reg_c).sum())
    return torch.cat(kept) if kept else torch.zeros(0, dtype=torch.long, device=f.device), n_skipped


def dedup_select(
    scores: torch.Tensor,
    feats: torch.Tensor,
    budget: int,
    tau: float = 0.9,
    max_registers: int = 1,
    register_sigma: float = 3.0,
    candidates: int | None = None,
    *,
    chunk: int = 256,
    fill_key: Callable[[torch.Tensor], torch.Tensor] | None = None,
    fill_share: float = 0.0,
) -> DedupResult:
    """Keep ``min(budget, N)`` high-scoring, mutually dissimilar tokens (see module docstring).

    Args:
        scores: (N,) importance, higher is better; NaN counts as the lowest score.
        feats: (N, D) token features; similarities and norms are computed in float32.
        budget: number of tokens to keep (clamped to N).
        tau: cosine threshold; a token with similarity ``> tau`` to a kept token is skipped.
            ``tau >= 1`` disables deduplication (similarities are clamped to [-1, 1]).
        max_registers: most register tokens the walk keeps.
        register_sigma: outlier threshold in standard deviations of the feature norm.
        candidates: size of the walked window of top-scored tokens; default
            ``min(N, max(4 * budget, 256))``.
        chunk: ranks walked per vectorised step (speed only; the result does not depend on it).
        fill_key: called with the walked indices, returns an (N,) float key: the fill step takes non-registers
            by descending key, ties by score rank (default: score rank alone). See
            :func:`sharp_vlm.core.context.context_key`.
        fill_share: fraction of the budget left to the fill step: the walk stops after
            ``budget - floor(fill_share * budget)`` tokens (0: the walk may fill the whole budget).
    """
    if scores.dim() != 1:
        raise ValueError(f"scores must be 1-D (N,), got shape {tuple(scores.shape)}")
    n = scores.shape[0]
    if feats.dim() != 2 or feats.shape[0] != n:
        raise ValueError(f"feats must be (N, D) with N={n}, got shape {tuple(feats.shape)}")
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    if max_registers < 0:
        raise ValueError(f"max_registers must be >= 0, got {max_registers}")
    if candidates is not None and candidates < 1:
        raise ValueError(f"candidates must be >= 1, got {candidates}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    if not 0.0 <= fill_share < 1.0:
        raise ValueError(f"fill_share must be in [0, 1), got {fill_share}")

    device = scores.device
    is_reg = register_mask(feats, register_sigma).to(device)
    registers = torch.nonzero(is_reg).flatten()
    n_keep = min(budget, n)
    empty = torch.zeros(0, dtype=torch.long, device=device)
    if n_keep == 0:
        return DedupResult(keep=empty, n_filled=0, registers=registers, n_skipped_similar=0, filled=empty)

    s = scores.float()
    s = torch.where(torch.isnan(s), torch.full_like(s, float("-inf")), s)
    # Stable descending sort: equal scores keep index order, i.e. lower index ranks first.
    order = torch.sort(s, descending=True, stable=True).indices

    m = min(n, candidates if candidates is not None else max(4 * budget, 256))
    cand = order[:m]
    f = F.normalize(feats[cand.to(feats.device)].float(), dim=-1).to(device)
    n_walk = max(1, n_keep - int(fill_share * n_keep))
    kept_pos, n_skipped_similar = _walk(f, is_reg[cand], n_walk, tau, max_registers, chunk)
    kept = cand[kept_pos]

    n_filled = n_keep - kept.numel()
    fill = empty
    if n_filled > 0:
        rank = torch.empty(n, dtype=torch.long, device=device)
        rank[order] = torch.arange(n, device=device)
        # Non-registers by rank first, then registers by rank; kept tokens last of all.
        if fill_key is None:
            priority = rank + n * is_reg.long()
        else:
            # the key's order first, then the rank inside each key value; registers after every key value
            key = fill_key(kept).to(device).float()
            key_rank = torch.unique(key, sorted=True, return_inverse=True)[1]
            priority = (key_rank.max() - key_rank) * n + rank + (int(key_rank.max()) + 1) * n * is_reg.long()
        priority[kept] = priority.max() + n + 1
        fill = torch.topk(priority, n_filled, largest=False, sorted=True).indices
        kept = torch.cat([kept, fill])

    keep = torch.sort(kept).values
    return DedupResult(
        keep=keep, n_filled=n_filled, registers=registers, n_skipped_similar=n_skipped_similar, filled=fill
    )


def dedup_select_batch(
    scores: torch.Tensor | Sequence[torch.Tensor],
    feats: torch.Tensor | Sequence[torch.Tensor],
    budgets: int | Sequence[int],
    tau: float = 0.9,
    max_registers: int = 1,
    register_sigma: float = 3.0,
    candidates: int | None = None,
    *,
    chunk: int = 256,
) -> list[DedupResult]:
    """:func:`dedup_select` per sample.

    ``scores`` is (B, N) or a list of (N_b,) tensors; ``feats`` is (B, N, D) or a list of
    (N_b, D) tensors; ``budgets`` is one int per sample (or a single int for all). Register
    statistics are computed per sample.
    """
    n_samples = len(scores)
    if len(feats) != n_samples:
        raise ValueError(f"scores has {n_samples} samples but feats has {len(feats)}")
    if isinstance(budgets, int):
        budgets = [budgets] * n_samples
    if len(budgets) != n_samples:
        raise ValueError(f"expected {n_samples} budgets, got {len(budgets)}")
    return [
        dedup_select(
            scores[b],
            feats[b],
            int(budgets[b]),
            tau=tau,
            max_registers=max_registers,
            register_sigma=register_sigma,
            candidates=candidates,
            chunk=chunk,
        )
        for b in range(n_samples)
    ]
