"""Tiny random-weight checkpoints saved to a folder as a real one is: config.json + weights, a tokenizer with the
family's special tokens, a chat template and the preprocessor configs. `load_model(dir)` and the torch-only
preprocessing then work on them as on a downloaded checkpoint (tests and examples; nothing is downloaded).

The tokenizer is byte-level BPE without merges (every byte one token) plus the family's special tokens at the ids
the tiny model configs use, so any text tokenises and the placeholder tokens stay single tokens.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

VOCAB = 320  # 256 byte tokens + the special tokens, padded with reserved ones

_QWEN_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'video' or 'video' in content %}"
    "<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def byte_tokenizer(specials: list[str], placed: dict[str, int], vocab: int = VOCAB, **kwargs: Any) -> Any:
    """A PreTrainedTokenizerFast: 256 byte tokens (ids 0-255), `specials` from id 256 on, `placed` tokens at the
    given ids, the rest of the `vocab` ids reserved tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_chars = pre_tokenizers.ByteLevel.alphabet()
    # the GPT-2 byte -> printable character map, in byte order, so that id == byte value
    table = _bytes_to_unicode()
    ids = {table[b]: b for b in range(256)}
    assert set(ids) == set(byte_chars)
    free = iter(i for i in range(256, vocab) if i not in placed.values())
    names = {**{s: next(free) for s in specials if s not in placed}, **placed}
    ids.update(names)
    used = set(ids.values())
    reserved = [f"<|reserved_{i}|>" for i in range(256, vocab) if i not in used]
    ids.update({name: int(name[11:-2]) for name in reserved})
    tok = Tokenizer(models.BPE(vocab=ids, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(names) + reserved)  # special: never split, skipped when decoding
    return PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)


def _bytes_to_unicode() -> dict[int, str]:
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    chars, n = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + n)
            n += 1
    return chars


def _write_json(path: Path, value: dict[str, Any]) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n")


def _qwen(family: str, path: Path, layers: int) -> tuple[nn.Module, Any]:
    v3 = family.startswith("qwen3")
    if v3:
        from .tiny_qwen3_vl import tiny_qwen3_vl

        model = tiny_qwen3_vl(moe=family.endswith("moe"), layers=layers, vocab=VOCAB)
    else:
        from .factory import tiny_qwen_vl

        model = tiny_qwen_vl(family, layers=layers, vocab=VOCAB)
    placed = {"<|image_pad|>": VOCAB - 3, "<|video_pad|>": VOCAB - 4, "<|vision_start|>": VOCAB - 5,
              "<|vision_end|>": VOCAB - 6}
    tok = byte_tokenizer(_QWEN_SPECIALS, placed, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    processor_class = {"qwen2_vl": "Qwen2VLProcessor", "qwen2_5_vl": "Qwen2_5_VLProcessor"}.get(
        family, "Qwen3VLProcessor")
    mean, std = ([0.5] * 3, [0.5] * 3) if v3 else (
        [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711])
    # patch 2 px, 2x2 merge: a 4 px grid; frames of 64..256 px (Qwen3-VL bounds the clip: up to 16 frames of 256)
    size = {"shortest_edge": 64, "longest_edge": 256 * (16 if v3 else 1)}
    common = dict(size=size, patch_size=2, temporal_patch_size=2, merge_size=2, image_mean=mean, image_std=std,
                  do_resize=True, do_rescale=True, do_normalize=True, resample=3, rescale_factor=1 / 255,
                  processor_class=processor_class)
    image_type = "Qwen2VLImageProcessor"
    video_type = "Qwen3VLVideoProcessor" if v3 else "Qwen2VLVideoProcessor"
    _write_json(path / "preprocessor_config.json", {**common, "image_processor_type": image_type})
    _write_json(path / "video_preprocessor_config.json",
                {**common, "video_processor_type": video_type, "do_sample_frames": False})
    (path / "chat_template.jinja").write_text(_QWEN_TEMPLATE)
    return model, tok


_BUILDERS = {
    "qwen2_vl": _qwen,
    "qwen2_5_vl": _qwen,
    "qwen3_vl": _qwen,
    "qwen3_vl_moe": _qwen,
}

TINY_FAMILIES = tuple(_BUILDERS)


def save_tiny_checkpoint(family: str, path: str | Path, layers: int = 4) -> Path:
    """Save a tiny random-weight `family` checkpoint (see TINY_FAMILIES) with tokenizer, chat template and
    preprocessor configs to `path`."""
    if family not in _BUILDERS:
        raise ValueError(f"family must be one of {', '.join(TINY_FAMILIES)}, got {family!r}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model, tok = _BUILDERS[family](family, path, layers)
    eos = tok.convert_tokens_to_ids(tok.eos_token)
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = tok.convert_tokens_to_ids(tok.pad_token) if tok.pad_token else eos
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
