"""`sharp eval` end to end: generated mp4s + JSONL, a tiny saved Qwen2.5-VL checkpoint, every method in one
report, an interrupted run resumed without asking any finished (sample, method, retain) again."""

from __future__ import annotations

import json

import pytest
import torch

from sharp_vlm import cli
from sharp_vlm.eval.sample_data import write_sample_set
from sharp_vlm.pipeline import VideoQA
from sharp_vlm.testing import save_tiny_checkpoint


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
    capsys.readouterr()
    assert cli.main(_args(model, data, out)) == 2  # Ctrl-C: one line that says how to resume, no traceback
    err = capsys.readouterr().err.split("\r")[-1].strip()  # after the erased progress bar
    assert err.startswith("sharp eval: interrupted") and "\n" not in err, err
    assert str(out / "records.jsonl") in err and "rerun the same command to resume" in err
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


def _fake_model(monkeypatch, answer=None):
    """`sharp eval` with an answer function in place of the model: the loop, the folder and the messages only."""
    from sharp_vlm.eval import runner

    def reply(rec, v):
        return runner.Reply(text="A", prefill_s=0.01, n_visual=10, n_kept=10 if v.method == "none" else 3)

    monkeypatch.setattr(VideoQA, "from_pretrained", lambda *a, **k: object())
    monkeypatch.setattr(runner, "videoqa_answerer", lambda qa, cfg: answer or reply)


def _one_line_exit_2(capsys, argv, *parts):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sharp eval: ") and "\n" not in err, err
    for part in parts:
        assert part in err, err
    return err


def test_user_asks_for_more_frames_than_a_clip_has(setup, tmp_path, monkeypatch, capsys):
    from sharp_vlm.video.decode import write_video

    model, data = setup
    short = write_video(tmp_path / "short.mp4", torch.zeros(5, 40, 56, 3, dtype=torch.uint8), fps=8)
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(json.dumps({"id": "long", "video": str(data.parent / "videos" / "v0.mp4"), "question": "q?",
                                 "answer": "red"}) + "\n"
                     + json.dumps({"id": "short", "video": str(short), "question": "q?", "answer": "red"}) + "\n")
    monkeypatch.setattr(VideoQA, "from_pretrained", lambda *a, **k: pytest.fail("model loaded"))
    assert cli.main(_args(model, mixed, tmp_path / "out", "--frames", "6")) == 2
    err = capsys.readouterr().err
    assert "line 2 (id short)" in err and "short.mp4 has 5 frames" in err and "--frames 5" in err
    assert "v0.mp4" not in err and not (tmp_path / "out" / "records.jsonl").exists()
    # by rate, --frames is only a cap: the short clip is fine
    _fake_model(monkeypatch)
    assert cli.main(_args(model, mixed, tmp_path / "out", "--frames", "6", "--fps", "4")) == 0


_TWO_AT_ONCE = """
import os, pathlib, sys, time
from sharp_vlm import cli
from sharp_vlm.eval import runner
from sharp_vlm.pipeline import VideoQA

def answer(rec, v):
    time.sleep(0.05)  # both runs are inside their loops at the same time
    return runner.Reply(text="A", prefill_s=0.01, n_visual=10, n_kept=10)

VideoQA.from_pretrained = lambda *a, **k: object()
runner.videoqa_answerer = lambda qa, cfg: answer
ready = pathlib.Path(sys.argv[1])
(ready / str(os.getpid())).touch()
while len(list(ready.iterdir())) < 2:
    time.sleep(0.01)
sys.exit(cli.main(sys.argv[2:]))
"""


def test_user_starts_two_evals_on_one_folder_at_once(setup, tmp_path):
    import subprocess
    import sys

    from sharp_vlm.checkpoint import dtype_choice

    model, data = setup
    out, ready = tmp_path / "out", tmp_path / "ready"
    ready.mkdir()
    argv = [str(x) for x in _args(model, data, out)]
    argv[argv.index("--dtype") + 1] = "auto"
    procs = [subprocess.Popen([sys.executable, "-c", _TWO_AT_ONCE, str(ready), *argv], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stdout.read(), p.stderr.read()) for p in procs]
    for p in procs:
        p.stdout.close(), p.stderr.close()
    assert sorted(rc for rc, _, _ in results) in ([0, 0], [0, 2]), results
    for rc, _, err in results:
        assert "Traceback" not in err, err  # no crash in either process
        if rc == 2:  # the second one refused: one line naming the lock and what to do
            line = [x for x in err.splitlines() if x.startswith("sharp eval: ")]
            assert len(line) == 1 and str(out / "eval.lock") in line[0] and "another --out" in line[0], err
    lines = (out / "records.jsonl").read_text().splitlines()
    keys = [(r["id"], r["variant"]) for r in map(json.loads, lines)]
    assert len(keys) == 12 and len(set(keys)) == 12  # every record exactly once
    settings = json.loads((out / "settings.json").read_text())
    assert settings["dtype"] == dtype_choice("auto", "cpu")[0]  # what ran, not "auto"
    report = json.loads((out / "report.json").read_text())
    assert report["n_samples"] == 3 and all(row["n"] == 3 for row in report["rows"])
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left


@pytest.mark.parametrize("text", ["", '{"model": "/m", "data": "/d", "fra'])
def test_user_resumes_a_folder_whose_settings_json_is_empty_or_cut(setup, tmp_path, monkeypatch, capsys, text):
    model, data = setup
    out = tmp_path / "out"
    out.mkdir()
    (out / "settings.json").write_text(text)
    monkeypatch.setattr(VideoQA, "from_pretrained", lambda *a, **k: pytest.fail("model loaded"))
    _one_line_exit_2(capsys, _args(model, data, out), str(out / "settings.json"), "delete", "another --out")


@pytest.mark.parametrize("line", ["[1, 2]", '{"x": 1}', '"text"'])
def test_user_resumes_with_a_records_line_that_is_not_a_record(setup, tmp_path, monkeypatch, capsys, line):
    model, data = setup
    out = tmp_path / "out"
    _fake_model(monkeypatch)
    assert cli.main(_args(model, data, out, "--limit", "1")) == 0
    capsys.readouterr()  # that run's progress bar is not the message checked below
    records = out / "records.jsonl"
    first, *rest = records.read_text().splitlines()
    records.write_text("\n".join([first, line, *rest]) + "\n")
    _one_line_exit_2(capsys, _args(model, data, out), f"{records}:2", "not a record", "delete that line")


@pytest.mark.parametrize("encoding", ["latin-1", "utf-16"])
def test_user_gives_a_data_file_that_is_not_utf8(setup, tmp_path, monkeypatch, capsys, encoding):
    model, data = setup
    lines = data.read_text().splitlines()
    lines[1] = lines[1].replace("Which colour", "Which colour (café)")
    bad = tmp_path / "qa.jsonl"
    bad.write_text("\n".join(lines) + "\n", encoding=encoding)
    monkeypatch.setattr(VideoQA, "from_pretrained", lambda *a, **k: pytest.fail("model loaded"))
    where = f"{bad}:2" if encoding == "latin-1" else f"{bad}:1"
    _one_line_exit_2(capsys, _args(model, bad, tmp_path / "out"), where, "UTF-8")


def test_user_evaluates_every_published_method_with_one_flag(setup, tmp_path):
    """Each method runs from its name at its own layer (before the decoder, or 2); PDrop's layers fit this 4-layer
    model through --options; the report holds one row per method at the kept share it was asked for."""
    model, data = setup
    out = tmp_path / "out"
    names = ["divprune", "vidcom2", "fastvid", "dycoke", "downsample", "framefusion", "pdrop", "fastv"]
    argv = ["eval", "--model", str(model), "--data", str(data), "--methods", ",".join(names), "--retain", "0.25",
            "--frames", "4", "--max-new-tokens", "2", "--limit", "1", "--dtype", "float32", "--device", "cpu",
            "--options", '{"pdrop": {"layers": [1, 2, 3]}}', "--out", str(out)]
    assert cli.main(argv) == 0
    rows = {r["variant"]: r for r in json.loads((out / "report.json").read_text())["rows"]}
    assert set(rows) == {"none"} | {f"{n}@0.25" for n in names}
    for n in names:
        assert rows[f"{n}@0.25"]["kept_ratio"] == pytest.approx(0.25, abs=0.02), n
        assert rows[f"{n}@0.25"]["tflops"] < rows["none"]["tflops"], n


def test_user_evaluates_the_tower_methods_on_a_llava_onevision(tmp_path):
    """VisionZip, HoliTom and FlashVID read the vision tower's attention: from their names on a saved
    LLaVA-OneVision, with their in-LLM layers moved into this 4-layer decoder through --options."""
    model = save_tiny_checkpoint("llava_onevision", tmp_path / "model")
    data = write_sample_set(tmp_path / "data", n=1, frames=8)
    out = tmp_path / "out"
    names = ["visionzip", "holitom", "flashvid"]
    argv = ["eval", "--model", str(model), "--data", str(data), "--methods", ",".join(names), "--retain", "0.25",
            "--frames", "4", "--max-new-tokens", "2", "--dtype", "float32", "--device", "cpu",
            "--options", '{"holitom": {"merge_layer": 2}, "flashvid": {"prune_layer": 3}}', "--out", str(out)]
    assert cli.main(argv) == 0
    rows = {r["variant"]: r for r in json.loads((out / "report.json").read_text())["rows"]}
    assert set(rows) == {"none"} | {f"{n}@0.25" for n in names}
    # the share after the last stage: VisionZip's, HoliTom's after its merge (R / 2), FlashVID's (1.25 R x 0.3)
    for n, kept in zip(names, [0.25, 0.125, 0.25 * 1.25 * 0.3], strict=True):
        assert rows[f"{n}@0.25"]["tflops"] < rows["none"]["tflops"], n
        assert rows[f"{n}@0.25"]["kept_ratio"] == pytest.approx(kept, abs=0.02), n


def test_user_evaluates_in_batches(setup, tmp_path):
    """--batch-size 2: the same replies and kept counts as one at a time, one record per sample, resumable (a
    first run of one sample, then the rest in batches)."""
    model, data = setup
    one, two = tmp_path / "one", tmp_path / "two"
    assert cli.main(_args(model, data, one)) == 0
    assert cli.main(_args(model, data, two, "--batch-size", "2", "--limit", "1")) == 0
    assert cli.main(_args(model, data, two, "--batch-size", "2")) == 0
    alone, batched = ({(r["id"], r["variant"]): r for r in map(json.loads, (out / "records.jsonl").read_text()
                                                                 .splitlines())} for out in (one, two))
    assert len(batched) == len(alone) == 12 and set(batched) == set(alone)
    for key, r in alone.items():
        assert (batched[key]["reply"], batched[key]["n_kept"], batched[key]["kept_per_stage"], batched[key]["flops"]) \
            == (r["reply"], r["n_kept"], r["kept_per_stage"], r["flops"])
    assert {r["batch_size"] for r in batched.values()} == {1, 2}  # the first run's sample alone, then pairs
    with pytest.raises(SystemExit):
        cli.main(_args(model, data, tmp_path / "bad", "--batch-size", "0"))
