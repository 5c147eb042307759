"""Probe families: shapes, kinds, redundancy, determinism; per-family summaries, means and retention inversions."""

from __future__ import annotations

import json

import pytest

from sharp_vlm.errors import ConfigError
from sharp_vlm.probe.families import FAMILIES, Family, families
from sharp_vlm.probe.generator import VERB_FORMS, VERBS, check_answer, make_sample
from sharp_vlm.probe.report import family_table
from sharp_vlm.probe.run import ProbeConfig, analyse, check_probe, family_mean, inversions, sign_test, summarise


@pytest.fixture(scope="module")
def tok():
    from sharp_vlm.probe.lm import load_tokenizer

    return load_tokenizer()


def test_families_cover_the_shapes_and_kinds_video_qa_asks_about():
    fams = list(FAMILIES.values())
    assert min(f.n_frames for f in fams) == 16 and max(f.n_frames for f in fams) == 96
    # frames of 16..144 tokens: at 16 x 196 (3.1k tokens) SmolLM2-135M answers 3 of 10 development samples unpruned,
    # mostly with one constant colour; the generator itself goes to 196 (a 14 x 14 grid), for larger LMs
    assert min(f.tokens_per_frame for f in fams) == 16 and max(f.tokens_per_frame for f in fams) == 144
    assert Family("x", 16, 196, ("attribute",)).tokens_per_frame == 196
    assert {k for f in fams for k in f.kinds} == {"attribute", "object", "action", "order", "count"}
    assert {f.change_rate for f in fams} >= {0.25, 1.0} and max(f.n_needles for f in fams) > 1


@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_samples_have_the_family_shape_and_their_needle(tok, name):
    fam = FAMILIES[name]
    for seed in range(3):
        s = fam.sample(seed, tok)
        assert s.n_frames == fam.n_frames and {len(f) for f in s.frames} == {fam.tokens_per_frame}
        assert s.kind in fam.kinds and s.kind == fam.kind(seed)
        ids = s.input_ids
        for pos, (a, b) in zip(s.needle_frames, s.needle_spans, strict=True):
            fact = tok.decode(s.frames[pos][a:b])
            assert ":" in fact, fact
        assert s.answer in tok.decode(ids[s.video_start:s.video_end]).lower() or s.kind == "order"
        assert fam.sample(seed, tok).input_ids == ids  # deterministic


def test_families_do_not_share_samples(tok):
    a, b = Family("a", 32, 32, ("attribute",)), Family("b", 32, 32, ("attribute",))
    assert a.sample(0, tok).input_ids != b.sample(0, tok).input_ids


def test_change_rate_controls_redundancy(tok):
    def distinct_scenes(rate: float) -> int:
        s = make_sample(3, tok, n_frames=48, tokens_per_frame=48, kind="object", change_rate=rate)
        texts = {tok.decode(f).split(":", 1)[1] for i, f in enumerate(s.frames) if i not in s.needle_frames}
        return len(texts)  # frames without their "Frame k:" header

    calm, busy = distinct_scenes(0.0), distinct_scenes(1.0)
    assert calm <= 2 and busy > 24  # calm: one scene, cut at two header widths ("Frame 9:", "Frame 10:")


def test_action_kind_asks_what_an_animal_did(tok):
    s = make_sample(5, tok, kind="action")
    assert s.answer in VERBS and s.question.startswith("What did the")
    assert check_answer(f" {s.answer}.", s) and check_answer(f" {s.answer[:-1]} around.", s)
    for form in VERB_FORMS[s.answer]:  # another form of the same verb names the same action
        assert check_answer(f" {form}.", s)
    other = next(v for v in VERBS if v != s.answer)
    assert not check_answer(f" {other}.", s)
    assert not check_answer(f" {VERB_FORMS[other][1]}.", s)  # another verb's past tense is another action
    assert not check_answer(f" {s.answer} and {VERB_FORMS[other][2]}.", s)


def test_bad_family_is_refused():
    with pytest.raises(ValueError, match="outside"):
        Family("x", 8, 32, ("attribute",))
    with pytest.raises(ValueError, match="subset"):
        Family("x", 32, 32, ("colour",))
    with pytest.raises(ValueError, match="known:"):
        families("attribute,nope")
    with pytest.raises(ConfigError, match="unknown probe family nope"):
        check_probe(ProbeConfig(families=["nope"]))


def test_a_run_named_twice_is_refused():
    # each would count its samples twice in every summary
    with pytest.raises(ConfigError, match="--families lists count more than once"):
        check_probe(ProbeConfig(families=["count", "attribute", "count"]))
    with pytest.raises(ConfigError, match=r"--methods \(as name@layer\) lists sharp@2 more than once"):
        check_probe(ProbeConfig(methods=["none", "sharp", "fastv", "Sharp"]))
    with pytest.raises(ConfigError, match="lists sharp@2 more than once"):
        check_probe(ProbeConfig(methods=["sharp", "sharp@2"], layer=2))
    with pytest.raises(ConfigError, match="--retain lists 0.1 more than once"):
        check_probe(ProbeConfig(retains=[0.1, 0.25, 0.1000001]))
    check_probe(ProbeConfig(methods=["sharp", "sharp@4"], retains=[0.1, 0.25], families=["count", "attribute"]))


def _rec(family, method, retain, correct, seed=0):
    return {"family": family, "seed": seed, "method": method, "retain": retain, "correct": correct,
            "agree": correct, "needle_recall": 1.0, "fact_recall": None, "kept_ratio": retain, "seconds": 0.1}


def test_family_summary_mean_worst_and_inversions():
    recs = []
    for fam, base, at10, at25 in (("f1", 4, 2, 4), ("f2", 2, 2, 0)):
        recs += [_rec(fam, "none", 1.0, i < base, i) for i in range(4)]
        recs += [_rec(fam, "sharp", 0.1, i < at10, i) for i in range(4)]
        recs += [_rec(fam, "sharp", 0.25, i < at25, i) for i in range(4)]
    rows = summarise(recs)
    rel = {(r["family"], r["retain"]): r["relative"] for r in rows if r["method"] == "sharp"}
    assert rel == {("f1", 0.1): 0.5, ("f1", 0.25): 1.0, ("f2", 0.1): 1.0, ("f2", 0.25): 0.0}
    mean = {(r["method"], r["retain"]): r for r in family_mean(rows)}
    assert mean[("sharp", 0.1)]["relative"] == 0.75 and mean[("sharp", 0.25)]["worst_family"] == "f2"
    inv = inversions(recs)
    assert inv == [{"family": "f2", "method": "sharp", "from": 0.1, "to": 0.25, "correct_lost": 2, "worse": 2,
                    "better": 0, "p": 0.25}]  # pooled: 4 -> 4 correct (f1 gains what f2 loses), not flagged
    table = family_table({"by_family": rows, "mean": family_mean(rows), "families": {"f1": "", "f2": ""},
                          "inversions": inv})
    assert "| sharp | 0.10 | 50% | 100% | **75%** | 50% (f1) |" in table
    assert "sharp on f2 0.1->0.25 (-2: 2 / 0, p 0.25)" in table


def test_lost_and_gained_pair_each_sample_with_its_own_unpruned_answer():
    # unpruned right on seeds 0, 1; the pruned run right on seeds 1, 2: one lost (0), one gained (2), while the
    # accuracy is the same (a count comparison would see no change)
    recs = [_rec("f", "none", 1.0, s in (0, 1), s) for s in range(3)]
    recs += [_rec("f", "sharp", 0.1, s in (1, 2), s) for s in (2, 1, 0)]  # another order than the unpruned run
    (row,) = [r for r in summarise(recs) if r["method"] == "sharp"]
    assert (row["lost"], row["gained"], row["relative"]) == (1, 1, 1.0)
    (pooled,) = [r for r in summarise(recs, by_family=False) if r["method"] == "sharp"]
    assert (pooled["lost"], pooled["gained"]) == (1, 1)
    # the same seed in two families is two samples
    recs += [_rec("g", "none", 1.0, True, 0), _rec("g", "sharp", 0.1, True, 0)]
    (pooled,) = [r for r in summarise(recs, by_family=False) if r["method"] == "sharp"]
    assert (pooled["lost"], pooled["gained"]) == (1, 1)
    # without an unpruned run there is nothing to pair with
    (alone,) = summarise([_rec("f", "sharp", 0.1, True, 0)])
    assert alone["lost"] is None and alone["gained"] is None


def test_inversions_count_the_samples_that_changed_and_pool_the_families():
    recs = []
    # f1: 4 right at 10%; at 25% two of them go wrong and one other goes right (-1, within the tolerance);
    # f2: the same shape (-1); pooled over both: -2, 4 worse / 2 better
    for fam in ("f1", "f2"):
        recs += [_rec(fam, "sharp", 0.1, s < 4, s) for s in range(6)]
        recs += [_rec(fam, "sharp", 0.25, s in (2, 3, 4), s) for s in range(6)]
    inv = inversions(recs)
    assert inv == [{"family": "all", "method": "sharp", "from": 0.1, "to": 0.25, "correct_lost": 2, "worse": 4,
                    "better": 2, "p": pytest.approx(22 / 64)}]
    assert inversions(recs, tolerance=2) == []
    # one family alone: no pooled row beside it
    assert [i["family"] for i in inversions([r for r in recs if r["family"] == "f1"], tolerance=0)] == ["f1"]


def test_sign_test():
    assert sign_test(0, 0) == 1.0
    assert sign_test(2, 0) == 0.25
    assert sign_test(5, 0) == 1 / 32
    assert sign_test(3, 1) == 5 / 16
    assert sign_test(0, 4) == 1.0
    # P(X >= 7) + P(X <= 6) = 1 for n = 10, and P(X <= 6) = P(X >= 4) by symmetry
    assert sign_test(7, 3) + sign_test(4, 6) == pytest.approx(1.0)


def test_a_family_the_unpruned_model_never_answers_is_left_out_of_the_mean(tmp_path):
    from sharp_vlm.probe.report import plot_kept_per_frame

    recs = [_rec("f1", "none", 1.0, True), _rec("f1", "sharp", 0.1, True),
            _rec("f2", "none", 1.0, False), _rec("f2", "sharp", 0.1, True)]
    rows = summarise(recs)
    (mean,) = [m for m in family_mean(rows) if m["method"] == "sharp"]
    assert mean["relative"] == 1.0 and mean["unanswered"] == ["f2"] and mean["worst_family"] == "f1"
    table = family_table({"by_family": rows, "mean": family_mean(rows), "families": {"f1": "", "f2": ""}})
    assert "| sharp | 0.10 | 100% | - | **100%** | 100% (f1) |" in table and "answered no sample of f2" in table
    # videos of different lengths share one kept-per-frame plot (per tenth of the video)
    for r, n in zip(recs, (16, 16, 96, 96), strict=True):
        r["kept_per_frame"], r["needle_frames"] = [1] * n, [n - 1]
    assert plot_kept_per_frame(recs, tmp_path / "k.png").stat().st_size > 0


def test_no_relative_accuracy_is_null_in_the_json_and_a_dash_in_the_table(tmp_path):
    from sharp_vlm.probe.report import table, write

    recs = [_rec("f1", "none", 1.0, False), _rec("f1", "sharp", 0.1, True)]
    for r in recs:
        r["kept_per_frame"], r["needle_frames"] = [1] * 8, [3]
    result = {"records": recs, **analyse(recs, None)}
    write(result, tmp_path)
    text = (tmp_path / "results.json").read_text()
    assert "NaN" not in text  # strict JSON: every reader takes null, not every reader takes NaN
    (row,) = [r for r in json.loads(text)["summary"] if r["method"] == "sharp"]
    assert row["relative"] is None and row["accuracy"] == 1.0
    assert "| sharp | 0.10 | 1 | 100.0% | - |" in table(result["summary"])


def test_render_recomputes_the_reports_of_an_earlier_run(tmp_path, capsys):
    from sharp_vlm.cli import main

    recs = []
    for fam in ("f1", "f2"):
        recs += [_rec(fam, "none", 1.0, s < 3, s) for s in range(4)]
        recs += [_rec(fam, "sharp", 0.1, s < 3, s) for s in range(4)]
        recs += [_rec(fam, "sharp", 0.25, s < (3 if fam == "f1" else 1), s) for s in range(4)]
    for r in recs:
        r.update(kept_per_frame=[1, 1], needle_frames=[0])
    # an earlier run's file: records and family descriptions, without the newer summaries
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"records": recs, "families": {"f1": "one", "f2": "two"}}))
    assert main(["probe", "--render", str(path)]) == 0
    table = (tmp_path / "table.md").read_text()
    assert "| sharp | 0.25 | 8 | 50.0% | 66.7% | 2 / 0 |" in table
    assert "sharp on f2 0.1->0.25 (-2: 2 / 0, p 0.25)" in table and "sharp on all 0.1->0.25" in table
    assert (tmp_path / "lost_gained.png").stat().st_size > 0
    assert json.loads(path.read_text())["by_family"]
    capsys.readouterr()
    assert main(["probe", "--render", str(tmp_path / "missing.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    path.write_text(json.dumps({"summary": []}))
    assert main(["probe", "--render", str(path)]) == 2
    assert "no 'records' list" in capsys.readouterr().err
    path.write_text("{")
    assert main(["probe", "--render", str(path)]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    path.write_text(json.dumps({"records": [{"method": "none"}], "families": {}}))
    assert main(["probe", "--render", str(path)]) == 2
    assert "missing or wrong field: 'retain'" in capsys.readouterr().err
    path.write_text(json.dumps({"records": [1, 2]}))
    assert main(["probe", "--render", str(path)]) == 2
    assert "missing or wrong field" in capsys.readouterr().err
    # another name in a run's folder: its reports would overwrite that run's results.json
    other = tmp_path / "copy.json"
    other.write_text(json.dumps({"records": recs}))
    assert main(["probe", "--render", str(other)]) == 2
    assert "not named results.json" in capsys.readouterr().err
    # run flags beside --render would be ignored: refused, naming them (--threads still applies)
    assert main(["probe", "--render", str(path), "--diagnose", "--n", "3", "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert "--n, --diagnose would be ignored" in err and "--threads" not in err
    assert main(["probe", "--render", str(path), "--ret=0.1"]) == 2  # written at its default (abbreviated): refused
    assert "--retain would be ignored" in capsys.readouterr().err


def test_render_a_plain_probe_run(tmp_path):
    from sharp_vlm.cli import main

    recs = [_rec("32x32", "none", 1.0, True, s) for s in range(2)] + [_rec("32x32", "sharp", 0.1, s == 0, s)
                                                                       for s in range(2)]
    for r in recs:
        r.update(kept_per_frame=[1, 1], needle_frames=[0])
    (tmp_path / "results.json").write_text(json.dumps({"records": recs}))
    assert main(["probe", "--render", str(tmp_path / "results.json")]) == 0
    table = (tmp_path / "table.md").read_text()
    assert "| sharp | 0.10 | 2 | 50.0% | 50.0% | 1 / 0 |" in table and "Retention inversions" not in table


def test_diagnose_refuses_several_families_before_loading_the_model(capsys, monkeypatch):
    from sharp_vlm.cli import main

    monkeypatch.setattr("sharp_vlm.probe.lm.load_smollm2", lambda *a, **k: pytest.fail("the model was loaded"))
    assert main(["probe", "--diagnose", "--families", "count,attribute", "--n", "1"]) == 2
    assert "one family" in capsys.readouterr().err
    assert main(["probe", "--diagnose", "--families", "count", "--retain", "0.1,0.25"]) == 2
    assert "one retention" in capsys.readouterr().err
    # it runs ShaRP alone: flags it does not read are refused, not ignored
    assert main(["probe", "--diagnose", "--methods", "fastv", "--ablate"]) == 2
    assert "--methods, --ablate would be ignored" in capsys.readouterr().err
    assert main(["probe", "--diagnose", "--families", "count", "--options", '{"uniform": {}}']) == 2
    assert "the --options of uniform would be ignored" in capsys.readouterr().err
    assert main(["probe", "--diagnose", "--families", "nope"]) == 2
    assert "unknown probe family nope" in capsys.readouterr().err


def test_user_stacks_a_pre_llm_method_before_sharp_and_names_methods_without_a_layer():
    plan = check_probe(ProbeConfig(methods=["divprune", "vidcom2@0+sharp", "fastv", "pdrop"], retains=[0.1]))
    by = {v.label: v.config for v in plan}
    assert [s.layer for s in by["divprune"].stages()] == [0]  # each method's own default layer
    assert [(s.layer, s.retain) for s in by["vidcom2@0+sharp"].stages()] == [(0, 0.2), (2, 0.1)]
    assert [s.layer for s in by["fastv"].stages()] == [2]
    assert [s.layer for s in by["pdrop"].stages()] == [8, 16, 24]
    with pytest.raises(ConfigError, match=r"lists vidcom2@0\+sharp@2 more than once"):
        check_probe(ProbeConfig(methods=["vidcom2@0+sharp", "vidcom2@0+sharp@2"]))
    with pytest.raises(ConfigError, match="vidcom2@0\\+fastv@0"):  # a stage after a layer-0 one must be deeper
        check_probe(ProbeConfig(methods=["vidcom2@0+fastv@0"]))
