"""The probe runs every method through the engine on the real SmolLM2 and writes its reports."""

from __future__ import annotations

import json

import pytest
import torch

from sharp_vlm.probe.report import table, write
from sharp_vlm.probe.run import ProbeConfig, ablation_label, normalise, run_probe, variants


def test_variants_and_ablations():
    cfg = ProbeConfig(methods=["none", "fastv", "uniform@0"], retains=[0.5, 0.1], ablate=True)
    vs = variants(cfg)
    labels = [v.label for v in vs]
    assert labels[:5] == ["none", "fastv", "fastv", "uniform@0", "uniform@0"]
    assert [v.config.layer for v in vs if v.label == "uniform@0"] == [0, 0]
    assert len([v for v in vs if v.label.startswith("sharp[")]) == 16
    assert (ablation_label(True, False, True) == "sharp[mask+dedup]"
            and ablation_label(False, False, False) == "sharp[none]")
    full = next(v.config for v in vs if v.label == "sharp[mask+debias+dedup]")
    assert (full.mask, full.debias, full.dedup) == ("bidirectional", "reference", True)


def test_normalise():
    assert normalise(" The Red car.") == normalise("red car!") == "red car"


@pytest.mark.real_lm
def test_probe_end_to_end_on_real_lm(tmp_path):
    from sharp_vlm.probe.lm import load_smollm2

    model, tok = load_smollm2()
    cfg = ProbeConfig(methods=["fastv", "sharp"], retains=[0.25], n=2, split="dev", n_frames=16, tokens_per_frame=16)
    result = run_probe(cfg, model, tok, progress=False)
    assert len(result["records"]) == 2 * 3
    by = {(r["method"], r["seed"]): r for r in result["records"]}
    for seed in (0, 1):
        assert by[("none", seed)]["kept_ratio"] == 1.0 and by[("none", seed)]["needle_recall"] == 1.0
        assert by[("none", seed)]["agree"]
        assert sum(by[("fastv", seed)]["kept_per_frame"]) == 64  # 25% of 16 x 16
    rows = {r["method"]: r for r in result["summary"]}
    assert rows["sharp"]["kept_ratio"] == pytest.approx(0.25)
    paths = write(result, tmp_path)
    assert json.loads(paths["json"].read_text())["config"]["n"] == 2
    assert "| sharp | 0.25 |" in table(result["summary"])
    assert paths["accuracy"].stat().st_size > 0 and paths["frames"].stat().st_size > 0


@pytest.mark.real_lm
def test_diagnose_shows_the_bias_each_debias_mode_subtracts(tmp_path):
    from sharp_vlm.errors import ConfigError
    from sharp_vlm.methods import ShaRP
    from sharp_vlm.methods.experimental import ShaRPLab
    from sharp_vlm.probe import diagnose
    from sharp_vlm.probe.lm import load_smollm2

    model, tok = load_smollm2()
    cfg = ProbeConfig(n=1, split="dev", n_frames=16, tokens_per_frame=16)
    ref = diagnose.diagnose(cfg, model, tok, ShaRP(retain=0.25))
    (row,) = ref["rows"]
    assert ref["bias_label"] == "bias (1 x reference)"
    assert sum(row["bias_frame_share"]) == pytest.approx(1.0, abs=1e-4)
    # the frame-median debias has no reference pass: the bias is each frame's median score (x lam) on every token
    med = diagnose.diagnose(cfg, model, tok, ShaRPLab(retain=0.25, debias="frame", lam=0.5))
    (row,) = med["rows"]
    assert med["bias_label"] == "bias (0.5 x frame median)"
    share = torch.tensor(row["bias_frame_share"])
    assert (share > 0).all()  # a zero curve (no bias drawn) fails here
    # the final scores are the raw shares minus exactly what the bias curve shows, frame by frame
    raw, final = torch.tensor(row["raw_frame_share"]), torch.tensor(row["final_frame_mean"])
    assert torch.allclose(final * 16, raw - share, atol=1e-6)
    paths = diagnose.write(med, tmp_path)
    assert paths["plot"].stat().st_size > 0
    assert json.loads(paths["json"].read_text())["bias_label"] == "bias (0.5 x frame median)"
    # one family: its own shape; several: refused before anything runs
    fam = diagnose.diagnose(ProbeConfig(n=1, split="dev", families=["count"]), model, tok, ShaRP(retain=0.1))
    assert fam["source"] == "count" and len(fam["rows"][0]["raw_frame_share"]) == 24
    with pytest.raises(ConfigError, match="one family"):
        diagnose.check_diagnose(ProbeConfig(families=["count", "attribute"]))
