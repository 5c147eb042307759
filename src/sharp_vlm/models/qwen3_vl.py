"""Qwen3-VL (dense and MoE): timestamps between temporal patches, interleaved M-RoPE, deepstack.

Layout. The processor writes a video of grid (t, h, w) as t blocks `<t seconds> <|vision_start|> h*w/m^2 video
tokens <|vision_end|>` (`Qwen3VLProcessor.replace_video_token`); `get_rope_index` splits `video_grid_thw` into
t grids of one temporal patch each and places every block with its own 3-D positions. Here a video is one
`VisualItem` of t temporal patches x (h/m rows x w/m cols): its visual tokens are consecutive among the visual
tokens (the timestamps and start/end markers between blocks are text, so they are never pruned), and frame ids,
rows and cols come out per temporal patch as for Qwen2.5-VL. An image is one item of its own grid.

Deepstack. `Qwen3VLTextModel.forward` adds, after decoder layer i < len(deepstack_visual_embeds), the i-th
deepstack features at `visual_pos_masks` (`_deepstack_process`: `hidden[mask] += embeds`). Once a stage has
dropped rows that mask and those features no longer match the hidden states. This adapter keeps them aligned
without touching the engine: for the duration of a prefill it shadows `_deepstack_process` on the text-model
instance with a version that gathers the mask and the features to the current rows (the rows come from the
`take` the engine hands to `gather_layer_kwargs`); the shadow removes itself after the last deepstack layer.
The reference pass (ShaRP's debiasing) runs the layers one by one without the text model's loop, so the adapter
adds the deepstack features of the black reference frames itself, through one-shot forward hooks armed by
`reference_embeds` and disarmed at the next gather.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..core.layout import VisualItem, VisualLayout
from ..errors import InputError, UnsupportedModelError
from .base import Take
from .qwen_vl import _IMAGE, _VIDEO, QwenVLAdapter, _grid_list, _runs

# Qwen3-VL's image and video processors normalise with mean = std = 0.5 per channel: black becomes -1.
PIXEL_MEAN = (0.5, 0.5, 0.5)
PIXEL_STD = (0.5, 0.5, 0.5)


class Qwen3VLAdapter(QwenVLAdapter):
    name = "qwen3-vl"
    generate_kwargs = ("image_grid_thw", "video_grid_thw", "attention_mask")

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self._deepstack: dict[tuple, list[torch.Tensor]] = {}  # black frames' deepstack features, per grid
        self._take: Take | None = None  # this prefill's gather to the current rows (None: nothing pruned yet)
        self._ds_calls = 0  # deepstack layers the shadow has seen in this prefill
        self._ref_hooks: list[Any] = []

    def check(self) -> None:
        super().check()
        # the deepstack alignment shadows this method of the text model (transformers 5.x); refuse at apply()
        # rather than misalign if a release renames it
        if self._n_deepstack() and not callable(getattr(type(self.text_model()), "_deepstack_process", None)):
            raise UnsupportedModelError(
                f"{type(self.model).__name__}: its text model has no `_deepstack_process`, which the pruning engine "
                "needs to keep the deepstack features on the kept rows; this transformers version is not supported"
            )

    # ---------------------------------------------------------------- layouts
    def find_layouts(self, call: dict[str, Any], seq_len: int, batch: int) -> list[VisualLayout]:
        input_ids = call.get("input_ids")
        if input_ids is None:
            raise InputError(
                "Qwen3-VL pruning needs `input_ids` (the visual placeholder tokens locate the video); "
                "call the model with the processor's input_ids rather than inputs_embeds"
            )
        cfg = self.model.config
        types = call.get("mm_token_type_ids")
        if types is None:
            if bool(((input_ids == cfg.video_token_id) | (input_ids == cfg.image_token_id)).any()):
                raise InputError(
                    "Qwen3-VL inputs are missing `mm_token_type_ids`; pass every tensor the processor returns "
                    "(e.g. model.generate(**inputs)) so that the video tokens and their 3-D positions are known"
                )
            raise InputError(
                "no visual tokens in the prompt: the input has no image or video placeholder tokens; "
                "build the inputs with the processor from a message that contains a video"
            )
        m = self._merge()
        # a video's grid covers t blocks of one temporal patch each, one per vision_start/end pair
        units = {
            _IMAGE: iter([(g, 1) for g in _grid_list(call.get("image_grid_thw"))]),
            _VIDEO: iter([(g, k) for g in _grid_list(call.get("video_grid_thw")) for k in range(g[0], 0, -1)]),
        }
        mask = call.get("attention_mask")
        layouts = []
        for b in range(batch):
            t_row = types[b]
            valid = torch.ones_like(t_row, dtype=torch.bool) if mask is None or mask.dim() != 2 else mask[b].bool()
            vis = (t_row != 0) & valid
            items: list[VisualItem] = []
            left = 0  # blocks still to come of the current video
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
                    (t, h, w), remaining = unit
                    h, w = h // m, w // m
                    if left and (kind_id == _IMAGE or remaining == t):  # a video's blocks come one after another
                        raise InputError(f"sample {b}: a video ends after fewer blocks than its grid has")
                    if kind_id == _IMAGE:
                        items.append(VisualItem(kind, start + done, t, h, w))
                        done += t * h * w
                        continue
                    if remaining == t:  # the first block of a video starts its item
                        items.append(VisualItem(kind, start + done, t, h, w))
                    left = remaining - 1
                    done += h * w
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
        # a new prefill: nothing pruned yet, no reference pass pending
        self._take = None
        self._disarm_reference()
        if any(lay.n_visual for lay in layouts) and self._n_deepstack():
            self._shadow_deepstack()
        return layouts

    # ---------------------------------------------------------------- deepstack, real pass
    def _n_deepstack(self) -> int:
        n = len(getattr(self.model.config.vision_config, "deepstack_visual_indexes", None) or ())
        return min(n, self.n_layers)

    def _shadow_deepstack(self) -> None:
        """Shadow `_deepstack_process` on this text-model instance until its last deepstack layer of this call."""
        tm = self.text_model()
        tm.__dict__.pop("_deepstack_process", None)
        original = tm._deepstack_process  # the class's method, bound
        self._ds_calls = 0

        def deepstack_process(hidden: torch.Tensor, masks: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
            self._ds_calls += 1
            if self._ds_calls >= self._n_deepstack():
                tm.__dict__.pop("_deepstack_process", None)
            if self._take is None or masks.shape[:2] == hidden.shape[:2]:
                return original(hidden, masks, embeds)
            return self._gathered_deepstack(hidden, masks, embeds, self._take)

        tm._deepstack_process = deepstack_process

    @staticmethod
    def _gathered_deepstack(hidden: torch.Tensor, masks: torch.Tensor, embeds: torch.Tensor, take: Take
                            ) -> torch.Tensor:
        """`hidden[mask] += embeds` on the kept rows only: `embeds` lists the visual rows of the full (B, S)
        sequence in row-major order; the kept visual rows take their own feature."""
        masks = masks.to(hidden.device)
        batch, seq = masks.shape
        rows = take(torch.arange(seq, device=hidden.device).expand(batch, seq), 1)
        if rows.shape[1] != hidden.shape[1]:
            raise InputError(
                f"deepstack: {hidden.shape[1]} hidden rows but {rows.shape[1]} kept rows; the pruning engine and "
                "the model disagree on the sequence"
            )
        index = (torch.cumsum(masks.flatten().long(), 0) - 1).view(batch, seq)
        kept = torch.gather(masks, 1, rows)
        src = torch.gather(index, 1, rows)[kept]
        out = hidden.clone()
        out[kept] = out[kept] + embeds.to(hidden.device, hidden.dtype)[src]
        return out

    def gather_layer_kwargs(self, kwargs: dict[str, Any], take: Take) -> dict[str, Any]:
        # called before every layer after a stage: the reference pass (inside the stage) is over, and the
        # deepstack addition after this layer uses these rows
        self._disarm_reference()
        self._take = take
        return kwargs

    # ---------------------------------------------------------------- deepstack, reference pass
    def _black_outputs(self, kind_id: int, grid: tuple[int, int, int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """LLM-space and deepstack features of an all-black image/video with this grid, through the model's own
        vision tower (cached per grid)."""
        key = (kind_id, grid)
        if key not in self._black:
            vc = self.model.config.vision_config
            per_channel = vc.temporal_patch_size * vc.patch_size**2
            black = torch.tensor([-m / s for m, s in zip(PIXEL_MEAN, PIXEL_STD, strict=True)])
            row = black.repeat_interleave(per_channel)[: vc.in_channels * per_channel]
            vis = self.model.model.visual
            pixels = row.expand(grid[0] * grid[1] * grid[2], -1).to(vis.dtype).to(next(vis.parameters()).device)
            thw = torch.tensor([grid], device=pixels.device)
            get = self.model.model.get_video_features if kind_id == _VIDEO else self.model.model.get_image_features
            with torch.no_grad():
                out = get(pixels, thw, return_dict=True)
            if len(self._black) >= 16:
                old = next(iter(self._black))
                self._black.pop(old)
                self._deepstack.pop(old, None)
            self._black[key] = torch.cat(list(out.pooler_output), dim=0)
            self._deepstack[key] = [torch.cat(list(f), dim=0) for f in (out.deepstack_features or [])]
        return self._black[key], self._deepstack[key]

    def _black_features(self, kind_id: int, grid: tuple[int, int, int]) -> torch.Tensor:
        return self._black_outputs(kind_id, grid)[0]

    def reference_embeds(
        self, embeds: torch.Tensor, layouts: list[VisualLayout], call: dict[str, Any]
    ) -> torch.Tensor:
        """Black frames of the same grids replace the visual features; their deepstack features are added after
        the first decoder layers of the reference pass, as the model adds the real ones."""
        out = super().reference_embeds(embeds, layouts, call)
        n_ds = self._n_deepstack()
        if not n_ds:
            return out
        m = self._merge()
        per_sample = []  # (original visual positions, [features per deepstack layer])
        for lay in layouts:
            feats: list[list[torch.Tensor]] = [[] for _ in range(n_ds)]
            for it in lay.items:
                kind_id = _VIDEO if it.kind == "video" else _IMAGE
                ds = self._black_outputs(kind_id, (it.t, it.h * m, it.w * m))[1]
                for j in range(n_ds):
                    feats[j].append(ds[j])
            per_sample.append((lay.positions.to(out.device),
                               [torch.cat(f).to(out.device, out.dtype) if f else None for f in feats]))
        batch, seq = embeds.shape[:2]
        take = self._take
        rows = torch.arange(seq, device=out.device).expand(batch, seq)
        rows = take(rows, 1) if take is not None else rows  # a layer-0 stage ran before the reference pass
        self._arm_reference(per_sample, rows, n_ds)
        return out

    def _arm_reference(self, per_sample: list, rows: torch.Tensor, n_ds: int) -> None:
        self._disarm_reference()
        layers = self.layers()
        for j in range(n_ds):
            def add(module: nn.Module, args: tuple, output: Any, j: int = j) -> Any:
                handle = self._ref_hooks[j] if j < len(self._ref_hooks) else None
                if handle is not None:  # one shot
                    handle.remove()
                h = output[0] if isinstance(output, tuple) else output
                if h.shape[1] != rows.shape[1]:
                    return None
                h = h.clone()
                for b, (positions, feats) in enumerate(per_sample):
                    if feats[j] is None or not positions.numel():
                        continue
                    at = torch.searchsorted(positions, rows[b]).clamp(max=positions.numel() - 1)
                    vis = positions[at] == rows[b]
                    h[b, vis] = h[b, vis] + feats[j][at[vis]]
                return (h, *output[1:]) if isinstance(output, tuple) else h

            self._ref_hooks.append(layers[j].register_forward_hook(add))

    def _disarm_reference(self) -> None:
        for handle in self._ref_hooks:
            handle.remove()
        self._ref_hooks.clear()


def register(register_adapter: Callable[..., None]) -> None:
    """Register Qwen3-VL and Qwen3-VL-MoE with `register_adapter(model_class, factory, note)`."""
    from transformers import Qwen3VLForConditionalGeneration, Qwen3VLMoeForConditionalGeneration

    def factory(model: nn.Module, span: Any) -> Qwen3VLAdapter:
        return Qwen3VLAdapter(model)

    note = "timestamps between temporal patches are text; deepstack kept on the kept rows"
    register_adapter(Qwen3VLForConditionalGeneration, factory, note)
    register_adapter(Qwen3VLMoeForConditionalGeneration, factory, note)
