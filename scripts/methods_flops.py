"""The FLOPs table of docs/methods.md: every method's decoder prefill FLOPs against the dense model at the same
retain, and the retain it needs to cost what a pre-LLM method costs at R.

Shape: the Qwen2.5-VL-7B decoder (28 layers), 32 frames x 196 tokens (6272 visual) and 128 text tokens; FLOPs from
the config (`sharp_vlm.flops.method_flops`, causal attention counted). The vision tower's cost is the same for every
method and not counted. Usage: `python scripts/methods_flops.py` (prints the markdown table).
"""

from __future__ import annotations

import sharp_vlm as sv
from sharp_vlm.bench.shapes import decoder_config
from sharp_vlm.flops import DecoderShape, method_flops
from sharp_vlm.loading import build_run

SHAPE = DecoderShape.from_config(decoder_config("qwen2.5-vl-7b"))
N_VISUAL, N_TEXT = 32 * 196, 128
SEQ = N_VISUAL + N_TEXT


def build(name: str, retain: float) -> sv.Method:
    """A method at `retain` as `sharp probe --methods` builds it (stacks: the first stage keeps twice the share)."""
    return build_run(name, retain)


def cost(method: sv.Method, cached: bool = False) -> float:
    """Prefill FLOPs of `method` over the dense prefill (scoring and a per-request reference pass included)."""
    stages = method.stages()
    out = method_flops(SHAPE, SEQ, N_VISUAL, [(s.layer, s.retain) for s in stages],
                       n_query=1, scoring=[s.method.scores_attention for s in stages],
                       reference_pass=[s.method.reference_pass and not cached for s in stages], causal=True)
    return out["pruned"] / out["dense"]


def retain_at(name: str, target: float, cached: bool = False) -> float | None:
    """The retain at which `name` costs `target` of the dense prefill (None: not reachable in (0, 1])."""
    def valid(r: float) -> bool:
        try:
            build(name, r)
            return True
        except sv.ConfigError:  # e.g. FrameFusion: retain above its last merge share
            return False

    lo = 1e-4
    hi = next((r / 100 for r in range(100, 0, -1) if valid(r / 100)), None)
    if hi is None or cost(build(name, lo), cached) > target or cost(build(name, hi), cached) < target:
        return None
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cost(build(name, mid), cached) < target else (lo, mid)
    return (lo + hi) / 2


ROWS = [  # (name, where it cuts, the bias cached)
    ("divprune", "before the decoder", False), ("vidcom2", "before the decoder", False),
    ("fastvid", "before the decoder", False), ("dycoke", "before the decoder (+ decode)", False),
    ("downsample", "before the decoder", False), ("fastv", "layer 2", False), ("pdrop", "layers 8/16/24", False),
    ("framefusion", "layers 0-1 (merge), 2 (prune)", False), ("sharp", "layer 2", False),
    ("sharp", "layer 2, bias cached", True), ("vidcom2+sharp", "before the decoder + layer 2", False),
    ("dycoke+sharp", "before the decoder + layer 2", False),
    ("visionzip", "before the decoder", False), ("holitom", "before the decoder + layer 18 (merge)", False),
    ("flashvid", "before the decoder (1.25 R) + layer 20", False),
]


def main() -> None:
    print("| method | cuts at | FLOPs at retain 0.25 | at 0.10 | retain at the FLOPs of a pre-LLM 0.25 | at 0.10 |")
    print("|---|---|---|---|---|---|")
    for name, where, cached in ROWS:
        shares = []
        for r in (0.25, 0.1):
            try:
                shares.append(f"{cost(build(name, r), cached):.1%}")
            except sv.ConfigError:
                shares.append("-")
        equal = []
        for r in (0.25, 0.1):
            found = retain_at(name, cost(build("divprune", r)), cached)
            equal.append("-" if found is None else f"{found:.3f}")
        label = name + (" (cached bias)" if cached else "")
        print(f"| {label} | {where} | {shares[0]} | {shares[1]} | {equal[0]} | {equal[1]} |")


if __name__ == "__main__":
    main()
