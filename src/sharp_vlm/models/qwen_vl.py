"""Qwen2-VL and Qwen2.5-VL: 3-D M-RoPE, visual tokens marked by `mm_token_type_ids` (1 image, 2 video)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ..core.layout import VisualItem, VisualLayout
from ..errors import InputError, NoVisualTokensError
from .base import Adapter
from .pixel_norms import CLIP_MEAN, CLIP_STD
from .reference import FeatureCache, black_pixel, place_reference

_IMAGE, _VIDEO = 1, 2


# The Qwen-VL processors normalise pixels with the OpenAI CLIP statistics; a black pixel becomes -mean/std.


class QwenVLAdapter(Adapter):
    name = "qwen-vl"
    mrope = True
    generate_kwargs = ("image_grid_thw", "video_grid_thw", "second_per_grid_ts", "attention_mask")
    pixel_mean: tuple[float, ...] = CLIP_MEAN  # the processor's normalisation: black becomes -mean/std
    pixel_std: tuple[float, ...] = CLIP_STD

    def __init__(self, model: nn.Module):
        super().__init__(model)
        # black frames' features and deepstack features, per grid and normalisation
        self._black: FeatureCache[tuple[torch.Tensor, list[torch.Tensor]]] = FeatureCache()

    def text_model(self) -> nn.Module:
        return self.model.model.language_model

    def _merge(self) -> int:
        return int(self.model.config.vision_config.spatial_merge_size)

    family = "Qwen-VL"

    def _token_types(self, call: dict[str, Any]) -> torch.Tensor:
        """`mm_token_type_ids` (0 text, 1 image, 2 video), or a clear error when the call cannot give them."""
        input_ids = call.get("input_ids")
        if input_ids is None:
            raise InputError(
                f"{self.family} pruning needs `input_ids` (the visual placeholder tokens locate the video); "
                "call the model with the processor's input_ids rather than inputs_embeds"
            )
        cfg = self.model.config
        types = call.get("mm_token_type_ids")
        if types is None:
            if bool(((input_ids == cfg.video_token_id) | (input_ids == cfg.image_token_id)).any()):
                raise InputError(
                    f"{self.family} inputs are missing `mm_token_type_ids`; pass every tensor the processor returns "
                    "(e.g. model.generate(**inputs)) so that the video tokens and their 3-D positions are known"
                )
            raise NoVisualTokensError(
                "no visual tokens in the prompt: the input has no image or video placeholder tokens; "
                "build the inputs with the processor from a message that contains a video"
            )
        return types

    def _blocks(self, kind_id: int, grid: tuple[int, int, int]) -> int:
        """How many blocks of the prompt one grid fills, each t*h*w / blocks tokens (Qwen2/2.5-VL: one)."""
        return 1

    def find_layouts(self, call: dict[str, Any], seq_len: int, batch: int) -> list[VisualLayout]:
        types = self._token_types(call)
        m = self._merge()

        def blocks(kind_id: int, name: str) -> Iterator[tuple[tuple[int, int, int], int, int]]:
            """Per block in prompt order: (its grid, the grid's blocks still to come counting it, the grid's blocks)."""
            for grid in _grid_list(call.get(name)):
                n = self._blocks(kind_id, grid)
                for k in range(n, 0, -1):
                    yield grid, k, n

        units = {_IMAGE: blocks(_IMAGE, "image_grid_thw"), _VIDEO: blocks(_VIDEO, "video_grid_thw")}
        mask = call.get("attention_mask")
        layouts = []
        for b in range(batch):
            t_row = types[b]
            valid = torch.ones_like(t_row, dtype=torch.bool) if mask is None or mask.dim() != 2 else mask[b].bool()
            vis = (t_row != 0) & valid
            items: list[VisualItem] = []
            left = 0  # blocks still to come of the current grid
            for kind_id, start, length in _runs(t_row, vis):
                kind = "video" if kind_id == _VIDEO else "image"
                done = 0
                while done < length:
                    unit = next(units[kind_id], None)
                    if unit is None:
                        raise InputError(
                            f"sample {b} has more {kind} tokens than `video_grid_thw`/`image_grid_thw` describe; "
                            "pass the grids the processor returned"
                        )
                    (t, h, w), remaining, n = unit
                    h, w = h // m, w // m
                    if left and remaining == n:  # a grid's blocks come one after another
                        raise InputError(f"sample {b}: a video ends after fewer blocks than its grid has")
                    if remaining == n:  # the first block of a grid starts its item
                        items.append(VisualItem(kind, start + done, t, h, w))
                    left = remaining - 1
                    done += t * h * w // n
                if done != length:
                    raise InputError(
                        f"sample {b}: a run of {length} visual tokens does not match its grid(s) ({done} tokens); "
                        "the prompt and `*_grid_thw` come from different processor calls"
                    )
            if left:
                raise InputError(
                    f"sample {b}: its last video has {left} temporal-patch block(s) fewer than `video_grid_thw` says; "
                    "the prompt and the grids come from different processor calls"
                )
            layouts.append(VisualLayout.from_grid(torch.nonzero(vis).flatten(), items))
        return layouts

    def _black_pass(self, kind_id: int, grid: tuple[int, int, int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(LLM-space features, deepstack features per decoder layer) of an all-black image/video with this grid,
        through the model's own vision encoder; cached per grid and normalisation."""

        def compute() -> tuple[torch.Tensor, list[torch.Tensor]]:
            vc = self.model.config.vision_config
            per_channel = vc.temporal_patch_size * vc.patch_size**2
            row = black_pixel(self.pixel_mean, self.pixel_std, vc.in_channels).repeat_interleave(per_channel)
            vis = self.model.model.visual
            pixels = row.expand(grid[0] * grid[1] * grid[2], -1).to(vis.dtype).to(next(vis.parameters()).device)
            thw = torch.tensor([grid], device=pixels.device)
            get = self.model.model.get_video_features if kind_id == _VIDEO else self.model.model.get_image_features
            out = get(pixels, thw, return_dict=True)
            deepstack = getattr(out, "deepstack_features", None) or []
            return torch.cat(list(out.pooler_output), dim=0), [torch.cat(list(f), dim=0) for f in deepstack]

        return self._black.get((kind_id, grid, self.pixel_mean, self.pixel_std), compute)

    def _black_features(self, kind_id: int, grid: tuple[int, int, int]) -> torch.Tensor:
        return self._black_pass(kind_id, grid)[0]

    def reference_embeds(
        self, embeds: torch.Tensor, layouts: list[VisualLayout], call: dict[str, Any]
    ) -> torch.Tensor:
        """Black frames of the same grids replace the video/image features (same token count and places)."""
        m = self._merge()

        def black(it: VisualItem) -> torch.Tensor:
            return self._black_features(_VIDEO if it.kind == "video" else _IMAGE, (it.t, it.h * m, it.w * m))

        return place_reference(embeds, layouts, black)


def _grid_list(grid: torch.Tensor | None) -> list[tuple[int, int, int]]:
    if grid is None:
        return []
    return [tuple(int(v) for v in row) for row in grid.tolist()]


def _runs(types: torch.Tensor, vis: torch.Tensor) -> list[tuple[int, int, int]]:
    """(modality, start index among visual tokens, length) of each consecutive run of one modality."""
    t = torch.where(vis, types, torch.zeros_like(types))
    change = torch.ones_like(t, dtype=torch.bool)
    change[1:] = t[1:] != t[:-1]
    starts = torch.nonzero(change).flatten().tolist() + [t.numel()]
    runs, seen = [], 0
    for s, e in zip(starts[:-1], starts[1:], strict=True):
        kind = int(t[s])
        if kind:
            runs.append((kind, seen, e - s))
            seen += e - s
    return runs
