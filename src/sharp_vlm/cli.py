"""`sharp demo | probe | bench | run | eval`: command-line entry points."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from .errors import SharpError


def _floats(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma list of numbers, e.g. 0.5,0.25,0.1") from None
    if not values:
        raise argparse.ArgumentTypeError("give at least one value, e.g. 0.1")
    return values


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} must be >= {low}")
        return value

    return parse


_positive, _non_negative = _int_at_least(1), _int_at_least(0)


def _ints(text: str) -> list[int]:
    """A comma list of positive integers (batch sizes)."""
    values = [_positive(x.strip()) for x in text.split(",") if x.strip()]
    if not values:
        raise argparse.ArgumentTypeError("give at least one value, e.g. 1,4,8")
    return values


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON ({err})") from None
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise argparse.ArgumentTypeError('expected {"method": {"option": value}}, e.g. {"sharp": {"dedup_tau": 0.8}}')
    return value


def _check_out(out: Path) -> None:
    """Refuse an --out folder that cannot be created or written, before any model loads: the results are written
    last, and a run that fails only then has lost its whole compute."""
    try:
        if out.exists() and not out.is_dir():
            raise SharpError(f"--out {out} is a file, not a folder; give a folder path (it is created if missing)")
        if out.is_symlink() and not out.exists():
            raise SharpError(f"--out {out} is a link to {os.readlink(out)}, which does not exist; create that "
                             "folder or give another folder path")
        existing = out
        while not existing.exists():  # the nearest existing folder: the missing ones are created inside it
            existing = existing.parent
    except OSError as err:  # e.g. a parent folder that may not be searched
        raise SharpError(f"--out {out} cannot be checked ({err.strerror}); give a folder you can write to") from None
    if not existing.is_dir():
        raise SharpError(f"--out {out} is below {existing}, which is a file, so the folder cannot be created; "
                         "give a folder path outside it")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "it is" if existing == out else f"{existing}, where it would be created, is"
        raise SharpError(f"--out {out}: {where} not writable; give a folder you can write to, or make it writable")


def _probe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--methods", default="none,fastv,sharp",
                   help="comma list; name@K sets the layer (uniform@0); a+b stacks them (vidcom2@0+sharp: the first "
                   "keeps twice the last's share)")
    p.add_argument("--retain", type=_floats, default=[0.1], help="comma list of retained shares, e.g. 0.5,0.25,0.1")
    p.add_argument("--layer", type=_non_negative, default=None,
                   help=_LAYER_HELP.replace("every method", "every method without @K"))
    p.add_argument("--n", type=_positive, default=20, help="samples")
    p.add_argument("--split", default="heldout", choices=["dev", "heldout"])
    p.add_argument("--frames", type=_positive, default=32)
    p.add_argument("--tokens-per-frame", type=_positive, default=32)
    p.add_argument("--families", default=None,
                   help="probe families (comma list, or all): each family fixes its own video shape and kinds, "
                        "so --frames/--tokens-per-frame are not used")
    p.add_argument("--styles", default=None,
                   help="probe styles written in other words (comma list, or dev / heldout for a split's styles; "
                        "docs/probe.md): beside --families, or alone")
    p.add_argument("--ablate", action="store_true", help="also run ShaRP's 8 on/off combinations of C1/C2/C3")
    p.add_argument("--bias-cache", action="store_true",
                   help="share one bias cache over the run: each sample's reference pass is paid once")
    p.add_argument("--trim-kv", action="store_true",
                   help="decode with the pruned tokens dropped from the KV of the layers before the stage too")
    p.add_argument("--options", type=_json_object, default={},
                   help='JSON per method, e.g. \'{"sharp": {"dedup_tau": 0.8}}\'')
    p.add_argument("--diagnose", action="store_true",
                   help="instead: per-frame scores, bias and needle ranks of ShaRP (with --options) at --retain")
    p.add_argument("--threads", type=_non_negative, default=0, help="torch CPU threads (0: leave as is)")
    p.add_argument("--out", type=Path, default=Path("runs/probe"))
    p.add_argument("--render", type=Path, default=None, metavar="RESULTS_JSON",
                   help="only recompute the summaries, table.md and plots beside an earlier run's results.json")


def _probe_config(a: argparse.Namespace):
    from .probe.run import ProbeConfig, check_probe

    cfg = ProbeConfig(
        methods=[m for m in a.methods.split(",") if m], retains=a.retain, layer=a.layer, n=a.n,
        split=a.split, n_frames=a.frames, tokens_per_frame=a.tokens_per_frame, ablate=a.ablate,
        options=a.options, trim_kv=a.trim_kv, bias_cache=a.bias_cache,
        families=None if a.families is None else [f for f in a.families.split(",") if f],
        styles=None if a.styles is None else [f for f in a.styles.split(",") if f],
    )
    if a.diagnose:  # first: it runs ShaRP alone, so its flags are checked before those of a probe run
        from .probe.diagnose import check_diagnose

        check_diagnose(cfg)
    check_probe(cfg)  # every variant's config is built (and checked) before the model loads
    return cfg


def cmd_probe(a: argparse.Namespace) -> int:
    from .probe.lm import load_smollm2
    from .probe.report import write
    from .probe.run import analyse, run_probe

    if a.render is not None:  # summaries, tables and plots of an earlier run, recomputed from its records
        if not a.render.is_file():
            raise SharpError(f"{a.render} does not exist; give the results.json of an earlier run")
        if a.render.name != "results.json":
            # the reports are written beside it under their own names: another file there would be overwritten
            raise SharpError(f"{a.render} is not named results.json; give the results.json in a run's folder")
        try:
            result = json.loads(a.render.read_text())
        except json.JSONDecodeError as err:
            raise SharpError(f"{a.render} is not valid JSON ({err}); give the results.json that sharp probe wrote") \
                from None
        if not isinstance(result, dict) or not isinstance(result.get("records"), list):
            raise SharpError(f"{a.render} has no 'records' list; give the results.json that sharp probe wrote")
        try:
            result.update(analyse(result["records"], result.get("families")))
        except (KeyError, TypeError) as err:
            raise SharpError(f"{a.render}: a record is not as sharp probe writes it (missing or wrong field: {err}); "
                             "give the results.json that sharp probe wrote") from None
        paths = write(result, a.render.parent)
        print(paths["table"].read_text())
        print("\n" + "\n".join(f"{k}: {v}" for k, v in paths.items()))
        return 0
    cfg = _probe_config(a)
    if a.diagnose:
        from .probe import diagnose

        method = diagnose.diagnosed_method(cfg)  # before the load
    _check_out(a.out)
    model, tok = load_smollm2()
    if a.diagnose:
        paths = diagnose.write(diagnose.diagnose(cfg, model, tok, method), a.out)
        print("\n".join(f"{k}: {v}" for k, v in paths.items()))
        return 0
    t0 = time.perf_counter()
    result = run_probe(cfg, model, tok)
    result["wall_seconds"] = time.perf_counter() - t0
    paths = write(result, a.out)
    print(paths["table"].read_text())
    print("\n" + "\n".join(f"{k}: {v}" for k, v in paths.items()))
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    """A few-minute probe on the CPU: unpruned, FastV and ShaRP at 10%, plus one picture of what was kept."""
    from .methods import FastV, NoPrune, ShaRP
    from .probe.generator import make_sample, seeds
    from .probe.lm import load_smollm2
    from .probe.report import table, write
    from .probe.run import ProbeConfig, answer, blank_frames, check_probe, run_probe
    from .viz.kept import plot_kept_tokens

    cfg = ProbeConfig(methods=["fastv", "sharp"], retains=[a.retain], layer=2, n=a.n, split="heldout")
    check_probe(cfg)
    _check_out(a.out)
    print(f"sharp-vlm demo: needle-in-a-video probe on SmolLM2-135M-Instruct, {cfg.n} held-out samples, "
          f"{cfg.n_frames} frames x {cfg.tokens_per_frame} tokens, layer {cfg.layer}, retain {a.retain:g}")
    model, tok = load_smollm2()
    result = run_probe(cfg, model, tok)
    paths = write(result, a.out)
    print(table(result["summary"]))
    sample = make_sample(seeds("heldout", 1)[0], tok, n_frames=cfg.n_frames, tokens_per_frame=cfg.tokens_per_frame)
    reference = blank_frames(model, tok)
    kept = {}
    for label, method in (("unpruned", NoPrune()), ("FastV", FastV(retain=a.retain, layer=2)),
                          ("ShaRP", ShaRP(retain=a.retain, layer=2))):
        text, stats, _ = answer(model, tok, sample, method, cfg.max_new_tokens, reference)
        kept[f"{label}: {text.strip()[:18]!r}"] = (
            stats.stages[-1].kept[0] if stats.stages else torch.arange(sample.n_frames * sample.tokens_per_frame)
        )
    png = plot_kept_tokens(kept, sample.n_frames, sample.tokens_per_frame, a.out / "kept_tokens.png",
                           sample.needle_frames, title=f"{sample.question}  (answer: {sample.answer})")
    print("\n" + "\n".join(f"{k}: {v}" for k, v in {**paths, "kept_tokens": png}.items()))
    return 0


def cmd_bench(a: argparse.Namespace) -> int:
    from .bench.latency import BenchConfig, check_bench, run_bench
    from .bench.report import table, write

    if a.render is not None:  # redraw the table and plot of an earlier run
        if not a.render.is_file():
            print(f"sharp bench: {a.render} does not exist; give the bench.json of an earlier run", file=sys.stderr)
            return 2
        result = json.loads(a.render.read_text())
        paths = write(result, a.render.parent)
        print(table(result) + "\n\n" + "\n".join(f"{k}: {v}" for k, v in paths.items()))
        return 0
    cfg = BenchConfig(
        model=a.model, frames=a.frames, tokens_per_frame=a.tokens_per_frame, layer=a.layer, retain=a.retain,
        dtype=a.dtype, attn=a.attn, repeats=a.repeats, warmup=a.warmup, decode_tokens=a.decode_tokens,
        device=a.device, variants=[v for v in a.variants.split(",") if v], trim_kv=not a.no_trim_kv,
        vision=None if a.vision == "none" else a.vision, vision_frames=a.vision_frames, options=a.options,
        batch=a.batch,
    )
    check_bench(cfg)  # the flags, then the folder, before the model is built
    _check_out(a.out)
    result = run_bench(cfg)
    paths = write(result, a.out)
    print(table(result))
    print("\n" + "\n".join(f"{k}: {v}" for k, v in paths.items()))
    return 0


def _run_report(ans) -> str:
    """What one run kept: per stage the counts, then the kept tokens per shown frame."""
    lines = [f"{ans.method}: {ans.text.strip()!r}", f"  prefill {ans.prefill_seconds:.3f} s, decoder prefill "
             f"{ans.flops['pruned'] / 1e9:.3g} GFLOPs (dense {ans.flops['dense'] / 1e9:.3g})",
             f"  visual tokens {ans.n_visual}, reaching the last layer {ans.n_kept}"]
    for s in ans.stats.stages if ans.stats is not None else []:
        lines.append(f"  stage {s.label} at layer {s.layer}: {s.n_in[0]} -> {s.n_kept[0]} ({s.seconds:.3f} s)")
    if ans.stats is not None and ans.stats.stages:
        grid = ans.inputs.grid
        per_frame = grid.mask(ans.kept).flatten(1).sum(1).tolist()
        lines.append(f"  kept cells per frame: {per_frame} of {grid.rows * grid.cols}")
    return "\n".join(lines)


def cmd_run(a: argparse.Namespace) -> int:
    """Answer a question about a video with a local checkpoint, pruned (and, with --compare, unpruned too)."""
    from .loading import build_method
    from .pipeline import VideoQA
    from .viz.kept import plot_kept_on_frames

    method = None if a.method == "unpruned" else build_method(a.method, a.retain, a.layer)
    if not a.question.strip():
        raise SharpError("--question is empty; give the text to ask about the video")
    if a.video.is_dir():
        raise SharpError(f"--video {a.video} is a folder; --video takes one video file, e.g. {a.video / 'clip.mp4'}")
    _check_out(a.out)  # before the answer is computed: a folder that cannot be written would lose it
    from .video.decode import read_video

    # the video is decoded (and checked) before the model loads: a bad file costs no loading time
    qa_frames = (read_video(a.video, sample_fps=a.fps, max_frames=a.frames) if a.fps is not None
                 else read_video(a.video, n_frames=a.frames))
    qa = VideoQA.from_pretrained(a.model, dtype=a.dtype, device=a.device)
    inputs = qa.prepare(qa_frames, a.question)
    runs = []
    if a.compare and method is not None:
        runs.append(qa.answer(qa_frames, a.question, method=None, max_new_tokens=a.max_new_tokens, inputs=inputs))
    runs.append(qa.answer(qa_frames, a.question, method=method, max_new_tokens=a.max_new_tokens, inputs=inputs))
    a.out.mkdir(parents=True, exist_ok=True)
    masks = {f"{r.method}: {r.n_kept}/{r.n_visual}": inputs.grid.mask(r.kept) for r in runs}
    png = plot_kept_on_frames(inputs.frames, masks, a.out / "kept_tokens.png", inputs.timestamps,
                              title=f"{qa.family}: {a.question[:80]}")
    record = {"model": str(a.model), "family": qa.family, "video": str(a.video), "question": a.question,
              "frames": inputs.frames.shape[0], "timestamps": inputs.timestamps,
              "grid": {"rows": inputs.grid.rows, "cols": inputs.grid.cols, "frames_per_token": inputs.grid.span},
              "runs": [r.summary() for r in runs]}
    (a.out / "run.json").write_text(json.dumps(record, indent=2, default=str))
    print(f"{qa.family}, {inputs.frames.shape[0]} frames of {inputs.frames.shape[2]}x{inputs.frames.shape[1]} px, "
          f"{inputs.n_visual} visual tokens, prompt of {inputs.kwargs['input_ids'].shape[1]} tokens")
    for r in runs:
        print(_run_report(r))
    if len(runs) == 2:
        print(f"prefill speed-up {runs[0].prefill_seconds / max(runs[1].prefill_seconds, 1e-9):.2f}x, "
              f"decoder FLOPs {runs[1].flops['pruned'] / runs[1].flops['dense']:.1%} of dense")
    print(f"\nkept_tokens: {png}\nrun: {a.out / 'run.json'}")
    return 0


def cmd_eval(a: argparse.Namespace) -> int:
    """Video QA from a local JSONL file: every method x retain beside the unpruned model, resumable."""
    from .eval import report
    from .eval.data import check_videos, load_records
    from .eval.runner import (
        EvalConfig,
        check_settings,
        read_records,
        run_eval,
        videoqa_answerer,
        videoqa_batch_answerer,
    )

    if a.lmms_runs is not None:  # only a table over earlier lmms-eval runs
        from .eval import lmms_report

        summary = lmms_report.collect(a.lmms_runs)
        paths = lmms_report.write(summary, a.lmms_runs)
        print(lmms_report.table(summary) + "\n\n" + "\n".join(f"{k}: {v}" for k, v in paths.items()))
        return 0
    if a.model is None or a.data is None:
        raise SharpError("give --model (a checkpoint folder) and --data (a JSONL file), or --lmms-runs DIR")
    cfg = EvalConfig(model=str(a.model), data=str(a.data), methods=[m for m in a.methods.split(",") if m],
                     retains=a.retain, layer=a.layer, frames=a.frames, fps=a.fps, max_new_tokens=a.max_new_tokens,
                     options=a.options, dtype=a.dtype, device=a.device, limit=a.limit, batch_size=a.batch_size)
    cfg.check()
    if not a.model.is_dir():
        raise SharpError(f"--model {a.model} is not a folder; give a local checkpoint folder")
    samples = load_records(a.data)[: a.limit]
    check_videos(samples, a.data)  # every missing file at once, before the model loads
    _check_out(a.out)
    check_settings(a.out, cfg.settings())
    print(f"sharp eval: {len(samples)} samples x {len(cfg.variants())} variants "
          f"({', '.join(v.key for v in cfg.variants())}); {len(read_records(a.out))} records in {a.out}")
    loaded: list = []

    def model():  # the model loads only if something is left to answer
        if not loaded:
            from .pipeline import VideoQA

            loaded.append(VideoQA.from_pretrained(a.model, dtype=a.dtype, device=a.device))
        return loaded[0]

    def answer(record, variant):
        return videoqa_answerer(model(), cfg)(record, variant)

    def answer_batch(records, variant):
        return videoqa_batch_answerer(model(), cfg)(records, variant)

    run = run_eval(cfg, samples, answer, a.out, answer_batch=answer_batch if cfg.batch_size > 1 else None)
    paths = report.write(run, a.out)
    print(report.table(report.summarize(run)))
    print(f"\n{run.computed} answers computed, {run.reused} reused from earlier runs")
    print("\n".join(f"{k}: {v}" for k, v in paths.items()))
    return 0


# flags that replace the command's run by another job -> (what that job is, the other flags it still reads)
_ALONE = {
    "render": ("only redraws the reports of an earlier run", {"threads"}),
    "lmms_runs": ("only tabulates earlier lmms-eval runs", {"threads"}),
    "diagnose": ("runs ShaRP alone on one video shape", {"retain", "layer", "n", "split", "frames",
                                                         "tokens_per_frame", "families", "styles", "options", "threads",
                                                         "out"}),
}


def _given(sub: argparse.ArgumentParser, args: list[str]) -> set[str]:
    """The destinations of the flags written on the command line (a flag written at its default value too)."""
    saved = [(act, act.default) for act in sub._actions]
    try:
        for act, _ in saved:
            act.default = argparse.SUPPRESS
        given, _ = sub.parse_known_args(args)
    finally:
        for act, default in saved:
            act.default = default
    return set(vars(given))


def _check_alone(sub: argparse.ArgumentParser | None, a: argparse.Namespace, args: list[str]) -> None:
    """Flags that the chosen job does not read are refused, rather than ignored."""
    if sub is None:
        return
    given = _given(sub, args)
    for flag, (job, reads) in _ALONE.items():
        if flag not in given:
            continue
        extra = [act.option_strings[-1] for act in sub._actions
                 if act.option_strings and act.dest in given and act.dest not in {flag, *reads}]
        if extra:
            name = "--" + flag.replace("_", "-")
            raise SharpError(f"{name} {job}, so {', '.join(extra)} would be ignored; "
                             f"drop {'it' if len(extra) == 1 else 'them'} or drop {name}")


def _interrupted(a: argparse.Namespace) -> str:
    """What Ctrl-C leaves behind and how to go on."""
    if a.cmd == "eval" and a.lmms_runs is None:
        from .eval.runner import RECORDS

        # each answer is appended to the records as soon as it is computed: a rerun asks only for the others
        return (f"interrupted; the answers computed so far are kept in {a.out / RECORDS}: "
                "rerun the same command to resume")
    return "interrupted before it finished; rerun the same command to start it again"


def _erase_progress_bars() -> None:
    """Erase the progress bars left open by an interrupted loop, so the message stands on its own line (an open
    bar would also redraw itself below the message when it is garbage-collected)."""
    if "tqdm" not in sys.modules:
        return
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.leave = False
        bar.close()


_LAYER_HELP = ("decoder layer of every method (default: each method's own: 2 for fastv and sharp, 0 for the "
               "methods before the decoder)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sharp", description="Visual token pruning for Video LLMs.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("probe", help="needle-in-a-video probe on the real SmolLM2-135M")
    _probe_args(p)
    p.set_defaults(fn=cmd_probe)
    d = sub.add_parser("demo", help="a few-minute probe run with a picture of the kept tokens")
    d.add_argument("--n", type=_positive, default=20)
    d.add_argument("--retain", type=float, default=0.1)
    d.add_argument("--threads", type=_non_negative, default=0)
    d.add_argument("--out", type=Path, default=Path("runs/demo"))
    d.set_defaults(fn=cmd_demo)
    b = sub.add_parser("bench", help="FLOPs, prefill/decode latency and KV memory vs the unpruned model")
    b.add_argument("--model", default="qwen2.5-0.5b", help="built-in shape name (random weights) or local folder")
    b.add_argument("--frames", type=_positive, default=32)
    b.add_argument("--tokens-per-frame", type=_positive, default=196)
    b.add_argument("--layer", type=_non_negative, default=2,
                   help="decoder layer of the variants without @K (divprune@0: before the decoder)")
    b.add_argument("--retain", type=float, default=0.1)
    b.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="auto: bfloat16 on a GPU or a CPU with bf16 instructions, else float32")
    b.add_argument("--attn", default="sdpa", choices=["sdpa", "eager", "flash_attention_2"])
    b.add_argument("--repeats", type=_positive, default=3)
    b.add_argument("--warmup", type=_non_negative, default=1)
    b.add_argument("--decode-tokens", type=_non_negative, default=8)
    b.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    b.add_argument("--variants", default="none,floor,fastv,sharp-reference,sharp-cached",
                   help="comma list: none (always run), floor (same schedule, free selection), fastv, "
                   "sharp-reference, sharp-cached, sharp-nodebias, unpatched (no hooks), bare-fastv (a hand-rolled "
                   "hook FastV: the engine's own cost), or any method name")
    b.add_argument("--vision", default="auto",
                   help="time this shape's vision tower too (auto: the model's own, none: skip), "
                   "e.g. llava-onevision-0.5b beside --model qwen2.5-0.5b")
    b.add_argument("--vision-frames", type=_positive, default=None,
                   help="encode only this many frames and scale to --frames (the towers encode frames apart)")
    b.add_argument("--options", type=_json_object, default={},
                   help='JSON per method, e.g. \'{"pdrop": {"layers": [6, 12, 18]}}\'')
    b.add_argument("--batch", type=_ints, default=[1],
                   help="comma list of batch sizes (videos per prefill), e.g. 1,4,8: every variant at each, "
                   "the unpruned one beside it")
    b.add_argument("--no-trim-kv", action="store_true", help="skip the runs with trimmed shallow-layer KV")
    b.add_argument("--threads", type=_non_negative, default=0)
    b.add_argument("--out", type=Path, default=Path("runs/bench"))
    b.add_argument("--render", type=Path, default=None, metavar="BENCH_JSON",
                   help="only redraw bench.md and speedup.png beside an earlier run's bench.json")
    b.set_defaults(fn=cmd_bench)
    r = sub.add_parser("run", help="answer a question about a video file with a local checkpoint, pruned")
    r.add_argument("--model", required=True, type=Path, help="local checkpoint folder (any supported family)")
    r.add_argument("--video", required=True, type=Path)
    r.add_argument("--question", required=True)
    r.add_argument("--method", default="sharp", help="a method name (sharp, fastv, uniform, ...) or unpruned")
    r.add_argument("--retain", type=float, default=0.1)
    r.add_argument("--layer", type=_non_negative, default=None,
                   help=_LAYER_HELP)
    r.add_argument("--frames", type=_positive, default=32, help="frames sampled evenly (with --fps: at most)")
    r.add_argument("--fps", type=float, default=None, help="sample frames at this rate instead")
    r.add_argument("--compare", action="store_true", help="also run the unpruned model on the same input")
    r.add_argument("--max-new-tokens", type=_positive, default=32)
    r.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    r.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    r.add_argument("--threads", type=_non_negative, default=0)
    r.add_argument("--out", type=Path, default=Path("runs/run"))
    r.set_defaults(fn=cmd_run)
    e = sub.add_parser("eval", help="video-QA accuracy of each method x retain beside the unpruned model (JSONL)")
    e.add_argument("--model", type=Path, help="local checkpoint folder (any supported family)")
    e.add_argument("--data", type=Path,
                   help="JSONL: video, question, answer, optional options (multiple choice) and id per line")
    e.add_argument("--methods", default="none,fastv,sharp", help="comma list; none (unpruned) is always run")
    e.add_argument("--retain", type=_floats, default=[0.25, 0.1], help="comma list of retained shares")
    e.add_argument("--layer", type=_non_negative, default=None,
                   help=_LAYER_HELP)
    e.add_argument("--frames", type=_positive, default=32, help="frames sampled evenly (with --fps: at most)")
    e.add_argument("--fps", type=float, default=None, help="sample frames at this rate instead")
    e.add_argument("--max-new-tokens", type=_positive, default=16)
    e.add_argument("--options", type=_json_object, default={},
                   help='JSON per method, e.g. \'{"sharp": {"dedup_tau": 0.8}}\'')
    e.add_argument("--limit", type=_positive, default=None, help="only the first N samples")
    e.add_argument("--batch-size", type=_positive, default=1,
                   help="questions per batch, per method x retain (different videos batch, left-padded; the "
                   "answers do not change, a record's prefill_s is its batch's)")
    e.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    e.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    e.add_argument("--threads", type=_non_negative, default=0)
    e.add_argument("--out", type=Path, default=Path("runs/eval"),
                   help="records, report.json/.md, accuracy.png; rerunning with the same folder resumes")
    e.add_argument("--lmms-runs", type=Path, default=None, metavar="DIR",
                   help="instead: one table (lmms_report.md/.json in DIR) over lmms-eval runs of the sharp_vlm "
                   "model, one subfolder per method x retain, the unpruned one included")
    e.set_defaults(fn=cmd_eval)
    argv = sys.argv[1:] if argv is None else list(argv)
    a = parser.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    try:
        _check_alone({"probe": p, "bench": b, "eval": e}.get(a.cmd), a, argv[argv.index(a.cmd) + 1:])
        return a.fn(a)
    except SharpError as err:  # a usage error: one line that says what to do, no traceback
        print(f"sharp {a.cmd}: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: one line that says how to go on, no traceback
        _erase_progress_bars()
        print(f"sharp {a.cmd}: {_interrupted(a)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
