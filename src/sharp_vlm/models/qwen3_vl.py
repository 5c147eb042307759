"""Qwen3-VL (dense and MoE): timestamps between temporal patches, interleaved M-RoPE, deepstack.

Layout. The processor writes a video of grid (t, h, w) as t blocks `<t seconds> <|vision_start|> h*w/m^2 video
tokens <|vision_end|>` (`Qwen3VLProcessor.replace_video_token`); `get_rope_index` splits `video_grid_thw` into
t grids of one temporal patch each and places every block with its own 3-D positions. Here a video is one
`VisualItem` of t temporal patches x (h/m rows x w/m cols): its visual tokens are consecutive among the visual
tokens (the timestamps and start/end markers between blocks are text, so they are never pruned), and frame ids,
rows and cols come out per temporal patch as for Qwen2.5-VL. An image is one item of its own grid.

Deepstack. `Qwen3VLTextModel.forward` adds, after decoder layer i < len(deepstack_visual_embeds), the i-th
deepstack features at `visual_pos_masks` (`hidden[mask] += embeds`). Once a stage has dropped rows, that mask
and those features no longer match the hidden states. So the adapter takes both out of the decoder's kwargs at
the start of a prefill (`prefill_state`) and adds the features itself after those layers (`after_layer`), on
the rows still present, each kept visual row with its own feature. The reference pass (ShaRP's debiasing) gets
the black frames' deepstack features the same way (`reference_state`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..core.layout import VisualLayout
from ..errors import UnsupportedModelError
from .qwen_vl import _IMAGE, _VIDEO, QwenVLAdapter

# Qwen3-VL's image and video processors normalise with mean = std = 0.5 per channel: black becomes -1.
PIXEL_MEAN = (0.5, 0.5, 0.5)
PIXEL_STD = (0.5, 0.5, 0.5)


class Qwen3VLAdapter(QwenVLAdapter):
    name = "qwen3-vl"
    family = "Qwen3-VL"
    generate_kwargs = ("image_grid_thw", "video_grid_thw", "attention_mask")
    pixel_mean = PIXEL_MEAN
    pixel_std = PIXEL_STD

    def check(self) -> None:
        super().check()
        # the deepstack inputs are taken from the decoder's kwargs by name (transformers 5.x); refuse at apply()
        # rather than misalign if a release renames them
        params = inspect.signature(type(self.text_model()).forward).parameters
        if self._n_deepstack() and not {"visual_pos_masks", "deepstack_visual_embeds"} <= set(params):
            raise UnsupportedModelError(
                f"{type(self.model).__name__}: its text model takes no `visual_pos_masks` / "
                "`deepstack_visual_embeds`, which the pruning engine re-adds on the kept rows; this transformers "
                "version is not supported"
            )

    # ---------------------------------------------------------------- layouts
    def _blocks(self, kind_id: int, grid: tuple[int, int, int]) -> int:
        # a video's grid covers t blocks of one temporal patch each, one per vision_start/end pair
        return grid[0] if kind_id == _VIDEO else 1

    # ---------------------------------------------------------------- deepstack, real pass
    def _n_deepstack(self) -> int:
        n = len(getattr(self.model.config.vision_config, "deepstack_visual_indexes", None) or ())
        return min(n, self.n_layers)

    def prefill_state(self, decoder_kwargs: dict[str, Any]) -> tuple[dict[str, Any], Any]:
        masks = decoder_kwargs.get("visual_pos_masks")
        embeds = decoder_kwargs.get("deepstack_visual_embeds")
        if masks is None or not embeds:
            return decoder_kwargs, None
        # the decoder would add them on the full rows; after_layer adds them on the rows still present
        return dict(decoder_kwargs, visual_pos_masks=None, deepstack_visual_embeds=None), (masks, list(embeds))

    def after_layer(self, index: int, hidden: torch.Tensor, rows: torch.Tensor, state: Any) -> torch.Tensor:
        if state is None or index >= len(state[1]):
            return hidden
        masks, embeds = state
        masks = masks.to(hidden.device)
        # embeds list the visual rows of the full (B, S) batch in row-major order
        index_of = (torch.cumsum(masks.flatten().long(), 0) - 1).view(masks.shape)
        kept = torch.gather(masks, 1, rows)
        src = torch.gather(index_of, 1, rows)[kept]
        out = hidden.clone()
        out[kept] = out[kept] + embeds[index].to(hidden.device, hidden.dtype)[src]
        return out

    # ---------------------------------------------------------------- deepstack, reference pass
    def reference_state(self, layouts: list[VisualLayout], call: dict[str, Any], batch: int, seq_len: int) -> Any:
        """The black frames' deepstack features at the visual positions, as `prefill_state` holds the real ones."""
        n_ds = self._n_deepstack()
        if not n_ds or not any(lay.n_visual for lay in layouts):
            return None
        m = self._merge()
        device = layouts[0].positions.device
        masks = torch.zeros(batch, seq_len, dtype=torch.bool, device=device)
        per_layer: list[list[torch.Tensor]] = [[] for _ in range(n_ds)]
        for b, lay in enumerate(layouts):
            masks[b, lay.positions] = True
            for it in lay.items:
                kind_id = _VIDEO if it.kind == "video" else _IMAGE
                ds = self._black_pass(kind_id, (it.t, it.h * m, it.w * m))[1]
                for j in range(n_ds):
                    per_layer[j].append(ds[j])
        return masks, [torch.cat(f) for f in per_layer]


def register(register_adapter: Callable[..., None]) -> None:
    """Register Qwen3-VL and Qwen3-VL-MoE with `register_adapter(model_class, factory, note)`."""
    from transformers import Qwen3VLForConditionalGeneration, Qwen3VLMoeForConditionalGeneration

    def factory(model: nn.Module, span: Any) -> Qwen3VLAdapter:
        return Qwen3VLAdapter(model)

    note = "timestamps between temporal patches are text; deepstack kept on the kept rows"
    register_adapter(Qwen3VLForConditionalGeneration, factory, note)
    register_adapter(Qwen3VLMoeForConditionalGeneration, factory, note)
