"""The method contract: what a method is, what it returns and what it reads. Start reading here.

A `Method` is a schedule of `Stage`s; most are a `StageMethod` with one stage that answers `select(view)` for one
sample: given a `SampleView` of the sample at its stage (budget, layout, hidden states, scores), which visual tokens
to keep (a sorted index tensor or a `core.selection.Selection`, which may also merge dropped tokens into kept ones).
The engine (`engine/`) does everything else, the same way for every method. `register` makes a method available by
name (`sv.methods()`, configs, the CLI). Nothing here imports the engine.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch

from ..checks import check_choice, check_layer, check_retain
from ..core.layout import VisualLayout
from ..core.select import top_indices
from ..core.selection import Selection
from ..core.tower import TowerFeatures
from ..errors import ConfigError

_REGISTRY: dict[str, type[Method]] = {}


def register(name: str, replace: bool = False) -> Callable[[type[Method]], type[Method]]:
    """Class decorator: make a method available by name (`sv.methods()`, configs, CLI).

    A name that is taken (a built-in's too) is refused unless `replace=True`. An option the class does not have is
    refused with a `ConfigError` that lists its options (and, for an option listed in `moved_options`, says where
    it went), whether the config comes from code, a file or the CLI.
    """

    def deco(cls: type[Method]) -> type[Method]:
        taken = _REGISTRY.get(name)
        if taken is not None and taken is not cls and not replace:
            raise ConfigError(
                f"the method name {name!r} is taken by {taken.__module__}.{taken.__qualname__}; register under "
                f"another name, or pass replace=True to put {cls.__qualname__} in its place"
            )
        cls.name = name
        init = cls.__dict__.get("__init__")
        if init is not None and dataclasses.is_dataclass(cls):
            @functools.wraps(init)
            def checked_init(self: Method, *args: Any, **kwargs: Any) -> None:
                check_options(type(self), kwargs)
                init(self, *args, **kwargs)

            cls.__init__ = checked_init
        _REGISTRY[name] = cls
        return cls

    return deco


def check_options(cls: type[Method], given: Any) -> None:
    """Refuse option names that `cls` does not take, naming its options and where a moved one went."""
    fields = {f.name for f in dataclasses.fields(cls) if f.init} if dataclasses.is_dataclass(cls) else set()
    unknown = sorted(set(given) - fields)
    if not unknown:
        return
    moved = [f"{k} moved to {cls.moved_options[k]}" for k in unknown if k in cls.moved_options]
    options = ", ".join(sorted(fields)) if fields else "none"
    raise ConfigError(f"{cls.name} has no option(s) {', '.join(unknown)}"
                      + (f" ({'; '.join(moved)})" if moved else "") + f"; its options: {options}")


def registered() -> dict[str, type[Method]]:
    """The registry as it stands (built-in methods register when `sharp_vlm.methods` is imported)."""
    return dict(_REGISTRY)


TARGETS = ("video", "image", "all")
TARGET_KINDS = {"video": ("video",), "image": ("image",), "all": ("video", "image")}


@dataclass(frozen=True)
class SegmentMask:
    """Segment-aware attention for the shallow layers (see core/masks.py)."""

    mode: str  # "bidirectional" | "local" | "off"
    scope: str  # "forward" | "score"
    frames_per_segment: int = 1


@dataclass(frozen=True)
class Stage:
    """One pruning step as the engine runs it.

    At decoder layer `layer` (0 = before the first layer) keep `retain` of the prompt's *original* visual tokens
    (a cumulative share: a later stage of a schedule keeps a smaller share of the same original count); `method`
    chooses which, one sample at a time.
    """

    layer: int
    retain: float
    method: StageMethod
    label: str
    segment_mask: SegmentMask | None = None  # forward-scope mask of the layers before this stage
    targets: str = "video"  # which visual tokens the stage prunes: "video", "image" or "all"
    # the method scores with the attention layer K-1 computed (FastV's rule): the engine keeps that layer's input
    scores_previous_layer: bool = False
    # positions of the rows after a stage before the decoder: "original", "contiguous" (renumbered without gaps,
    # 1-D rotary positions only) or "auto" (contiguous where positions are 1-D, original for M-RoPE)
    positions: str = "original"
    # the method reads the vision tower's attention (`SampleView.vision_attention`): the engine captures it
    reads_vision: bool = False


@dataclass
class Method:
    """A pruning method: a schedule of stages run by the engine."""

    name: ClassVar[str] = "method"  # the registered name; a subclass not registered is named by its class
    moved_options: ClassVar[dict[str, str]] = {}  # former option -> where it went (named in the error)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.name = cls.__name__  # `register` names it after class creation

    def stages(self) -> list[Stage]:
        raise NotImplementedError

    def decode_pruning(self) -> DecodePruning | None:
        """Attention pruning at every decode step (None: decoding attends to every key its cache holds)."""
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.name, **dataclasses.asdict(self)}


@dataclass
class StageMethod(Method):
    """A method with one stage at `layer`, keeping `retain` of the visual tokens.

    Subclasses implement `select(view)` for one sample: the engine computes the budget (`view.budget`), runs the
    loop over the batch, checks the answer, applies it (drop, or merge then drop) and records timing and stats.
    """

    retain: float = 0.25
    layer: int = 2
    # which of the prompt's visual tokens the stage prunes and budgets: "video" (images beside the video are kept
    # whole), "image", or "all" (one budget over every image and video, frames and images alike)
    targets: str = "video"
    allow_layer_zero: ClassVar[bool] = False
    scores_attention: ClassVar[bool] = True  # runs the scoring side pass (counted in its FLOPs)
    reference_pass: ClassVar[bool] = False  # runs a per-request reference pass (counted in its FLOPs)
    # reads the vision tower's attention (`SampleView.vision_attention` / `vision_keys`); the adapter must expose it
    reads_vision: ClassVar[bool] = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every option; the engine calls it again at apply() time, so later edits are checked too."""
        check_retain(self.retain)
        check_layer(self.layer, allow_zero=self.allow_layer_zero)
        check_choice(self.targets, TARGETS, "targets")

    def select(self, view: SampleView) -> Selection | torch.Tensor:
        """Which of the sample's visual tokens to keep: a `Selection`, or a sorted index tensor."""
        raise NotImplementedError

    def segment_mask(self) -> SegmentMask | None:
        """The forward-scope mask of the layers before this stage (None: the model's causal mask)."""
        return None

    @property
    def uses_reference(self) -> bool:
        """Whether the stage scores against a reference pass (run per request, or found in a bias cache)."""
        return False

    @property
    def scores_previous_layer(self) -> bool:
        """Whether `select` asks for `attention_scores(layer="previous")` (the engine then keeps layer K-1's input)."""
        return False

    def decode_select(self, view: DecodeView) -> torch.Tensor | None:
        """For a method whose `decode_pruning()` is set: which visual tokens the layers from the decode layer on
        attend to at this step (sorted indices into `view.scores`, exactly `view.budget` of them), or None for
        all of them."""
        raise NotImplementedError(f"{self.name} sets decode_pruning() but has no decode_select(view)")

    def stages(self) -> list[Stage]:
        self.validate()
        mask = self.segment_mask()
        # only a forward-scope mask that masks something changes the shallow layers
        forward = mask if mask is not None and mask.scope == "forward" and mask.mode != "off" else None
        return [Stage(self.layer, float(self.retain), self, self.name, forward, self.targets,
                      self.scores_previous_layer, getattr(self, "positions", "original"), self.reads_vision)]


@dataclass(frozen=True)
class DecodePruning:
    """At every decode step (one new token per sample, with a KV cache), layers >= `layer` attend only to the
    visual tokens `method.decode_select(view)` chooses from the attention the new token paid to them in layer
    `layer` - 1; every other key (text, generated tokens) stays. The cache keeps every key: the choice is made
    again at each step (DyCoke's dynamic pruning)."""

    layer: int
    retain: float  # share of the visual tokens in layer `layer` - 1's cache attended per step
    method: StageMethod


class DecodeView:
    """What a method sees at one decode step of sample `index`.

    scores: (N,) the attention of the new token to each visual token in layer L-1's cache (mean over heads), in
        sequence order. previous: the same scores at the previous step of this generation (None at the first).
    budget: how many to keep (`keep_count` of the pruning's `retain` over N).
    """

    def __init__(self, index: int, scores: torch.Tensor, previous: torch.Tensor | None, budget: int):
        self.index, self.scores, self.previous, self.budget = index, scores, previous, budget

    @property
    def n_visual(self) -> int:
        return int(self.scores.numel())

    def top(self, scores: torch.Tensor, budget: int | None = None) -> torch.Tensor:
        return top_indices(scores, self.budget if budget is None else budget).to(scores.device)


POSITIONS = ("auto", "original", "contiguous")


@dataclass
class PreLLMMethod(StageMethod):
    """A method that prunes before the decoder (layer 0 by default; `UniformPrune` and `RandomPrune` default to 2)
    from the decoder's input embeddings at the visual rows (the projector output), with no attention pass.

    positions: what the kept tokens' positions become. "contiguous": renumbered without gaps, as the LLaVA-family
    code of most pre-LLM methods does (the sequence is simply shorter; 1-D rotary positions only); "original":
    each keeps its own (as in-decoder methods do); "auto" (default): contiguous where positions are 1-D, original
    for Qwen-VL's 3-D M-RoPE positions (as VidCom2's Qwen2.5-VL code keeps them). Only a layer-0 stage can
    renumber: at a later layer the shallow layers' KV already holds the original positions.
    """

    layer: int = 0
    positions: str = "auto"
    allow_layer_zero: ClassVar[bool] = True
    scores_attention: ClassVar[bool] = False

    def validate(self) -> None:
        super().validate()
        check_choice(self.positions, POSITIONS, "positions")
        if self.positions == "contiguous" and self.layer != 0:
            raise ConfigError(
                f"positions='contiguous' renumbers the rows before the decoder; it needs layer=0, got "
                f"layer={self.layer} (use positions='original' or 'auto' at a later layer)"
            )


class ScoreSource(Protocol):
    """Batch-level scores of one stage, computed once per option set (the engine's `StageScorer`)."""

    def attention(self, query: str, mask: SegmentMask | None, rope: bool, content_free: bool,
                  previous: bool = False) -> torch.Tensor: ...

    def reference(self, query: str, mask: SegmentMask | None, rope: bool) -> torch.Tensor: ...

    def vision(self, index: int) -> TowerFeatures: ...


class SampleView:
    """What a stage method sees of sample `index`.

    layer: the stage's decoder layer (0 = before the decoder).
    budget: how many visual tokens to keep (the engine's rule, `core.budget.keep_count`).
    layout: the sample's surviving visual tokens (original positions, frame ids, grid coordinates).
    hidden: (N, D) their hidden states entering the layer (input embeddings at layer 0), gathered on first use.
    n_original: how many visual tokens the prompt had.
    raw_scores / bias: the last attention scores and reference scores (or positional prior) the method asked for,
        which the engine records in the call's stats.
    """

    def __init__(
        self,
        layer: int,
        index: int,
        budget: int,
        layout: VisualLayout,
        batch_hidden: torch.Tensor,
        visual_rows: torch.Tensor,
        n_original: int,
        scores: ScoreSource,
    ):
        self.layer = layer
        self.index = index
        self.budget = budget
        self.layout = layout
        self.n_original = n_original
        self.raw_scores: torch.Tensor | None = None
        self.bias: torch.Tensor | None = None
        self._batch_hidden = batch_hidden
        self._visual_rows = visual_rows
        self._hidden: torch.Tensor | None = None
        self._scores = scores

    @property
    def hidden(self) -> torch.Tensor:
        if self._hidden is None:
            self._hidden = self._batch_hidden[self.index, self._visual_rows]
        return self._hidden

    @property
    def device(self) -> torch.device:
        return self._batch_hidden.device

    @property
    def n_visual(self) -> int:
        return int(self._visual_rows.numel())

    def attention_scores(self, query: str = "last", mask: SegmentMask | None = None, rope: bool = True,
                         layer: str = "stage") -> torch.Tensor:
        """(N,) attention from the query rows to each visual token (mean over heads).

        query="last": the last prompt token; "text": mean over the text after the video. mask: score under a
        segment-aware mask. rope=False: q.k without the rotary embedding. layer="stage": layer K's own attention
        over its input (the states the stage prunes); "previous": the attention layer K-1 computed over its input
        (FastV's rule; the method must say `scores_previous_layer`). Computed beside the attention kernel from the
        layer's own norm, q/k projections and rotary embedding.
        """
        if layer not in ("stage", "previous"):
            raise ValueError(f"layer must be 'stage' or 'previous', got {layer!r}")
        self.raw_scores = self._scores.attention(query, mask, rope, False, layer == "previous")[self.index,
                                                                                                : self.n_visual]
        return self.raw_scores

    def reference_scores(self, query: str = "last", mask: SegmentMask | None = None, rope: bool = True) -> torch.Tensor:
        """(N,) the same scores for the prompt with content-free (black) frames: the positional bias.

        Runs layers 0..K-1 once more on the reference input (~K/L of a dense prefill), unless the handle was
        applied with a `bias_cache` that already holds it for these weights, layout and prompt.
        """
        self.bias = self._scores.reference(query, mask, rope)[self.index, : self.n_visual]
        return self.bias

    def vision_attention(self, query: str = "cls") -> torch.Tensor:
        """(N,) the attention each visual token received in the vision tower, at the layer whose output the
        projector reads, mapped onto the decoder's tokens with the model's own pooling (the method must say
        `reads_vision`; the adapter must expose the tower: LLaVA-OneVision / LLaVA-Video, LLaVA-NeXT-Video, InternVL).

        query="cls": from the [CLS] query, mean over heads (VisionZip's rule); on a tower without [CLS] (SigLIP) the
        mean over all queries instead. "mean": mean over heads and all queries (HoliTom's and FlashVID's rule).
        """
        check_choice(query, ("cls", "mean"), "query")
        feats = self._scores.vision(self.index)
        return feats.cls if query == "cls" and feats.cls is not None else feats.received

    def vision_keys(self) -> torch.Tensor:
        """(N, head_dim) the same tower layer's keys, mean over heads, mapped onto the tokens (VisionZip's metric)."""
        return self._scores.vision(self.index).keys

    def positional_prior(self, query: str = "last", mask: SegmentMask | None = None) -> torch.Tensor:
        """(N,) scores from content-free queries and keys at the real positions (RoPE only)."""
        self.bias = self._scores.attention(query, mask, True, True)[self.index, : self.n_visual]
        return self.bias

    def top(self, scores: torch.Tensor, budget: int | None = None) -> torch.Tensor:
        """Indices of the `budget` (default: the stage's) highest scores, sorted."""
        return top_indices(scores, self.budget if budget is None else budget).to(self.device)
