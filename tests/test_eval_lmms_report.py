"""The table over lmms-eval runs, from files laid out as lmms-eval 0.7.3 writes them (no lmms-eval needed)."""

import json

import pytest

from sharp_vlm import cli
from sharp_vlm.errors import SharpError
from sharp_vlm.eval.lmms_report import collect


def _run(root, name, model_args, acc, replies, stats):
    folder = root / name / "model__dir"
    folder.mkdir(parents=True)
    (folder / "20260101_000000_results.json").write_text(json.dumps({
        "results": {"t1": {"alias": "t1", "accuracy,none": acc, "accuracy_stderr,none": 0.1}},
        "config": {"model": "sharp_vlm", "model_args": model_args}}))
    (folder / "20260101_000000_samples_t1.jsonl").write_text(
        "\n".join(json.dumps({"doc_id": i, "filtered_resps": [r]}) for i, r in enumerate(replies)) + "\n")
    (root / name / "stats.rank0.jsonl").write_text("\n".join(json.dumps(s) for s in stats) + "\n")


def test_table_over_runs(tmp_path, capsys):
    st = {"n_visual": 100, "prefill_s": 2.0, "flops": 2e12, "flops_dense": 2e12}
    _run(tmp_path, "none", "pretrained=/m,method=none", 0.8, ["A", "B ", "C", "D"], [{**st, "n_kept": 100}] * 4)
    _run(tmp_path, "sharp@0.1", "pretrained=/m,method=sharp,retain=0.1,layer=2", 0.6, ["A", "B", "D", "A"],
         [{**st, "n_kept": 10, "flops": 5e11, "prefill_s": 0.5}] * 4)
    (tmp_path / "not_a_run").mkdir()
    summary = collect(tmp_path)
    base, sharp = summary["rows"]
    assert summary["baseline"] == "none" and base["agreement"] == 1.0 and base["relative"] == 1.0
    assert sharp["method"] == "sharp" and sharp["retain"] == 0.1 and sharp["metrics"] == {"t1/accuracy": 0.6}
    assert sharp["relative"] == pytest.approx(0.75) and sharp["agreement"] == 0.5
    assert sharp["kept_ratio"] == 0.1 and sharp["tflops"] == pytest.approx(0.5) and sharp["prefill_s"] == 0.5
    assert cli.main(["eval", "--lmms-runs", str(tmp_path)]) == 0
    assert "| sharp@0.1 | sharp | 0.1 | 0.6 | 0.750 | 0.500 | 0.100 | 0.5 | 0.500 |" in capsys.readouterr().out
    assert (tmp_path / "lmms_report.md").is_file() and (tmp_path / "lmms_report.json").is_file()
    assert cli.main(["eval", "--lmms-runs", str(tmp_path), "--model", "m", "--limit", "3"]) == 2
    assert "--model, --limit would be ignored; drop them or drop --lmms-runs" in capsys.readouterr().err
    with pytest.raises(SharpError, match="no lmms-eval results"):
        collect(tmp_path / "not_a_run")


@pytest.mark.parametrize("damage", ["stats", "results", "samples"])
def test_user_tabulates_lmms_runs_with_a_torn_stats_line_or_a_cut_results_file(tmp_path, capsys, damage):
    st = {"n_visual": 100, "n_kept": 100, "prefill_s": 2.0, "flops": 2e12, "flops_dense": 2e12}
    _run(tmp_path, "none", "pretrained=/m,method=none", 0.8, ["A", "B"], [st, st])
    folder = tmp_path / "none"
    path = {"stats": folder / "stats.rank0.jsonl", "results": folder / "model__dir" / "20260101_000000_results.json",
            "samples": folder / "model__dir" / "20260101_000000_samples_t1.jsonl"}[damage]
    text = path.read_text()
    path.write_text(text[: len(text) - 9])  # a run killed while writing it
    assert cli.main(["eval", "--lmms-runs", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sharp eval: ") and "\n" not in err and str(path) in err, err
    assert ("delete that line" if damage != "results" else "rerun that lmms-eval run") in err


@pytest.mark.parametrize(("damage", "line"), [("stats", "[1, 2]"), ("stats", '{"n_visual": "many"}'),
                                              ("samples", '{"resps": ["A"]}')])
def test_user_tabulates_lmms_runs_with_a_line_that_is_json_but_not_a_record(tmp_path, capsys, damage, line):
    st = {"n_visual": 100, "n_kept": 100, "prefill_s": 2.0, "flops": 2e12, "flops_dense": 2e12}
    _run(tmp_path, "none", "pretrained=/m,method=none", 0.8, ["A", "B"], [st, st])
    folder = tmp_path / "none"
    path = {"stats": folder / "stats.rank0.jsonl",
            "samples": folder / "model__dir" / "20260101_000000_samples_t1.jsonl"}[damage]
    with path.open("a") as fh:
        fh.write(line + "\n")
    assert cli.main(["eval", "--lmms-runs", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sharp eval: ") and "\n" not in err and f"{path}:3" in err and "delete that line" in err
