"""Attention scores of a few query rows over all keys, computed beside the model's fused kernel.

Only the query rows are materialised: cost and memory are O(n_query x seq_len), never seq_len^2.
"""

from __future__ import annotations

import torch


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding in the rotate-half layout; x is (B, H, T, hd), cos/sin are (B, T, r) with r <= hd.

    cos/sin come from the model's own rotary module, so model specifics such as Qwen's 3-D M-RoPE sections are
    already folded into them. A partial rotary (Phi, Phi-3: r < hd) rotates the first r dims and passes the rest.
    """
    r = cos.shape[-1]
    if r < x.shape[-1]:
        return torch.cat([apply_rotary(x[..., :r], cos, sin), x[..., r:]], dim=-1)
    return x * cos.unsqueeze(1) + rotate_half(x) * sin.unsqueeze(1)


def rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """The interleaved layout's rotation: (x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...)."""
    return torch.stack((-x[..., 1::2], x[..., ::2]), dim=-1).flatten(-2)


def apply_rotary_interleaved(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding in the interleaved layout (Cohere: cos/sin repeat each frequency twice in a row)."""
    return x * cos.unsqueeze(1) + rotate_pairs(x) * sin.unsqueeze(1)


def attention_probs(
    q: torch.Tensor,
    k: torch.Tensor,
    scaling: float,
    allowed: torch.Tensor | None,
    softcap: float | None = None,
) -> torch.Tensor:
    """Softmax attention of query rows over keys, averaged over heads.

    q: (B, H, nq, hd); k: (B, Hkv, S, hd) (GQA: kv heads are repeated to H);
    allowed: bool (B, nq, S), True where the query may attend; None means all keys.
    softcap: logits -> softcap * tanh(logits / softcap) before the mask (Gemma-2 style soft-capping).
    Returns float32 (B, nq, S).
    """
    n_rep = q.shape[1] // k.shape[1]
    if n_rep > 1:
        k = k.repeat_interleave(n_rep, dim=1)
    logits = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scaling
    if softcap:
        logits = softcap * torch.tanh(logits / softcap)
    if allowed is not None:
        logits = logits.masked_fill(~allowed[:, None], torch.finfo(logits.dtype).min)
    return torch.softmax(logits, dim=-1).mean(dim=1)


def renormalize(scores: torch.Tensor) -> torch.Tensor:
    """Rescale non-negative scores over the last dim to sum to one."""
    return scores / scores.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(scores.dtype).tiny)


def subtract_bias(scores: torch.Tensor, bias: torch.Tensor, lam: float = 1.0) -> torch.Tensor:
    """Positional debiasing: both renormalised over the visual tokens, then `scores - lam * bias`."""
    return renormalize(scores.float()) - lam * renormalize(bias.float())
