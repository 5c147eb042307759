"""InternVL video preprocessing (the rules of transformers' InternVLVideoProcessor and InternVLProcessor).

Every frame is resized to one tile (the config's height x width, 448 x 448 for InternVL3; aspect ratio not kept),
normalised, and written as `Frame{k}: <img>` + `<IMG_CONTEXT>` x image_seq_length + `</img>`, frames joined by
newlines, in place of the chat template's `<video>`. The tower's p x p patch grid is pixel-shuffled by
`downsample_ratio` to (p*r) x (p*r) tokens per frame (16 x 16 = 256 for 448 px, patch 14, r = 0.5).
"""

from __future__ import annotations

import math

from ..errors import InputError
from ..models.pixel_norms import CLIP_MEAN, CLIP_STD
from .decode import Frames
from .processor import (
    PreparedInputs,
    TokenGrid,
    VideoProcessor,
    channels_last_uint8,
    expand_once,
    normalize,
    plain_text,
    render_prompt,
    resample_mode,
    resize,
    to_channels_first,
    tokenize,
)

INTERNVL_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}{% if message['content'] is string %}"
    "{{ message['content'] }}{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "{{ '<image>\n' }}{% elif content['type'] == 'video' %}{{ '<video>\n' }}{% elif content['type'] == 'text' %}"
    "{{ content['text'] }}{% endif %}{% endfor %}{% endif %}{{'<|im_end|>\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{'<|im_start|>assistant\n' }}{% endif %}"
)


def _first(value: object) -> int:
    return int(value[0]) if isinstance(value, list | tuple) else int(value)


class InternVLVideoProcessor(VideoProcessor):
    """InternVL3 / InternVL3.5 in HF format (`internvl`)."""

    def _tokens(self) -> tuple[str, str, str, str]:
        """(video placeholder, <img>, </img>, <IMG_CONTEXT>): the tokenizer's names where it declares them."""
        tok = self.tokenizer
        return (getattr(tok, "video_token", None) or "<video>", getattr(tok, "start_image_token", None) or "<img>",
                getattr(tok, "end_image_token", None) or "</img>",
                getattr(tok, "context_image_token", None) or "<IMG_CONTEXT>")

    def __call__(self, frames: Frames, question: str) -> PreparedInputs:
        cfg = self.checkpoint.video
        config = self.checkpoint.config
        vision = dict(config.get("vision_config") or {})
        tile = _first(vision.get("image_size", 448))
        size = dict(cfg.get("size") or {"height": tile, "width": tile})
        x = resize(to_channels_first(frames.pixels), int(size["height"]), int(size["width"]),
                   resample_mode(cfg.get("resample"), "bicubic"))
        pixels = normalize(x, list(cfg.get("image_mean") or CLIP_MEAN), list(cfg.get("image_std") or CLIP_STD),
                           float(cfg.get("rescale_factor") or 1 / 255))
        seq = self.checkpoint.processor.get("image_seq_length") or config.get("image_seq_length")
        if seq is None:
            p = tile // _first(vision.get("patch_size", 14))
            seq = int(p * float(config.get("downsample_ratio", 0.5))) ** 2
        seq = int(seq)
        side = math.isqrt(seq)
        video, start, end, context = self._tokens()
        expansion = "\n".join(f"Frame{i + 1}: {start}{context * seq}{end}" for i in range(frames.n_frames))
        prompt = expand_once(render_prompt(self.tokenizer, self.checkpoint.chat_template, question,
                                           INTERNVL_TEMPLATE, placeholders=(video, start, end, context, "<image>")),
                             video, expansion)
        text = tokenize(self.tokenizer, prompt)
        n_visual = int((text["input_ids"] == self.tokenizer.convert_tokens_to_ids(context)).sum())
        if n_visual != frames.n_frames * seq:
            raise InputError(f"the tokenizer split {context!r}; it must know it as one special token")
        grid = TokenGrid.raster(frames.n_frames, side, side, 1, frames.n_frames)
        return PreparedInputs({**text, "pixel_values": pixels}, plain_text(prompt), channels_last_uint8(x),
                              list(frames.timestamps), grid, self.family, n_visual)
