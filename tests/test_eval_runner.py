"""The evaluation loop on its own (an answer function instead of a model): records as they finish, resume
without recomputing, refusal on other settings, the report's numbers."""

import json
from pathlib import Path

import pytest

import sharp_vlm as sv
from sharp_vlm.errors import ConfigError, SharpError
from sharp_vlm.eval import report
from sharp_vlm.eval.data import QARecord
from sharp_vlm.eval.runner import EvalConfig, Reply, read_records, run_eval
from sharp_vlm.loading import Variant


def _samples(n=4):
    opts = ("red", "blue", "green")
    return [QARecord(id=f"s{i}", video=Path(f"v{i}.mp4"), question=f"q{i}", answer="ABC"[i % 3], options=opts,
                     line=i + 1) for i in range(n)]


class Fake:
    """Right on every sample unpruned; at retain < 0.2 a method answers "A" (wrong unless the answer is A).
    `fail_after` raises after that many answers (an interrupted run)."""

    def __init__(self, fail_after=None):
        self.calls = []
        self.fail_after = fail_after

    def __call__(self, rec, v):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise RuntimeError("interrupted")
        self.calls.append((rec.id, v.key))
        n = 100
        kept = n if v.method == "none" else round(v.retain * n)
        text = "A" if v.retain < 0.2 else f"({rec.answer})"
        return Reply(text=text, prefill_s=0.01 + kept / 1000, n_visual=n, n_kept=kept, flops=1e9 * (kept + 10),
                     flops_dense=1e9 * 110, kept_per_stage=() if v.method == "none" else (kept,))


def _cfg(tmp_path, **kw):
    # the fake answerer reads no video, so there are no clips to check
    args = {"model": str(tmp_path), "data": str(tmp_path / "qa.jsonl"), "methods": ["fastv", "uniform"],
            "retains": [0.25, 0.1], "frames": 8, "check_clips": False, **kw}
    return EvalConfig(**args)


def test_variants_put_none_first_once():
    cfg = EvalConfig(model="m", data="d", methods=["fastv", "none"], retains=[0.5, 0.1])
    assert [v.key for v in cfg.variants()] == ["none", "fastv@0.5", "fastv@0.1"]


def test_flags_are_checked_before_any_answer(tmp_path):
    for kw, msg in [({"methods": ["nope"]}, "unknown method"), ({"retains": [1.5]}, "retain"),
                    ({"options": {"sharp": {"x": 1}}}, "not pruning methods in --methods"),
                    ({"options": {"fastv": {"bogus": 1}}}, "no option"), ({"fps": -1.0}, "--fps"),
                    ({"frames": 0}, "--frames"), ({"limit": 0}, "--limit"),
                    ({"methods": ["none", "fastv", "FastV"]}, "--methods lists fastv more than once"),
                    ({"retains": [0.1, 0.5, 0.1000001]}, "--retain lists 0.1 more than once")]:
        with pytest.raises(ConfigError, match=msg):
            run_eval(_cfg(tmp_path, **kw), _samples(), Fake(), tmp_path / "out", progress=False)


def test_interrupted_run_resumes_without_recomputing(tmp_path):
    out = tmp_path / "out"
    first = Fake(fail_after=7)
    with pytest.raises(RuntimeError, match="interrupted"):
        run_eval(_cfg(tmp_path), _samples(), first, out, progress=False)
    assert len(read_records(out)) == 7  # every finished answer is on disk
    again = Fake()
    run = run_eval(_cfg(tmp_path), _samples(), again, out, progress=False)
    assert run.reused == 7 and run.computed == 4 * 5 - 7
    assert not set(first.calls) & set(again.calls)
    assert set(first.calls) | set(again.calls) == {(f"s{i}", k) for i in range(4)
                                                    for k in ("none", "fastv@0.25", "fastv@0.1", "uniform@0.25",
                                                              "uniform@0.1")}
    third = Fake()
    run = run_eval(_cfg(tmp_path), _samples(), third, out, progress=False)
    assert third.calls == [] and run.reused == 20
    # more retains later: only the new pairs are asked
    more = Fake()
    run_eval(_cfg(tmp_path, retains=[0.25, 0.1, 0.5]), _samples(), more, out, progress=False)
    assert sorted(k for _, k in more.calls) == sorted(["fastv@0.5", "uniform@0.5"] * 4)


def test_limit_then_all_and_a_torn_last_line(tmp_path):
    out = tmp_path / "out"
    run_eval(_cfg(tmp_path, limit=2), _samples(), Fake(), out, progress=False)
    with (out / "records.jsonl").open("a") as fh:
        fh.write('{"id": "s2", "vari')  # a write cut off by a kill
    rest = Fake()
    run = run_eval(_cfg(tmp_path), _samples(), rest, out, progress=False)
    assert {i for i, _ in rest.calls} == {"s2", "s3"} and run.reused == 10
    assert all(json.loads(x) for x in (out / "records.jsonl").read_text().splitlines())


def test_a_changed_question_is_asked_again(tmp_path):
    out = tmp_path / "out"
    run_eval(_cfg(tmp_path), _samples(), Fake(), out, progress=False)
    samples = _samples()
    samples[1] = QARecord(id="s1", video=Path("v1.mp4"), question="another", answer="B",
                          options=samples[1].options)
    again = Fake()
    run_eval(_cfg(tmp_path), samples, again, out, progress=False)
    assert {i for i, _ in again.calls} == {"s1"} and len(again.calls) == 5


def test_other_settings_are_refused(tmp_path):
    out = tmp_path / "out"
    run_eval(_cfg(tmp_path), _samples(2), Fake(), out, progress=False)
    with pytest.raises(SharpError, match=r"other settings \(frames: 8 -> 16\).*another --out"):
        run_eval(_cfg(tmp_path, frames=16), _samples(2), Fake(), out, progress=False)
    with pytest.raises(SharpError, match="layer: None -> 3"):  # None: each method's own layer
        run_eval(_cfg(tmp_path, layer=3), _samples(2), Fake(), out, progress=False)


def test_report_numbers_and_files(tmp_path):
    out = tmp_path / "out"
    run = run_eval(_cfg(tmp_path), _samples(6), Fake(), out, progress=False)
    rows = {r["variant"]: r for r in report.summarize(run)}
    assert rows["none"]["accuracy"] == 1.0 and rows["none"]["agreement"] == 1.0
    assert rows["fastv@0.25"]["accuracy"] == 1.0 and rows["fastv@0.25"]["kept_ratio"] == 0.25
    # at 10% the fake answers A: right on the 2 of 6 samples whose answer is A, and agrees with them only
    assert rows["fastv@0.1"]["accuracy"] == pytest.approx(2 / 6)
    assert rows["fastv@0.1"]["relative_accuracy"] == pytest.approx(2 / 6)
    assert rows["uniform@0.1"]["agreement"] == pytest.approx(2 / 6)
    assert rows["fastv@0.1"]["flops_ratio"] == pytest.approx(20 / 110)
    assert rows["fastv@0.1"]["tflops"] == pytest.approx(20e9 / 1e12)
    assert rows["fastv@0.1"]["prefill_speedup"] == pytest.approx(0.11 / 0.02)
    paths = report.write(run, out)
    data = json.loads(paths["report_json"].read_text())
    assert data["n_samples"] == 6 and len(data["rows"]) == 5 and data["kinds"] == ["mc"]
    md = paths["report_md"].read_text()
    assert "| fastv | 0.1 | 6 | 0.333 | 0.333 | 0.333 | 0.100 |" in md
    assert paths["plot"].read_bytes()[:4] == b"\x89PNG"
    lines = [json.loads(x) for x in (out / "records.jsonl").read_text().splitlines()]
    assert len(lines) == 30 and {"id", "variant", "reply", "pred", "correct", "kept_ratio", "flops",
                                 "prefill_s", "input"} <= set(lines[0])


def test_variant_key():
    assert Variant("none", "none", 1.0, sv.NoPrune()).key == "none"
    assert Variant("sharp", "sharp", 0.1, sv.ShaRP(retain=0.1)).key == "sharp@0.1"


def _open_questions(tmp_path, answer):
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps({"id": f"o{i}", "video": f"clips/v{i}.mp4", "question": "What colour?",
                                        "answer": answer}) + "\n" for i in range(2)))
    return path


def _says_red(rec, v):
    return Reply(text="Red.", prefill_s=0.01, n_visual=10, n_kept=10 if v.method == "none" else 3)


def test_user_fixes_a_wrong_answer_in_the_jsonl_and_reruns(tmp_path):
    from sharp_vlm.eval.data import load_records

    data, out = _open_questions(tmp_path, "blue"), tmp_path / "out"
    cfg = _cfg(tmp_path, data=str(data), methods=["fastv"], retains=[0.5])
    run = run_eval(cfg, load_records(data), _says_red, out, progress=False)
    assert report.summarize(run)[0]["accuracy"] == 0.0
    _open_questions(tmp_path, "red")  # the reference was wrong: the model's reply was right all along
    run = run_eval(cfg, load_records(data), _says_red, out, progress=False)
    assert run.computed == 0  # nothing is asked again: the reply does not depend on the reference
    assert [r["accuracy"] for r in report.summarize(run)] == [1.0, 1.0]
    assert {r["answer"] for r in run.records} == {"red"} and all(r["correct"] for r in run.records)


def test_user_names_the_same_data_file_by_a_relative_then_an_absolute_path(tmp_path, monkeypatch):
    from sharp_vlm.eval.data import load_records

    data, out = _open_questions(tmp_path, "red"), tmp_path / "out"
    monkeypatch.chdir(tmp_path)
    cfg = _cfg(tmp_path, data="qa.jsonl", methods=["fastv"], retains=[0.5])
    run_eval(cfg, load_records("qa.jsonl"), _says_red, out, progress=False)
    cfg = _cfg(tmp_path, data=str(data), methods=["fastv"], retains=[0.5])
    run = run_eval(cfg, load_records(data), _says_red, out, progress=False)
    assert run.computed == 0 and run.reused == 4
    assert len((out / "records.jsonl").read_text().splitlines()) == 4


_HOLD_THE_LOCK = """
import sys, time
from pathlib import Path
from sharp_vlm.eval.files import folder_lock

with folder_lock(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(600)
"""


def test_user_runs_on_a_folder_another_process_holds_then_that_process_is_killed(tmp_path):
    import subprocess
    import sys

    from sharp_vlm.eval.files import FolderLockedError

    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_THE_LOCK, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        fake = Fake()
        with pytest.raises(FolderLockedError) as err:
            run_eval(_cfg(tmp_path), _samples(), fake, out, progress=False)
        text = str(err.value)
        assert str(out / "eval.lock") in text and f"process {holder.pid}" in text and "another --out" in text
        assert fake.calls == [] and not (out / "records.jsonl").exists() and "\n" not in text
    finally:
        holder.kill()  # SIGKILL: the holder runs no clean-up, its lock file stays behind
        holder.wait()
        holder.stdout.close()
    assert (out / "eval.lock").is_file()
    run = run_eval(_cfg(tmp_path), _samples(), Fake(), out, progress=False)  # the OS dropped the dead one's lock
    assert run.computed == 20


def _killed(*args, **kw):
    raise KeyboardInterrupt  # as if the process died at this point


def test_user_kills_a_run_while_it_drops_a_torn_last_line(tmp_path, monkeypatch):
    import os

    out = tmp_path / "out"
    run_eval(_cfg(tmp_path, limit=2), _samples(), Fake(), out, progress=False)
    records = out / "records.jsonl"
    with records.open("a") as fh:
        fh.write('{"id": "s2", "vari')  # a write cut off by a kill
    before = records.read_text()
    monkeypatch.setattr(os, "replace", _killed)  # killed after writing the new file, before it takes the old's place
    with pytest.raises(KeyboardInterrupt):
        run_eval(_cfg(tmp_path), _samples(), Fake(), out, progress=False)
    monkeypatch.undo()
    assert records.read_text() == before  # every record is still there
    assert sorted(p.name for p in out.iterdir()) == ["eval.lock", "records.jsonl", "settings.json"]
    rest = Fake()
    run = run_eval(_cfg(tmp_path), _samples(), rest, out, progress=False)
    assert run.reused == 10 and {i for i, _ in rest.calls} == {"s2", "s3"}
    assert len(records.read_text().splitlines()) == 20


def test_user_kills_a_run_while_it_writes_the_settings(tmp_path, monkeypatch):
    import os

    out = tmp_path / "out"
    monkeypatch.setattr(os, "replace", _killed)
    with pytest.raises(KeyboardInterrupt):
        run_eval(_cfg(tmp_path), _samples(), Fake(), out, progress=False)
    monkeypatch.undo()
    assert sorted(p.name for p in out.iterdir()) == ["eval.lock"]  # no cut settings.json, no temporary file
    run = run_eval(_cfg(tmp_path), _samples(), Fake(), out, progress=False)
    assert run.computed == 20 and json.loads((out / "settings.json").read_text())["frames"] == 8


def test_settings_hold_the_dtype_that_runs(tmp_path):
    from sharp_vlm.checkpoint import dtype_choice
    from sharp_vlm.errors import InputError

    resolved = dtype_choice("auto", "cpu")[0]
    assert _cfg(tmp_path, dtype="auto").settings()["dtype"] == resolved != "auto"
    out = tmp_path / "out"
    run_eval(_cfg(tmp_path, dtype="auto"), _samples(2), Fake(), out, progress=False)
    run = run_eval(_cfg(tmp_path, dtype=resolved), _samples(2), Fake(), out, progress=False)  # the same run
    assert run.computed == 0
    with pytest.raises(InputError, match="float64"):
        run_eval(_cfg(tmp_path, dtype="float64"), _samples(2), Fake(), tmp_path / "o2", progress=False)
