"""The vision tower's attention computed outside the engine (eager `output_attentions`, keys by hand), pooled
onto the decoder's tokens by hand, for the tiny LLaVA-OneVision, LLaVA-NeXT-Video and InternVL; and a score
source that hands it to a method's `SampleView` (the oracle side of the tower methods' engine tests)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sharp_vlm.core.tower import TowerFeatures
from sharp_vlm.testing import (
    tiny_internvl,
    tiny_internvl_inputs,
    tiny_llava_inputs,
    tiny_llava_next_video,
    tiny_llava_onevision,
)


def _tower_oracle(model, pixels: torch.Tensor, layers, layer_index: int, has_cls: bool, norm: str, pool):
    """(received, cls, keys) per frame token from the eager tower's attentions and a hand-computed k."""
    out = model.model.vision_tower(pixels, output_attentions=True, output_hidden_states=True, return_dict=True)
    attn = out.attentions[layer_index].float()  # (F, H, T, T)
    first = 1 if has_cls else 0
    received = attn.mean(1).mean(1)[:, first:]
    cls = attn[:, :, 0, first:].mean(1) if has_cls else None
    layer = layers[layer_index]
    attention = getattr(layer, "self_attn", None) or layer.attention
    x = getattr(layer, norm)(out.hidden_states[layer_index])
    k = attention.k_proj(x)
    if getattr(attention, "k_norm", None) is not None:
        k = attention.k_norm(k)
    heads = attention.num_heads
    keys = k.view(k.shape[0], k.shape[1], heads, -1).float().mean(2)[:, first:]
    return tuple(None if t is None else pool(t) for t in (received, cls, keys))


def _square(t: torch.Tensor) -> torch.Tensor:
    side = int(t.shape[1] ** 0.5)
    return t.reshape(t.shape[0], side, side, -1).permute(0, 3, 1, 2)


def _flat(t: torch.Tensor, squeeze: bool) -> torch.Tensor:
    out = t.permute(0, 2, 3, 1).reshape(t.shape[0], -1, t.shape[1])
    return out.reshape(-1) if squeeze else out.reshape(-1, out.shape[-1])


def bilinear_half(t: torch.Tensor) -> torch.Tensor:
    squeeze = t.dim() == 2
    grid = _square(t[..., None] if squeeze else t)
    size = [-(-grid.shape[-1] // 2)] * 2
    return _flat(F.interpolate(grid, size=size, mode="bilinear"), squeeze)


def average_half(t: torch.Tensor) -> torch.Tensor:
    squeeze = t.dim() == 2
    return _flat(F.avg_pool2d(_square(t[..., None] if squeeze else t), 2, 2), squeeze)


def groups_of_four(t: torch.Tensor) -> torch.Tensor:
    """Mean over each 2x2 patch block: token (i, j) of patch rows 2i..2i+1 and columns 2j..2j+1 (the blocks
    InternVL's pixel shuffle joins, checked below)."""
    return average_half(t)


def _vision(model):
    tower = model.model.vision_tower
    return getattr(tower, "vision_model", tower)


def _onevision(attn: str):
    model, eager = tiny_llava_onevision(attn_implementation=attn), tiny_llava_onevision(attn_implementation="eager")
    inputs = tiny_llava_inputs(model, frames=4)
    pixels = inputs["pixel_values_videos"].flatten(0, 1)
    layers = _vision(eager).encoder.layers
    return model, inputs, _tower_oracle(eager, pixels, layers, len(layers) - 1, False, "layer_norm1", bilinear_half)


def _next_video(attn: str):
    model, eager = tiny_llava_next_video(attn_implementation=attn), tiny_llava_next_video(attn_implementation="eager")
    inputs = tiny_llava_inputs(model, frames=4)
    pixels = inputs["pixel_values_videos"].flatten(0, 1)
    layers = _vision(eager).encoder.layers
    index = eager.config.vision_feature_layer % (len(layers) + 1) - 1
    return model, inputs, _tower_oracle(eager, pixels, layers, index, True, "layer_norm1", average_half)


def _internvl(attn: str):
    model, eager = tiny_internvl(attn_implementation=attn), tiny_internvl(attn_implementation="eager")
    inputs = tiny_internvl_inputs(model, content=(("video", 4),))
    layers = eager.model.vision_tower.encoder.layer
    return model, inputs, _tower_oracle(eager, inputs["pixel_values"], layers, len(layers) - 1, True,
                                        "layernorm_before", groups_of_four)


# family -> fn(attn_implementation) -> (model with that attention, inputs with a 4-frame video, the tower's
# (received, cls, keys) from an eager twin of the same seed: `output_attentions` needs eager)
FAMILIES = {"llava-onevision": _onevision, "llava-next-video": _next_video, "internvl": _internvl}


class TowerScores:
    """A score source with the tower's attention of one sample (over its original visual tokens) and nothing else."""

    def __init__(self, received: torch.Tensor, cls: torch.Tensor | None, keys: torch.Tensor):
        self.features = TowerFeatures(received, cls, keys)

    def vision(self, index: int) -> TowerFeatures:
        return self.features

    def attention(self, *args, **kwargs):
        raise AssertionError("the method asked for decoder attention scores")

    def reference(self, *args, **kwargs):
        raise AssertionError("the method asked for reference scores")
