"""The benchmark runs end to end on tiny models and reports against the unpruned run."""

from __future__ import annotations

import json

import pytest
import torch

import sharp_vlm.bench.latency as latency
from sharp_vlm import checkpoint
from sharp_vlm.bench.latency import BenchConfig, check_bench, run_bench, variant
from sharp_vlm.bench.memory import PeakMemory
from sharp_vlm.bench.report import table, write
from sharp_vlm.bench.vision import time_vision, vision_input
from sharp_vlm.checkpoint import dtype_choice as resolve_dtype
from sharp_vlm.errors import ConfigError

TINY_SIGLIP = {"model_type": "siglip_vision_model", "hidden_size": 32, "intermediate_size": 64,
               "num_hidden_layers": 2, "num_attention_heads": 2, "num_channels": 3, "image_size": 32,
               "patch_size": 8}
TINY_QWEN_VISION = {"model_type": "qwen2_5_vl_vision", "depth": 2, "hidden_size": 32, "intermediate_size": 64,
                    "num_heads": 2, "in_channels": 3, "patch_size": 14, "temporal_patch_size": 2,
                    "spatial_merge_size": 2, "window_size": 112, "fullatt_block_indexes": [1],
                    "out_hidden_size": 48, "hidden_act": "silu"}


@pytest.fixture
def tiny_shapes(monkeypatch):
    from transformers import LlamaConfig

    import sharp_vlm.bench.shapes as shapes

    tiny = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
    monkeypatch.setattr(shapes, "decoder_config", lambda name: tiny)
    monkeypatch.setitem(shapes.SHAPES, "tiny-vlm", {"family": "llama", "decoder": {}, "vision": TINY_SIGLIP})
    monkeypatch.setitem(shapes.SHAPES, "tiny-lm", {"family": "llama", "decoder": {}})


def test_bench_reports_every_variant_against_unpruned(tmp_path, tiny_shapes):
    cfg = BenchConfig(model="tiny-vlm", frames=8, tokens_per_frame=8, prefix=4, question=6, dtype="float32",
                      repeats=2, warmup=1, decode_tokens=2, vision_frames=2)
    result = run_bench(cfg, progress=False)
    names = [r["variant"] for r in result["rows"]]
    assert names == ["none", "floor", "floor+trim_kv", "fastv", "fastv+trim_kv", "sharp-reference",
                     "sharp-reference+trim_kv", "sharp-cached", "sharp-cached+trim_kv"]
    rows = {r["variant"]: r for r in result["rows"]}
    assert rows["none"]["speedup"] == 1.0 and rows["none"]["flops_bound"] == 1.0
    assert rows["fastv"]["flops"]["reduction"] > 0.3
    # the floor selects without scoring: no scoring FLOPs, so its bound is above FastV's
    assert rows["floor"]["flops"]["scoring"] == 0 < rows["fastv"]["flops"]["scoring"]
    assert rows["floor"]["flops_bound"] > rows["fastv"]["flops_bound"]
    # FastV scores from the last token, ShaRP (query="text") from the 6 question tokens after the video
    import sharp_vlm.bench.shapes as shapes
    from sharp_vlm.flops import DecoderShape, scoring_flops

    shape = DecoderShape.from_config(shapes.decoder_config("tiny-vlm"))  # the fixture's tiny Llama
    assert rows["fastv"]["flops"]["scoring"] == scoring_flops(shape, 74, 1)["total"]
    assert rows["sharp-cached"]["flops"]["scoring"] == scoring_flops(shape, 74, 6)["total"]
    # the per-request reference pass costs FLOPs and time; the cached one does not (after the warm-up)
    assert rows["sharp-reference"]["flops"]["reference"] > 0 and rows["sharp-cached"]["flops"]["reference"] == 0
    assert rows["sharp-reference"]["reference_s"]["median"] > 0
    assert rows["sharp-cached"]["reference_s"]["median"] < rows["sharp-reference"]["reference_s"]["median"]
    # overhead = scoring + the method's own selection work + mask, each measured
    for name in ("fastv", "sharp-cached"):
        r = rows[name]
        assert r["scoring_s"]["median"] > 0 and r["layers_before_s"]["median"] > 0
        assert r["overhead_s"] == pytest.approx(r["scoring_s"]["median"] + r["select_s"]["median"] + r["mask_s"])
        assert "above_floor_s" in r
    assert rows["fastv"]["select_s"]["median"] >= 0 and rows["sharp-cached"]["select_s"]["median"] > 0
    assert rows["fastv"]["mask_s"] == 0 and rows["sharp-cached"]["segment_mask"]  # FastV has no segment mask
    # the causal count lowers the dense FLOPs more than the pruned ones: the bound is below the rectangle one
    assert 1 < rows["fastv"]["flops_bound"] < rows["fastv"]["flops_bound_full_rectangle"]
    assert "above_floor_s" not in rows["none"]
    # trimming the shallow layers' KV saves memory: 2 of 4 layers drop 58 of 74 tokens
    assert rows["fastv+trim_kv"]["kv_bytes"] < rows["fastv"]["kv_bytes"] < rows["none"]["kv_bytes"]
    assert result["seq_len"] == 74 and result["n_visual"] == 64
    assert rows["none"]["memory_source"] == "process_rss_high_water" and rows["none"]["peak_bytes"] > 0
    # the vision tower of the named shape, 2 of 8 frames measured and scaled to 8
    v = result["vision"]
    assert v["frames_measured"] == 2 and v["extrapolated"] and v["seconds"]["median"] > 0
    assert v["seconds"]["median"] == pytest.approx(4 * v["measured_seconds_median"])
    for r in result["rows"]:
        assert r["ttft_s"] == pytest.approx(v["seconds"]["median"] + r["prefill_s"]["median"])
    assert result["machine"]["dtype"] == "float32" and result["machine"]["dtype_reason"] == "asked for"
    paths = write(result, tmp_path)
    assert json.loads(paths["json"].read_text())["rows"][0]["variant"] == "none"
    text = paths["table"].read_text()
    assert "| fastv |" in text and "TTFT speedup" in text and paths["plot"].stat().st_size > 0


def test_bench_without_vision_tower_and_without_trim(tiny_shapes):
    cfg = BenchConfig(model="tiny-lm", frames=4, tokens_per_frame=8, prefix=2, question=3, dtype="float32",
                      repeats=1, warmup=0, decode_tokens=0, variants=["none", "fastv"], trim_kv=False)
    result = run_bench(cfg, progress=False)
    assert [r["variant"] for r in result["rows"]] == ["none", "fastv"]
    assert result["vision"] is None and "ttft_s" not in result["rows"][1]
    assert result["rows"][1]["decode_s_per_token"] is None
    assert "TTFT" not in table(result)


def test_bench_on_a_local_checkpoint_folder(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    conf = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                       num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256, eos_token_id=1)
    torch.manual_seed(3)
    saved = LlamaForCausalLM(conf)
    saved.save_pretrained(tmp_path / "ckpt")
    cfg = BenchConfig(model=str(tmp_path / "ckpt"), frames=4, tokens_per_frame=6, prefix=2, question=3,
                      dtype="float32", repeats=1, warmup=0, decode_tokens=1, variants=["none", "sharp-reference"],
                      trim_kv=False)
    loaded = latency.build_model(cfg, "float32")
    assert torch.equal(loaded.model.layers[1].mlp.up_proj.weight, saved.model.layers[1].mlp.up_proj.weight)
    result = run_bench(cfg, progress=False)
    assert result["vision"] is None  # no built-in vision tower for a local folder
    assert [r["variant"] for r in result["rows"]] == ["none", "sharp-reference"]
    assert result["rows"][1]["flops"]["dense"] == result["rows"][0]["flops"]["dense"] > 0
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="config.json"):
        latency.build_model(BenchConfig(model=str(tmp_path / "empty")), "float32")


@pytest.mark.parametrize("model_type, width, depth, nearest", [
    ("qwen2_5_vl", 2048, 36, "qwen2.5-vl-3b"),  # Qwen2.5-VL-3B's own decoder
    ("qwen2_5_vl", 64, 4, "qwen2.5-vl-7b"),  # a size of no built-in shape: the family's common one
    ("smolvlm", 576, 30, "smolvlm2-256m"),
    ("some_new_vlm", 896, 24, "llava-onevision-0.5b"),  # an unknown family: the closest decoder with a tower
])
def test_nearest_shape_of_a_video_llm_config(model_type, width, depth, nearest):
    from sharp_vlm.bench.shapes import nearest_shape

    config = {"model_type": model_type, "vision_config": {},
              "text_config": {"hidden_size": width, "num_hidden_layers": depth}}
    assert nearest_shape(config) == nearest


def test_video_llm_folder_is_refused_before_building(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "qwen2_5_vl", "vision_config": {}, "text_config": {"hidden_size": 3584, "num_hidden_layers": 28},
    }))
    with pytest.raises(ConfigError, match="Video LLM checkpoint .*--model qwen2.5-vl-7b"):
        latency.build_model(BenchConfig(model=str(tmp_path)), "float32")


def test_bench_at_several_batch_sizes(tmp_path, tiny_shapes):
    """--batch 1,3: every variant at each size beside the unpruned one of that size; throughput, the prefill's
    split around the stage and time to first token with the tower paid per video."""
    cfg = BenchConfig(model="tiny-vlm", frames=4, tokens_per_frame=8, prefix=2, question=3, dtype="float32",
                      repeats=1, warmup=0, decode_tokens=1, variants=["none", "fastv"], batch=[1, 3],
                      vision_frames=1)
    result = run_bench(cfg, progress=False)
    rows = {(r["batch"], r["variant"]): r for r in result["rows"]}
    assert list(rows) == [(1, "none"), (1, "fastv"), (1, "fastv+trim_kv"), (3, "none"), (3, "fastv"),
                          (3, "fastv+trim_kv")]
    for (batch, _), r in rows.items():
        dense = rows[(batch, "none")]["prefill_s"]["median"]
        assert r["speedup"] == pytest.approx(dense / r["prefill_s"]["median"])
        assert r["videos_per_s"] == pytest.approx(batch / r["prefill_s"]["median"])
        assert r["tower_s"] == pytest.approx(batch * result["vision"]["seconds"]["median"])
        assert r["ttft_s"] == pytest.approx(r["tower_s"] + r["prefill_s"]["median"])
    assert rows[(3, "fastv")]["layers_before_s"]["median"] > 0 and rows[(3, "none")]["layers_before_s"]["median"] == 0
    # a batch of three holds three prompts' KV
    assert rows[(3, "none")]["kv_bytes"] == 3 * rows[(1, "none")]["kv_bytes"]
    text = table(result)
    assert "| fastv x3 |" in text and "| 3 | fastv |" in text and "videos/s" in text
    assert write(result, tmp_path)["plot"].stat().st_size > 0
    with pytest.raises(ConfigError, match="batch"):
        check_bench(BenchConfig(model="tiny-lm", batch=[0]))


@pytest.mark.parametrize(
    "change, match",
    [
        ({"variants": ["fastv"]}, "must include 'none'"),
        ({"variants": ["none", "fastv", "FastV"]}, "--variants lists fastv more than once"),
        ({"retain": 1.5}, "retain"),
        ({"repeats": 0}, "repeats"),
        ({"vision": "tiny-lm"}, "no vision tower"),
        ({"model": "no-such-model"}, "unknown model shape"),
    ],
)
def test_bench_config_errors(tiny_shapes, monkeypatch, change, match):
    import sharp_vlm.bench.shapes as shapes

    if change.get("model"):
        monkeypatch.undo()  # the real shape table
        assert "no-such-model" not in shapes.SHAPES
    cfg = BenchConfig(model="tiny-lm", frames=2, tokens_per_frame=4, prefix=1, question=1, dtype="float32",
                      repeats=1, warmup=0, decode_tokens=0, variants=["none"], trim_kv=False)
    for key, value in change.items():
        setattr(cfg, key, value)
    with pytest.raises(ConfigError, match=match):
        run_bench(cfg, progress=False)


def test_variant_names():
    cached = variant("sharp-cached", 0.1, 2)
    assert cached.bias_cache and cached.config.debias == "reference" and cached.label == "sharp-cached"
    assert not variant("sharp-reference", 0.1, 2).bias_cache
    assert variant("random", 0.2, 1).config.retain == 0.2
    floor = variant("floor", 0.1, 3).config
    assert floor.layer == 3 and not floor.scores_attention
    with pytest.raises(ValueError, match="unknown method"):
        variant("nonsense", 0.1, 2)


def test_auto_dtype(monkeypatch):
    assert resolve_dtype("float16", "cpu") == ("float16", "asked for")
    assert resolve_dtype("auto", "cuda:0")[0] == "bfloat16"
    monkeypatch.setattr(checkpoint, "cpu_has_native_bf16", lambda: True)
    assert resolve_dtype("auto", "cpu")[0] == "bfloat16"
    monkeypatch.setattr(checkpoint, "cpu_has_native_bf16", lambda: False)
    dtype, why = resolve_dtype("auto", "cpu")
    assert dtype == "float32" and "no bf16 instructions" in why


def test_peak_memory_sees_an_allocation_inside_the_region():
    with PeakMemory("cpu") as m:
        x = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        del x
    r = m.result()
    assert r["memory_source"] == "process_rss_high_water"
    assert r["added_bytes"] >= 48 * 2**20 and r["peak_bytes"] >= r["added_bytes"]
    with PeakMemory("cpu") as m:
        pass
    assert m.result()["added_bytes"] < 16 * 2**20  # the peak was reset: the earlier 64 MiB is not counted


@pytest.mark.parametrize("vision_cfg", [TINY_SIGLIP, TINY_QWEN_VISION], ids=["siglip", "qwen2.5-vl"])
def test_vision_input_yields_the_benchmarked_tokens(vision_cfg):
    from sharp_vlm.bench.vision import build_tower

    tower = build_tower(vision_cfg, torch.float32, "cpu")
    inp = vision_input(vision_cfg, frames=3, tokens_per_frame=16, dtype=torch.float32, device="cpu")
    with torch.inference_mode():
        out = tower(**inp.kwargs)
    if "out_hidden_size" in vision_cfg:
        # Qwen: 3 temporal patches (6 input frames) of 4 x 4 merged tokens, as the decoder benchmark assumes
        assert inp.input_frames == 6 and inp.grid_thw == (3, 8, 8)
        assert out.pooler_output.shape == (3 * 16, 48)
        assert inp.n_patches == 3 * 64
    else:
        assert inp.input_frames == 3 and out.last_hidden_state.shape == (3, 16, 32)  # 32 / 8 = 4 x 4 patches
        assert inp.n_patches == 3 * 16


def test_vision_frames_out_of_range():
    with pytest.raises(ValueError, match="1..4"):
        time_vision(TINY_SIGLIP, 4, 16, torch.float32, "cpu", 1, 0, frames_measured=5)


def test_cli_runs_and_redraws_a_bench(tmp_path, tiny_shapes, capsys):
    from sharp_vlm.cli import main

    out = tmp_path / "bench"
    rc = main(["bench", "--model", "tiny-lm", "--frames", "4", "--tokens-per-frame", "8", "--variants", "none,floor",
               "--no-trim-kv", "--repeats", "1", "--warmup", "0", "--decode-tokens", "1", "--dtype", "float32",
               "--out", str(out)])
    assert rc == 0
    result = json.loads((out / "bench.json").read_text())
    assert [r["variant"] for r in result["rows"]] == ["none", "floor"] and result["config"]["frames"] == 4
    (out / "speedup.png").unlink()
    assert main(["bench", "--render", str(out / "bench.json")]) == 0
    assert (out / "speedup.png").stat().st_size > 0 and "| floor |" in capsys.readouterr().out
    assert main(["bench", "--render", str(tmp_path / "missing.json")]) == 2
    # refused as written, even at its default value (which would otherwise depend on the machine, as --device)
    assert main(["bench", "--render", str(out / "bench.json"), "--retain", "0.1", "--device", "cpu"]) == 2
    assert "--retain, --device would be ignored" in capsys.readouterr().err


@pytest.mark.parametrize(
    "vision_cfg, cls",
    [
        (dict(model_type="qwen3_vl_vision", depth=2, hidden_size=32, intermediate_size=64, num_heads=2, in_channels=3,
              patch_size=4, temporal_patch_size=2, spatial_merge_size=2, out_hidden_size=32, num_position_embeddings=64,
              deepstack_visual_indexes=[0], hidden_act="gelu_pytorch_tanh"), "Qwen3VLVisionModel"),
        (dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=2, num_channels=3, image_size=16, patch_size=4), "CLIPVisionModel"),
        (dict(model_type="internvl_vision", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=2, num_channels=3, image_size=16, patch_size=4, attention_bias=True,
              downsample_ratio=0.5), "InternVLVisionModel"),
    ],
)
def test_timed_tower_is_the_shapes_own_architecture(vision_cfg, cls):
    from sharp_vlm.bench.vision import build_tower

    tower = build_tower(vision_cfg, torch.float32, "cpu")
    assert type(tower).__name__ == cls
    out = time_vision(vision_cfg, frames=2, tokens_per_frame=4, dtype=torch.float32, device="cpu", repeats=1, warmup=0)
    assert out["seconds"]["median"] > 0 and out["flops"] > 0


def test_user_benches_pdrop_on_a_decoder_shallower_than_its_layers():
    from sharp_vlm.bench.latency import BenchConfig, check_bench

    cfg = BenchConfig(model="qwen2.5-0.5b", variants=["none", "pdrop"])  # 24 layers: pdrop's 24 is beyond
    with pytest.raises(ConfigError, match=r"pdrop: a stage at layer 24 is beyond the model's depth.*--options"):
        check_bench(cfg)
    check_bench(BenchConfig(model="qwen2.5-0.5b", variants=["none", "pdrop", "divprune@0"],
                            options={"pdrop": {"layers": [6, 12, 18]}}))
    with pytest.raises(ConfigError, match="--options names fastv, which no variant runs"):
        check_bench(BenchConfig(model="qwen2.5-0.5b", variants=["none", "pdrop"],
                                options={"pdrop": {"layers": [6, 12, 18]}, "fastv": {"query": "text"}}))
