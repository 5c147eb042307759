"""Random-weight Qwen3-VL (dense and MoE) built from configs, and prompts laid out as its processor lays them out.

The Qwen3-VL processor writes a video as one block per temporal patch: a timestamp in plain text
(`<0.5 seconds>`), then `<|vision_start|>`, the patch's h x w merged tokens, `<|vision_end|>`. The factory
below builds the same shape of prompt from token ids (no tokenizer, no downloads): the timestamp characters
become ordinary text ids, so they are text to the model and to the pruning engine.
"""

from __future__ import annotations

import torch
from torch import nn

from .configs import build, tiny_text_config
from .qwen_vl import TinyVideo, qwen_token_ids


def tiny_qwen3_vl(
    moe: bool = False,
    layers: int = 4,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    vocab: int = 256,
    deepstack: tuple[int, ...] = (0, 1, 2),
    attn_implementation: str = "sdpa",
    seed: int = 0,
) -> nn.Module:
    """A random-weight Qwen3-VL (patch 2 px, 2x2 merge, 2 frames per temporal patch).

    `deepstack` are the vision blocks whose features are added to the outputs of decoder layers
    0..len(deepstack)-1 (the real models use 3); the vision tower has max(deepstack)+1 blocks.
    """
    from transformers import (
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
        Qwen3VLMoeConfig,
        Qwen3VLMoeForConditionalGeneration,
    )

    half = hidden // heads // 2
    # interleaved M-RoPE: (t, h, w) sections over the head_dim/2 frequencies
    section = [half - 2 * (half // 4), half // 4, half // 4]
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": section, "mrope_interleaved": True}
    if moe:
        text = tiny_text_config(layers, hidden, heads, kv_heads, vocab, rope_parameters=rope, num_experts=4,
                                num_experts_per_tok=2, moe_intermediate_size=hidden, decoder_sparse_step=1)
    else:  # the dense tiny model has no bos/eos ids: its generate() never stops early
        text = tiny_text_config(layers, hidden, heads, kv_heads, vocab, rope_parameters=rope, bos_token_id=None,
                                eos_token_id=None)
    vision = dict(depth=max(deepstack) + 1 if deepstack else 1, hidden_size=32, intermediate_size=64, num_heads=2,
                  patch_size=2, spatial_merge_size=2, temporal_patch_size=2, in_channels=3, out_hidden_size=hidden,
                  num_position_embeddings=64, deepstack_visual_indexes=list(deepstack))
    cfg_cls, model_cls = (Qwen3VLMoeConfig, Qwen3VLMoeForConditionalGeneration) if moe else (
        Qwen3VLConfig, Qwen3VLForConditionalGeneration)
    cfg = cfg_cls(text_config=text, vision_config=vision, **qwen_token_ids(vocab))
    return build(model_cls, cfg, attn_implementation, seed)


def frame_timestamps(frames: int, fps: float, temporal_patch_size: int) -> list[float]:
    """Seconds shown before each temporal patch: the mean time of its first and last frame, the last frame
    repeated to fill the final patch (the processor's rule)."""
    idx = list(range(frames))
    while len(idx) % temporal_patch_size:
        idx.append(idx[-1])
    return [(idx[i] + idx[i + temporal_patch_size - 1]) / 2 / fps for i in range(0, len(idx), temporal_patch_size)]


def timestamp_ids(seconds: float, vocab_text: int) -> torch.Tensor:
    """`<{seconds:.1f} seconds>` as text ids, one per character (a stand-in for the tokenizer)."""
    return torch.tensor([3 + ord(c) % (vocab_text - 3) for c in f"<{seconds:.1f} seconds>"])


def tiny_qwen3_video_inputs(
    model: nn.Module,
    frames: int = 8,
    height: int = 16,
    width: int = 16,
    prefix: int = 5,
    question: int = 7,
    fps: float = 2.0,
    seed: int = 0,
) -> TinyVideo:
    """`prefix text, then per temporal patch: <t seconds> <vision_start> h*w video tokens <vision_end>, then the
    question`, with random pixels. `frames` is padded up to whole temporal patches, as the processor does."""
    cfg = model.config
    vc = cfg.vision_config
    p, m, tp = vc.patch_size, vc.spatial_merge_size, vc.temporal_patch_size
    if height % (p * m) or width % (p * m):
        raise ValueError(f"height/width must be multiples of {p * m}")
    gen = torch.Generator().manual_seed(seed)
    t, h, w = -(-frames // tp), height // p, width // p
    per_block = (h // m) * (w // m)
    vocab_text = cfg.text_config.vocab_size - 8
    parts = [torch.randint(3, vocab_text, (prefix,), generator=gen)]
    for seconds in frame_timestamps(frames, fps, tp):
        parts += [
            timestamp_ids(seconds, vocab_text),
            torch.tensor([cfg.vision_start_token_id]),
            torch.full((per_block,), cfg.video_token_id),
            torch.tensor([cfg.vision_end_token_id]),
        ]
    parts.append(torch.randint(3, vocab_text, (question,), generator=gen))
    ids = torch.cat(parts)[None]
    pixels = torch.randn(t * h * w, vc.in_channels * tp * p * p, generator=gen)
    return TinyVideo(
        input_ids=ids,
        mm_token_type_ids=(ids == cfg.video_token_id).long() * 2,
        attention_mask=torch.ones_like(ids),
        pixel_values_videos=pixels,
        video_grid_thw=torch.tensor([[t, h, w]]),
    )
