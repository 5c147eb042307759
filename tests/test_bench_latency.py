"""The benchmark runs end to end on a tiny decoder and reports against the unpruned run."""

from __future__ import annotations

import json

import pytest

from sharp_vlm.bench.latency import BenchConfig, run_bench, variant
from sharp_vlm.bench.report import write


def test_bench_reports_every_variant_against_unpruned(tmp_path, monkeypatch):
    from transformers import LlamaConfig

    import sharp_vlm.bench.shapes as shapes

    tiny = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
    monkeypatch.setattr(shapes, "decoder_config", lambda name: tiny)
    cfg = BenchConfig(model="tiny", frames=8, tokens_per_frame=8, prefix=4, question=6, dtype="float32",
                      repeats=2, warmup=1, decode_tokens=2)
    result = run_bench(cfg, progress=False)
    names = [r["variant"] for r in result["rows"]]
    assert names == ["none", "fastv", "fastv+trim_kv", "sharp-reference", "sharp-reference+trim_kv",
                     "sharp-cached", "sharp-cached+trim_kv"]
    rows = {r["variant"]: r for r in result["rows"]}
    assert rows["none"]["speedup"] == 1.0 and rows["none"]["flops_bound"] == 1.0
    assert rows["fastv"]["flops"]["reduction"] > 0.3
    # the per-request reference pass costs FLOPs; the cached one does not
    assert rows["sharp-reference"]["flops"]["reference"] > 0 and rows["sharp-cached"]["flops"]["reference"] == 0
    assert rows["sharp-reference"]["reference_s"]["median"] > 0
    # trimming the shallow layers' KV saves memory: 2 of 4 layers drop 58 of 74 tokens
    assert rows["fastv+trim_kv"]["kv_bytes"] < rows["fastv"]["kv_bytes"] < rows["none"]["kv_bytes"]
    assert result["seq_len"] == 74 and result["n_visual"] == 64
    paths = write(result, tmp_path)
    assert json.loads(paths["json"].read_text())["rows"][0]["variant"] == "none"
    assert "| fastv |" in paths["table"].read_text() and paths["plot"].stat().st_size > 0


def test_variant_names():
    assert variant("sharp-cached", 0.1, 2).debias == "cached"
    assert variant("random", 0.2, 1).retain == 0.2
    with pytest.raises(ValueError, match="unknown method"):
        variant("nonsense", 0.1, 2)
