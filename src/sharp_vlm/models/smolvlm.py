"""SmolVLM / SmolVLM2 (`SmolVLMForConditionalGeneration`): a video is a run of frames, each one image block.

What the model and its processor do (transformers 5.24, `models/smolvlm/`):

- Every image the vision tower sees (a tile, the global view of an image, a video frame) is one square picture of
  `px` pixels; its (px/patch)^2 patches go through SigLIP, then the connector's pixel shuffle
  (`modeling_smolvlm.py` L407-416) folds each scale_factor x scale_factor patch window into one token, giving a
  row-major (px/patch/s) x (px/patch/s) grid (token i*cols + j is window row i, column j), projected to the LLM
  width (L418-421). One block is thus `side * side` tokens, side = image_size // patch_size // scale_factor for the
  config's tile size (`SmolVLMModel.image_seq_len`, L439-441; the processor's `image_seq_len`,
  `processing_smolvlm.py` L108-116), e.g. 8 x 8 = 64 for 512 px, patch 16, scale 4.
- `get_image_features` (L456-509) drops all-zero padding pictures, encodes the rest one by one, and `forward`
  scatters their features, in order, into the `image_token_id` placeholders (`masked_scatter`, L570-579).
- The processor writes each picture as one run of `image_seq_len` `<image>` tokens after a marker:
  a video (`replace_video_token`, L167-190) is the intro text, then per frame the text "\\nFrame from MM:SS:" and
  `<fake_token_around_image><global-img><image>*L<fake_token_around_image>` (`_prompt_single_image`, L69-76), then
  "\\n\\n"; frames are squared to max_image_size (`video_processing_smolvlm.py` L174-177) and padded with all-zero
  frames across a batch (L180-223, L322-337). A split image (`_prompt_split_image`, L48-66) is, row by row, tiles
  `<fake_token_around_image><row_i_col_j><image>*L` with "\\n" closing each row, then the global view as above;
  the image processor cuts the tiles row-major and appends the global view last (`image_processing_smolvlm.py`
  L283-298). An image that is not split is one global view (`get_image_prompt_string`, L79-91).

Layout rules here (from `input_ids`, `image_token_id` and the tile size only; the marker ids are the tokenizer's
and are not in the config, so they are read off the prompt's structure):

- a block is a run of consecutive `<image>` tokens; it must be side*side long (side from the call's
  `pixel_values` height, else the config's image_size); its marker is the token before it;
- the global marker is the marker of the prompt's last block (every image and every frame ends with a global
  view); a block with another marker is a tile; tiles up to the next global block are one split image: rows end
  where a tile is not followed by the `<fake_token_around_image>` id (the processor's "\\n"), cols = tiles per row;
- a global block that does not close tiles is a lone view: a video frame (`unsplit_kind = "video"`, default), and
  consecutive lone views form ONE video `VisualItem` (t = frames, side, side), frame ids counting frames; with
  `unsplit_kind = "image"` each is an image (1, side, side);
- a split image is two items: its tiles (t = rows*cols, one "frame" per tile, row-major over the tile grid) and
  its global view (1, side, side).

Markers, timestamps and all other text are not visual tokens: they are never pruned and the reference input keeps
them. Limitation: the inputs do not say which lone views are video frames. A processor call cannot mix images and
videos (both write `pixel_values`, `processing_utils.py` L730 keeps the videos'), and with the SmolVLM2 image
processor's defaults (do_image_splitting, size 4 x max_image_size) every image is split, so lone views are video
frames; images processed with do_image_splitting=False need `handle.adapter.unsplit_kind = "image"`. Two videos
with nothing but text between them become one item; frame ids, rows and cols are the same either way, so only
the item count differs.

Reference input: black pictures of the same size through the model's own vision tower and connector, at every
block. The SmolVLM image and video processors normalise with IMAGENET_STANDARD_MEAN/STD = (0.5, 0.5, 0.5)
(`image_processing_smolvlm.py` L193-194, `video_processing_smolvlm.py` L115-116), so black is -1 per channel.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..core.layout import VisualItem, VisualLayout
from ..errors import InputError
from .base import Adapter
from .reference import FeatureCache, black_pixel, place_reference

PIXEL_MEAN = (0.5, 0.5, 0.5)
PIXEL_STD = (0.5, 0.5, 0.5)
UNSPLIT_KINDS = ("video", "image")


def _runs(flags: torch.Tensor) -> list[tuple[int, int]]:
    """(start, length) of each run of True in a 1-D bool tensor."""
    padded = torch.cat([torch.zeros(1, dtype=torch.int8), flags.to(torch.int8), torch.zeros(1, dtype=torch.int8)])
    edges = torch.nonzero(padded[1:] != padded[:-1]).flatten().tolist()
    return [(s, e - s) for s, e in zip(edges[::2], edges[1::2], strict=True)]


class SmolVLMAdapter(Adapter):
    """SmolVLMForConditionalGeneration (SmolVLM, SmolVLM2): a LLaMA-style decoder, blocks of `<image>` tokens."""

    name = "smolvlm"
    # what a global view that closes no tiles is: "video" (a frame) or "image"; see the module docstring
    unsplit_kind: str = "video"
    # the processors' normalisation: set on the adapter (handle.adapter) if your processor config differs
    pixel_mean: tuple[float, ...] = PIXEL_MEAN
    pixel_std: tuple[float, ...] = PIXEL_STD

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self._black: FeatureCache[torch.Tensor] = FeatureCache()  # LLM-space features of one black picture, per grid

    def text_model(self) -> nn.Module:
        return self.model.model.text_model

    # ---------------------------------------------------------------- layouts
    def block_side(self, call: dict[str, Any]) -> int:
        """Tokens per side of one block: the picture's patches per side over the pixel-shuffle scale."""
        cfg = self.model.config
        vc = cfg.vision_config
        pixels = call.get("pixel_values")
        if isinstance(pixels, torch.Tensor) and pixels.dim() >= 4:
            h, w = int(pixels.shape[-2]), int(pixels.shape[-1])
            if h != w:  # the connector views every picture as a square (pixel_shuffle, height = width)
                raise InputError(f"SmolVLM pictures must be square (got {h}x{w} px pixel_values)")
            px = h
        else:
            px = int(vc.image_size)
        patches, scale = px // int(vc.patch_size), int(cfg.scale_factor)
        if patches % scale:
            raise InputError(f"{patches} patches per side do not fold into scale_factor={scale} windows")
        return patches // scale

    def items_of(self, ids: torch.Tensor, valid: torch.Tensor, side: int,
                 b: int = 0) -> tuple[list[VisualItem], list[int]]:
        """The items of one sample and the start position of each of its blocks, from its ids (1-D, CPU)."""
        image_id = int(self.model.config.image_token_id)
        per_block = side * side
        blocks = _runs((ids == image_id) & valid)
        for start, length in blocks:
            if length != per_block:
                raise InputError(
                    f"sample {b}: a run of {length} <image> tokens at position {start} is not one picture of "
                    f"{side}x{side} tokens; the prompt and pixel_values come from different processor calls, or the "
                    "processor's image_seq_len does not match the model's tile size"
                )
        if not blocks:
            return [], []
        starts = [s for s, _ in blocks]
        if starts[0] < 2:
            raise InputError(f"sample {b}: an <image> block without its markers; not a SmolVLM processor prompt")
        markers = [int(ids[s - 1]) for s in starts]
        fake = int(ids[starts[-1] - 2])
        if any(int(ids[s - 2]) != fake for s in starts):
            raise InputError(
                f"sample {b}: the <image> blocks are not each preceded by <fake_token_around_image> and a marker; "
                "not a prompt laid out by the SmolVLM processor"
            )
        glob = markers[-1]  # every image and every frame ends with its global view
        items: list[VisualItem] = []
        seen, i, n = 0, 0, len(starts)
        while i < n:
            if markers[i] == glob:
                j = i + 1
                if self.unsplit_kind == "video":  # consecutive lone views: the frames of one video
                    while j < n and markers[j] == glob:
                        j += 1
                    items.append(VisualItem("video", seen, j - i, side, side))
                else:
                    items.append(VisualItem("image", seen, 1, side, side))
                seen += (j - i) * per_block
                i = j
                continue
            j = i
            while j < n and markers[j] != glob:
                j += 1
            if j == n:
                raise InputError(f"sample {b}: image tiles without a global view; not a SmolVLM processor prompt")
            rows, cols = self._tile_grid(ids, starts[i:j], per_block, fake, markers[i:j], b)
            items.append(VisualItem("image", seen, rows * cols, side, side))
            seen += rows * cols * per_block
            items.append(VisualItem("image", seen, 1, side, side))
            seen += per_block
            i = j + 1
        return items, starts

    @staticmethod
    def _tile_grid(ids: torch.Tensor, starts: list[int], per_block: int, fake: int, markers: list[int],
                   b: int) -> tuple[int, int]:
        """(rows, cols) of a split image's tiles: a row ends where a tile is not followed by the fake token."""
        if len(set(markers)) != len(markers):
            raise InputError(f"sample {b}: two tiles of one image share a <row_i_col_j> marker")
        lengths, run = [], 0
        for s in starts:
            run += 1
            end = s + per_block
            if end >= ids.numel() or int(ids[end]) != fake:
                lengths.append(run)
                run = 0
        if run:
            lengths.append(run)
        if len(set(lengths)) != 1:
            raise InputError(f"sample {b}: an image's tile rows have different lengths {lengths}")
        return len(lengths), lengths[0]

    def find_layouts(self, call: dict[str, Any], seq_len: int, batch: int) -> list[VisualLayout]:
        input_ids = call.get("input_ids")
        if input_ids is None:
            raise InputError(
                "SmolVLM pruning needs `input_ids` (the <image> placeholder tokens and their markers locate the "
                "frames); call the model with the processor's input_ids rather than inputs_embeds"
            )
        if self.unsplit_kind not in UNSPLIT_KINDS:
            raise InputError(f"unsplit_kind={self.unsplit_kind!r} must be one of {UNSPLIT_KINDS}")
        side = self.block_side(call)
        mask = call.get("attention_mask")
        ids_cpu = input_ids.detach().cpu()
        layouts = []
        for b in range(batch):
            ids = ids_cpu[b]
            if isinstance(mask, torch.Tensor) and mask.dim() == 2:
                valid = mask[b, -ids.numel():].detach().cpu().bool()
            else:
                valid = torch.ones_like(ids, dtype=torch.bool)
            items, starts = self.items_of(ids, valid, side, b)
            pos = torch.arange(side * side)
            positions = torch.cat([pos + s for s in starts]) if starts else torch.zeros(0, dtype=torch.long)
            layouts.append(VisualLayout.from_grid(positions.to(input_ids.device), items))
        return layouts

    # ---------------------------------------------------------------- reference input
    def _black_features(self, h: int, w: int) -> torch.Tensor:
        """(h*w, D): one black picture of an h x w token grid through the vision tower and connector (cached)."""

        def compute() -> torch.Tensor:
            cfg = self.model.config
            vc = cfg.vision_config
            px_h = h * int(cfg.scale_factor) * int(vc.patch_size)
            px_w = w * int(cfg.scale_factor) * int(vc.patch_size)
            param = next(self.model.model.vision_model.parameters())
            c = int(getattr(vc, "num_channels", 3))
            value = black_pixel(self.pixel_mean, self.pixel_std, c)
            pixels = value[:, None, None].expand(1, 1, c, px_h, px_w).to(param.device, param.dtype).contiguous()
            return self.model.model.get_image_features(pixels, return_dict=True).pooler_output[0]

        return self._black.get((h, w, self.pixel_mean, self.pixel_std), compute)

    def reference_embeds(
        self, embeds: torch.Tensor, layouts: list[VisualLayout], call: dict[str, Any]
    ) -> torch.Tensor:
        """Every block (frame, tile, global view) replaced by a black picture's features; text and markers stay."""
        # the tower encodes each picture alone: every block of this grid gets the same black features
        return place_reference(embeds, layouts, lambda it: self._black_features(it.h, it.w).repeat(it.t, 1))


def register(register_adapter: Callable[..., None]) -> None:
    """Register SmolVLMForConditionalGeneration with `sharp_vlm.models.registry.register_adapter`."""
    from transformers import SmolVLMForConditionalGeneration

    def factory(model: nn.Module, span: Any) -> Adapter:
        return SmolVLMAdapter(model)

    register_adapter(SmolVLMForConditionalGeneration, factory,
                     "SmolVLM2: lone <global-img> views are video frames; markers and timestamps are text")
