"""A random-weight decoder-only LLaMA (the SmolLM2 architecture): the generic adapter's tiny model."""

from __future__ import annotations

from torch import nn

from .configs import build, tiny_text_config


def tiny_llama(layers: int = 4, attn_implementation: str = "sdpa", seed: int = 0, vocab: int = 128) -> nn.Module:
    """A random-weight LLaMA-style decoder (the SmolLM2 architecture) for the generic adapter."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**tiny_text_config(layers=layers, vocab=vocab, max_position_embeddings=2048))
    return build(LlamaForCausalLM, cfg, attn_implementation, seed)
