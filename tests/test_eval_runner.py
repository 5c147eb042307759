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
    args = {"model": str(tmp_path), "data": str(tmp_path / "qa.jsonl"), "methods": ["fastv", "uniform"],
            "retains": [0.25, 0.1], "frames": 8, **kw}
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
    with pytest.raises(SharpError, match="layer: 2 -> 3"):
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
