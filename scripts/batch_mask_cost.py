"""What a padded batch costs ShaRP's segment-masked layers: the block-wise kernel needs a batch without padding, so
a batch with any padding (different prompt lengths, or samples that kept different counts) takes a dense 4-D mask.

Times the layers before ShaRP's stage (`layers_before_seconds`) on one batch of equal prompts twice: as it is
(block-wise kernel) and with one padding token at the start of its first row (dense mask; every other row is the
same). Writes JSON and a Markdown table.

    python scripts/batch_mask_cost.py --model qwen2.5-0.5b --frames 8 --tokens-per-frame 196 --batch 4
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

import sharp_vlm as sv
from sharp_vlm.bench.latency import BenchConfig, build_model, machine
from sharp_vlm.checkpoint import dtype_choice


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="qwen2.5-0.5b")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--tokens-per-frame", type=int, default=196)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--layer", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path, default=Path("runs/batch_mask_cost"))
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    cfg = BenchConfig(model=a.model, frames=a.frames, tokens_per_frame=a.tokens_per_frame, layer=a.layer,
                      device=a.device)
    dtype, reason = dtype_choice("auto", a.device)
    model = build_model(cfg, dtype)
    prefix, question = 20, 30
    seq = prefix + a.frames * a.tokens_per_frame + question
    ids = torch.randint(10, model.config.vocab_size - 10, (a.batch, seq),
                        generator=torch.Generator().manual_seed(0)).to(a.device)
    full = torch.ones_like(ids)
    padded = full.clone()
    padded[0, 0] = 0  # one left-padding token: the batch is no longer uniform
    span = sv.VideoSpan(prefix, a.frames, a.tokens_per_frame)
    method = sv.ShaRP(retain=0.1, layer=a.layer, debias="off")  # the mask's cost, without a reference pass
    times: dict[str, list[float]] = {"block-wise (no padding)": [], "dense mask (one padding token)": []}
    with sv.apply(model, method, span=span) as h, torch.inference_mode():
        for i in range(a.repeats + 1):
            for runs, mask in zip(times.values(), (full, padded), strict=True):
                model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=1)
                if i:  # the first round warms up
                    runs.append(h.last_stats.stages[0].costs.layers_before_seconds)
            print(f"round {i}/{a.repeats}", flush=True)
    rows = [{"path": k, "layers_before_s": statistics.median(v), "runs": v} for k, v in times.items()]
    result = {"model": a.model, "seq_len": seq, "batch": a.batch, "masked_layers": a.layer, "dtype": dtype,
              "dtype_reason": reason, "machine": machine(cfg, dtype, reason), "rows": rows}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "batch_mask_cost.json").write_text(json.dumps(result, indent=1))
    base = rows[0]["layers_before_s"]
    where = result["machine"].get("gpu") or f"{result['machine']['processor']}, {result['machine']['threads']} threads"
    lines = [f"{a.model}, batch {a.batch} x {seq} tokens, layers 0..{a.layer - 1} masked, {dtype}, {where}", "",
             "| path | layers before the stage s (median) | vs block-wise |", "|---|---|---|"]
    lines += [f"| {r['path']} | {r['layers_before_s']:.2f} | {r['layers_before_s'] / base:.2f}x |" for r in rows]
    (a.out / "batch_mask_cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
