"""InternVL (InternVL3 / InternVL3.5 in HF format): `<img>` blocks of `<IMG_CONTEXT>` tokens, one per image or frame.

What the model does (transformers 5.x, `models/internvl/modeling_internvl.py`):
  `InternVLModel.get_image_features` encodes every tile / frame on its own: the patch grid p x p
  (p = tile px // patch_size) without the CLS token, pixel-shuffled by `downsample_ratio` r (`pixel_shuffle`:
  output token (i, j) packs patches rows 2i..2i+1 x cols 2j..2j+1 for r = 0.5) to a (p*r) x (p*r) grid, flattened
  row-major and projected (`InternVLMultiModalProjector`); `forward` scatters the features of all tiles of the
  batch into the `config.image_token_id` (`<IMG_CONTEXT>`) placeholders in order (`masked_scatter`). Images and
  video frames both arrive as `pixel_values`: the model does not know which is which.
What the processor writes (`processing_internvl.py`):
  an image: `<img>` + `<IMG_CONTEXT>` x image_seq_length x num_patches + `</img>` (`replace_image_token`), where
  num_patches is 1, or, when the GotOcr2 image processor crops (`crop_to_patches`, on by default in
  `InternVLProcessor.images_kwargs`), the crops of the best tile canvas in row-major order plus one thumbnail
  (`GotOcr2ImageProcessor.crop_image_to_patches` / `get_number_of_image_patches`);
  a video: `"\\n".join("Frame{i+1}: <img>" + <IMG_CONTEXT> x image_seq_length + "</img>")`, one block per frame
  (`replace_video_token`), every frame resized to one tile (`InternVLVideoProcessor`).

Layout here. Each maximal run of `<IMG_CONTEXT>` ids is one `<img>` block of n tiles of (p*r) x (p*r) tokens (the
run must be a whole number of tiles). The frame labels and the `<img>` / `</img>` markers are text: never pruned,
never replaced in the reference pass. A block of n > 1 tiles is an image: one `VisualItem("image", t=n)` whose
"frames" are its tiles (the crops, then the thumbnail). One-tile blocks are grouped into videos:
  default (by adjacency): consecutive one-tile blocks with at most `max_frame_gap` text tokens between them form
    one video `VisualItem("video", t=blocks)` when there are at least `min_video_frames` of them; otherwise each
    is a one-tile image. The processor's gap `</img>\\nFrame{k}: <img>` is about 8 tokens.
    Limitations: without the tokenizer a frame cannot be told from a one-tile image (small near-square images,
    or `crop_to_patches=False`), so one-tile images right before/after a video join it, two videos written one
    after the other become one, and a one-frame video is an image.
  with the labels (`adapter.use_processor(processor)`): a one-tile block is frame k of a video when the tokens
    right before its `<img>` are the processor's label `Frame{k}: ` as its tokenizer encodes it; label 1 starts a
    new video, k + 1 continues it, anything else is an image. This splits adjacent videos and images exactly as
    long as the tokenizer encodes the label the same alone as inside the prompt (expected for the Qwen2 / Qwen3
    BPE, whose pre-tokenizer splits a newline off before letters; not checked against a real tokenizer here).
  video prompts (`adapter.declare_video_prompt()`): the caller built prompts that hold only video frames (as
    `sharp_vlm.video`'s processors and `VideoQA` do): every one-tile block is a frame and adjacent ones form one
    video, so a one-frame video is a video. The frame labels are not needed then.

Reference input (ShaRP's debiasing): black tiles of the call's tile size through the model's own vision tower,
pixel shuffle and projector, one per tile (the tower encodes tiles independently), at the same positions.
Black is 0 normalised with the processor's mean/std: the InternVL-hf checkpoints' processors use ImageNet statistics
(upstream `models/internvl/convert_internvl_weights_to_hf.py`, not in the wheel, `write_image_processor`: mean
(0.485, 0.456, 0.406),
std (0.229, 0.224, 0.225); the video processor falls back to that same preprocessor config). The processor classes'
own defaults are the OpenAI CLIP statistics (`GotOcr2ImageProcessor.image_mean/std`,
`InternVLVideoProcessor.image_mean/std`); `use_processor` copies whatever the processor at hand uses.

The decoder is the checkpoint's text model (Qwen2 for InternVL3, Qwen3 / Qwen3-MoE for InternVL3.5, LLaMA for some
InternVL2.5/3 sizes): LLaMA-style layers with 1-D RoPE, so the default `Adapter` parts apply. GPT-OSS decoders
(InternVL3.5-GPT-OSS) have attention sinks the scoring side pass does not model: refused at apply().
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..core.layout import VisualItem, VisualLayout
from ..errors import InputError, UnsupportedModelError
from .base import Adapter
from .pixel_norms import IMAGENET_MEAN, IMAGENET_STD
from .reference import FeatureCache, black_pixel, place_reference
from .vision_attention import TowerAttention, check_patch_features, feature_layer


@dataclass(frozen=True)
class Block:
    """One `<img>` block: the sequence position of its first `<IMG_CONTEXT>` token and its tile count."""

    start: int
    tiles: int


def _runs(flags: torch.Tensor) -> list[tuple[int, int]]:
    """(start, length) of each run of True in a 1-D bool tensor."""
    f = flags.to(torch.int8).cpu()
    edges = torch.diff(torch.cat([torch.zeros(1, dtype=torch.int8), f, torch.zeros(1, dtype=torch.int8)]))
    starts = torch.nonzero(edges == 1).flatten().tolist()
    ends = torch.nonzero(edges == -1).flatten().tolist()
    return [(s, e - s) for s, e in zip(starts, ends, strict=True)]


def _pair(x: Any) -> tuple[int, int]:
    return (int(x[0]), int(x[1])) if isinstance(x, (list, tuple)) else (int(x), int(x))


class InternVLAdapter(Adapter):
    """InternVLForConditionalGeneration: layouts from the `<IMG_CONTEXT>` runs, black tiles for the reference."""

    name = "internvl"
    generate_kwargs = ("attention_mask",)
    # the processor's normalisation, per kind (set on handle.adapter, or use_processor(processor))
    pixel_mean: tuple[float, ...] = IMAGENET_MEAN
    pixel_std: tuple[float, ...] = IMAGENET_STD
    video_pixel_mean: tuple[float, ...] = IMAGENET_MEAN
    video_pixel_std: tuple[float, ...] = IMAGENET_STD
    # grouping of one-tile blocks into videos when the frame labels are not known
    max_frame_gap: int = 16
    min_video_frames: int = 2

    def __init__(self, model: nn.Module):
        super().__init__(model)
        # LLM-space features of one black tile, per tile size, normalisation and feature layer
        self._black: FeatureCache[torch.Tensor] = FeatureCache()
        self._label: Callable[[int], Sequence[int]] | None = None  # k -> token ids of "Frame{k}: "
        self._labels: dict[int, tuple[int, ...]] = {}
        self._start_image_id: int | None = None
        self._video_only = False  # declare_video_prompt(): every one-tile block is a video frame

    def text_model(self) -> nn.Module:
        return self.model.model.language_model

    def check(self) -> None:
        super().check()
        for i, layer in enumerate(self.layers()):
            # GPT-OSS: learned per-head sinks join the softmax; scores without them would rank other tokens
            if getattr(layer.self_attn, "sinks", None) is not None:
                raise UnsupportedModelError(
                    f"{type(self.model).__name__}: decoder layer {i} uses attention sinks "
                    f"({type(self.text_model()).__name__}), which the scoring side pass does not model; "
                    "this InternVL decoder is not supported"
                )

    # ---------------------------------------------------------------- the processor at hand
    def use_processor(self, processor: Any) -> None:
        """Take the normalisation and the frame labels from the InternVLProcessor the inputs come from.

        The labels let videos be told from one-tile images and from each other (see the module docstring).
        """
        images = getattr(processor, "image_processor", None)
        videos = getattr(processor, "video_processor", None) or images
        if images is not None:
            self.pixel_mean, self.pixel_std = tuple(images.image_mean), tuple(images.image_std)
        if videos is not None:
            self.video_pixel_mean, self.video_pixel_std = tuple(videos.image_mean), tuple(videos.image_std)
        tok = getattr(processor, "tokenizer", None)
        if tok is not None:
            self.use_frame_labels(lambda k: tok.encode(f"Frame{k}: ", add_special_tokens=False),
                                  getattr(tok, "start_image_token_id", None))

    def use_frame_labels(self, label_ids: Callable[[int], Sequence[int]] | None,
                         start_image_id: int | None = None) -> None:
        """Group frames by their labels: label_ids(k) are the token ids of `Frame{k}: ` (None: by adjacency)."""
        self._label, self._labels, self._start_image_id = label_ids, {}, start_image_id

    def declare_video_prompt(self, video_only: bool = True) -> None:
        """Declare that the prompts hold only video frames, one `<img>` block each (the prompts `VideoQA` and
        `sharp_vlm.video` build): a lone one-tile block is then a one-frame video, not a one-tile image.
        False: back to telling frames from images by labels or adjacency."""
        self._video_only = bool(video_only)

    # ---------------------------------------------------------------- geometry
    def _patch(self) -> int:
        return _pair(self.model.config.vision_config.patch_size)[0]

    def tile_side(self, px: int) -> int:
        """Tokens per side of one tile of px x px pixels after the pixel shuffle."""
        p = px // self._patch()
        side = p * float(self.model.config.downsample_ratio)
        if side != int(side) or side < 1:
            raise InputError(f"a {px} px tile has {p} x {p} patches, which downsample_ratio "
                             f"{self.model.config.downsample_ratio} does not divide")
        return int(side)

    def _tile_px(self, call: dict[str, Any]) -> int:
        """The tile size of this call: from its pixels (the tower interpolates to any size), else the config."""
        pix = call.get("pixel_values")
        if isinstance(pix, torch.Tensor) and pix.dim() == 4:
            return int(pix.shape[-1])
        enc = (call.get("mm_encoder_outputs") or {}).get("image")
        pooled = getattr(enc, "pooler_output", None)
        if isinstance(pooled, torch.Tensor) and pooled.dim() == 3:  # pre-encoded: (tiles, side**2, D)
            side = math.isqrt(int(pooled.shape[1]))
            return round(side / float(self.model.config.downsample_ratio)) * self._patch()
        return _pair(self.model.config.vision_config.image_size)[0]

    # ---------------------------------------------------------------- layouts
    def blocks(self, call: dict[str, Any], batch: int) -> tuple[list[list[Block]], int]:
        """Per sample, its `<img>` blocks in order; and the tokens per side of a tile."""
        ids = call.get("input_ids")
        if ids is None:
            raise InputError(
                "InternVL pruning needs `input_ids` (the <IMG_CONTEXT> tokens locate the visual tokens); call the "
                "model with the processor's input_ids rather than inputs_embeds"
            )
        side = self.tile_side(self._tile_px(call))
        per = side * side
        mask = call.get("attention_mask")
        out = []
        for b in range(batch):
            ctx = ids[b] == self.model.config.image_token_id
            if isinstance(mask, torch.Tensor) and mask.dim() == 2:
                ctx = ctx & mask[b, -ids.shape[1]:].to(ctx.device).bool()
            found = []
            for start, length in _runs(ctx):
                if length % per:
                    raise InputError(
                        f"sample {b}: an <img> block of {length} <IMG_CONTEXT> tokens is not a whole number of "
                        f"tiles of {per} tokens ({side} x {side}); the prompt and the pixel values come from "
                        "different processor calls, or the processor's image_seq_length does not match the model"
                    )
                found.append(Block(start, length // per))
            out.append(found)
        return out, side

    def _label_ids(self, k: int) -> tuple[int, ...]:
        if k not in self._labels:
            self._labels[k] = tuple(int(t) for t in self._label(k))
        return self._labels[k]

    def _labelled(self, ids: torch.Tensor, start: int, k: int) -> bool:
        """Whether the block at `start` is preceded by `Frame{k}: <img>`."""
        label = self._label_ids(k)
        lo = start - 1 - len(label)
        if lo < 0:
            return False
        if self._start_image_id is not None and int(ids[start - 1]) != self._start_image_id:
            return False
        return ids[lo : start - 1].tolist() == list(label)

    def group(self, ids: torch.Tensor, blocks: list[Block], per: int) -> list[tuple[str, list[Block]]]:
        """(kind, blocks) of each image and video of one sample, in order (the rules in the module docstring)."""
        groups: list[tuple[str, list[Block]]] = []
        if self._label is not None and not self._video_only:
            video: list[Block] = []
            for blk in blocks:
                if blk.tiles == 1 and video and self._labelled(ids, blk.start, len(video) + 1):
                    video.append(blk)
                    continue
                if video:
                    groups.append(("video", video))
                    video = []
                if blk.tiles == 1 and self._labelled(ids, blk.start, 1):
                    video = [blk]
                else:
                    groups.append(("image", [blk]))
            if video:
                groups.append(("video", video))
            return groups
        chain: list[Block] = []
        min_frames = 1 if self._video_only else self.min_video_frames

        def flush() -> None:
            if len(chain) >= min_frames:
                groups.append(("video", list(chain)))
            else:
                groups.extend(("image", [blk]) for blk in chain)
            chain.clear()

        end = None
        for blk in blocks:
            if blk.tiles == 1 and chain and blk.start - end <= self.max_frame_gap:
                chain.append(blk)
            else:
                flush()
                (chain.append(blk) if blk.tiles == 1 else groups.append(("image", [blk])))
            end = blk.start + blk.tiles * per
        flush()
        return groups

    def find_layouts(self, call: dict[str, Any], seq_len: int, batch: int) -> list[VisualLayout]:
        all_blocks, side = self.blocks(call, batch)
        per = side * side
        ids = call["input_ids"]
        layouts = []
        for b, blocks in enumerate(all_blocks):
            items, positions, seen = [], [], 0
            for kind, members in self.group(ids[b], blocks, per):
                t = len(members) if kind == "video" else members[0].tiles
                items.append(VisualItem(kind, seen, t, side, side))
                seen += t * per
                positions += [torch.arange(m.start, m.start + m.tiles * per) for m in members]
            pos = torch.cat(positions) if positions else torch.zeros(0, dtype=torch.long)
            layouts.append(VisualLayout.from_grid(pos.to(ids.device), items))
        return layouts

    # ---------------------------------------------------------------- the tower's attention
    def vision_attention(self, label: str) -> TowerAttention:
        cfg = self.model.config
        tower = self.model.model.vision_tower
        check_patch_features(cfg.vision_feature_select_strategy, label, "InternVL")
        index = feature_layer(cfg.vision_feature_layer, len(tower.encoder.layer), "InternVL")
        return TowerAttention(tower.encoder.layer[index].attention, True, self._shuffle_patches, "InternVL")

    def _shuffle_patches(self, x: torch.Tensor) -> torch.Tensor:
        """(F, P, C) per patch -> (F, n, C) per token: the mean over the patches the model's pixel shuffle joins
        into one token (they arrive as consecutive C-wide blocks of its channels)."""
        side = math.isqrt(x.shape[1])
        joined = self.model.model.pixel_shuffle(x.reshape(x.shape[0], side, side, -1),
                                                scale_factor=self.model.config.downsample_ratio)
        tokens = joined.reshape(x.shape[0], -1, joined.shape[-1])
        return tokens.reshape(*tokens.shape[:2], -1, x.shape[-1]).mean(2)

    # ---------------------------------------------------------------- reference input
    def _black_tile(self, px: int, kind: str, call: dict[str, Any]) -> torch.Tensor:
        """(side**2, D): one black tile through the model's own tower, pixel shuffle and projector (cached)."""
        mean, std = ((self.video_pixel_mean, self.video_pixel_std) if kind == "video"
                     else (self.pixel_mean, self.pixel_std))
        layer, strategy = call.get("vision_feature_layer"), call.get("vision_feature_select_strategy")

        def compute() -> torch.Tensor:
            vc = self.model.config.vision_config
            param = next(self.model.model.vision_tower.parameters())
            c = int(getattr(vc, "num_channels", 3))
            value = black_pixel(mean, std, c)
            pixels = value[None, :, None, None].expand(1, c, px, px).to(param.device, param.dtype).contiguous()
            out = self.model.model.get_image_features(
                pixels, vision_feature_layer=layer, vision_feature_select_strategy=strategy, return_dict=True)
            return out.pooler_output[0]

        return self._black.get((px, tuple(mean), tuple(std), str(layer), strategy), compute)

    def reference_embeds(
        self, embeds: torch.Tensor, layouts: list[VisualLayout], call: dict[str, Any]
    ) -> torch.Tensor:
        """Every visual token replaced by the same token of a black tile (video frames with the video processor's
        normalisation, image tiles with the image processor's); markers, labels and text stay."""
        px = self._tile_px(call)
        return place_reference(embeds, layouts, lambda it: self._black_tile(px, it.kind, call).repeat(it.t, 1))


def register(register_adapter: Callable[..., None]) -> None:
    """Register InternVLForConditionalGeneration with `sharp_vlm.models.registry.register_adapter`."""
    from transformers import InternVLForConditionalGeneration

    def factory(model: nn.Module, span: Any) -> InternVLAdapter:
        return InternVLAdapter(model)

    register_adapter(InternVLForConditionalGeneration, factory,
                     "InternVL3 / 3.5; frame labels and <img> markers are text")
