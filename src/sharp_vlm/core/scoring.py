"""Attention scores of a few query rows over all keys, computed beside the model's fused kernel.

Only the query rows are materialised: cost and memory are O(n_query x seq_len), never seq_len^2.
"""

from __future__ import annotations

import torch


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Standard (non-interleaved) rotary embedding; x is (B, H, T, hd), cos/sin are (B, T, hd).

    cos/sin come from the model's own rotary module, so model specifics such as Qwen's 3-D M-RoPE
    sections are already folded into them.
    """
    return x * cos.unsqueeze(1) + rotate_half(x) * sin.unsqueeze(1)


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
