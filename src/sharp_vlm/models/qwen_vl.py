"""Qwen2-VL and Qwen2.5-VL: 3-D M-RoPE, visual tokens marked by `mm_token_type_ids` (1 image, 2 video)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..core.layout import VisualItem, VisualLayout
from ..errors import InputError, NoVisualTokensError
from .base import Adapter
from .pixel_norms import CLIP_MEAN, CLIP_STD

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
        self._black: dict[tuple, tuple[torch.Tensor, list[torch.Tensor]]] = {}  # black frames' features, per grid

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

    def find_layouts(self, call: dict[str, Any], seq_len: int, batch: int) -> list[VisualLayout]:
        types = self._token_types(call)
        grids = {
            _IMAGE: iter(_grid_list(call.get("image_grid_thw"))),
            _VIDEO: iter(_grid_list(call.get("video_grid_thw"))),
        }
        mask = call.get("attention_mask")
        m = self._merge()
        layouts = []
        for b in range(batch):
            t_row = types[b]
            valid = torch.ones_like(t_row, dtype=torch.bool) if mask is None else mask[b].bool()
            vis = (t_row != 0) & valid
            positions = torch.nonzero(vis).flatten()
            items: list[VisualItem] = []
            for kind_id, start, length in _runs(t_row, vis):
                done = 0
                while done < length:
                    grid = next(grids[kind_id], None)
                    if grid is None:
                        raise InputError(
                            f"sample {b} has more {'video' if kind_id == _VIDEO else 'image'} tokens than "
                            "`video_grid_thw`/`image_grid_thw` describe; pass the grids the processor returned"
                        )
                    t, h, w = grid[0], grid[1] // m, grid[2] // m
                    items.append(VisualItem("video" if kind_id == _VIDEO else "image", start + done, t, h, w))
                    done += t * h * w
                if done != length:
                    raise InputError(
                        f"sample {b}: a run of {length} visual tokens does not match its grid(s) ({done} tokens); "
                        "the prompt and `*_grid_thw` come from different processor calls"
                    )
            layout = VisualLayout.from_grid(positions, items)
            layouts.append(layout)
        return layouts

    def _black_pass(self, kind_id: int, grid: tuple[int, int, int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(LLM-space features, deepstack features per decoder layer) of an all-black image/video with this grid,
        through the model's own vision encoder; cached per grid and normalisation."""
        key = (kind_id, grid, self.pixel_mean, self.pixel_std)
        if key not in self._black:
            vc = self.model.config.vision_config
            per_channel = vc.temporal_patch_size * vc.patch_size**2
            black = torch.tensor([-m / s for m, s in zip(self.pixel_mean, self.pixel_std, strict=True)])
            row = black.repeat_interleave(per_channel)[: vc.in_channels * per_channel]
            vis = self.model.model.visual
            pixels = row.expand(grid[0] * grid[1] * grid[2], -1).to(vis.dtype).to(next(vis.parameters()).device)
            thw = torch.tensor([grid], device=pixels.device)
            get = self.model.model.get_video_features if kind_id == _VIDEO else self.model.model.get_image_features
            with torch.no_grad():
                out = get(pixels, thw, return_dict=True)
            if len(self._black) >= 16:
                self._black.pop(next(iter(self._black)))
            deepstack = getattr(out, "deepstack_features", None) or []
            self._black[key] = (torch.cat(list(out.pooler_output), dim=0),
                                [torch.cat(list(f), dim=0) for f in deepstack])
        return self._black[key]

    def _black_features(self, kind_id: int, grid: tuple[int, int, int]) -> torch.Tensor:
        return self._black_pass(kind_id, grid)[0]

    def reference_embeds(
        self, embeds: torch.Tensor, layouts: list[VisualLayout], call: dict[str, Any]
    ) -> torch.Tensor:
        """Black frames of the same grids replace the video/image features (same token count and places)."""
        out = embeds.clone()
        m = self._merge()
        for b, lay in enumerate(layouts):
            for it in lay.items:
                kind_id = _VIDEO if it.kind == "video" else _IMAGE
                feats = self._black_features(kind_id, (it.t, it.h * m, it.w * m))
                rows = lay.positions[it.start : it.start + it.n_tokens]
                out[b, rows] = feats.to(out.dtype).to(out.device)
        return out


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
