"""Random-weight Qwen3-VL (dense and MoE) built from configs, and prompts laid out as its processor lays them out.

The Qwen3-VL processor writes a video as one block per temporal patch: a timestamp in plain text
(`<0.5 seconds>`), then `<|vision_start|>`, the patch's h x w merged tokens, `<|vision_end|>`. The factory
below builds the same shape of prompt from token ids (no tokenizer, no downloads): the timestamp characters
become ordinary text ids, so they are text to the model and to the pruning engine.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class TinyVideo3:
    """Inputs for a tiny Qwen3-VL: one video split into temporal-patch blocks with timestamps between them."""

    input_ids: torch.Tensor
    mm_token_type_ids: torch.Tensor
    attention_mask: torch.Tensor
    pixel_values_videos: torch.Tensor
    video_grid_thw: torch.Tensor

    def as_kwargs(self) -> dict[str, torch.Tensor]:
        return dict(self.__dict__)


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

    head_dim = hidden // heads
    half = head_dim // 2
    # interleaved M-RoPE: (t, h, w) sections over the head_dim/2 frequencies
    section = [half - 2 * (half // 4), half // 4, half // 4]
    text = dict(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": section,
                         "mrope_interleaved": True},
        pad_token_id=0,
    )
    if moe:
        text.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=hidden, decoder_sparse_step=1,
                    bos_token_id=1, eos_token_id=2)
    vision = dict(depth=max(deepstack) + 1 if deepstack else 1, hidden_size=32, intermediate_size=64, num_heads=2,
                  patch_size=2, spatial_merge_size=2, temporal_patch_size=2, in_channels=3, out_hidden_size=hidden,
                  num_position_embeddings=64, deepstack_visual_indexes=list(deepstack))
    cfg_cls, model_cls = (Qwen3VLMoeConfig, Qwen3VLMoeForConditionalGeneration) if moe else (
        Qwen3VLConfig, Qwen3VLForConditionalGeneration)
    cfg = cfg_cls(
        text_config=text,
        vision_config=vision,
        image_token_id=vocab - 3,
        video_token_id=vocab - 4,
        vision_start_token_id=vocab - 5,
        vision_end_token_id=vocab - 6,
    )
    cfg._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    return model_cls(cfg).eval()


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
) -> TinyVideo3:
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
    return TinyVideo3(
        input_ids=ids,
        mm_token_type_ids=(ids == cfg.video_token_id).long() * 2,
        attention_mask=torch.ones_like(ids),
        pixel_values_videos=pixels,
        video_grid_thw=torch.tensor([[t, h, w]]),
    )
