"""`sharp eval` end to end: generated mp4s + JSONL, a tiny saved Qwen2.5-VL checkpoint, every method in one
report, an interrupted run resumed without asking any finished (sample, method, retain) again."""

from __future__ import annotations

import json

import pytest

from sharp_vlm import cli
from sharp_vlm.eval.sample_data import write_sample_set
from sharp_vlm.models.tiny_saved import save_tiny_checkpoint
from sharp_vlm.pipeline import VideoQA


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    return save_tiny_checkpoint("qwen2_5_vl", root / "model"), write_sample_set(root / "data", n=3, frames=8)


def _args(model, data, out, *extra):
    return ["eval", "--model", str(model), "--data", str(data), "--methods", "fastv,sharp,uniform",
            "--retain", "0.25", "--frames", "4", "--max-new-tokens", "2", "--dtype", "float32",
            "--device", "cpu", "--out", str(out), *extra]


def test_eval_interrupted_and_resumed(setup, tmp_path, monkeypatch, capsys):
    model, data = setup
    out = tmp_path / "out"
    calls: list[tuple[str, str]] = []
    real = VideoQA.answer
    fail = {"after": None}

    def counted(self, video, question, *args, **kw):
        if fail["after"] is not None and len(calls) >= fail["after"]:
            raise KeyboardInterrupt  # as if the user stopped the run
        method = kw.get("method")
        calls.append((str(video), method.name if method is not None else "none"))
        return real(self, video, question, *args, **kw)

    monkeypatch.setattr(VideoQA, "answer", counted)
    assert cli.main(_args(model, data, out, "--limit", "1")) == 0  # 1 sample x 4 variants
    assert len(calls) == 4
    fail["after"] = 4 + 5
    with pytest.raises(KeyboardInterrupt):
        cli.main(_args(model, data, out))
    assert len(calls) == 9
    fail["after"] = None
    assert cli.main(_args(model, data, out)) == 0
    assert len(calls) == 12 and len(set(calls)) == 12  # no (sample, variant) was asked twice
    records = [json.loads(x) for x in (out / "records.jsonl").read_text().splitlines()]
    assert len(records) == 12 and len({(r["id"], r["variant"]) for r in records}) == 12
    report = json.loads((out / "report.json").read_text())
    rows = {r["variant"]: r for r in report["rows"]}
    assert list(rows) == ["none", "fastv@0.25", "sharp@0.25", "uniform@0.25"]
    assert report["n_samples"] == 3 and report["kinds"] == ["mc", "open"] and report["computed"] == 3
    assert rows["none"]["agreement"] == 1.0 and rows["none"]["kept_ratio"] == 1.0
    for key in ("fastv@0.25", "sharp@0.25", "uniform@0.25"):
        assert rows[key]["kept_ratio"] == pytest.approx(0.25, abs=0.02) and rows[key]["prefill_s"] > 0
        assert 0 <= rows[key]["agreement"] <= 1 and rows[key]["n"] == 3
    assert rows["fastv@0.25"]["tflops"] < rows["none"]["tflops"]
    # ShaRP's reference pass (layers 0-1 of this 4-layer model) is counted: more than FastV at the same counts
    assert rows["sharp@0.25"]["flops_ratio"] > rows["fastv@0.25"]["flops_ratio"]
    assert (out / "accuracy.png").stat().st_size > 0 and "| sharp | 0.25 | 3 |" in (out / "report.md").read_text()
    # everything done: nothing is asked and the model does not even load
    monkeypatch.setattr(VideoQA, "from_pretrained", lambda *a, **k: pytest.fail("model loaded"))
    assert cli.main(_args(model, data, out)) == 0 and len(calls) == 12
    assert "0 answers computed, 12 reused" in capsys.readouterr().out


def test_eval_refuses_other_settings_and_missing_videos_before_loading(setup, tmp_path, monkeypatch, capsys):
    model, data = setup
    out = tmp_path / "out"
    monkeypatch.setattr(VideoQA, "from_pretrained", lambda *a, **k: pytest.fail("model loaded"))
    (out).mkdir()
    (out / "settings.json").write_text(json.dumps({"frames": 8}))
    assert cli.main(_args(model, data, out)) == 2
    assert "other settings" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    lines = data.read_text().splitlines()
    bad.write_text("\n".join([lines[0], lines[1].replace("v1.mp4", "gone.mp4")]) + "\n")
    (tmp_path / "videos").symlink_to(data.parent / "videos")
    assert cli.main(_args(model, bad, tmp_path / "o2")) == 2
    err = capsys.readouterr().err
    assert "1 of 2 video files" in err and "line 2 (id q1)" in err and "gone.mp4" in err
    bad.write_text(lines[0] + "\n" + '{"video": "videos/v0.mp4", "question": "q"}\n')
    assert cli.main(_args(model, bad, tmp_path / "o3")) == 2
    assert f"{bad}:2: missing field 'answer'" in capsys.readouterr().err
    assert cli.main(_args(model, data, tmp_path / "o4", "--methods", "fastv,nope")) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err
