"""SmolVLM2 video preprocessing (the rules of transformers' SmolVLMVideoProcessor and SmolVLMProcessor).

Video frames are never split into tiles: each frame is resized so its longest edge is the video size (the
config's `size`, else `video_sampling.video_size`; an even shorter edge), then squared to `max_image_size`,
normalised, and written as one global view:
`\\nFrame from MM:SS:<fake_token_around_image><global-img>` + `<image>` x image_seq_len +
`<fake_token_around_image>`, after an intro that gives the frame count in words and the clip's duration, in place
of the chat template's `<video>`. The processor always uses its own chat template for a video.
"""

from __future__ import annotations

import math
from datetime import timedelta

from ..core.words import number_words
from ..errors import InputError
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

SMOLVLM_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}{% if message['content'] is string %}"
    "{{': ' + message['content']}}{% else %}{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}"
    "{{': '}}{% endif %}{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% elif line['type'] == 'video' %}{{ '<video>' }}{% endif %}"
    "{% endfor %}{% endif %}<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
VIDEO_INTRO = "You are provided the following series of {count} frames from a {duration} [H:MM:SS] video.\n"
FRAME_LABEL = "\nFrame from {stamp}:"
OUTRO = "\n\n"
MAX_SIDE = 4096  # the processor's absolute cap on a resized side

def longest_edge_size(height: int, width: int, longest: int) -> tuple[int, int]:
    """(height, width) with the longer side `longest` and the other scaled, truncated, rounded up to even."""
    longest = min(MAX_SIDE, longest)
    aspect = width / height
    if width >= height:
        width, height = longest, int(longest / aspect)
        height += height % 2
    else:
        height, width = longest, int(longest * aspect)
        width += width % 2
    return max(height, 1), max(width, 1)


class SmolVLMVideoProcessor(VideoProcessor):
    """SmolVLM / SmolVLM2 (`smolvlm`)."""

    def __call__(self, frames: Frames, question: str) -> PreparedInputs:
        cfg = {**self.checkpoint.image, **self.checkpoint.video}
        sampling = dict(cfg.get("video_sampling") or {})
        # the processor lets the config's `size` replace `video_sampling.video_size` when both are given
        video_size = dict(cfg.get("size") or sampling.get("video_size") or {"longest_edge": 4 * 364})
        square = int(dict(cfg.get("max_image_size") or {"longest_edge": 364})["longest_edge"])
        mode = resample_mode(cfg.get("resample"), "lanczos")
        x = to_channels_first(frames.pixels)
        if "longest_edge" in video_size:
            x = resize(x, *longest_edge_size(x.shape[-2], x.shape[-1], int(video_size["longest_edge"])), mode)
        else:
            x = resize(x, int(video_size["height"]), int(video_size["width"]), mode)
        x = resize(x, square, square, mode)  # every frame is then squared to the tile size
        pixels = normalize(x, list(cfg.get("image_mean") or [0.5] * 3), list(cfg.get("image_std") or [0.5] * 3),
                           float(cfg.get("rescale_factor") or 1 / 255))
        seq = int(self.checkpoint.processor.get("image_seq_len") or self._seq_from_config(square))
        side = math.isqrt(seq)
        duration = int(frames.n_total / frames.fps) if frames.fps else int(frames.timestamps[-1])
        expansion = VIDEO_INTRO.format(count=number_words(frames.n_frames), duration=str(timedelta(seconds=duration)))
        view = "<fake_token_around_image><global-img>" + "<image>" * seq + "<fake_token_around_image>"
        for t in frames.timestamps:
            expansion += FRAME_LABEL.format(stamp=f"{int(t // 60):02d}:{int(t % 60):02d}") + view
        expansion += OUTRO
        # the processor writes videos with its own template, whatever the checkpoint's
        prompt = expand_once(render_prompt(self.tokenizer, SMOLVLM_TEMPLATE, question, SMOLVLM_TEMPLATE,
                                           placeholders=("<video>", "<image>", "<fake_token_around_image>",
                                                         "<global-img>")), "<video>", expansion)
        text = tokenize(self.tokenizer, prompt)
        n_visual = int((text["input_ids"] == self.tokenizer.convert_tokens_to_ids("<image>")).sum())
        if n_visual != frames.n_frames * seq:
            raise InputError("the tokenizer split '<image>'; it must know it as one special token")
        grid = TokenGrid.raster(frames.n_frames, side, side, 1, frames.n_frames)
        kwargs = {**text, "pixel_values": pixels[None],
                  "pixel_attention_mask": pixels.new_ones(1, frames.n_frames, square, square).long()}
        return PreparedInputs(kwargs, plain_text(prompt), channels_last_uint8(x), list(frames.timestamps), grid,
                              self.family, n_visual)

    def _seq_from_config(self, square: int) -> int:
        config = self.checkpoint.config
        vision = dict(config.get("vision_config") or {})
        p = square // int(vision.get("patch_size", 16))
        return (p // int(config.get("scale_factor", 4))) ** 2
