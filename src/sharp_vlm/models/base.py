"""What the engine needs to know about a model family: every model fact lives in an adapter.

The engine never touches a module attribute by name; it asks the adapter for the decoder, its layers, the
parts of a layer's attention that the scoring side pass recomputes, the positions of decoding, the inputs of
the content-free reference pass, and where the visual tokens are.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..core.layout import VisualLayout
from ..core.scoring import apply_rotary
from ..errors import ConfigError, NoVisualTokensError, UnsupportedModelError
from .vision_attention import TowerAttention

ReferenceFn = Callable[[torch.Tensor, list[VisualLayout], dict[str, Any]], torch.Tensor]
Take = Callable[[torch.Tensor, int], torch.Tensor]  # (tensor, dim) -> the tensor gathered to the current rows


@dataclass(frozen=True)
class AttentionParts:
    """The parts of one decoder layer's attention that the scoring side pass recomputes.

    norm: the layer's input norm, (B, T, D) -> (B, T, D).
    queries / keys: (B, T, D) normed states -> (B, H, T, hd) / (B, H_kv, T, hd), with the q/k norms applied.
    rotary: (x, cos, sin) -> x rotated, with cos/sin as the decoder hands them to its layers.
    scaling: multiplies q.k; softcap: logits -> softcap * tanh(logits / softcap) when set;
    sliding_window: keys further back than this many positions are not attended (None: no window).
    """

    norm: Callable[[torch.Tensor], torch.Tensor]
    queries: Callable[[torch.Tensor], torch.Tensor]
    keys: Callable[[torch.Tensor], torch.Tensor]
    rotary: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    scaling: float
    softcap: float | None = None
    sliding_window: int | None = None


def heads(proj: nn.Module, norm: nn.Module | None, head_dim: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """(B, T, D) -> (B, H, T, head_dim) through a projection and an optional per-head norm."""

    def run(x: torch.Tensor) -> torch.Tensor:
        out = proj(x).view(x.shape[0], x.shape[1], -1, head_dim)
        if norm is not None:
            out = norm(out)
        return out.transpose(1, 2)

    return run


class Adapter:
    """Model-facing facts of one family. Subclasses set `find_layouts` and `reference_embeds`.

    The defaults describe a LLaMA-style decoder layer: `input_layernorm`, `self_attn.q_proj`/`k_proj` (optional
    `q_norm`/`k_norm`), rotate-half RoPE over the whole head, `self_attn.scaling`.
    """

    name = "adapter"
    mrope = False  # True: position ids are (3, batch, seq) (Qwen's M-RoPE)
    # generate() kwargs the engine must see on every forward of a generate() call (generate may drop them)
    generate_kwargs: tuple[str, ...] = ("attention_mask",)

    def __init__(self, model: nn.Module):
        self.model = model

    # ---------------------------------------------------------------- the decoder
    def text_model(self) -> nn.Module:
        """The decoder stack: a module with `.layers`, called with inputs_embeds / position_ids / cache."""
        raise NotImplementedError

    def layers(self) -> nn.ModuleList:
        return self.text_model().layers

    @property
    def n_layers(self) -> int:
        return len(self.layers())

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text_model().embed_tokens(input_ids)

    # what `attention_parts` reads from each decoder layer and its `self_attn`; `check` refuses a model without them
    layer_attributes: tuple[str, ...] = ("input_layernorm",)
    attention_attributes: tuple[str, ...] = ("q_proj", "k_proj", "head_dim", "scaling")

    def check(self) -> None:
        """Raise UnsupportedModelError at apply() when a layer lacks what the side pass needs."""
        for i, layer in enumerate(self.layers()):
            attn = getattr(layer, "self_attn", None)
            missing = [n for n in self.layer_attributes if not hasattr(layer, n)]
            missing += [f"self_attn.{n}" for n in self.attention_attributes if attn is None or not hasattr(attn, n)]
            if missing:
                raise UnsupportedModelError(
                    f"{type(self.model).__name__}: decoder layer {i} has no {', '.join(missing)}, which the "
                    "scoring side pass recomputes; this architecture is not supported"
                )

    def attention_parts(self, index: int) -> AttentionParts:
        layer = self.layers()[index]
        attn = layer.self_attn
        return AttentionParts(
            norm=layer.input_layernorm,
            queries=heads(attn.q_proj, getattr(attn, "q_norm", None), attn.head_dim),
            keys=heads(attn.k_proj, getattr(attn, "k_norm", None), attn.head_dim),
            rotary=apply_rotary,
            scaling=float(attn.scaling),
            softcap=getattr(attn, "attn_logit_softcapping", None),
            sliding_window=self.sliding_window(index),
        )

    def sliding_window(self, index: int) -> int | None:
        """Layer `index`'s attention window (None: none). Some attention modules carry it; others (Mistral, Qwen2
        with `use_sliding_window`) leave it to the config: per layer in `layer_types`, else `sliding_window`."""
        own = getattr(self.layers()[index].self_attn, "sliding_window", None)
        if own is not None:
            return int(own)
        config = self.text_model().config
        window = getattr(config, "sliding_window", None)
        types = getattr(config, "layer_types", None)
        if window is None or (types is not None and types[index] != "sliding_attention"):
            return None
        return int(window)

    def attention_implementation(self) -> str:
        return getattr(self.text_model().config, "_attn_implementation", "sdpa") or "sdpa"

    def use_attention(self, index: int, implementation: str) -> Callable[[], None]:
        """Run layer `index` with another attention function (a name in transformers' AttentionInterface), on
        this instance only; returns the function that undoes it."""
        attn = self.layers()[index].self_attn
        original = attn.config
        cfg = copy.copy(original)
        cfg._attn_implementation = implementation
        attn.config = cfg

        def restore() -> None:
            attn.config = original

        return restore

    def dtype(self) -> torch.dtype:
        return next(self.text_model().parameters()).dtype

    # ---------------------------------------------------------------- the prompt
    def check_batch(self, call: dict[str, Any]) -> None:
        """Refuse, before the model runs, a batch of the outer call's inputs the family cannot encode at once."""

    def find_layouts(self, call: dict[str, Any], seq_len: int, batch: int) -> list[VisualLayout]:
        """Visual-token layout per sample, from the kwargs of the outer model call."""
        raise NotImplementedError

    def continuation_has_visual(self, call: dict[str, Any], seq_len: int, batch: int) -> bool:
        """Whether a call that continues a KV cache (a later turn) brings visual tokens. An input the adapter
        cannot parse is an error here as in a prompt; only "no visual tokens" means text."""
        try:
            return any(lay.n_visual for lay in self.find_layouts(call, seq_len, batch))
        except NoVisualTokensError:
            return False

    def reference_embeds(
        self, embeds: torch.Tensor, layouts: list[VisualLayout], call: dict[str, Any]
    ) -> torch.Tensor:
        """The decoder input with every visual token replaced by a content-free one (same count, same places)."""
        raise NotImplementedError

    # ---------------------------------------------------------------- inputs added inside the decoder
    def prefill_state(self, decoder_kwargs: dict[str, Any]) -> tuple[dict[str, Any], Any]:
        """At the start of a prefill: the decoder's kwargs (possibly changed) and the family's per-call state.

        A family whose decoder adds inputs between layers at the visual rows (Qwen3-VL's deepstack) takes them
        out of the decoder's hands here and adds them itself in `after_layer`, on the rows still present.
        """
        return decoder_kwargs, None

    def after_layer(self, index: int, hidden: torch.Tensor, rows: torch.Tensor, state: Any) -> torch.Tensor:
        """The output of decoder layer `index` during a prefill; rows: (B, S_cur) original positions of its rows.

        Also called in the reference pass with `reference_state`'s state. Default: unchanged.
        """
        return hidden

    def declare_video_prompt(self, video_only: bool = True) -> None:
        """The caller built prompts that hold one video and nothing else (as `VideoQA` does). A family whose tokens
        alone cannot tell a one-frame video from an image (InternVL) takes it as a video; others ignore it, their
        tokens already say."""

    def reference_state(self, layouts: list[VisualLayout], call: dict[str, Any], batch: int, seq_len: int) -> Any:
        """`prefill_state`'s state for the content-free reference input."""
        return None

    def adds_inside_decoder(self) -> bool:
        """Whether `after_layer` does anything (the engine hooks the layers' outputs only then)."""
        return type(self).after_layer is not Adapter.after_layer

    def gather_layer_kwargs(self, kwargs: dict[str, Any], take: Take) -> dict[str, Any]:
        """Family-specific per-row tensors among a layer's kwargs, gathered to the rows left after a stage.

        The engine already gathers the hidden states, position ids and embeddings and 4-D masks.
        """
        return kwargs

    # ---------------------------------------------------------------- the vision tower
    # families whose adapters expose the tower's attention (named in the error of the others)
    TOWER_FAMILIES = "LLaVA-OneVision, LLaVA-Video, LLaVA-NeXT-Video and InternVL"

    def vision_attention(self, label: str) -> TowerAttention:
        """The capture of the vision tower's attention at the layer the projector reads, for a method (`label`)
        that ranks or merges by it. Default: this family does not expose it."""
        raise UnsupportedModelError(
            f"{label} reads the vision tower's attention, which the {type(self.model).__name__} adapter does not "
            f"expose (a decoder-only LM has no tower unless its VideoSpan declares one with tower=); run it on "
            f"{self.TOWER_FAMILIES}, or pick a method that reads the decoder's input (e.g. sv.DivPrune, sv.VidCom2)"
        )

    # ---------------------------------------------------------------- positions
    def next_positions(self, position_ids: torch.Tensor | None, batch: int, seq_len: int) -> torch.Tensor:
        """(B,) position of the first decoded token: one past the last prompt token."""
        if position_ids is None:  # the decoder numbered the prompt 0..S-1
            return torch.full((batch,), seq_len, dtype=torch.long)
        pos = position_ids[-3:].amax(0) if position_ids.dim() == 3 else position_ids
        return (pos.expand(batch, -1)[:, -1] + 1).to(torch.long)

    def position_embeddings(self, hidden: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The rotary tables (cos, sin) the decoder's layers get for 1-D `position_ids` (B, S), from the decoder's
        own rotary module (used to renumber the rows after a stage before the decoder)."""
        rotary = getattr(self.text_model(), "rotary_emb", None)
        if rotary is None:
            raise ConfigError(
                f"{type(self.text_model()).__name__} has no rotary_emb module to renumber positions with; "
                "use positions='original'"
            )
        return rotary(hidden, position_ids)

    def decode_position_ids(self, next_pos: torch.Tensor, q_len: int) -> torch.Tensor:
        """Position ids for `q_len` new tokens per sample starting at next_pos (B,)."""
        pos = next_pos[:, None] + torch.arange(q_len, device=next_pos.device)[None]
        return pos[None].expand(3, -1, -1) if self.mrope else pos
