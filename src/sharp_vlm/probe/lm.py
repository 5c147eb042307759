"""Real pretrained text LM for the needle-in-a-video probe: SmolLM2-135M-Instruct (loaded by
`sharp_vlm.testing.smollm2`, offline), and its unpruned replies to probe samples.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import torch

# the loader lives in testing/ so that the SmolVLM test model can use it without importing the probe
from ..testing.smollm2 import load_smollm2, load_tokenizer, smollm2_path

__all__ = ["evaluate_unpruned", "load_smollm2", "load_tokenizer", "run_unpruned", "smollm2_path"]


@torch.inference_mode()
def run_unpruned(model: Any, tok: Any, sample: Any, max_new_tokens: int = 8) -> str:
    """Greedy-generate the reply to one probe sample with plain transformers (no pruning).

    Returns only the generated continuation (after the primed assistant turn), special tokens removed.
    """
    device = next(model.parameters()).device
    ids = torch.tensor([sample.input_ids], dtype=torch.long, device=device)
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tok.pad_token_id,
    )
    return tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def evaluate_unpruned(
    split: str = "dev",
    n: int = 100,
    n_frames: int = 32,
    tokens_per_frame: int = 32,
    kinds: Iterable[str] | None = None,
    verbose: bool = False,
) -> dict[str, Any]:
    """Unpruned greedy accuracy of SmolLM2 on ``n`` probe samples of ``split``.

    ``kinds=None`` mixes kinds as the generator draws them from the seed; otherwise each listed kind is
    evaluated on the same ``n`` seeds. Returns ``{"overall", "per_kind", "n_per_kind", "sec_per_sample",
    "n", "records"}``.
    """
    from sharp_vlm.probe.generator import check_answer, make_sample, seeds

    model, tok = load_smollm2()
    kind_list: list[str | None] = [None] if kinds is None else list(kinds)
    hits: dict[str, int] = defaultdict(int)
    counts: dict[str, int] = defaultdict(int)
    records: list[dict[str, Any]] = []
    start = time.perf_counter()
    for kind in kind_list:
        for seed in seeds(split, n):
            sample = make_sample(seed, tok, n_frames=n_frames, tokens_per_frame=tokens_per_frame, kind=kind)
            reply = run_unpruned(model, tok, sample)
            ok = check_answer(reply, sample)
            hits[sample.kind] += int(ok)
            counts[sample.kind] += 1
            records.append(
                {"seed": seed, "kind": sample.kind, "answer": sample.answer, "reply": reply, "ok": ok}
            )
            if verbose:
                print(f"{seed:6d} {sample.kind:10s} {'OK ' if ok else 'BAD'} {sample.answer!r:12} {reply!r}")
    elapsed = time.perf_counter() - start
    total = sum(counts.values())
    return {
        "overall": sum(hits.values()) / max(total, 1),
        "per_kind": {k: hits[k] / counts[k] for k in sorted(counts)},
        "n_per_kind": dict(sorted(counts.items())),
        "sec_per_sample": elapsed / max(total, 1),
        "n": total,
        "records": records,
    }
