"""Method configurations: the base classes, the stage contract, validation helpers and the name registry.

Lookup by name and loading from dict/YAML/JSON live in `loading.py`, which imports the built-in methods; this
module imports none of them, so `methods/` can import it without a cycle.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from .core.selection import Selection
from .errors import ConfigError

if TYPE_CHECKING:
    from .engine.view import SampleView

_REGISTRY: dict[str, type[Method]] = {}


def register(name: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator: make a method available by name (`sv.methods()`, configs, CLI)."""

    def deco(cls: type[Method]) -> type[Method]:
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def registered() -> dict[str, type[Method]]:
    """The registry as it stands (built-in methods register when `sharp_vlm.methods` is imported)."""
    return dict(_REGISTRY)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_retain(retain: float, what: str = "retain") -> None:
    if not _is_number(retain):
        raise ConfigError(f"{what}={retain!r} must be a number in (0, 1]: the share of visual tokens to keep")
    if not (0.0 < float(retain) <= 1.0):
        raise ConfigError(
            f"{what}={retain!r} is outside (0, 1]: it is the share of visual tokens to keep, e.g. 0.1 keeps 10%"
        )


def check_number(value: object, what: str, low: float, high: float = math.inf, low_open: bool = False) -> None:
    """A finite real number (not a bool or a string) in [low, high] (or (low, high] with low_open)."""
    ok = _is_number(value) and (value > low if low_open else value >= low) and value <= high
    if not ok:
        span = f"{'(' if low_open else '['}{low:g}, {high:g}]" if high != math.inf else (
            f"{'>' if low_open else '>='} {low:g}")
        raise ConfigError(f"{what}={value!r} must be a number {span}")


def check_int(value: object, what: str, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ConfigError(f"{what}={value!r} must be an integer >= {low}")


def check_bool(value: object, what: str) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{what}={value!r} must be True or False")


def check_layer(layer: int, allow_zero: bool = False) -> None:
    low = 0 if allow_zero else 1
    if not isinstance(layer, int) or isinstance(layer, bool) or layer < low:
        where = ">= 0 (0 prunes before the first decoder layer)" if allow_zero else ">= 1 (a decoder layer index)"
        raise ConfigError(f"layer={layer!r} must be an integer {where}")


def check_unique(items: list, what: str) -> None:
    """A list of runs names each once: a repeat would be run, and counted in every summary, twice."""
    twice = sorted({x for x in items if items.count(x) > 1}, key=items.index)
    if twice:
        raise ConfigError(f"{what} lists {', '.join(map(str, twice))} more than once; name each once")


def check_choice(value: str, choices: tuple[str, ...], what: str) -> None:
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(f"{what}={value!r} is not one of {', '.join(map(repr, choices))}")


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


@dataclass
class Method:
    """A pruning method: a schedule of stages run by the engine."""

    name: ClassVar[str] = "method"

    def stages(self) -> list[Stage]:
        raise NotImplementedError

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
        """Whether the stage scores against a reference pass (per request or cached)."""
        return False

    def stages(self) -> list[Stage]:
        self.validate()
        mask = self.segment_mask()
        # only a forward-scope mask that masks something changes the shallow layers
        forward = mask if mask is not None and mask.scope == "forward" and mask.mode != "off" else None
        return [Stage(self.layer, float(self.retain), self, self.name, forward, self.targets)]
