"""The bias cache as users deploy it: dtypes, what its key covers, files it cannot trust, shared folders."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import torch

import sharp_vlm as sv
from sharp_vlm.testing import tiny_llama, tiny_qwen_vl, tiny_video_inputs

CFG = sv.ShaRP(retain=0.15)


def _model(dtype=torch.float32):
    model = tiny_qwen_vl("qwen2_5_vl", layers=4).to(dtype)
    return model, tiny_video_inputs(model, frames=8, height=16, width=16).as_kwargs()


def _run(model, inputs, cache, cfg=CFG, **kw):
    with sv.apply(model, cfg, bias_cache=cache, **kw) as h, torch.no_grad():
        model(**inputs)
    stage = h.last_stats.stages[0]
    return stage.costs.bias_cache, stage.kept[0]


def test_user_runs_the_cached_bias_in_bfloat16():
    model, inputs = _model(torch.bfloat16)
    cache = sv.BiasCache()
    first, kept = _run(model, inputs, cache)
    second, again = _run(model, inputs, cache)
    assert (first, second) == ("miss", "hit") and torch.equal(kept, again)


@pytest.mark.parametrize("part", ["decoder layer 1", "vision tower"])
def test_user_replaces_the_checkpoint_with_a_fine_tune(part):
    model, inputs = _model()
    cache = sv.BiasCache()
    assert _run(model, inputs, cache)[0] == "miss"
    module = model.model.language_model.layers[1] if part == "decoder layer 1" else model.model.visual
    with torch.no_grad():
        for p in module.parameters():
            p.mul_(1.01).add_(0.001)
    assert _run(model, inputs, cache)[0] == "miss"  # the old bias is not the fine-tune's
    assert _run(model, inputs, cache)[0] == "hit"


def test_user_gives_two_reference_functions_from_one_factory():
    model = tiny_llama()
    span = sv.VideoSpan(2, 4, 8)
    ids = torch.randint(3, 100, (1, 40), generator=torch.Generator().manual_seed(0))

    def filler(token: int):
        def fill(embeds, layouts, call):
            out = embeds.clone()
            for b, lay in enumerate(layouts):
                out[b, lay.positions] = model.get_input_embeddings().weight[token]
            return out

        return fill

    cache = sv.BiasCache()
    outcome = []
    for token in (5, 9, 5):
        with sv.apply(model, CFG, span=span, reference=filler(token), bias_cache=cache) as h, torch.no_grad():
            model(input_ids=ids)
        outcome.append(h.last_stats.stages[0].costs.bias_cache)
    assert outcome == ["miss", "miss", "hit"]


BAD_FILES = {
    "garbage": lambda path: path.write_bytes(b"not a tensor at all"),
    "empty": lambda path: path.write_bytes(b""),
    "half-written": lambda path: path.write_bytes(path.read_bytes()[: path.stat().st_size // 2]),
    "wrong shape": lambda path: torch.save(torch.rand(1, 5), path),
    "all NaN": lambda path: torch.save(torch.full(torch.load(path).shape, float("nan")), path),
}


@pytest.mark.parametrize("damage", list(BAD_FILES))
def test_user_finds_a_damaged_file_in_the_cache_folder(tmp_path, damage):
    model, inputs = _model()
    _, kept = _run(model, inputs, sv.BiasCache(directory=tmp_path))
    (path,) = tmp_path.glob("*.pt")
    BAD_FILES[damage](path)
    with pytest.warns(UserWarning, match="recomputing it") as caught:
        outcome, again = _run(model, inputs, sv.BiasCache(directory=tmp_path))
    assert len(caught) == 1 and outcome == "miss" and torch.equal(kept, again)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _run(model, inputs, sv.BiasCache(directory=tmp_path))[0] == "hit"  # rewritten whole


def test_user_points_the_cache_at_a_file_or_below_one(tmp_path):
    afile = tmp_path / "cache"
    afile.write_text("x")
    with pytest.raises(sv.ConfigError, match="is a file; give a folder"):
        sv.BiasCache(directory=afile)
    with pytest.raises(sv.ConfigError, match="cannot be created"):
        sv.BiasCache(directory=afile / "below")


def test_user_cache_folder_stops_taking_writes(tmp_path, monkeypatch):
    model, inputs = _model()
    cache = sv.BiasCache(directory=tmp_path)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("tempfile.mkstemp", refuse)  # as a folder made read-only after the cache opened it
    with pytest.warns(UserWarning, match="cannot write to .*in memory only") as caught:
        assert _run(model, inputs, cache)[0] == "miss"
        assert _run(model, inputs, cache)[0] == "hit"  # memory still serves
    assert len(caught) == 1 and not list(tmp_path.glob("*.pt"))


WORKER = """
import sys, torch, sharp_vlm as sv
from sharp_vlm.testing import tiny_qwen_vl, tiny_video_inputs
torch.set_num_threads(1)
model = tiny_qwen_vl("qwen2_5_vl", layers=4)
kept = []
for frames in (8, 4, 8, 6, 4, 8):
    inputs = tiny_video_inputs(model, frames=frames, height=16, width=16).as_kwargs()
    with sv.apply(model, sv.ShaRP(retain=0.15), bias_cache=sv.BiasCache(directory=sys.argv[1])) as h, \\
            torch.no_grad():
        model(**inputs)
    kept.append(h.last_stats.stages[0].kept[0].tolist())
print(kept)
"""


def test_two_processes_share_one_cache_folder(tmp_path):
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outs]
    assert outs[0][0] == outs[1][0]  # the same selections, whichever process wrote a file first
    assert len(list(tmp_path.glob("*.pt"))) == 3 and not list(tmp_path.glob("*.tmp"))


def test_user_switches_the_positions_of_a_stage_before_sharp():
    """Contiguous and original positions give the same kept rows before the decoder but a different reference
    pass: the second run must not reuse the first one's bias."""
    from cases import model_and_inputs

    model, inputs = model_and_inputs("llava_onevision")  # 1-D positions: the two settings differ
    cache = sv.BiasCache()
    results = []
    for positions in ("contiguous", "original", "contiguous"):
        cfg = sv.Schedule([sv.DivPrune(retain=0.5, positions=positions), sv.ShaRP(retain=0.25, layer=2)])
        with sv.apply(model, cfg, bias_cache=cache) as h, torch.no_grad():
            model(**inputs)
        results.append(h.last_stats.stages[1].costs.bias_cache)
    assert results == ["miss", "miss", "hit"]
