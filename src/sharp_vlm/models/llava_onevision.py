"""LLaVA-OneVision / LLaVA-Video and LLaVA-NeXT-Video: visual tokens located from the placeholder ids.

Both families put one placeholder token per visual feature in `input_ids` (`config.video_token_id`,
`config.image_token_id`) and scatter the vision tower's features into them in order; the decoder is a plain
1-D RoPE LM (Qwen2 / LLaMA), so the default LLaMA-style `Adapter` parts apply. What differs is the layout of a
placeholder run, which is rebuilt here from the config and the call's pixel shapes / `image_sizes` with the rules
of transformers' modeling and processing code (5.x, `models/llava_onevision/`, `models/llava_next_video/`):

LLaVA-OneVision video (`modeling_llava_onevision.py`, `get_video_features` and `apply_pooling`): each frame's
    p x p patch grid (p = image_size // patch_size, 27 for 384/14) is pooled bilinearly to ceil(p/2) x ceil(p/2)
    (14 x 14 = 196 tokens), frames follow each other row-major, and ONE `image_newline` embedding closes the video:
    frames * ceil(p/2)**2 + 1 placeholders (`processing_llava_onevision.py`, `replace_video_token`).
LLaVA-OneVision image (`pack_image_features`): the base tile (p x p, no newline), then the anyres grid: the best
    pinpoint resolution (`select_best_resolution`) in tiles of image_size px, unpadded to the original aspect
    ratio (`unpad_image`), shrunk by `int(x // ratio)` when ratio = sqrt(h*w / (max_n * p**2)) > 1.1
    (`vision_aspect_ratio="anyres_max_<max_n>"`), with a newline after every row. An image of a multi-image
    sample (`batch_num_images` > 1) is the base tile plus one newline (`get_image_features`, `need_patching`).
LLaVA-NeXT-Video video (`modeling_llava_next_video.py`, `LlavaNextVideoPooler`): each frame's patch grid pooled
    by `spatial_pool_stride` (floor), no newline: frames * (p // stride)**2 placeholders.
LLaVA-NeXT-Video image: as OneVision's anyres image without the `anyres_max` shrinking, always tiled.

Newline tokens are NOT visual tokens here: they are one learned embedding (the same for every input), they mark
the grid's structure, and they are not part of any frame's grid; they stay, like text, and the reference pass
leaves them as they are. Each video is one `VisualItem` (t = frames); an image is one item per grid (its base
tile, then its anyres grid, each t = 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..core.layout import VisualItem, VisualLayout
from ..errors import InputError
from .base import Adapter
from .pixel_norms import CLIP_MEAN, CLIP_STD
from .reference import FeatureCache, black_pixel
from .vision_attention import TowerAttention, check_patch_features, feature_layer

_IMAGE, _VIDEO = 1, 2
_KIND = {_IMAGE: "image", _VIDEO: "video"}

# the processors' default normalisation (OpenAI CLIP statistics); a black pixel becomes -mean/std


@dataclass(frozen=True)
class Piece:
    """One image or video as the model fills its placeholder run.

    length: placeholder tokens; visual: (length,) bool, False at newline tokens; grids: (t, h, w) of its
    `VisualItem`s in order; tiles: images / frames handed to the vision tower; key: what its features' layout
    depends on (the reference cache key).
    """

    kind: str
    length: int
    visual: torch.Tensor
    grids: tuple[tuple[int, int, int], ...]
    tiles: int
    key: tuple


def _video(frames: int, side: int, newline: bool, key: tuple) -> Piece:
    n = frames * side * side
    visual = torch.ones(n + int(newline), dtype=torch.bool)
    if newline:
        visual[-1] = False
    return Piece("video", visual.numel(), visual, ((frames, side, side),), frames, key)


def _anyres_grid(size: tuple[int, int], pinpoints: list, tile_px: int, p: int, max_tiles: int | None) -> tuple:
    """(tiles across h, tiles across w, rows, cols) of an image's anyres grid after unpadding (and shrinking)."""
    from transformers.image_processing_utils import select_best_resolution

    orig_h, orig_w = size
    best_h, best_w = select_best_resolution([orig_h, orig_w], pinpoints)
    nh, nw = best_h // tile_px, best_w // tile_px
    rows, cols = nh * p, nw * p
    # unpad_image: the side the resize left padded is cropped back to the original aspect ratio
    if orig_w / orig_h > cols / rows:
        new_rows = int(round(orig_h * (cols / orig_w), 7))
        rows -= 2 * ((rows - new_rows) // 2)
    else:
        new_cols = int(round(orig_w * (rows / orig_h), 7))
        cols -= 2 * ((cols - new_cols) // 2)
    if max_tiles is not None:  # OneVision's anyres_max_N: bilinear shrink of grids much larger than N tiles
        ratio = math.sqrt(rows * cols / (max_tiles * p**2))
        if ratio > 1.1:
            rows, cols = int(rows // ratio), int(cols // ratio)
    return nh, nw, rows, cols


def _image(p: int, grid: tuple[int, int, int, int] | None, key: tuple) -> Piece:
    """The base tile (p x p), then either the anyres grid with a newline after each row, or one newline."""
    base = torch.ones(p * p, dtype=torch.bool)
    if grid is None:
        return Piece("image", p * p + 1, torch.cat([base, torch.zeros(1, dtype=torch.bool)]), ((1, p, p),), 1, key)
    nh, nw, rows, cols = grid
    row = torch.ones(cols + 1, dtype=torch.bool)
    row[-1] = False
    visual = torch.cat([base, row.repeat(rows)])
    return Piece("image", visual.numel(), visual, ((1, p, p), (1, rows, cols)), 1 + nh * nw, key)


def _runs(kinds: torch.Tensor) -> list[tuple[int, int, int]]:
    """(kind, start position, length) of each run of consecutive placeholders of one kind."""
    change = torch.ones_like(kinds, dtype=torch.bool)
    change[1:] = kinds[1:] != kinds[:-1]
    starts = torch.nonzero(change).flatten().tolist() + [kinds.numel()]
    return [(int(kinds[s]), s, e - s) for s, e in zip(starts[:-1], starts[1:], strict=True) if int(kinds[s])]


class LlavaAdapter(Adapter):
    """Shared by the LLaVA families: placeholder runs -> pieces -> layouts; black frames for the reference."""

    name = "llava"
    family = "LLaVA"
    # image_sizes / batch_num_images / the video's frame count locate the items; take them from generate()
    # when a forward lacks them
    generate_kwargs = ("attention_mask", "image_sizes", "batch_num_images", "pixel_values_videos")
    # the processor's normalisation: set on the adapter (handle.adapter) if your processor config differs
    pixel_mean: tuple[float, ...] = CLIP_MEAN
    pixel_std: tuple[float, ...] = CLIP_STD

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self._black: FeatureCache[torch.Tensor] = FeatureCache()  # LLM-space features of black inputs, per piece

    def text_model(self) -> nn.Module:
        return self.model.model.language_model

    def _patches(self) -> int:
        """p: patches per side of one tile / frame of image_size px."""
        vc = self.model.config.vision_config
        return int(vc.image_size) // int(vc.patch_size)

    # ---------------------------------------------------------------- family rules
    def video_piece(self, frames: int, frame_hw: tuple[int, int] | None = None) -> Piece:
        """A video of `frames` frames of frame_hw px (default: the tower's image_size)."""
        raise NotImplementedError

    def image_piece(self, size: tuple[int, int], patched: bool = True) -> Piece:
        """An image of original (height, width) `size`; patched=False: one tile (a multi-image sample)."""
        raise NotImplementedError

    def _frames_from_run(self, length: int) -> int | None:
        """Frames of one video filling a run of `length` placeholders, or None when no whole number fits."""
        raise NotImplementedError

    def _image_list(self, call: dict[str, Any], batch: int) -> Callable[[int], Iterator[tuple[tuple[int, int], bool]]]:
        """Per sample, its images as ((height, width), patched) in prompt order."""
        sizes = call.get("image_sizes")
        sizes = [] if sizes is None else torch.as_tensor(sizes).tolist()
        shared = iter([(tuple(int(v) for v in s), True) for s in sizes])
        return lambda b: shared  # the processor lists every image of the batch in order

    # ---------------------------------------------------------------- layouts
    def _video_frames(self, call: dict[str, Any]) -> tuple[int | None, tuple[int, int] | None]:
        pix = call.get("pixel_values_videos")
        if isinstance(pix, torch.Tensor) and pix.dim() == 5:  # (videos, frames, C, H, W): one frame count
            return int(pix.shape[1]), (int(pix.shape[-2]), int(pix.shape[-1]))
        return None, None

    def check_batch(self, call: dict[str, Any]) -> None:
        pix, ids = call.get("pixel_values_videos"), call.get("input_ids")
        if not (isinstance(pix, torch.Tensor) and pix.dim() == 5 and isinstance(ids, torch.Tensor)
                and ids.shape[0] > 1):
            return
        video = ids == self.model.config.video_token_id
        mask = call.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.shape == ids.shape:
            video &= mask.bool()
        counts = sorted({int(n) for n in video.sum(dim=1).tolist()} - {0})
        if len(counts) > 1:
            raise InputError(
                f"{self.family} encodes the videos of a batch as one (videos, frames, C, H, W) tensor, so every video "
                f"of a batch needs the same frame count and size; this batch's videos have {counts} tokens. Sample "
                "the same number of frames from each video (sv.VideoQA does), or run these videos one at a time"
            )

    def pieces(self, call: dict[str, Any], batch: int) -> list[list[tuple[int, Piece]]]:
        """Per sample, (sequence position of its first placeholder, piece) of each image and video, in order."""
        input_ids = call.get("input_ids")
        if input_ids is None:
            raise InputError(
                f"{self.family} pruning needs `input_ids` (the <image>/<video> placeholder tokens locate the visual "
                "tokens); call the model with the processor's input_ids rather than inputs_embeds"
            )
        cfg = self.model.config
        mask = call.get("attention_mask")
        frames, frame_hw = self._video_frames(call)
        images = self._image_list(call, batch)
        out = []
        for b in range(batch):
            ids = input_ids[b]
            kinds = (ids == cfg.image_token_id).long() * _IMAGE + (ids == cfg.video_token_id).long() * _VIDEO
            if isinstance(mask, torch.Tensor) and mask.dim() == 2:
                kinds = kinds * mask[b, -ids.numel():].to(kinds.device).bool()
            if bool((kinds == _IMAGE).any()) and call.get("image_sizes") is None:
                raise InputError(
                    f"{self.family} inputs with image placeholder tokens are missing `image_sizes`; pass every "
                    "tensor the processor returns (e.g. model.generate(**inputs)) so that each image's grid is known"
                )
            sample_images = images(b)
            found: list[tuple[int, Piece]] = []
            for kind, start, length in _runs(kinds.cpu()):
                done = 0
                while done < length:
                    piece = self._next_piece(kind, length - done, frames, frame_hw, sample_images, b)
                    if piece.length > length - done:
                        raise InputError(
                            f"sample {b}: a run of {length} {_KIND[kind]} placeholder tokens does not match the "
                            f"{_KIND[kind]}(s) the inputs describe ({done} + {piece.length} tokens); the prompt and "
                            "the pixel values / `image_sizes` come from different processor calls"
                        )
                    found.append((start + done, piece))
                    done += piece.length
            out.append(found)
        return out

    def _next_piece(self, kind: int, left: int, frames: int | None, frame_hw: tuple[int, int] | None,
                    images: Iterator[tuple[tuple[int, int], bool]], b: int) -> Piece:
        if kind == _VIDEO:
            n = frames if frames is not None else self._frames_from_run(left)
            if n is None:
                raise InputError(
                    f"sample {b}: a run of {left} video placeholder tokens is not a whole number of frames, and "
                    "the call has no `pixel_values_videos` to say how many; pass every tensor the processor returns"
                )
            return self.video_piece(n, frame_hw)
        nxt = next(images, None)
        if nxt is None:
            raise InputError(
                f"sample {b} has more image placeholder tokens than `image_sizes` describes; pass the "
                "`image_sizes` (and `batch_num_images`) the processor returned with these input_ids"
            )
        return self.image_piece(*nxt)

    def find_layouts(self, call: dict[str, Any], seq_len: int, batch: int) -> list[VisualLayout]:
        layouts = []
        device = next(self.text_model().parameters()).device
        for found in self.pieces(call, batch):
            positions, items, seen = [], [], 0
            for start, piece in found:
                positions.append(torch.nonzero(piece.visual).flatten() + start)
                for t, h, w in piece.grids:
                    items.append(VisualItem(piece.kind, seen, t, h, w))
                    seen += t * h * w
            pos = torch.cat(positions) if positions else torch.zeros(0, dtype=torch.long)
            layouts.append(VisualLayout.from_grid(pos.to(device), items))
        return layouts

    # ---------------------------------------------------------------- the tower's attention
    def _pool_patches(self, x: torch.Tensor) -> torch.Tensor:
        """(F, P, C) per-patch values -> (F, n, C) per video token, as the model pools a frame's features."""
        raise NotImplementedError

    def vision_attention(self, label: str) -> TowerAttention:
        cfg = self.model.config
        tower = self.model.model.vision_tower
        vision = getattr(tower, "vision_model", tower)  # transformers 5 keeps the encoder on the tower itself
        has_cls = hasattr(vision.embeddings, "class_embedding")
        if has_cls:
            check_patch_features(cfg.vision_feature_select_strategy, label, self.family)
        index = feature_layer(cfg.vision_feature_layer, len(vision.encoder.layers), self.family)
        return TowerAttention(vision.encoder.layers[index].self_attn, has_cls, self._pool_patches, self.family)

    # ---------------------------------------------------------------- reference input
    def _tower_device(self) -> torch.device:
        return next(self.model.model.vision_tower.parameters()).device

    def _black_pixels(self, *shape: int) -> torch.Tensor:
        """Black frames/tiles (…, C, H, W) normalised as the processor does, on the tower's device and dtype."""
        tower = self.model.model.vision_tower
        param = next(tower.parameters())
        value = black_pixel(self.pixel_mean, self.pixel_std, shape[-3])
        return value[:, None, None].expand(*shape).to(param.device, param.dtype).contiguous()

    def _video_features(self, frame_hw: tuple[int, int]) -> torch.Tensor:
        """(tokens of one frame, D) for one black frame."""
        raise NotImplementedError

    def _image_features(self, piece: Piece, size: tuple[int, int]) -> torch.Tensor:
        """(placeholders, D) for a black image of this original size, newline rows included."""
        raise NotImplementedError

    def _features(self, piece: Piece) -> torch.Tensor:
        """LLM-space features of the piece's visual tokens (newlines left out) for black input, cached."""
        # the tower encodes frames independently: a black video is its first black frame, repeated
        # the normalisation is part of the key: a user may set pixel_mean / pixel_std after a first call
        key = (("frame", piece.key[2]) if piece.kind == "video" else piece.key) + (self.pixel_mean, self.pixel_std)

        def compute() -> torch.Tensor:
            if piece.kind == "video":
                return self._video_features(piece.key[2])
            feats = self._image_features(piece, piece.key[1])
            return feats[piece.visual.to(feats.device)]

        feats = self._black.get(key, compute)
        return feats.repeat(piece.tiles, 1) if piece.kind == "video" else feats

    def reference_embeds(
        self, embeds: torch.Tensor, layouts: list[VisualLayout], call: dict[str, Any]
    ) -> torch.Tensor:
        """Black frames (and black images) of the same shapes through the model's own tower and projector replace
        the visual features; newline embeddings and text stay."""
        out = embeds.clone()
        for b, found in enumerate(self.pieces(call, embeds.shape[0])):
            for start, piece in found:
                rows = torch.nonzero(piece.visual).flatten().to(out.device) + start
                out[b, rows] = self._features(piece).to(out.device, out.dtype)
        return out


class LlavaOnevisionAdapter(LlavaAdapter):
    """LlavaOnevisionForConditionalGeneration: LLaVA-OneVision and LLaVA-Video checkpoints (HF format)."""

    name = "llava-onevision"
    family = "LLaVA-OneVision"

    def _pooled(self) -> int:
        return math.ceil(self._patches() / 2)  # apply_pooling: bilinear to ceil(h/2) x ceil(w/2)

    def _max_tiles(self) -> int:
        ratio = str(getattr(self.model.config, "vision_aspect_ratio", "anyres_max_9"))
        return int(ratio.removeprefix("anyres_max_"))

    def video_piece(self, frames: int, frame_hw: tuple[int, int] | None = None) -> Piece:
        # apply_pooling views every frame as the config's image_size grid, whatever the pixels' size
        return _video(frames, self._pooled(), newline=True, key=("video", frames, None))

    def image_piece(self, size: tuple[int, int], patched: bool = True) -> Piece:
        cfg = self.model.config
        p = self._patches()
        grid = (_anyres_grid(size, cfg.image_grid_pinpoints, cfg.vision_config.image_size, p, self._max_tiles())
                if patched else None)
        return _image(p, grid, ("image", tuple(size), patched))

    def _frames_from_run(self, length: int) -> int | None:
        per = self._pooled() ** 2
        return (length - 1) // per if length > 1 and (length - 1) % per == 0 else None

    def _video_frames(self, call: dict[str, Any]) -> tuple[int | None, tuple[int, int] | None]:
        frames, hw = super()._video_frames(call)
        if frames is None:  # pre-encoded video: (videos, frames * pooled**2 + 1, D)
            enc = (call.get("mm_encoder_outputs") or {}).get("video")
            pooled = getattr(enc, "pooler_output", None)
            if isinstance(pooled, torch.Tensor):
                frames = self._frames_from_run(int(pooled.shape[1]))
        return frames, hw

    def _image_list(self, call: dict[str, Any], batch: int) -> Callable[[int], Iterator[tuple[tuple[int, int], bool]]]:
        counts = call.get("batch_num_images")
        sizes = call.get("image_sizes")
        if counts is None or sizes is None:  # the model then tiles every image (get_image_features)
            return super()._image_list(call, batch)
        counts = [int(n) for n in torch.as_tensor(counts).flatten().tolist()]
        sizes = [tuple(int(v) for v in s) for s in torch.as_tensor(sizes).tolist()]
        offsets = [sum(counts[:r]) for r in range(len(counts))]
        # generate() repeats each prompt's entries for beams; the engine may hand us the unrepeated prompts
        factor = len(counts) // batch if len(counts) != batch and batch and len(counts) % batch == 0 else 1

        def sample(b: int) -> Iterator[tuple[tuple[int, int], bool]]:
            r = b * factor
            if r >= len(counts):
                return iter(())
            n = counts[r]
            return iter([(s, n == 1) for s in sizes[offsets[r] : offsets[r] + n]])

        return sample

    def _pool_patches(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.model.apply_pooling(x)  # bilinear to ceil(p/2) x ceil(p/2), over any width

    def _video_features(self, frame_hw: tuple[int, int] | None) -> torch.Tensor:
        s = int(self.model.config.vision_config.image_size)
        c = int(getattr(self.model.config.vision_config, "num_channels", 3))
        out = self.model.model.get_video_features(self._black_pixels(1, 1, c, s, s), return_dict=True)
        return out.pooler_output[0, :-1]  # the video's closing newline is not a frame token

    def _image_features(self, piece: Piece, size: tuple[int, int]) -> torch.Tensor:
        s = int(self.model.config.vision_config.image_size)
        c = int(getattr(self.model.config.vision_config, "num_channels", 3))
        patched = piece.key[2]
        n = 1 if patched else 2  # a one-tile image only happens in a multi-image sample: ask for two
        out = self.model.model.get_image_features(
            self._black_pixels(n, piece.tiles, c, s, s),
            torch.tensor([list(size)] * n, device=self._tower_device()),
            batch_num_images=torch.tensor([n], device=self._tower_device()),
            return_dict=True,
        )
        return out.pooler_output[0]


class LlavaNextVideoAdapter(LlavaAdapter):
    """LlavaNextVideoForConditionalGeneration: LLaVA-NeXT-Video checkpoints (HF format)."""

    name = "llava-next-video"
    family = "LLaVA-NeXT-Video"

    def _pooled(self, frame_hw: tuple[int, int] | None) -> int:
        cfg = self.model.config
        ps = int(cfg.vision_config.patch_size)
        h, w = frame_hw if frame_hw is not None else (cfg.vision_config.image_size,) * 2
        # LlavaNextVideoPooler: the frame's patches viewed as a square, pooled with kernel = stride (floor)
        side = math.isqrt((h // ps) * (w // ps))
        return side // int(cfg.spatial_pool_stride)

    def video_piece(self, frames: int, frame_hw: tuple[int, int] | None = None) -> Piece:
        return _video(frames, self._pooled(frame_hw), newline=False, key=("video", frames, frame_hw))

    def image_piece(self, size: tuple[int, int], patched: bool = True) -> Piece:
        cfg = self.model.config
        grid = _anyres_grid(size, cfg.image_grid_pinpoints, cfg.vision_config.image_size, self._patches(), None)
        return _image(self._patches(), grid, ("image", tuple(size), True))

    def _frames_from_run(self, length: int) -> int | None:
        per = self._pooled(None) ** 2
        return length // per if length and length % per == 0 else None

    def _pool_patches(self, x: torch.Tensor) -> torch.Tensor:
        pooler = self.model.model.vision_resampler
        if isinstance(pooler.pool, nn.Conv2d):  # a learned pooling over the tower's width: average its window
            stride = int(self.model.config.spatial_pool_stride)
            side = math.isqrt(x.shape[1])
            grid = x.transpose(1, 2).reshape(x.shape[0], x.shape[2], side, side)
            return nn.functional.avg_pool2d(grid, stride, stride).flatten(2).transpose(1, 2)
        return pooler(x)  # average or max pooling by the spatial stride, over any width

    def _video_features(self, frame_hw: tuple[int, int] | None) -> torch.Tensor:
        vc = self.model.config.vision_config
        h, w = frame_hw if frame_hw is not None else (vc.image_size,) * 2
        c = int(getattr(vc, "num_channels", 3))
        out = self.model.model.get_video_features(self._black_pixels(1, 1, c, h, w), return_dict=True)
        return out.pooler_output[0]

    def _image_features(self, piece: Piece, size: tuple[int, int]) -> torch.Tensor:
        s = int(self.model.config.vision_config.image_size)
        c = int(getattr(self.model.config.vision_config, "num_channels", 3))
        out = self.model.model.get_image_features(
            self._black_pixels(1, piece.tiles, c, s, s),
            torch.tensor([list(size)], device=self._tower_device()),
            return_dict=True,
        )
        return out.pooler_output[0]


def adapter_for_family(model: nn.Module) -> LlavaAdapter:
    """The adapter of a LLaVA-OneVision / LLaVA-NeXT-Video model, without the registry."""
    from transformers import LlavaNextVideoForConditionalGeneration, LlavaOnevisionForConditionalGeneration

    if isinstance(model, LlavaOnevisionForConditionalGeneration):
        return LlavaOnevisionAdapter(model)
    if isinstance(model, LlavaNextVideoForConditionalGeneration):
        return LlavaNextVideoAdapter(model)
    raise TypeError(f"{type(model).__name__} is neither LLaVA-OneVision nor LLaVA-NeXT-Video")


def register(register_adapter: Callable[..., None]) -> None:
    """Register both families with `sharp_vlm.models.registry.register_adapter`."""
    from transformers import LlavaNextVideoForConditionalGeneration, LlavaOnevisionForConditionalGeneration

    def onevision(model: nn.Module, span: Any) -> Adapter:
        return LlavaOnevisionAdapter(model)

    def next_video(model: nn.Module, span: Any) -> Adapter:
        return LlavaNextVideoAdapter(model)

    register_adapter(LlavaOnevisionForConditionalGeneration, onevision, "LLaVA-OneVision, LLaVA-Video")
    register_adapter(LlavaNextVideoForConditionalGeneration, next_video, "LLaVA-NeXT-Video")
