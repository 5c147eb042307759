"""PyramidDrop (Xing et al., "PyramidDrop: Accelerating Your Large Vision-Language Models via Pyramid Visual
Redundancy Reduction", CVPR 2025).

Authors' code read: github.com/Cooperx521/PyramidDrop at 6444f304 (llava/model/modeling_llama_pdrop.py,
llava_arch.py, the eval scripts). What it does there: the decoder is split into stages at layers 8, 16 and 24
(`layer_list`); at the start of each stage the visual tokens are ranked by the attention of the last prompt token
(the last instruction token) computed with the q/k projections of that stage's first layer over the states
entering it, averaged over heads, and the top `int(N x ratio)` are kept, the ratios 0.5 / 0.25 / 0.125 of the
original N (lambda = 0.5).

Deviations, all stated:
- `retain` is the share kept by the last stage and lambda its S-th root (the default 0.125 over three stages is
  the authors' lambda = 0.5); each stage keeps lambda^s of the original count through the library's one budget
  rule (`keep_count`: half-way rounded up, at least 1) instead of `int()`.
- Positions: the authors renumber the kept tokens contiguously at each stage (and lower the decode positions to
  match); here they keep their original positions, as for every in-decoder method. Not yet switchable.
- The authors' code is LLaMA / LLaVA only and names no video setting; the layers 8 / 16 / 24 fit 28-layer (Qwen2-7B)
  and 32-layer decoders. A decoder with fewer layers needs `layers=` set.
- The average share of visual tokens the decoder layers see depends on the depth: `layer_averaged_retention(L)`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..checks import check_choice, check_layer, check_retain
from ..errors import ConfigError
from .base import TARGETS, Method, Stage, register
from .fastv import FastV


@register("pdrop")
@dataclass
class PDrop(Method):
    """PyramidDrop: stages at `layers`, stage s keeping lambda^s of the original visual tokens (lambda =
    retain^(1/S)), ranked by the last prompt token's attention in the stage's first layer (mean over heads).

    retain: the share the last stage keeps (0.125: the authors' lambda = 0.5 over three stages). layers: the first
    layer of each pruned stage. query: "last" (the authors') or "text".
    """

    retain: float = 0.125
    layers: list[int] = field(default_factory=lambda: [8, 16, 24])
    query: str = "last"
    targets: str = "video"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        check_retain(self.retain)
        if not isinstance(self.layers, (list, tuple)) or not self.layers:
            raise ConfigError(f"layers must be a non-empty list of decoder layers such as [8, 16, 24], "
                              f"not {self.layers!r}")
        for layer in self.layers:
            check_layer(layer)
        if list(self.layers) != sorted(set(self.layers)):
            raise ConfigError(f"layers must be strictly increasing, got {list(self.layers)}")
        check_choice(self.query, ("last", "text"), "query")
        check_choice(self.targets, TARGETS, "targets")

    @property
    def lam(self) -> float:
        """The share each stage keeps of what reaches it."""
        return float(self.retain) ** (1.0 / len(self.layers))

    def stage_retains(self) -> list[float]:
        """The share of the original visual tokens each stage keeps."""
        return [self.lam ** (s + 1) for s in range(len(self.layers))]

    def layer_averaged_retention(self, n_layers: int) -> float:
        """The mean over the decoder's `n_layers` layers of the share of the visual tokens each one sees."""
        shares = [1.0] * n_layers
        for layer, keep in zip(self.layers, self.stage_retains(), strict=True):
            for i in range(min(layer, n_layers), n_layers):
                shares[i] = keep
        return sum(shares) / n_layers

    def stages(self) -> list[Stage]:
        self.validate()
        out = []
        for layer, keep in zip(self.layers, self.stage_retains(), strict=True):
            step = FastV(retain=keep, layer=layer, query=self.query, attention_layer="stage", targets=self.targets)
            out += [dataclasses.replace(st, label=f"{self.name}@{layer}") for st in step.stages()]
        return out

    def to_dict(self) -> dict:
        return {"method": self.name, **dataclasses.asdict(self), "layers": list(self.layers)}
