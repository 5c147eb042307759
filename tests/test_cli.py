"""Usage errors of the command line: one line that says what to do, exit 2, nothing loaded first."""

from __future__ import annotations

import pytest

from sharp_vlm import cli


@pytest.fixture(autouse=True)
def no_model(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("a model was loaded before the flags were checked")

    monkeypatch.setattr("sharp_vlm.probe.lm.load_smollm2", refuse)
    monkeypatch.setattr("sharp_vlm.bench.latency.build_model", refuse)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["probe", "--retain", "2"], "outside (0, 1]"),
        (["probe", "--options", '{"sharp": {"tau": 0.8}}', "--methods", "sharp"], "sharp has no option(s) tau"),
        (["probe", "--options", '{"fastv": {}}', "--methods", "sharp"], "not among the methods run"),
        (["probe", "--methods", "fastvv"], "unknown method 'fastvv'"),
        (["probe", "--methods", "uniform@x"], "must be an integer"),
        (["probe", "--methods", "none,sharp@0"], "sharp@0: layer=0 must be an integer >= 1"),
        (["probe", "--frames", "8"], "16-96 frames"),
        (["probe", "--families", "attribute,nope"], "unknown probe family nope"),
        (["probe", "--n", "100000"], "the heldout split has"),
        (["demo", "--retain", "0"], "outside (0, 1]"),
        (["bench", "--layer", "99"], "--layer 99 is beyond the model's depth: qwen2.5-0.5b has 24 decoder layers"),
        (["bench", "--retain", "1.5"], "outside (0, 1]"),
        (["bench", "--variants", "fastv"], "must include 'none'"),
        (["bench", "--model", "no-such-shape"], "no-such-shape"),
    ],
)
def test_bad_flag_values_exit_2_with_one_line(capsys, argv, message):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and err.startswith(f"sharp {argv[0]}: ")


@pytest.mark.parametrize(
    "argv",
    [["probe", "--n", "0"], ["probe", "--retain", "abc"], ["probe", "--options", "{bad"], ["bench", "--repeats", "0"],
     ["probe", "--layer", "-1"], ["bench", "--frames", "x"]],
)
def test_malformed_flags_are_usage_errors(capsys, argv):
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    assert "error: argument" in capsys.readouterr().err
