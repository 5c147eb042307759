"""Method configurations: the base classes, validation helpers, the registry and loading from dict/YAML/JSON."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from .errors import ConfigError

if TYPE_CHECKING:
    from .engine.view import StageView

KeepIndices = list[torch.Tensor]
"""Per sample: sorted indices into the visual tokens the stage sees."""

_REGISTRY: dict[str, type[Method]] = {}


def register(name: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator: make a method available by name (`sv.methods()`, configs, CLI)."""

    def deco(cls: type[Method]) -> type[Method]:
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def methods() -> list[str]:
    """Names of all registered methods."""
    from . import methods as _  # noqa: F401  (importing registers the built-in methods)

    return sorted(_REGISTRY)


def method_class(name: str) -> type[Method]:
    methods()
    key = name.lower()
    if key not in _REGISTRY:
        raise ConfigError(f"unknown method {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[key]


def check_retain(retain: float, what: str = "retain") -> None:
    if not isinstance(retain, (int, float)) or not (0.0 < float(retain) <= 1.0):
        raise ConfigError(
            f"{what}={retain!r} is outside (0, 1]: it is the share of visual tokens to keep, e.g. 0.1 keeps 10%"
        )


def check_layer(layer: int, allow_zero: bool = False) -> None:
    low = 0 if allow_zero else 1
    if not isinstance(layer, int) or isinstance(layer, bool) or layer < low:
        where = ">= 0 (0 prunes before the first decoder layer)" if allow_zero else ">= 1 (a decoder layer index)"
        raise ConfigError(f"layer={layer!r} must be an integer {where}")


def check_choice(value: str, choices: tuple[str, ...], what: str) -> None:
    if value not in choices:
        raise ConfigError(f"{what}={value!r} is not one of {', '.join(map(repr, choices))}")


@dataclass(frozen=True)
class Stage:
    """One pruning step: at decoder layer `layer` (0 = before the decoder) keep `retain` of the visual tokens."""

    layer: int
    retain: float
    select: Callable[[StageView], KeepIndices]
    label: str


@dataclass(frozen=True)
class SegmentMask:
    """Segment-aware attention for the shallow layers (see core/masks.py)."""

    mode: str  # "bidirectional" | "local" | "off"
    scope: str  # "forward" | "score"
    frames_per_segment: int = 1


@dataclass
class Method:
    """A pruning method: a schedule of stages run by the engine."""

    name: ClassVar[str] = "method"

    def stages(self) -> list[Stage]:
        raise NotImplementedError

    def segment_mask(self) -> SegmentMask | None:
        """The mask used in layers before the first stage (None: the model's causal mask)."""
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.name, **dataclasses.asdict(self)}


@dataclass
class StageMethod(Method):
    """A method with one stage at `layer`, keeping `retain` of the visual tokens; subclasses define `select`."""

    retain: float = 0.25
    layer: int = 2
    allow_layer_zero: ClassVar[bool] = False
    scores_attention: ClassVar[bool] = True  # runs the scoring side pass (counted in its FLOPs)

    def __post_init__(self) -> None:
        check_retain(self.retain)
        check_layer(self.layer, allow_zero=self.allow_layer_zero)

    def select(self, view: StageView) -> KeepIndices:
        raise NotImplementedError

    def stages(self) -> list[Stage]:
        return [Stage(self.layer, float(self.retain), self.select, self.name)]


def from_dict(data: dict[str, Any]) -> Method:
    """Build a method config from a mapping with a `method` key, e.g. {"method": "fastv", "retain": 0.1}."""
    if "method" not in data:
        raise ConfigError(f"config needs a 'method' key naming one of: {', '.join(methods())}")
    data = dict(data)
    cls = method_class(str(data.pop("method")))
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ConfigError(f"{cls.name} has no option(s) {', '.join(unknown)}; its options: {', '.join(sorted(fields))}")
    return cls(**data)


def load_config(source: str | Path | dict[str, Any]) -> Method:
    """Load a method config from a dict, a YAML/JSON file path, or a YAML/JSON string."""
    if isinstance(source, dict):
        return from_dict(source)
    text = str(source)
    path = Path(text)
    if path.suffix.lower() in {".yaml", ".yml", ".json"}:
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist")
        text = path.read_text()
    if path.suffix.lower() == ".json" or text.lstrip().startswith("{"):
        data = json.loads(text)
    else:
        import yaml

        data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ConfigError("a config must be a mapping with a 'method' key")
    return from_dict(data)
