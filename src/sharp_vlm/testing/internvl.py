"""Random-weight InternVL models built from configs, and prompts laid out as InternVLProcessor lays them out.

No downloads and no tokenizer: `CharTokenizer` stands in for one (the special tokens `<img>`, `</img>`,
`<IMG_CONTEXT>` by id, every other character an ordinary text id), so the frame labels `Frame{k}: ` are text to the
model and to the pruning engine, as they are with the real tokenizer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .configs import build, tiny_text_config, tiny_vision_config

TEXT_MODELS = ("qwen2", "qwen3", "llama", "gpt_oss")  # InternVL3, InternVL3.5, InternVL2.5/3 (some sizes), 3.5-GPT-OSS


def _text_config(model_type: str, layers: int, hidden: int, heads: int, kv_heads: int, vocab: int) -> dict:
    cfg = tiny_text_config(layers, hidden, heads, kv_heads, vocab, model_type=model_type)
    if model_type == "gpt_oss":
        cfg.update(num_local_experts=2, num_experts_per_tok=1, sliding_window=8,
                   layer_types=["sliding_attention", "full_attention"] * (layers // 2)
                   + ["full_attention"] * (layers % 2))
    return cfg


def tiny_internvl(
    text: str = "qwen2",
    layers: int = 4,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    vocab: int = 256,
    image_size: int = 16,
    patch_size: int = 2,
    attn_implementation: str = "sdpa",
    seed: int = 0,
) -> nn.Module:
    """A random-weight InternVLForConditionalGeneration (InternViT-style tower with CLS, pixel shuffle 0.5).

    Tiles are `image_size` px in `patch_size` px patches: the default 16/2 gives 8 x 8 patches, shuffled to a
    4 x 4 grid = 16 tokens per tile / frame. `text` is the decoder's model_type.
    """
    from transformers import InternVLConfig, InternVLForConditionalGeneration

    side = (image_size // patch_size) // 2
    cfg = InternVLConfig(
        text_config=_text_config(text, layers, hidden, heads, kv_heads, vocab),
        vision_config=tiny_vision_config(image_size, patch_size),
        image_token_id=vocab - 3,
        image_seq_length=side * side,
        downsample_ratio=0.5,
    )
    model = build(InternVLForConditionalGeneration, cfg, attn_implementation, seed)
    # transformers zero-initialises the tower's CLS token and position embeddings; trained ones are not zero, and
    # with zeros every patch of a uniform (black) tile would give the same feature
    emb = model.model.vision_tower.embeddings
    with torch.no_grad():
        emb.cls_token.normal_(std=0.02)
        emb.position_embeddings.normal_(std=0.02)
    return model


class CharTokenizer:
    """A stand-in tokenizer: `<img>`, `</img>`, `<IMG_CONTEXT>` by id, every other character one text id."""

    def __init__(self, vocab: int, image_token_id: int):
        self.context_image_token_id = image_token_id
        self.start_image_token_id = vocab - 5
        self.end_image_token_id = vocab - 6
        self._text = vocab - 8  # ids 3 .. vocab-9 are ordinary text
        self._special = {"<img>": self.start_image_token_id, "</img>": self.end_image_token_id,
                         "<IMG_CONTEXT>": image_token_id}
        self._split = re.compile("(" + "|".join(re.escape(s) for s in self._special) + ")")

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        ids: list[int] = []
        for piece in self._split.split(text):
            if piece in self._special:
                ids.append(self._special[piece])
            else:
                ids += [3 + ord(c) % (self._text - 3) for c in piece]
        return ids

    @classmethod
    def of(cls, model: nn.Module) -> CharTokenizer:
        cfg = model.config
        return cls(cfg.text_config.vocab_size, cfg.image_token_id)


def image_tiles(height: int, width: int, tile: int, min_patches: int = 1, max_patches: int = 12) -> int:
    """Tiles of an image as the GotOcr2 image processor crops it (`get_number_of_image_patches`): the crops of the
    best canvas, plus a thumbnail when there is more than one crop."""
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    proc = GotOcr2ImageProcessorPil(size={"height": tile, "width": tile}, crop_to_patches=True,
                                    min_patches=min_patches, max_patches=max_patches)
    return int(proc.get_number_of_image_patches(height, width))


def tiny_internvl_inputs(
    model: nn.Module,
    content: Sequence[tuple[str, Any]] = (("video", 8),),
    prefix: int = 5,
    question: int = 7,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Inputs for a tiny InternVL, as InternVLProcessor returns them.

    content: ("video", frames) or ("image", (height, width)) in prompt order. The prompt is `prefix text, then
    per item its text (an image: <img> + tiles x tokens + </img>; a video: "Frame1: <img>...</img>\\nFrame2: ..."),
    a newline after each (the chat template's), then the question`; pixel_values lists every tile / frame in prompt
    order (the processor's merge of images and videos), random.
    """
    cfg = model.config
    vc = cfg.vision_config
    px = vc.image_size[0] if isinstance(vc.image_size, (list, tuple)) else int(vc.image_size)
    ps = vc.patch_size[0] if isinstance(vc.patch_size, (list, tuple)) else int(vc.patch_size)
    per = int((px // ps) * cfg.downsample_ratio) ** 2
    tok = CharTokenizer.of(model)
    gen = torch.Generator().manual_seed(seed)
    vocab_text = cfg.text_config.vocab_size - 8

    def block(tiles: int) -> str:
        return "<img>" + "<IMG_CONTEXT>" * (per * tiles) + "</img>"

    parts = [torch.randint(3, vocab_text, (prefix,), generator=gen)]
    n_tiles = 0
    for kind, arg in content:
        if kind == "video":
            text = "\n".join(f"Frame{i + 1}: {block(1)}" for i in range(arg))
            n_tiles += arg
        elif kind == "image":
            n = image_tiles(arg[0], arg[1], px)
            text = block(n)
            n_tiles += n
        else:
            raise ValueError(f"content kind must be 'video' or 'image', got {kind!r}")
        parts.append(torch.tensor(tok.encode(text + "\n")))
    parts.append(torch.randint(3, vocab_text, (question,), generator=gen))
    ids = torch.cat(parts)[None]
    pixels = torch.randn(n_tiles, vc.num_channels, px, px, generator=gen)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixels}
