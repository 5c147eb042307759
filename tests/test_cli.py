"""Usage errors of the command line: one line that says what to do, exit 2, nothing loaded first."""

from __future__ import annotations

import os

import pytest
import torch

from sharp_vlm import cli


@pytest.fixture(autouse=True)
def no_model(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("a model was loaded before the flags were checked")

    monkeypatch.setattr("sharp_vlm.probe.lm.load_smollm2", refuse)
    monkeypatch.setattr("sharp_vlm.bench.latency.build_model", refuse)
    monkeypatch.setattr("sharp_vlm.pipeline.VideoQA.from_pretrained", refuse)


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


def test_user_benches_a_video_llm_checkpoint_folder(tmp_path, capsys):
    from sharp_vlm.testing import save_tiny_checkpoint

    folder = save_tiny_checkpoint("qwen2_5_vl", tmp_path / "vlm")
    capsys.readouterr()  # the checkpoint writer's progress bar, not the command's output
    assert cli.main(["bench", "--model", str(folder), "--frames", "2", "--tokens-per-frame", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sharp bench: ") and "\n" not in err and len(err) < 700, err
    assert str(folder) in err and "Video LLM" in err and "decoder-only" in err and "qwen2.5-vl-7b" in err
    assert "sharp run --compare" in err


def _video(tmp_path):
    from sharp_vlm.video.decode import write_video

    pixels = torch.randint(0, 256, (8, 32, 48, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return write_video(tmp_path / "clip.mp4", pixels)


def _command(cmd, tmp_path):
    """A valid command line of each command that writes to --out (before --out)."""
    from sharp_vlm.eval.sample_data import write_sample_set

    (tmp_path / "model").mkdir(exist_ok=True)
    if cmd == "run":
        return ["run", "--model", str(tmp_path / "model"), "--video", str(_video(tmp_path)), "--question", "Q?",
                "--frames", "4"]
    if cmd == "eval":
        return ["eval", "--model", str(tmp_path / "model"), "--data", str(write_sample_set(tmp_path, n=2)),
                "--methods", "fastv", "--retain", "0.5", "--frames", "8"]  # the sample clips have 16 frames
    return {"probe": ["probe", "--n", "2"], "demo": ["demo", "--n", "2"],
            "bench": ["bench", "--frames", "2", "--tokens-per-frame", "4"]}[cmd]


@pytest.mark.parametrize("case", ["is_a_file", "below_a_file", "read_only"])
@pytest.mark.parametrize("cmd", ["run", "eval", "probe", "bench", "demo"])
def test_user_gives_an_out_folder_that_cannot_be_written(cmd, case, tmp_path, capsys):
    argv = _command(cmd, tmp_path)
    if case == "read_only":
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        if os.access(locked, os.W_OK):  # root writes through the mode bits: nothing to refuse
            locked.chmod(0o700)
            pytest.skip("chmod does not make a folder read-only for this user (root)")
        out, says = locked / "out", f"{locked}, where it would be created, is not writable"
    else:
        file = tmp_path / "file"
        file.write_text("not a folder")
        out, says = {"is_a_file": (file, "is a file, not a folder"),
                     "below_a_file": (file / "out", f"is below {file}, which is a file")}[case]
    capsys.readouterr()
    try:  # the autouse fixture fails the test if a model loads: the folder is checked first
        assert cli.main([*argv, "--out", str(out)]) == 2
    finally:
        if case == "read_only":
            locked.chmod(0o700)
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"sharp {cmd}: --out {out}") and "\n" not in err, err
    assert says in err and "give a folder" in err


@pytest.mark.parametrize("cmd", ["eval", "probe", "bench", "run", "demo"])
def test_user_presses_ctrl_c(cmd, tmp_path, monkeypatch, capsys):
    from sharp_vlm.eval import runner
    from sharp_vlm.pipeline import VideoQA

    def ctrl_c(*a, **k):
        raise KeyboardInterrupt

    out = tmp_path / "out"
    calls = []

    def answer(rec, v):  # the user presses Ctrl-C during the third answer
        if len(calls) == 2 and not calls[-1] == "resumed":
            raise KeyboardInterrupt
        calls.append((rec.id, v.key))
        return runner.Reply(text="A", prefill_s=0.01, n_visual=10, n_kept=10)

    monkeypatch.setattr("sharp_vlm.probe.lm.load_smollm2", ctrl_c)
    monkeypatch.setattr("sharp_vlm.bench.latency.build_model", ctrl_c)
    # sharp run: Ctrl-C while the checkpoint loads; eval: during an answer (the load itself is quick here)
    monkeypatch.setattr(VideoQA, "from_pretrained", ctrl_c if cmd == "run" else lambda *a, **k: object())
    monkeypatch.setattr(runner, "videoqa_answerer", lambda qa, cfg: answer)
    argv = _command(cmd, tmp_path)
    assert cli.main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    # eval's progress bar was drawn before Ctrl-C and is erased with a carriage return: a terminal shows only what
    # follows the last one, and no line (of the bar or a traceback) is left above the message
    assert "\n" not in err.strip(), err
    err = err.split("\r")[-1].strip()
    assert err.startswith(f"sharp {cmd}: interrupted"), err
    if cmd == "eval":
        assert str(out / "records.jsonl") in err and "rerun the same command to resume" in err
        calls.append("resumed")
        assert cli.main([*argv, "--out", str(out)]) == 0
        assert len(calls) == 2 + 1 + 2 and "2 reused" in capsys.readouterr().out
    else:
        assert "rerun" in err
