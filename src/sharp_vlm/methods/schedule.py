"""`sv.Schedule`: several stages in one prefill (stages of one method, or a pre-LLM stage then an in-decoder one)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from .base import DecodePruning, Method, Stage, StageMethod, register


@register("schedule")
@dataclass
class Schedule(Method):
    """Methods whose stages run in order of strictly increasing layer, each on what the previous ones kept.

    Every stage's `retain` is a share of the prompt's *original* visual tokens, so the retains must not increase:
    `Schedule([UniformPrune(retain=0.5, layer=0), ShaRP(retain=0.2, layer=2)])` keeps half the video before the
    decoder and 20% of the original video (40% of what reaches it) from layer 2 on. At most one stage may ask for
    a forward-scope segment mask; it covers the decoder layers before that stage.
    """

    steps: list[Method] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if not self.steps:
            raise ConfigError("a Schedule needs at least one stage method, e.g. Schedule([FastV(retain=0.5, layer=1)])")
        for s in self.steps:
            if not isinstance(s, Method) or isinstance(s, Schedule):
                raise ConfigError(
                    f"Schedule steps must be methods such as sv.FastV(...) or sv.HoliTom(...), got {type(s).__name__}"
                )
            if isinstance(s, StageMethod):
                s.validate()
            if not s.stages():
                raise ConfigError(f"Schedule step {s.name} prunes nothing (it has no stages); leave it out")
        stages = [st for s in self.steps for st in s.stages()]
        layers = [st.layer for st in stages]
        if layers != sorted(set(layers)):
            raise ConfigError(f"Schedule stage layers must be strictly increasing, got {layers}")
        retains = [float(st.retain) for st in stages]
        if any(b > a for a, b in zip(retains, retains[1:], strict=False)):
            raise ConfigError(
                f"Schedule retains must not increase, got {retains}: each is a share of the original visual tokens"
            )
        if len({st.targets for st in stages}) > 1:
            raise ConfigError(
                f"the stages of a Schedule must prune the same targets, got {[st.targets for st in stages]}")
        if sum(s.decode_pruning() is not None for s in self.steps) > 1:
            raise ConfigError("at most one stage of a Schedule may prune attention while decoding")
        if sum(st.segment_mask is not None for st in stages) > 1:
            raise ConfigError("at most one stage of a Schedule may use a forward-scope segment mask")
        for i, st in enumerate(stages):
            if st.method.uses_reference and any(p.layer > 0 for p in stages[:i]):
                raise ConfigError(
                    f"{st.label} at layer {st.layer} debiases with a reference pass, which cannot follow an in-decoder "
                    "stage (the reference prompt would need the earlier stage's choices); put it first, or after "
                    "layer-0 stages only"
                )

    def stages(self) -> list[Stage]:
        self.validate()
        return [st for s in self.steps for st in s.stages()]

    def decode_pruning(self) -> DecodePruning | None:
        found = [d for d in (s.decode_pruning() for s in self.steps) if d is not None]
        return found[0] if found else None

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.name, "steps": [s.to_dict() for s in self.steps]}

    @classmethod
    def from_mapping(cls, data: dict[str, Any], build: Callable[[dict[str, Any]], Method]) -> Schedule:
        unknown = sorted(set(data) - {"steps"})
        if unknown:
            raise ConfigError(f"schedule has no option(s) {', '.join(unknown)}; its options: steps")
        steps = data.get("steps")
        if not isinstance(steps, list) or not all(isinstance(s, dict) for s in steps):
            raise ConfigError("schedule 'steps' must be a list of method mappings, e.g. [{'method': 'fastv', ...}]")
        return cls([build(s) for s in steps])  # type: ignore[list-item]
