"""Analytic FLOP counts for the prefill (and decode) of a Video LLM with in-decoder token pruning.

Conventions, shared by every function here:

* A multiply-add counts as 2 FLOPs: ``x[n, a] @ W[a, b]`` is ``2 * n * a * b``.
* Only matrix products are counted in the decoder and vision-tower totals: projections,
  attention products and MLP matrices. Biases, norms, RoPE, activations, residual adds and
  softmax are left out (they are well under 1% of a layer). This is what
  ``torch.utils.flop_counter.FlopCounterMode`` counts, so the numbers can be checked against it
  (see :mod:`sharp_vlm.bench.flop_counter`).
* Attention counts the full ``n_query x n_kv`` rectangle for both ``Q @ K^T`` and ``P @ V``,
  even under a causal mask: that is the convention of torch's SDPA flop formula, which the
  tests check against. With ``causal=True`` it counts only the query-key pairs a causal kernel
  computes (FlashAttention and the CPU flash kernel skip the masked blocks): about half in a
  prefill. The benchmark's speedup bound uses the causal count, since an unpruned prefill never
  does the other half, and reports the rectangle one beside it.
* Grouped-query attention: k/v projections have ``num_kv_heads * head_dim`` outputs, while the
  attention products run over all ``num_heads`` query heads.
* Everything is for one sample (batch size 1). Prefill computes logits for the last
  ``lm_head_tokens`` positions only, as ``generate`` does.

Pruning schedule: at decoder layer ``K`` a stage removes tokens; layers ``< K`` see the longer
sequence, layers ``>= K`` the shorter one, so a stage at ``K = 0`` prunes before the first layer.
Stages accumulate.

The scoring side pass of a stage at layer ``K`` runs on the sequence entering layer ``K``:
input RMSNorm of layer ``K`` on every token, the q projection for the ``n_query`` query rows,
the k projection for every token, ``q . k`` for the query rows over all heads, and a softmax.
It is an extra cost, since layer ``K`` itself then runs on the pruned sequence. The norm and
softmax are estimated (4 and 5 FLOPs per element) and are negligible.

A reference pass (ShaRP) feeds the same prompt with content-free frames through layers
``0..K-1`` and the scoring step at ``K``; it is skipped when its result is cached.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .core.budget import keep_count

# Rough per-element costs of the elementwise parts of the scoring pass.
_RMSNORM_FLOPS_PER_ELEMENT = 4  # square, accumulate, scale by rsqrt, scale by weight
_SOFTMAX_FLOPS_PER_ELEMENT = 5  # max, subtract, exp, accumulate, divide


def _get(cfg: Any, name: str, default: Any = None) -> Any:
    if isinstance(cfg, Mapping):
        return cfg.get(name, default)
    return getattr(cfg, name, default)


@dataclass(frozen=True)
class DecoderShape:
    """The numbers that set the compute of a decoder-only transformer with a SwiGLU MLP."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool = False  # kept for the record; tying does not change FLOPs

    @classmethod
    def from_config(cls, cfg: Any) -> DecoderShape:
        """Read a shape from a transformers config (or a dict with the same keys).

        VLM configs (Qwen2-VL, Qwen2.5-VL, LLaVA-OneVision, SmolVLM, ...) are reduced to their
        language model via ``get_text_config()``. ``head_dim`` comes from the config when it
        sets one (Qwen3, some LLaMA variants), else ``hidden_size // num_attention_heads``.
        Qwen3's q/k RMSNorms are elementwise and not counted.
        """
        if not isinstance(cfg, Mapping) and hasattr(cfg, "get_text_config"):
            cfg = cfg.get_text_config(decoder=True)
        elif isinstance(cfg, Mapping) and isinstance(cfg.get("text_config"), Mapping):
            cfg = cfg["text_config"]
        hidden = int(_get(cfg, "hidden_size"))
        heads = int(_get(cfg, "num_attention_heads"))
        kv_heads = _get(cfg, "num_key_value_heads") or heads
        head_dim = _get(cfg, "head_dim") or hidden // heads
        return cls(
            hidden_size=hidden,
            intermediate_size=int(_get(cfg, "intermediate_size")),
            num_layers=int(_get(cfg, "num_hidden_layers")),
            num_heads=heads,
            num_kv_heads=int(kv_heads),
            head_dim=int(head_dim),
            vocab_size=int(_get(cfg, "vocab_size")),
            tie_word_embeddings=bool(_get(cfg, "tie_word_embeddings", False)),
        )


# ---------------------------------------------------------------------------------------------
# Decoder
# ---------------------------------------------------------------------------------------------


def attention_pairs(n_query: int, n_kv: int, causal: bool = False) -> int:
    """Query-key pairs: the full rectangle, or those a causal kernel computes (the ``n_query`` new tokens
    are the last of the ``n_kv`` keys, and each sees the keys up to itself)."""
    if not causal:
        return n_query * n_kv
    return n_query * (n_kv - n_query) + n_query * (n_query + 1) // 2


def layer_flops(shape: DecoderShape, n_query: int, n_kv: int, causal: bool = False) -> dict[str, int]:
    """FLOPs of one decoder layer.

    ``n_query`` is the number of tokens this forward processes (the rows of every projection
    and MLP matrix); ``n_kv`` the number of keys they attend to (cached plus new). Prefill has
    ``n_query == n_kv``; a decode step ``n_query == 1``. Attention counts the full
    ``n_query x n_kv`` rectangle (torch's SDPA convention), or the causal pairs with ``causal``;
    2 FLOPs per multiply-add.
    """
    d, hd, m = shape.hidden_size, shape.head_dim, shape.intermediate_size
    q_dim = shape.num_heads * hd
    kv_dim = shape.num_kv_heads * hd
    pairs = attention_pairs(n_query, n_kv, causal)
    out = {
        "q_proj": 2 * n_query * d * q_dim,
        "k_proj": 2 * n_query * d * kv_dim,
        "v_proj": 2 * n_query * d * kv_dim,
        "o_proj": 2 * n_query * q_dim * d,
        "attn_scores": 2 * shape.num_heads * pairs * hd,
        "attn_values": 2 * shape.num_heads * pairs * hd,
        "mlp": 3 * 2 * n_query * d * m,  # gate, up, down
    }
    out["total"] = sum(out.values())
    return out


def layer_seq_lens(num_layers: int, seq_len: int, stages: Sequence[tuple[int, int]] = ()) -> list[int]:
    """Sequence length seen by each decoder layer under a schedule of ``(K, removed)`` stages.

    Removals accumulate: layer ``l`` sees ``seq_len`` minus the tokens removed by every stage
    with ``K <= l``. A stage at ``K == num_layers`` removes nothing any layer sees.
    """
    removed_at = [0] * (num_layers + 1)
    for k, removed in stages:
        if not 0 <= k <= num_layers:
            raise ValueError(f"stage layer {k} outside 0..{num_layers}")
        if removed < 0:
            raise ValueError(f"stage at layer {k} removes a negative number of tokens ({removed})")
        removed_at[k] += removed
    lens, cur = [], seq_len
    for layer in range(num_layers):
        cur -= removed_at[layer]
        lens.append(cur)
    if cur - removed_at[num_layers] < 1:
        raise ValueError(f"stages remove {seq_len - cur + removed_at[num_layers]} of {seq_len} tokens")
    return lens


def lm_head_flops(shape: DecoderShape, n_tokens: int = 1) -> int:
    """FLOPs of the output projection for ``n_tokens`` positions."""
    return 2 * n_tokens * shape.hidden_size * shape.vocab_size


def prefill_flops(
    shape: DecoderShape,
    seq_len: int,
    stages: Sequence[tuple[int, int]] = (),
    lm_head_tokens: int = 1,
    causal: bool = False,
) -> dict[str, Any]:
    """FLOPs of one prefill with a schedule of ``(layer K, tokens removed at K)`` stages.

    Returns per-layer sequence lengths (``seq_lens``) and totals (``layers``), the split into
    ``projections`` (q/k/v/o), ``attention`` (scores + weighted sum, full rectangle) and ``mlp``,
    the sum over layers (``decoder``), the LM head on the last ``lm_head_tokens`` positions
    (``lm_head``) and ``total``. Embedding lookups and norms are not counted.
    """
    lens = layer_seq_lens(shape.num_layers, seq_len, stages)
    per_layer = [layer_flops(shape, n, n, causal) for n in lens]
    proj = sum(f["q_proj"] + f["k_proj"] + f["v_proj"] + f["o_proj"] for f in per_layer)
    attn = sum(f["attn_scores"] + f["attn_values"] for f in per_layer)
    mlp = sum(f["mlp"] for f in per_layer)
    decoder = sum(f["total"] for f in per_layer)
    head = lm_head_flops(shape, lm_head_tokens)
    return {
        "seq_lens": lens,
        "layers": [f["total"] for f in per_layer],
        "projections": proj,
        "attention": attn,
        "mlp": mlp,
        "decoder": decoder,
        "lm_head": head,
        "total": decoder + head,
    }


def scoring_flops(shape: DecoderShape, seq_len: int, n_query: int) -> dict[str, int]:
    """FLOPs of one stage's scoring side pass on a ``seq_len``-token sequence.

    Input RMSNorm of layer K on all tokens (estimated), q projection for the ``n_query`` query
    rows, k projection for all tokens, ``q . k`` for the query rows and every query head
    (GQA: k heads are shared, the product is not), softmax over the scores (estimated).
    """
    d, hd = shape.hidden_size, shape.head_dim
    out = {
        "norm": _RMSNORM_FLOPS_PER_ELEMENT * seq_len * d,
        "q_proj": 2 * n_query * d * shape.num_heads * hd,
        "k_proj": 2 * seq_len * d * shape.num_kv_heads * hd,
        "scores": 2 * shape.num_heads * n_query * seq_len * hd,
        "softmax": _SOFTMAX_FLOPS_PER_ELEMENT * shape.num_heads * n_query * seq_len,
    }
    out["total"] = sum(out.values())
    return out


def reference_pass_flops(
    shape: DecoderShape, seq_len: int, K: int, n_query: int, causal: bool = False
) -> dict[str, int]:
    """FLOPs of a reference pass: layers ``0..K-1`` dense on ``seq_len`` tokens, then scoring at K."""
    if not 0 <= K <= shape.num_layers:
        raise ValueError(f"K={K} outside 0..{shape.num_layers}")
    prefix = K * layer_flops(shape, seq_len, seq_len, causal)["total"]
    score = scoring_flops(shape, seq_len, n_query)["total"]
    return {"prefix": prefix, "scoring": score, "total": prefix + score}


def decode_flops_per_token(
    shape: DecoderShape, kv_lens_per_layer: Sequence[int] | int, lm_head: bool = True
) -> dict[str, Any]:
    """FLOPs of generating one token.

    ``kv_lens_per_layer[l]`` is the number of keys the new token attends to at layer ``l``,
    itself included (e.g. ``layer_seq_lens(...)[l] + step + 1``); an int means the same for
    every layer. Pruning shortens these, which is its whole effect on decoding.
    """
    if isinstance(kv_lens_per_layer, int):
        kv_lens = [kv_lens_per_layer] * shape.num_layers
    else:
        kv_lens = list(kv_lens_per_layer)
    if len(kv_lens) != shape.num_layers:
        raise ValueError(f"{len(kv_lens)} kv lengths for {shape.num_layers} layers")
    layers = [layer_flops(shape, 1, n)["total"] for n in kv_lens]
    head = lm_head_flops(shape, 1) if lm_head else 0
    return {"layers": layers, "decoder": sum(layers), "lm_head": head, "total": sum(layers) + head}


# ---------------------------------------------------------------------------------------------
# Methods
# ---------------------------------------------------------------------------------------------


def _retained_count(retain: int | float, n_visual: int, n_left: int) -> int:
    # A float is a share of the original visual tokens (the engine's rule, core.budget), an int a count.
    if isinstance(retain, float):
        if not 0.0 < retain <= 1.0:
            raise ValueError(f"retain fraction {retain} outside (0, 1]")
        return keep_count(retain, n_visual, n_left)
    if not 0 <= retain <= n_visual:
        raise ValueError(f"retain count {retain} outside 0..{n_visual}")
    return int(retain)


def stages_to_removals(stages: Sequence[tuple[int, int | float]], n_visual: int) -> list[tuple[int, int]]:
    """Turn ``(K, retain)`` stages into ``(K, removed)`` stages.

    ``retain`` is how many of the ``n_visual`` original visual tokens are still kept after the
    stage: an int is a count, a float a fraction of ``n_visual``. Stages must have
    non-decreasing ``K`` and non-increasing ``retain``.
    """
    out: list[tuple[int, int]] = []
    kept, last_k = n_visual, -1
    for k, retain in stages:
        r = _retained_count(retain, n_visual, kept)
        if k < last_k:
            raise ValueError("stages must be ordered by layer")
        if r > kept:
            raise ValueError(f"stage at layer {k} keeps {r} tokens, more than the {kept} left")
        out.append((k, kept - r))
        kept, last_k = r, k
    return out


def method_flops(
    shape: DecoderShape,
    seq_len: int,
    n_visual: int,
    stages: Sequence[tuple[int, int | float]],
    n_query: int | Sequence[int] = 1,
    reference_pass: bool | Sequence[bool] = False,
    scoring: bool | Sequence[bool] = True,
    lm_head_tokens: int = 1,
    causal: bool = False,
) -> dict[str, Any]:
    """Prefill FLOPs of a pruning method against the dense model.

    ``causal`` counts only the attention pairs a causal kernel computes, in the dense and the pruned
    prefill alike (the segment-masked shallow layers of ShaRP compute slightly more: each segment's
    own later tokens, a few percent of those layers' attention, not counted).
    ``stages`` are ``(K, retain)`` pairs (see :func:`stages_to_removals`). ``scoring`` adds one
    scoring side pass per stage, on the sequence entering layer K, with ``n_query`` query rows.
    ``reference_pass`` adds ShaRP's reference pass: the content-free prompt (same length) dense
    through layers ``0..K_max-1`` plus scoring at every stage layer; leave it False when the
    reference is cached. All three may be given per stage (a schedule whose stages differ): scoring then
    counts only the stages that score, each with its own query rows, and the reference pass runs up to
    the last stage that asks for it, with one scoring step per such stage.

    Returns ``dense``, ``pruned_prefill``, ``scoring``, ``reference``, ``pruned`` (the sum of the
    last three), ``reduction`` (``1 - pruned / dense``) and ``speedup_bound`` (``dense / pruned``,
    the speedup if time were proportional to FLOPs).
    """
    removals = stages_to_removals(stages, n_visual)
    scores = [scoring] * len(removals) if isinstance(scoring, bool) else list(scoring)
    refs = [reference_pass] * len(removals) if isinstance(reference_pass, bool) else list(reference_pass)
    queries = [n_query] * len(removals) if isinstance(n_query, int) else list(n_query)
    if len(scores) != len(removals) or len(refs) != len(removals) or len(queries) != len(removals):
        raise ValueError("give scoring / reference_pass / n_query as one value or one per stage")
    dense = prefill_flops(shape, seq_len, (), lm_head_tokens, causal)["total"]
    pruned = prefill_flops(shape, seq_len, removals, lm_head_tokens, causal)
    score = 0
    # Each stage scores the sequence entering layer K, before its own removal.
    cur = seq_len
    # a stage that keeps everything it gets selects nothing: the engine skips its scoring and reference pass
    for (_, removed), scores_here, nq in zip(removals, scores, queries, strict=True):
        if scores_here and removed:
            score += scoring_flops(shape, cur, nq)["total"]
        cur -= removed
    reference = 0
    # (K, query rows) of every stage that debiases with a reference pass; stage layers are increasing
    debiased = [(k, nq) for (k, removed), r, nq in zip(removals, refs, queries, strict=True) if r and removed]
    if debiased:
        k_last, nq_last = debiased[-1]
        reference = reference_pass_flops(shape, seq_len, k_last, nq_last, causal)["total"]
        reference += sum(scoring_flops(shape, seq_len, nq)["total"] for _, nq in debiased[:-1])
    total = pruned["total"] + score + reference
    return {
        "seq_len": seq_len,
        "n_visual": n_visual,
        "stages": removals,
        "seq_lens": pruned["seq_lens"],
        "dense": dense,
        "pruned_prefill": pruned["total"],
        "scoring": score,
        "reference": reference,
        "pruned": total,
        "reduction": 1.0 - total / dense,
        "speedup_bound": dense / total,
    }


# ---------------------------------------------------------------------------------------------
# Vision tower
# ---------------------------------------------------------------------------------------------


def _int_pair(value: Any) -> int:
    return int(value[0]) if isinstance(value, list | tuple) else int(value)


def _grid_list(grid_thw: Any) -> list[tuple[int, int, int]]:
    if grid_thw is None:
        return []
    if hasattr(grid_thw, "tolist"):  # a tensor or array from the processor
        grid_thw = grid_thw.tolist()
    if len(grid_thw) == 3 and all(isinstance(v, int) for v in grid_thw):
        return [tuple(int(v) for v in grid_thw)]  # type: ignore[list-item]
    return [tuple(int(v) for v in g) for g in grid_thw]  # type: ignore[misc]


def _window_sq_sum(grid: list[tuple[int, int, int]], merge: int, window_merged: int) -> int:
    # Qwen2.5-VL tiles the merged grid into window_merged x window_merged windows (edge windows
    # smaller); a window of r x c merged tokens holds r * c * merge^2 patches, so the sum of
    # squared window sizes factorises over rows and columns.
    def chunk_sq(n: int) -> int:
        full, rest = divmod(n, window_merged)
        return full * window_merged**2 + rest**2

    total = 0
    for t, h, w in grid:
        total += t * chunk_sq(h // merge) * chunk_sq(w // merge) * merge**4
    return total


def vision_encoder_flops(
    vision_cfg: Any,
    n_patches: int | None = None,
    *,
    grid_thw: Sequence[int] | Sequence[Sequence[int]] | None = None,
) -> dict[str, Any]:
    """Approximate FLOPs of a vision tower on ``n_patches`` patches (matrix products only).

    Supported configs (objects or dicts):

    * Qwen3-VL (``deepstack_visual_indexes`` present): Conv3d patch embedding, ``depth`` blocks
      of fused qkv + proj, attention, a 2-matrix GELU MLP (``intermediate_size``), no windowed
      attention, the patch merger (two linears on groups of ``spatial_merge_size**2`` patches)
      and one more merger of the same shape per entry of ``deepstack_visual_indexes``
      (``deepstack``). The learned position grid is resampled elementwise and not counted.
    * Qwen2.5-VL (``out_hidden_size`` present): Conv3d patch embedding, ``depth`` blocks of
      fused qkv + proj, attention, SwiGLU MLP (3 matrices), and the patch merger (two linears
      on groups of ``spatial_merge_size**2`` patches).
    * Qwen2-VL (``embed_dim`` present): the same with a 2-matrix MLP of width
      ``embed_dim * mlp_ratio``.
    * SigLIP, CLIP and InternViT (``image_size`` present; LLaVA-OneVision, SmolVLM,
      LLaVA-NeXT-Video, InternVL): patch embedding and ``num_hidden_layers`` blocks of q/k/v/out
      projections, attention within each image and a 2-matrix MLP. ``n_patches`` counts patches
      only: a CLIP or InternViT tower (``model_type`` ``clip_vision_model`` / ``internvl_vision``)
      adds one class token per image, which goes through every block. Each image holds
      ``(image_size / patch_size)**2`` patches. Every layer is counted even when the VLM reads an
      earlier one (LLaVA's ``vision_feature_layer=-2``): transformers runs them all.

    Connectors: the Qwen mergers are part of the Qwen vision model and are counted. Connectors
    that live outside the vision model class (the LLaVA projector MLP, the SmolVLM pixel-shuffle
    connector, InternVL's pixel shuffle + MLP) are not; they are small next to the tower (a few percent).

    For Qwen towers, a patch is ``temporal_patch_size`` frames of ``patch_size**2`` pixels.
    Attention spans: with ``grid_thw`` (one ``(t, h, w)`` in patches, or a list of them, as the
    processor returns) the spans are exact: each temporal slice of ``h * w`` patches for
    full-attention blocks, and Qwen2.5-VL's ``window_size`` windows for the other blocks.
    Without it, full-attention blocks attend over all ``n_patches`` at once (an upper bound:
    the real model attends within each temporal slice) and Qwen2.5-VL windowed blocks over
    windows of ``(window_size / patch_size)**2`` patches.
    """
    grid = _grid_list(grid_thw)
    if grid:
        grid_patches = sum(t * h * w for t, h, w in grid)
        if n_patches is not None and n_patches != grid_patches:
            raise ValueError(f"n_patches={n_patches} but grid_thw holds {grid_patches} patches")
        n_patches = grid_patches
    if n_patches is None:
        raise ValueError("give n_patches or grid_thw")
    n = n_patches

    if _get(vision_cfg, "image_size") is not None and _get(vision_cfg, "spatial_merge_size") is None:
        return _vit_flops(vision_cfg, n)

    qwen3 = _get(vision_cfg, "deepstack_visual_indexes") is not None
    qwen25 = not qwen3 and _get(vision_cfg, "out_hidden_size") is not None
    channels = int(_get(vision_cfg, "in_channels", 3))
    patch = _int_pair(_get(vision_cfg, "patch_size"))
    t_patch = _int_pair(_get(vision_cfg, "temporal_patch_size", 2))
    merge = int(_get(vision_cfg, "spatial_merge_size", 2))
    depth = int(_get(vision_cfg, "depth"))
    n_deepstack = 0
    if qwen3:
        d = int(_get(vision_cfg, "hidden_size"))
        m = int(_get(vision_cfg, "intermediate_size"))
        out_dim = int(_get(vision_cfg, "out_hidden_size"))
        mlp_per_block = 2 * 2 * n * d * m  # linear_fc1, linear_fc2
        full_blocks = set(range(depth))
        window = 0
        n_deepstack = len(_get(vision_cfg, "deepstack_visual_indexes"))
    elif qwen25:
        d = int(_get(vision_cfg, "hidden_size"))
        m = int(_get(vision_cfg, "intermediate_size"))
        out_dim = int(_get(vision_cfg, "out_hidden_size"))
        mlp_per_block = 3 * 2 * n * d * m
        full_blocks = set(_get(vision_cfg, "fullatt_block_indexes", ()))
        window = int(_get(vision_cfg, "window_size"))
    else:
        d = int(_get(vision_cfg, "embed_dim"))
        m = d * int(_get(vision_cfg, "mlp_ratio", 4))
        out_dim = int(_get(vision_cfg, "hidden_size"))
        mlp_per_block = 2 * 2 * n * d * m
        full_blocks = set(range(depth))
        window = 0

    full_sq = sum(t * (h * w) ** 2 for t, h, w in grid) if grid else n * n
    if qwen25 and grid:
        window_sq = _window_sq_sum(grid, merge, window // merge // patch)
    elif qwen25:
        window_sq = n * min(n, (window // patch) ** 2)
    else:
        window_sq = full_sq
    n_full = sum(1 for b in range(depth) if b in full_blocks)
    # Q K^T and P V, each 2 * span^2 * d summed over spans (heads * head_dim == d).
    attention = 2 * 2 * d * (n_full * full_sq + (depth - n_full) * window_sq)

    n_merged = n // (merge * merge)
    merged_dim = d * merge * merge
    merger = 2 * n_merged * merged_dim * merged_dim + 2 * n_merged * merged_dim * out_dim
    out = {
        "patch_embed": 2 * n * channels * t_patch * patch * patch * d,
        "projections": depth * 2 * n * d * 4 * d,  # fused qkv (3d) + proj (d)
        "attention": attention,
        "mlp": depth * mlp_per_block,
        "merger": merger,
    }
    if qwen3:
        out["deepstack"] = n_deepstack * merger  # same shape as the final merger
    out["total"] = sum(out.values())
    out["n_patches"] = n
    out["n_tokens_out"] = n_merged
    return out


# Vision models whose embeddings prepend a class token to each image's patches.
_CLS_TOKEN_MODEL_TYPES = frozenset({"clip_vision_model", "internvl_vision"})


def _vit_flops(cfg: Any, n: int) -> dict[str, Any]:
    # SigLIP / CLIP: fixed-size images, attention within each image, 2-matrix MLP.
    d = int(_get(cfg, "hidden_size"))
    m = int(_get(cfg, "intermediate_size"))
    layers = int(_get(cfg, "num_hidden_layers"))
    patch = _int_pair(_get(cfg, "patch_size"))
    channels = int(_get(cfg, "num_channels", 3))
    cls = 1 if _get(cfg, "model_type") in _CLS_TOKEN_MODEL_TYPES else 0
    per_image = (_int_pair(_get(cfg, "image_size")) // patch) ** 2
    n_images = math.ceil(n / per_image)
    full, rest = divmod(n, per_image)
    span_sq = full * (per_image + cls) ** 2 + ((rest + cls) ** 2 if rest else 0)
    tokens = n + n_images * cls  # rows of every projection and MLP matrix
    out = {
        "patch_embed": 2 * n * channels * patch * patch * d,
        "projections": layers * 2 * tokens * d * 4 * d,  # q, k, v, out
        "attention": layers * 2 * 2 * d * span_sq,
        "mlp": layers * 2 * 2 * tokens * d * m,  # fc1, fc2
    }
    out["total"] = sum(out.values())
    out["n_patches"] = n
    out["n_images"] = n_images
    out["n_tokens"] = tokens
    return out
