"""FrameFusion (Fu et al., "FrameFusion: Combining Similarity and Importance for Video Token Reduction on Large
Vision Language Models", ICCV 2025).

Authors' code read: github.com/thu-nics/FrameFusion at fbec1d2e (framefusion/main.py, framefusion/interface.py,
framefusion/models/qwen2/modeling_qwen2.py and modeling_qwen2_vl.py, framefusion/models/llava_video/
modeling_llava_video.py, framefusion/models/qwenvl/modeling_qwen2_vl.py, framefusion/utils.py, the scripts in
script/playground and script/demo, README.md). What it does there, for one prompt with one video:

- Every visual token has a patch type, its spatial index inside its frame (LLaVA-Video counts the row-end newline
  token as one more index). A token is compared with the nearest earlier token of the same patch type that is
  still present (the same cell of the previous frame, or whatever token absorbed it): cosine of the hidden states.
  Tokens of the first frame have no such partner and are never merged.
- Merging runs on the states before layer 0's attention (the input embeddings), then after the attention of
  layer 0, 1, ... (the residual stream before the MLP). At each step every token whose similarity reaches
  `similarity_lower_bound` (S_th; in the scripts 0.6 for LLaVA-Video, 0.5 for Qwen2-VL and InternVL, 0.7 for
  MiniCPM-V and NVILA; the paper sets it to the median similarity at the first layer) is removed. A run
  of consecutive removed tokens of one patch type goes into the token just before the run, which keeps its
  position and becomes the plain mean of itself and the run (every current token weighs 1).
- The cascade stops after a step that removed less than `ratio_lower_bound` = 0.1 of the visual tokens present.
  If a step would remove more than the cost allows, it removes instead the `int(bound x N)` most similar ones and
  no pruning follows.
- Then, after the attention of the next layer, the visual tokens are ranked by that layer's attention from the
  last prompt token (softmax over every key, rotary applied, mean over heads) and the top
  `round(N x (1 - ratio))` are kept, at their original positions.
- `cost` (0.3 in every script) is a layer average: each merge step counts as one layer keeping the share that
  remains, and the pruned share is chosen so that the mean share over `num_layers` = 28 layers (hard-coded:
  Qwen2-7B) equals `cost`: pruned share = (28 x cost - sum of the merge shares) / (28 - merge steps).

Here: stage s of `merge_retains` (s = 0, 1, ...) merges at decoder layer s by the rule above; the last stage,
at layer S = len(merge_retains), keeps `retain` of the original visual tokens ranked by layer S-1's attention
from the last prompt token (FastV's "previous" rule, which is that layer's attention over its input).

Deviations, all stated:
- Counts: the authors' merge steps are threshold-driven (a variable count, and a variable number of steps). Here
  each merge stage keeps a fixed share, `merge_retains[s]` of the original visual tokens through the engine's one
  budget rule (`keep_count`), by merging the tokens most similar to their partner first (ties: the lower index):
  the authors' rule when the cost bound caps a step, and a per-sample threshold otherwise. The default
  [0.5, 0.475] stands for the authors' typical cascade: S_th is the median similarity at the first layer, so the
  first step merges about half; the next one is taken to merge 5% of what remains (an estimate: any share under
  the 10% that ends the cascade stops it there).
- The prune stage keeps `retain` of the original count instead of a share derived from the cost;
  `FrameFusion.from_cost(cost, n_layers)` derives it with the authors' formula. The default 0.286 makes the layer
  average over 28 layers 0.300 with the default merges (the authors' cost 0.3).
- Where: the authors merge after the attention of layer s-1 (on the residual stream before its MLP) and prune
  after the attention of layer S-1. The engine acts between layers, so merge stage s compares and merges the
  states entering layer s (the embeddings for s = 0, as the authors), and the pruned tokens leave before layer S:
  both half a layer later than the authors' (the MLP of layer s-1 still sees the unmerged tokens).
- Pairs: by grid cell (same row and column), the nearest earlier frame with a token still present at that cell,
  over all the frames the stage prunes in sequence order (the authors' code takes one video per prompt). A token
  off the grid or first at its cell has no partner and is never merged.
- Below one token per cell (a budget under the tokens that have no partner, which the authors never reach: their
  first frame always stays whole), every partnered token merges into its chain's first token and the chains kept
  are evenly spaced over the frames (`uniform_indices`); the other chains are dropped unmerged.
- Similarity in float32 (the authors' in the model's dtype); the importance attention is recomputed beside the
  kernel (as for FastV).
- The authors' per-model thresholds and the cascade length are not options: they only set the counts, which are
  options here.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ..checks import check_choice, check_int, check_retain
from ..core.select import uniform_indices
from ..core.selection import Merge, Selection
from ..errors import ConfigError
from .base import TARGETS, Method, SampleView, Stage, StageMethod, register
from .fastv import FastV

AUTHORS_COST = 0.3  # every script of the authors
AUTHORS_LAYERS = 28  # `num_layers` of the authors' cost formula (Qwen2-7B)
NO_PARTNER = -2.0  # similarity recorded for a token with no partner (the authors' marker; cosines are >= -1)
DEFAULT_MERGES = (0.5, 0.475)


def _merge_shares(merge_retains: Any) -> list[float]:
    """The merge stages' shares, checked: a non-empty, non-increasing list of shares in (0, 1]."""
    if not isinstance(merge_retains, (list, tuple)) or not merge_retains:
        raise ConfigError(f"merge_retains must be a non-empty list of shares such as [0.5, 0.475], "
                          f"not {merge_retains!r}")
    for r in merge_retains:
        check_retain(r, "merge_retains")
    shares = [float(r) for r in merge_retains]
    if any(b > a for a, b in zip(shares, shares[1:], strict=False)):
        raise ConfigError(f"merge_retains must not increase, got {shares}: each is a share of the original "
                          "visual tokens")
    return shares


def cell_predecessors(frames: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """(N,) for each token (in sequence order), the index of the nearest earlier token at the same grid cell in an
    earlier frame; -1 where there is none (first at its cell, or off the grid)."""
    n, dev = frames.numel(), frames.device
    pred = torch.full((n,), -1, dtype=torch.long, device=dev)
    on_grid = (rows >= 0) & (cols >= 0)
    if n < 2 or not bool(on_grid.any()):
        return pred
    n_cols = int(cols[on_grid].max()) + 1
    # off-grid tokens get a key of their own each, so they never pair
    key = torch.where(on_grid, rows * n_cols + cols, -1 - torch.arange(n, device=dev))
    order = torch.sort(key, stable=True).indices  # stable: sequence order inside a cell
    a, b = order[:-1], order[1:]
    pair = (key[a] == key[b]) & (frames[b] > frames[a])
    pred[b[pair]] = a[pair]
    return pred


def partner_similarity(hidden: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """(N,) cosine of each token to its partner `pred` (float32); NO_PARTNER where pred is -1."""
    sim = torch.full((pred.numel(),), NO_PARTNER, dtype=torch.float32, device=hidden.device)
    has = pred >= 0
    if bool(has.any()):
        f = F.normalize(hidden.float(), dim=-1)
        sim[has] = (f[has] * f[pred[has]]).sum(-1)
    return sim


def chain_roots(pred: torch.Tensor, merged: torch.Tensor) -> torch.Tensor:
    """(N,) for each token, the first token not in `merged` found by following `pred` from it (itself when it is
    not merged). Every merged token must have a partner."""
    n = pred.numel()
    root = torch.where(merged, pred, torch.arange(n, device=pred.device))
    while True:  # pointer jumping: unmerged tokens are fixed points, chains halve each round
        nxt = root[root]
        if torch.equal(nxt, root):
            return root
        root = nxt


def similarity_merge(hidden: torch.Tensor, frames: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                     budget: int) -> Selection:
    """Keep `budget` tokens: the tokens most similar to their partner (same cell, nearest earlier frame) merge
    first; each run of merged tokens of one cell goes into the token before it (a plain mean, weights 1)."""
    n, dev = frames.numel(), hidden.device
    budget = max(0, min(budget, n))
    pred = cell_predecessors(frames, rows, cols)
    sim = partner_similarity(hidden, pred)
    has = pred >= 0
    n_merge = n - budget
    paired = torch.nonzero(has).flatten()
    merged = torch.zeros(n, dtype=torch.bool, device=dev)
    if n_merge <= paired.numel():
        order = torch.sort(-sim[paired], stable=True).indices  # ties: the lower index
        merged[paired[order[:n_merge]]] = True
        keep = torch.nonzero(~merged).flatten()
    else:
        # below one token per cell: every chain collapses, and only evenly spaced chains stay
        merged[paired] = True
        heads = torch.nonzero(~merged).flatten()
        keep = heads[uniform_indices(frames[heads], budget).to(dev)]
    root = chain_roots(pred, merged)
    kept = torch.zeros(n, dtype=torch.bool, device=dev)
    kept[keep] = True
    source = torch.nonzero(merged & kept[root]).flatten()
    return Selection(keep, Merge(source, root[source]), scores=sim)


@dataclass
class _SimilarityMerge(StageMethod):
    """One merge step of FrameFusion (built by `FrameFusion.stages`): keeps `retain` of the original visual
    tokens by merging the most similar adjacent-frame pairs of the states entering `layer`."""

    retain: float = 0.5
    layer: int = 0
    allow_layer_zero: ClassVar[bool] = True
    scores_attention: ClassVar[bool] = False

    def select(self, view: SampleView) -> Selection:
        lay, dev = view.layout, view.device
        return similarity_merge(view.hidden, lay.frame_ids.to(dev), lay.rows.to(dev), lay.cols.to(dev), view.budget)


@register("framefusion")
@dataclass
class FrameFusion(Method):
    """FrameFusion: merge stages at layers 0, 1, ..., S-1 (each keeps `merge_retains[s]` of the original visual
    tokens, merging each token into the same grid cell of the nearest earlier frame, most similar first), then at
    layer S keep `retain` of them ranked by layer S-1's attention from the last prompt token (mean over heads).

    merge_retains: the share each merge stage keeps (default [0.5, 0.475]: the authors' typical cascade).
    retain: the share kept from layer S on (default 0.286: a layer average of 0.300 over 28 layers, the authors'
        cost 0.3); a merge share below it is raised to it (the authors' cost bound), and when the last merge
        share is not above it no pruning stage runs. query: "last" (the authors') or
        "text".
    n_layers: the decoder depth over which the config states its layer-averaged retention (default 28, the
        authors' formula's); it changes nothing in the run. targets: as every method.
    """

    retain: float = 0.286
    merge_retains: list[float] = field(default_factory=lambda: list(DEFAULT_MERGES))
    query: str = "last"
    targets: str = "video"
    n_layers: int = AUTHORS_LAYERS

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        shares = _merge_shares(self.merge_retains)
        check_retain(self.retain)
        check_choice(self.query, ("last", "text"), "query")
        check_choice(self.targets, TARGETS, "targets")
        check_int(self.n_layers, "n_layers", len(shares) + 1)

    @property
    def prune_layer(self) -> int:
        """The layer from which only the `retain` share is left (after the merge stages at 0..S-1)."""
        return len(self.merge_retains)

    def merge_shares(self) -> list[float]:
        """What each merge stage keeps: `merge_retains`, none below `retain` (the authors' cost bound: a step that
        would remove more than the cost allows removes only that many, and no pruning follows)."""
        return [max(float(r), float(self.retain)) for r in self.merge_retains]

    def stage_retains(self) -> list[float]:
        """The share of the original visual tokens each stage keeps, merge stages first."""
        shares = self.merge_shares()
        return shares + ([float(self.retain)] if float(self.retain) < shares[-1] else [])

    def layer_averaged_retention(self, n_layers: int | None = None) -> float:
        """The mean over `n_layers` decoder layers (default `self.n_layers`) of the share of the original visual
        tokens each one sees: the authors' `cost`."""
        n = self.n_layers if n_layers is None else n_layers
        check_int(n, "n_layers", 1)
        shares = self.merge_shares() + [float(self.retain)] * n
        return sum(shares[:n]) / n

    @classmethod
    def from_cost(cls, cost: float = AUTHORS_COST, n_layers: int = AUTHORS_LAYERS, **options: Any) -> FrameFusion:
        """The config whose prune share meets the authors' cost formula: a layer average of `cost` over
        `n_layers` layers, given the merge shares (`options`, else the defaults). If the merges alone are below
        the cost, nothing is pruned (the authors' pruning ratio 0)."""
        check_retain(cost, "cost")
        if "retain" in options:
            raise ConfigError("from_cost derives retain from the cost; give one or the other")
        merges = _merge_shares(options.get("merge_retains", list(DEFAULT_MERGES)))
        check_int(n_layers, "n_layers", len(merges) + 1)
        left = n_layers * float(cost) - sum(merges)
        if left <= 0:
            raise ConfigError(f"cost={cost!r} over {n_layers} layers is below what the merge stages "
                              f"{merges} already spend; lower merge_retains or raise the cost")
        return cls(retain=min(left / (n_layers - len(merges)), merges[-1]), n_layers=n_layers, **options)

    def stages(self) -> list[Stage]:
        self.validate()
        out = []
        for layer, keep in enumerate(self.merge_shares()):
            step = _SimilarityMerge(retain=keep, layer=layer, targets=self.targets)
            out += [dataclasses.replace(st, label=f"{self.name}:merge@{layer}") for st in step.stages()]
        if float(self.retain) < self.merge_shares()[-1]:
            prune = FastV(retain=float(self.retain), layer=self.prune_layer, query=self.query,
                          attention_layer="previous", targets=self.targets)
            out += [dataclasses.replace(st, label=f"{self.name}:prune@{self.prune_layer}") for st in prune.stages()]
        return out

    def to_dict(self) -> dict[str, Any]:
        # both retentions are stated: `retain` (what the deep layers keep of the input visual tokens) and the
        # layer average over `n_layers` (the authors' cost), which a config may repeat but not set
        shares = [float(r) for r in self.merge_retains]
        return {"method": self.name, **dataclasses.asdict(self), "merge_retains": shares,
                "layer_averaged_retention": self.layer_averaged_retention()}

    @classmethod
    def from_mapping(cls, data: dict[str, Any], build: Any = None) -> FrameFusion:
        """Build from a config mapping; a stated `layer_averaged_retention` must match the other options."""
        data = dict(data)
        stated = data.pop("layer_averaged_retention", None)
        cfg = cls(**data)
        if stated is not None:
            actual = cfg.layer_averaged_retention()
            if not isinstance(stated, (int, float)) or not math.isclose(float(stated), actual, abs_tol=1e-9):
                raise ConfigError(
                    f"layer_averaged_retention={stated!r} does not match the options ({actual:.6g} over "
                    f"{cfg.n_layers} layers); it is stated, not set: change retain (or use FrameFusion.from_cost)")
        return cfg
