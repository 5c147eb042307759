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

from ..models.pixel_norms import CLIP_MEAN, CLIP_STD

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

# the real checkpoints' templates for one user turn (images, then videos, then text)
_ONEVISION_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + ' '}}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>' }}{% endfor %}"
    "{% if message['role'] != 'assistant' %}{% for content in message['content'] | selectattr('type', 'equalto', "
    "'text') %}{{ '\\n' + content['text'] }}{% endfor %}{% else %}{% for content in message['content'] | "
    "selectattr('type', 'equalto', 'text') %}{{ '\\n' + content['text'] }}{% endfor %}{% endif %}"
    "{{'<|im_end|>'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
_INTERNVL_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n'}}{% if message['content'] is string %}"
    "{{ message['content'] }}{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "{{ '<image>\\n' }}{% elif content['type'] == 'video' %}{{ '<video>\\n' }}{% elif content['type'] == 'text' %}"
    "{{ content['text'] }}{% endif %}{% endfor %}{% endif %}{{'<|im_end|>\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{'<|im_start|>assistant\\n' }}{% endif %}"
)
_SMOLVLM_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}{% if message['content'] is string %}"
    "{{': ' + message['content']}}{% else %}{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}"
    "{{': '}}{% endif %}{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% elif line['type'] == 'video' %}{{ '<video>' }}{% endif %}"
    "{% endfor %}{% endif %}<end_of_utterance>\\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}"
    "{% endif %}"
)
_NEXT_VIDEO_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}"
    "{% endif %}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\\n' }}"
    "{% endfor %}{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}"
    "{{ '<video>\\n' }}{% endfor %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def byte_tokenizer(specials: list[str], placed: dict[str, int], vocab: int = VOCAB, bos: str | None = None,
                   **kwargs: Any) -> Any:
    """A PreTrainedTokenizerFast: 256 byte tokens (ids 0-255), `specials` from id 256 on, `placed` tokens at the
    given ids, the rest of the `vocab` ids reserved tokens; `bos` is prepended to every encoded text (LLaMA)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
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
    if bos is not None:
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                           special_tokens=[(bos, ids[bos])])
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
        from .qwen3_vl import tiny_qwen3_vl

        model = tiny_qwen3_vl(moe=family.endswith("moe"), layers=layers, vocab=VOCAB)
    else:
        from .qwen_vl import tiny_qwen_vl

        model = tiny_qwen_vl(family, layers=layers, vocab=VOCAB)
    placed = {"<|image_pad|>": VOCAB - 3, "<|video_pad|>": VOCAB - 4, "<|vision_start|>": VOCAB - 5,
              "<|vision_end|>": VOCAB - 6}
    tok = byte_tokenizer(_QWEN_SPECIALS, placed, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    processor_class = {"qwen2_vl": "Qwen2VLProcessor", "qwen2_5_vl": "Qwen2_5_VLProcessor"}.get(
        family, "Qwen3VLProcessor")
    mean, std = ([0.5] * 3, [0.5] * 3) if v3 else (list(CLIP_MEAN), list(CLIP_STD))
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


def _llava(family: str, path: Path, layers: int) -> tuple[nn.Module, Any]:
    from .llava import pinpoints, tiny_llava_next_video, tiny_llava_onevision

    placed = {"<image>": VOCAB - 3, "<video>": VOCAB - 4}
    side, patch = 16, 2  # 8 x 8 patches per frame, pooled to 4 x 4 = 16 tokens
    grid_pinpoints = pinpoints(side)
    if family == "llava_onevision":
        model = tiny_llava_onevision(layers=layers, vocab=VOCAB, image_size=side, patch_size=patch)
        tok = byte_tokenizer(_QWEN_SPECIALS, placed, eos_token="<|im_end|>", pad_token="<|endoftext|>")
        processor_class = "LlavaOnevisionProcessor"
        mean, std = [0.5] * 3, [0.5] * 3
        video = dict(size={"height": side, "width": side}, video_processor_type="LlavaOnevisionVideoProcessor")
        image = dict(size={"height": side, "width": side}, image_processor_type="LlavaOnevisionImageProcessor",
                     image_grid_pinpoints=grid_pinpoints, do_pad=True)
        proc = dict(num_image_tokens=(side // patch) ** 2, vision_feature_select_strategy="full",
                    vision_aspect_ratio="anyres_max_9")
        (path / "chat_template.jinja").write_text(_ONEVISION_TEMPLATE)
    else:
        model = tiny_llava_next_video(layers=layers, vocab=VOCAB, image_size=side, patch_size=patch)
        tok = byte_tokenizer(["<unk>", "<s>", "</s>"], placed, bos="<s>", bos_token="<s>", eos_token="</s>",
                             unk_token="<unk>", pad_token="<unk>")
        processor_class = "LlavaNextVideoProcessor"
        mean, std = list(CLIP_MEAN), list(CLIP_STD)
        crop = {"height": side, "width": side}
        video = dict(size={"shortest_edge": side}, crop_size=crop, do_center_crop=True,
                     video_processor_type="LlavaNextVideoVideoProcessor")
        image = dict(size={"shortest_edge": side}, crop_size=crop, do_center_crop=True,
                     image_processor_type="LlavaNextImageProcessor", image_grid_pinpoints=grid_pinpoints,
                     do_pad=True)
        proc = dict(patch_size=patch, vision_feature_select_strategy="default", num_additional_image_tokens=1)
        (path / "chat_template.jinja").write_text(_NEXT_VIDEO_TEMPLATE)
    common = dict(image_mean=mean, image_std=std, do_resize=True, do_rescale=True, do_normalize=True, resample=3,
                  rescale_factor=1 / 255, do_convert_rgb=True, processor_class=processor_class)
    _write_json(path / "preprocessor_config.json", {**common, **image})
    _write_json(path / "video_preprocessor_config.json", {**common, **video})
    _write_json(path / "processor_config.json", {**proc, "processor_class": processor_class})
    return model, tok


def _internvl(family: str, path: Path, layers: int) -> tuple[nn.Module, Any]:
    from .internvl import tiny_internvl

    side = 16  # 16 px tiles of 2 px patches: 8 x 8 patches, pixel-shuffled to 4 x 4 = 16 tokens per frame
    model = tiny_internvl(layers=layers, vocab=VOCAB, image_size=side, patch_size=2)
    placed = {"<IMG_CONTEXT>": VOCAB - 3, "<video>": VOCAB - 4, "<img>": VOCAB - 5, "</img>": VOCAB - 6}
    names = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
             "video_token": "<video>"}
    tok = byte_tokenizer(_QWEN_SPECIALS, placed, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                         extra_special_tokens=names)
    # the InternVL-hf checkpoints normalise with the ImageNet statistics
    common = dict(image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225], do_resize=True,
                  do_rescale=True, do_normalize=True, resample=3, rescale_factor=1 / 255, do_convert_rgb=True,
                  size={"height": side, "width": side}, processor_class="InternVLProcessor")
    _write_json(path / "preprocessor_config.json", {**common, "image_processor_type": "GotOcr2ImageProcessor",
                                                   "crop_to_patches": False, "min_patches": 1, "max_patches": 12})
    _write_json(path / "video_preprocessor_config.json", {**common, "video_processor_type": "InternVLVideoProcessor"})
    _write_json(path / "processor_config.json", {"image_seq_length": 16, "processor_class": "InternVLProcessor"})
    (path / "chat_template.jinja").write_text(_INTERNVL_TEMPLATE)
    return model, tok


def _smolvlm(family: str, path: Path, layers: int) -> tuple[nn.Module, Any]:
    from .smolvlm import MAX_TILES_PER_SIDE, SmolVLMTokens, tiny_smolvlm

    side = 32  # 32 px pictures of 4 px patches: 8 x 8 patches, folded 2 x 2 to 4 x 4 = 16 tokens per frame
    model = tiny_smolvlm(layers=layers, vocab=VOCAB, image_size=side, patch_size=4, scale_factor=2)
    ids = SmolVLMTokens(VOCAB)
    placed = {"<global-img>": ids.global_img, "<fake_token_around_image>": ids.fake, "<image>": ids.image,
              "<end_of_utterance>": ids.end_of_utterance}
    for r in range(1, MAX_TILES_PER_SIDE + 1):
        for c in range(1, MAX_TILES_PER_SIDE + 1):
            placed[f"<row_{r}_col_{c}>"] = ids.row_col(r, c)
    tok = byte_tokenizer(_QWEN_SPECIALS, placed, eos_token="<end_of_utterance>", pad_token="<|endoftext|>")
    # as SmolVLM2's checkpoints: one preprocessor config whose `video_sampling` sets the video frame size, Lanczos
    _write_json(path / "preprocessor_config.json", dict(
        image_processor_type="SmolVLMImageProcessor", processor_class="SmolVLMProcessor", do_convert_rgb=True,
        do_image_splitting=True, do_normalize=True, do_pad=True, do_rescale=True, do_resize=True,
        image_mean=[0.5] * 3, image_std=[0.5] * 3, max_image_size={"longest_edge": side}, resample=1,
        rescale_factor=1 / 255, size={"longest_edge": 4 * side},
        video_sampling={"fps": 1, "max_frames": 64, "video_size": {"longest_edge": side}}))
    _write_json(path / "processor_config.json", {"image_seq_len": 16, "processor_class": "SmolVLMProcessor"})
    (path / "chat_template.jinja").write_text(_SMOLVLM_TEMPLATE)
    return model, tok


_BUILDERS = {
    "qwen2_vl": _qwen,
    "qwen2_5_vl": _qwen,
    "qwen3_vl": _qwen,
    "qwen3_vl_moe": _qwen,
    "llava_onevision": _llava,
    "llava_next_video": _llava,
    "internvl": _internvl,
    "smolvlm": _smolvlm,
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
