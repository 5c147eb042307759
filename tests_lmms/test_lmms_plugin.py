"""lmms-eval 0.7.3 runs the `sharp_vlm` model offline on a generated local task (mp4s + JSON, multiple choice and
one open question) with a tiny saved Qwen2.5-VL checkpoint: unpruned and ShaRP, one process and two data-parallel
processes under `accelerate launch` (on the CPU, over gloo). Runs in the eval environment only (`make test-lmms`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from sharp_vlm.eval.lmms_task import write_lmms_task
from sharp_vlm.eval.sample_data import write_sample_set
from sharp_vlm.testing import save_tiny_checkpoint

TASK = "sharp_tiny_qa"
N_DOCS = 4


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("lmms")
    model = save_tiny_checkpoint("qwen2_5_vl", root / "model")
    jsonl = write_sample_set(root / "data", n=N_DOCS, frames=8)
    write_lmms_task(jsonl, root / "task", TASK, max_new_tokens=3)
    return root, model


def _env(root: Path) -> dict[str, str]:
    # offline: nothing may reach the hub; HF_HOME keeps datasets' cache inside the test folder
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "HF_HOME": str(root / "hf"), "TOKENIZERS_PARALLELISM": "false"}


def _lmms_args(root: Path, model: Path, method: str, out: Path, batch: int = 1) -> list[str]:
    model_args = (f"pretrained={model},method={method},retain=0.25,layer=2,max_num_frames=4,dtype=float32,"
                  f"device=cpu,stats_file={out / 'stats.jsonl'}")
    return ["--model", "sharp_vlm", "--model_args", model_args, "--tasks", TASK, "--include_path",
            str(root / "task"), "--batch_size", str(batch), "--output_path", str(out), "--log_samples"]


def _check_outputs(out: Path, method: str) -> None:
    results = list(out.rglob("*_results.json"))
    assert len(results) == 1, f"lmms-eval wrote no results file under {out}"
    data = json.loads(results[0].read_text())
    acc = data["results"][TASK]["accuracy,none"]
    assert 0.0 <= acc <= 1.0 and data["n-samples"][TASK]["effective"] == N_DOCS
    samples = list(out.rglob(f"*_samples_{TASK}.jsonl"))
    assert len(samples) == 1
    lines = [json.loads(x) for x in samples[0].read_text().splitlines()]
    assert sorted(x["doc_id"] for x in lines) == list(range(N_DOCS))
    stats = [json.loads(x) for p in sorted(out.glob("stats*.jsonl")) for x in p.read_text().splitlines()]
    assert sorted(s["doc_id"] for s in stats) == list(range(N_DOCS))
    for s in stats:
        assert s["method"] == method and s["n_visual"] > 0 and s["flops"] > 0
        assert s["n_kept"] == (s["n_visual"] if method == "none" else round(0.25 * s["n_visual"]))


def test_the_entry_point_registers_the_model():
    from lmms_eval.models import get_model

    from sharp_vlm.eval.lmms_model import SharpVLM

    assert "sharp_vlm" in {ep.name for ep in entry_points(group="lmms_eval.models")}
    assert get_model("sharp_vlm") is SharpVLM


@pytest.mark.parametrize("method", ["none", "sharp"])
def test_lmms_eval_runs_offline(setup, method):
    root, model = setup
    out = root / f"out-{method}"
    cmd = [str(Path(sys.executable).parent / "lmms-eval"), *_lmms_args(root, model, method, out)]
    proc = subprocess.run(cmd, env=_env(root), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    _check_outputs(out, method)


def test_lmms_eval_batch_size(setup):
    """--batch_size 3: the requests answered in batches give the replies of batch size 1."""
    root, model = setup
    out = root / "out-batch"
    cmd = [str(Path(sys.executable).parent / "lmms-eval"), *_lmms_args(root, model, "sharp", out, batch=3)]
    proc = subprocess.run(cmd, env=_env(root), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    _check_outputs(out, "sharp")

    def replies(folder: Path) -> dict[int, str]:
        (path,) = folder.rglob(f"*_samples_{TASK}.jsonl")
        return {x["doc_id"]: x["filtered_resps"] for x in map(json.loads, path.read_text().splitlines())}

    one = root / "out-sharp"
    if not one.is_dir():  # the batch-1 run of test_lmms_eval_runs_offline, when this test runs alone
        cmd = [str(Path(sys.executable).parent / "lmms-eval"), *_lmms_args(root, model, "sharp", one)]
        assert subprocess.run(cmd, env=_env(root), capture_output=True, timeout=900).returncode == 0
    assert replies(out) == replies(one)


def test_accelerate_data_parallel(setup):
    root, model = setup
    out = root / "out-dp"
    # accelerate's --cpu launcher starts one process; the distributed launcher with ACCELERATE_USE_CPU starts two
    # that talk over gloo, as two GPUs' processes would over NCCL
    cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
           "29517", "-m", "lmms_eval", *_lmms_args(root, model, "sharp", out)]
    env = {**_env(root), "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    _check_outputs(out, "sharp")
    # each process answered its own share of the requests
    ranks = sorted(p.name for p in out.glob("stats*.jsonl"))
    assert ranks == ["stats.rank0.jsonl", "stats.rank1.jsonl"]


def test_one_table_over_the_runs(setup):
    from sharp_vlm.eval.lmms_report import collect

    root, _ = setup
    summary = collect(root)  # the four runs above: none, sharp, sharp in batches of 3, sharp on two processes
    rows = {r["run"]: r for r in summary["rows"]}
    assert summary["baseline"] == "out-none" and set(rows) == {"out-none", "out-sharp", "out-batch", "out-dp"}
    assert rows["out-none"]["agreement"] == 1.0 and rows["out-none"]["kept_ratio"] == 1.0
    # the same method on one and on two processes, and in batches, gives the same replies (greedy)
    assert rows["out-sharp"]["agreement"] == rows["out-dp"]["agreement"] == rows["out-batch"]["agreement"]
    assert rows["out-sharp"]["kept_ratio"] == pytest.approx(0.25, abs=0.02)
    assert f"{TASK}/accuracy" in rows["out-sharp"]["metrics"]
