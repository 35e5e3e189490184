"""The `captioner` command: a thin layer over the Python API.

Each subcommand parses its flags, imports the library lazily (so `captioner --help` never
imports torch) and calls one API function. Every flag, name and config value is checked before
anything heavy (torch, timm, OpenVINO, the web framework) is imported, so a typo fails in a
fraction of a second. User errors (`CaptionerError`) become one line on stderr and exit 1;
usage errors (`UsageError`: what was asked for is itself wrong) exit 2; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys

from .errors import CaptionerError, UsageError, printable
from .device import add_device_argument, check_device
from .precision import check as check_runtime_options
from .runtime import add_runtime_arguments


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's default prints usage too; keep it, exit 2
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


# The sampling syntax `captioner.video.Sampling.parse` takes, time windows included.
FRAMES_HELP = ("uniform:N (N evenly spread frames; default uniform:16), fps:F (F frames per second, by "
               "timestamp) or all; add @START-END to sample only that window of each video, in seconds "
               "(e.g. uniform:8@2.5-10; an open end as in fps:2@30-)")


# ----------------------------------------------------------------------------- extract
def _add_extract(sub) -> None:
    p = sub.add_parser("extract", help="extract backbone features for videos into a feature store",
                       description="Extract per-frame features and their time-mean for every input "
                                   "video. Resumable: re-running skips finished videos.")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="video/image files, folders (searched recursively) or .txt files listing paths")
    p.add_argument("--out", required=True, metavar="STORE", help="feature store directory")
    p.add_argument("--backbone", default=None,
                   help="registry name, several joined with '+' (e.g. efficientnet_lite2+i3d), or "
                        "ARCH=PATH for a timm/torchvision architecture with local weights (default: the "
                        "default model's, so `caption --features` reads the store)")
    p.add_argument("--frames", default=None, metavar="SAMPLING",
                   help=FRAMES_HELP.replace("default uniform:16", "default: the default model's sampling"))
    p.add_argument("--batch-size", type=int, default=None,
                   help="frames per backbone batch (default: 16 with OpenVINO, 4 with PyTorch on CPU, "
                        "where small batches run faster, 64 on CUDA)")
    p.add_argument("--workers", type=int, default=None,
                   help="decoding processes (default: one per spare core, at least 1)")
    add_device_argument(p)
    add_runtime_arguments(p)
    p.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="distribute videos over a Ray cluster ('auto' or host:port)")
    p.add_argument("--failures", default=None, metavar="FILE",
                   help="where to write the failure list (default STORE/failures.jsonl)")
    p.add_argument("--mirror", action="store_true",
                   help="flip frames left-right: a second view of a training set for "
                        "data.augment_features (never for captioning)")
    p.add_argument("--overwrite", action="store_true",
                   help="the store holds features of other settings (backbone, sampling, ...): extract the "
                        "inputs again with these and delete its other entries of other settings (without it, "
                        "such a store is refused and left as it is)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--progress", action="store_true",
                   help="draw the progress bar even when stderr is not a terminal (by default only on one)")
    p.set_defaults(handler=_run_extract)


def _run_extract(args) -> int:
    from .catalog import default_recipe
    from .extract import ExtractConfig, extract

    recipe = default_recipe() if args.backbone is None or args.frames is None else {}
    config = ExtractConfig(backbone=args.backbone or recipe["backbone"], frames=args.frames or recipe["frames"],
                           batch_size=args.batch_size, workers=args.workers, device=args.device,
                           runtime=args.runtime, precision=args.precision, ray_address=args.ray_address,
                           mirror=args.mirror)
    config.validate()  # every flag's form, before the inputs are searched or a backbone loads
    if args.ray_address:
        from .extras import require

        require("--ray-address", "ray")
    progress = not args.quiet and (args.progress or sys.stderr.isatty())
    summary = extract(args.inputs, args.out, config, failures_path=args.failures, progress=progress,
                      overwrite=args.overwrite)
    return 0 if summary.failed == 0 else 1


# ----------------------------------------------------------------------------- features
def _add_features(sub) -> None:
    p = sub.add_parser("features", help="inspect, import or export a feature store",
                       description="Exchange features with other tools: S2VT-style code reads one <id>.npy per "
                                   "video, others one HDF5 file with a (T, D) dataset per video id.")
    fsub = p.add_subparsers(dest="features_command", metavar="ACTION", parser_class=_Parser)
    fsub.required = True
    formats = "auto (default: a .h5/.hdf5 name or an existing file is HDF5, else a folder of .npy), hdf5 or npy"
    imp = fsub.add_parser("import", help="import an HDF5 file or a folder of <id>.npy files into a store",
                          description="Copy features made elsewhere into a feature store: each (T, D) "
                                      "(per-frame) or (D,) array becomes one video, named by its HDF5 dataset "
                                      "(or the group holding a 'features' dataset, or a video_id attribute) or "
                                      ".npy file stem, with its time-mean as the pooled vector. The store "
                                      "records backbone imported:SOURCE; `captioner train` reads it like any "
                                      "other store.")
    imp.add_argument("source", metavar="SOURCE", help="an HDF5 file (one dataset per video id) or a folder of "
                                                      "<id>.npy files")
    imp.add_argument("--out", required=True, metavar="STORE", help="feature store to write (created if missing)")
    imp.add_argument("--format", default="auto", choices=["auto", "hdf5", "npy"], help=f"SOURCE's format: {formats}")
    imp.set_defaults(handler=_run_features_import)
    exp = fsub.add_parser("export", help="export a store to one HDF5 file or a folder of <id>.npy files",
                          description="Write every video's per-frame (or per-clip) features, a (T, D) float32 "
                                      "array, as one HDF5 dataset per video id or one <id>.npy file per video.")
    exp.add_argument("store", metavar="STORE", help="feature store written by `captioner extract` or `features import`")
    exp.add_argument("dest", metavar="DEST", help="an .h5/.hdf5 file, or a folder for the .npy files")
    exp.add_argument("--format", default="auto", choices=["auto", "hdf5", "npy"], help=f"DEST's format: {formats}")
    exp.set_defaults(handler=_run_features_export)
    info = fsub.add_parser("info", help="print what a store holds and how it was extracted",
                           description="Print a store's video count, feature size and provenance (backbone, "
                                       "weights checksum, sampling, precision) as JSON.")
    info.add_argument("store", metavar="STORE", help="feature store")
    info.set_defaults(handler=_run_features_info)


def _run_features_import(args) -> int:
    from .atomic import check_output_path
    from .store import import_features

    check_output_path(args.out, folder=True, flag="--out")
    n = import_features(args.source, args.out, args.format)  # the store is created once the source passed
    print(f"imported {n} videos into {args.out}")
    return 0


def _run_features_export(args) -> int:
    from .store import export_features, open_features

    n = export_features(open_features(args.store), args.dest, args.format)
    print(f"exported {n} videos to {args.dest}")
    return 0


def _run_features_info(args) -> int:
    import json

    from .store import open_features

    store = open_features(args.store)
    print(json.dumps({"path": str(store.path), "videos": len(store), "feature_dim": store.feature_dim,
                      "provenance": store.provenance and store.provenance.to_dict()}, indent=2))
    return 0


# ----------------------------------------------------------------------------- train
def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a caption model on extracted features",
                       description="Train the caption model described by a YAML config (see configs/). "
                                   "Writes RUN/config.yaml, last.pt, best.pt and metrics.csv. "
                                   "Multi-GPU/CPU: python -m torch.distributed.run --nproc_per_node=N "
                                   "-m captioner train CONFIG")
    p.add_argument("config", metavar="CONFIG", help="training config (YAML)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set epochs=5 --set model.hidden_size=256")
    p.add_argument("--resume", action="store_true", help="continue the run in run_dir from last.pt")
    p.set_defaults(handler=_run_train)


def _run_train(args) -> int:
    from .config import load_config
    from .train_config import TrainConfig

    config = load_config(TrainConfig, args.config, args.overrides)  # every key, type and range; torch-free
    config.require_data()
    from .extras import require

    require("`captioner train`", "torch")
    from .train import train

    best = train(config, resume=args.resume)
    # Under torchrun every process returns here; one line is enough.
    if best.exists() and int(os.environ.get("RANK", "0")) == 0:
        print(f"best checkpoint: {best}")
    return 0


# ----------------------------------------------------------------------------- evaluate / report
def _add_scoring_inputs(p) -> None:
    """The inputs `evaluate` and `report` share: what to score, against what, beside which baselines."""
    p.add_argument("--predictions", required=True, metavar="FILE",
                   help="JSON {id: caption}, a coco results list, or `captioner caption --json` JSONL")
    p.add_argument("--references", required=True, metavar="FILE",
                   help="reference captions: JSON {id: [captions]} or any caption file `captioner train` reads")
    p.add_argument("--split", default=None, help="split of --references to use (train, val, test or an id list)")
    p.add_argument("--metrics", default="BLEU,METEOR,ROUGE-L,CIDEr",
                   help="comma-separated: BLEU (= BLEU-1..4), BLEU-n, METEOR, ROUGE-L, CIDEr, SPICE "
                        "(default %(default)s)")
    p.add_argument("--train-references", default=None, metavar="FILE",
                   help="training captions: adds the constant-caption baseline")
    p.add_argument("--train-split", default=None, help="split of --train-references to use")
    p.add_argument("--train-features", default=None, metavar="STORE",
                   help="feature store of the training videos: adds the nearest-neighbour baseline")
    p.add_argument("--test-features", default=None, metavar="STORE",
                   help="feature store of the evaluated videos (default: --train-features); from a "
                        "concept backbone it adds the concept-retrieval baseline")
    p.add_argument("--k", type=int, default=10, help="neighbours whose captions the nearest-neighbour "
                                                     "baseline pools (default %(default)s)")


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="score predicted captions with coco-caption's metrics",
                       description="Score predictions against reference captions exactly as coco-caption "
                                   "does (PTB tokenizer, BLEU-1..4, METEOR 1.5, ROUGE-L, CIDEr-D), beside "
                                   "the baselines whose inputs are given. Needs Java.")
    _add_scoring_inputs(p)
    p.add_argument("--json", action="store_true",
                   help="print the model's scores as one JSON object, with n: ids scored and reference ids missing")
    p.add_argument("--out", default=None, metavar="FILE", help="also write every score and caption, per video, "
                                                               "as JSON")
    p.add_argument("--allow-partial", action="store_true",
                   help="score the predicted ids even when predictions cover under 95%% of the reference ids "
                        "(refused by default: such scores do not compare)")
    p.set_defaults(handler=_run_evaluate)


def _require_scoring(args, command: str) -> None:
    """Scoring's extra, checked before anything is read: coco-caption, and scipy for the baselines."""
    from .extras import require

    require(f"`captioner {command}`", "pycocoevalcap", *(["scipy"] if args.train_features else []),
            *(["matplotlib"] if command == "report" else []))


def _scoring_kwargs(args) -> dict:
    return dict(split=args.split, metrics=args.metrics, train_references=args.train_references,
                train_split=args.train_split, train_features=args.train_features,
                test_features=args.test_features, k=args.k)


def _run_evaluate(args) -> int:
    import json

    _require_scoring(args, "evaluate")
    from .evaluate import MIN_COVERAGE, evaluate_files, format_table, write_results

    evaluation = evaluate_files(args.predictions, args.references, **_scoring_kwargs(args),
                                min_coverage=0.0 if args.allow_partial else MIN_COVERAGE)
    if args.out:
        write_results(evaluation, args.out)
    if args.json:
        result = {**evaluation.model.corpus, "n": evaluation.counts}
        if len(evaluation.systems) > 1:
            result["baselines"] = {s.name: s.corpus for s in evaluation.systems[1:]}
        print(json.dumps(result))
    else:
        print(format_table(evaluation))
    return 0


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="write an HTML/Markdown/JSON evaluation report",
                       description="Evaluate (as `captioner evaluate`) and write OUT/report.html (self-contained), "
                                   "OUT/report.md and OUT/report.json: scores beside baselines and published "
                                   "numbers, per-video captions with thumbnails, best and worst videos, plots.")
    _add_scoring_inputs(p)
    p.add_argument("--videos", default=None, metavar="DIR",
                   help="folder of the evaluated videos (found by file stem) for thumbnails")
    p.add_argument("--run", default=None, metavar="RUN_DIR", help="training run directory: plots RUN/metrics.csv")
    p.add_argument("--title", default=None, help="report title")
    p.add_argument("--out", required=True, metavar="DIR", help="where to write the report")
    p.add_argument("--quiet", action="store_true",
                   help="no progress line (shown only when stderr is a terminal anyway)")
    p.set_defaults(handler=_run_report)


def _run_report(args) -> int:
    _require_scoring(args, "report")
    from .report import report_files

    paths = report_files(args.predictions, args.references, args.out, videos=args.videos, run=args.run,
                         title=args.title, progress=not args.quiet and sys.stderr.isatty(),
                         **_scoring_kwargs(args))
    for path in paths.values():
        print(path)
    return 0


# ----------------------------------------------------------------------------- caption
def _add_caption(sub) -> None:
    p = sub.add_parser("caption", help="caption video or image files, frames' features in a store",
                       description="Caption each input with a trained model (default: the model shipped "
                                   "in the package; nothing is downloaded). Prints path<TAB>caption "
                                   "(id<TAB>caption with --features); in the path, a backslash, tab, newline "
                                   "or other control character is written \\\\, \\t, \\n or \\xHH.")
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help="video/image files, folders, glob patterns or .txt lists; with --features, store ids "
                        "(default: every video in the store)")
    p.add_argument("--features", default=None, metavar="STORE",
                   help="caption the videos of a feature store `captioner extract` made (no video is decoded)")
    p.add_argument("--model", default="default",
                   help="'default' (the model inside the package) or a checkpoint file (.pt); `captioner models` "
                        "lists them")
    p.add_argument("--beam", type=int, default=None,
                   help="beam size (1 = greedy; default: the model's own, 3 for the default model)")
    p.add_argument("--n-best", type=int, default=None, metavar="N",
                   help="captions kept as alternatives in --json, best first (default: 3, or the beam size if "
                        "smaller); beam search finds at most --beam captions, so N above --beam is an error")
    p.add_argument("--max-len", type=int, default=None,
                   help="longest caption in words (default: the model's own, 20 for the default model)")
    p.add_argument("--length-penalty", type=float, default=None,
                   help="beam score = log-probability / (words + 1) ** this (default: the model's own, 0.5 for "
                        "the default model; 0 favours short captions)")
    p.add_argument("--batch-size", type=int, default=None, metavar="N",
                   help="inputs captioned together by one batched search (default 1 for files, 64 with --features)")
    p.add_argument("--json", action="store_true",
                   help="one JSON object per line: path, id, caption, score, alternatives, model, timing")
    p.add_argument("--segments", type=float, default=None, metavar="SECONDS",
                   help="also caption consecutive windows of this many seconds")
    p.add_argument("--output-dir", "--output_dir", dest="output_dir", default=None, metavar="DIR",
                   help="write one file per input and format into DIR, named by the input's id (its file stem, "
                        "or more of its path where two inputs share a stem); default '.' when only "
                        "--output-format is given")
    p.add_argument("--output-format", "--output_format", dest="output_format", default=None, metavar="FORMAT",
                   help="txt, json, srt, vtt (these two need --segments) or all (default all: txt, json and, "
                        "with --segments, srt and vtt); several joined with ','")
    p.add_argument("--srt", default=None, metavar="FILE",
                   help="write segment captions as SRT (a folder when several inputs are given)")
    p.add_argument("--vtt", default=None, metavar="FILE",
                   help="write segment captions as WebVTT (a folder when several inputs are given)")
    add_device_argument(p)
    add_runtime_arguments(p)
    p.add_argument("--verbose", action="store_true", help="print the time split per input on stderr")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="a progress bar over the inputs (and each one's segments) on stderr "
                        "(default: when stderr is a terminal)")
    p.set_defaults(handler=_run_caption)


def _process_age() -> float:
    """Seconds since this process started (interpreter start-up and imports), 0 if unknown."""
    import os

    try:
        with open("/proc/self/stat") as fh:
            start_ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


# How `captioner caption` spells the decoding settings in its messages (captioner.search checks them).
DECODING_FLAGS = {"beam": "--beam", "n_best": "--n-best", "max_len": "--max-len", "length_penalty": "--length-penalty"}


def _decoding_args(args) -> dict:
    return {"beam": args.beam, "n_best": args.n_best, "max_len": args.max_len, "length_penalty": args.length_penalty}


def _check_caption_args(args) -> tuple[str, ...]:
    """Usage errors before anything is loaded; returns the output formats to write."""
    from .search import check_settings

    if not args.paths and not args.features:
        raise UsageError("give at least one PATH to caption, or --features STORE")
    check_settings(_decoding_args(args), DECODING_FLAGS)  # the model's own settings are checked once it is loaded
    if args.batch_size is not None and args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.segments is not None and not args.segments > 0:
        raise UsageError("--segments must be a positive number of seconds")
    if args.features and args.segments is not None:
        raise UsageError("--segments needs the videos themselves; a feature store holds one vector per video")
    formats: tuple[str, ...] = ()
    if args.output_dir is not None or args.output_format is not None:
        from .writers import SUBTITLE_FORMATS, parse_output_formats

        formats = parse_output_formats(args.output_format or "all")
        timed = [f for f in formats if f in SUBTITLE_FORMATS]
        if timed and args.segments is None and args.output_format not in (None, "all"):
            raise UsageError(f"--output-format {','.join(timed)} needs --segments SECONDS (subtitles are timed)")
    for flag in ("srt", "vtt"):
        if getattr(args, flag) and args.segments is None:
            raise UsageError(f"--{flag} needs --segments SECONDS")
    return formats


def _run_caption(args) -> int:
    import time
    from pathlib import Path

    formats = _check_caption_args(args)
    from .atomic import check_output_path

    check_runtime_options(args.runtime, args.precision)
    check_device(args.device)
    from .caption import Captioner, CaptionProgress, check_model, run_timing
    from .inputs import expand_globs, find_inputs
    from .writers import get_writer, output_path, to_json, write_outputs

    check_model(args.model)
    startup = _process_age()  # interpreter and library start-up; model_load is then weights only

    failed = 0
    if args.features:
        from .store import open_features

        store = open_features(args.features)
        paths, many = args.paths or store.ids(), True
    else:
        candidates, unmatched = expand_globs(args.paths)
        for pattern in unmatched:
            print(f"captioner: {printable(pattern)}: no file matches this pattern", file=sys.stderr)
            failed += 1
        paths, missing = find_inputs(candidates)
        for _, error in missing:  # every missing entry is reported; the rest are still captioned
            print(f"captioner: {error}", file=sys.stderr)
            failed += 1
        if not paths:
            return 1 if failed else 2
        # A folder when more than one input was asked for, even if only one of them exists.
        many = len(paths) + len(missing) + len(unmatched) > 1
    subtitles = [(fmt, target) for fmt, target in (("srt", args.srt), ("vtt", args.vtt)) if target]
    for fmt, target in subtitles:
        check_output_path(target, folder=many, flag=f"--{fmt}")
    if formats:
        args.output_dir = args.output_dir or "."
        check_output_path(args.output_dir, folder=True, flag="--output-dir")
    progress = CaptionProgress(len(paths), sys.stderr.isatty() if args.progress is None else args.progress)
    captioner = Captioner.load(args.model, device=args.device, runtime=args.runtime, precision=args.precision,
                               load_backbone=False)
    decoding = _decoding_args(args)
    # With the model's own settings filled in (--n-best above its beam), before the backbone loads.
    captioner.decoding.but(**decoding, names=DECODING_FLAGS)
    if not args.features:
        loading = time.perf_counter()
        captioner.backbone  # noqa: B018 (loads it now, so model_load counts it, not the first input)
        captioner.load_seconds += time.perf_counter() - loading
    if args.features:
        results = captioner.caption_store(store, paths, batch_size=args.batch_size or 64, **decoding)
    else:
        results = captioner.caption_many(paths, segments=args.segments, progress=progress.segments,
                                         batch_size=args.batch_size or 1, **decoding)

    def write(what: str, name: str, where, paths_written) -> None:
        """Write an input's files; a failure (disk full, read-only) is one line naming the input."""
        nonlocal failed
        try:
            paths_written()
        except CaptionerError as exc:
            progress.write(f"captioner: {exc}", sys.stderr)
            failed += 1
        except OSError as exc:
            progress.write(f"captioner: {name}: cannot write its {what} to {printable(str(exc.filename or where))} "
                           f"({exc.strerror or exc}); its caption is above", sys.stderr)
            failed += 1

    started = time.perf_counter()  # each input's total runs from the previous input's output
    try:
        for path, result in results:
            progress.advance()
            if isinstance(result, CaptionerError):
                progress.write(f"captioner: {result if result.path else f'{printable(str(path))}: {result}'}",
                               sys.stderr)
                failed += 1
                started = time.perf_counter()
                continue
            result.timing = run_timing(result.timing, startup, captioner.load_seconds,
                                       startup + captioner.load_seconds + time.perf_counter() - started)
            startup = 0.0  # paid once, by the first input
            captioner.load_seconds = 0.0
            started = time.perf_counter()
            name = printable(result.id if args.features else result.path)  # one line, two fields: see --help
            progress.write(to_json(result) if args.json else f"{name}\t{result.caption}")
            if args.verbose:
                progress.write("captioner: " + name + ": " + ", ".join(f"{k} {v:.3f}s"
                                                                         for k, v in result.timing.items()),
                               sys.stderr)
            # Files are written after the caption is out: a failed write loses nothing else.
            for fmt, target in subtitles:
                file = output_path(target, result, fmt) if many else Path(target)
                write("subtitles", name, file, lambda: get_writer(fmt).write(result, file))
            if formats:
                write("output files", name, args.output_dir, lambda: write_outputs(result, args.output_dir, formats))
    finally:
        progress.close()
    return 1 if failed else 0


# ----------------------------------------------------------------------------- pipeline
def _add_pipeline(sub) -> None:
    p = sub.add_parser("pipeline", help="extract -> train -> predict -> evaluate -> report from one config",
                       description="Run the stages a pipeline config describes (see configs/pipeline_*.yaml). "
                                   "Stages whose config values, input files and upstream stages are unchanged "
                                   "are skipped; an interrupted stage resumes.")
    psub = p.add_subparsers(dest="pipeline_command", metavar="ACTION", parser_class=_Parser)
    psub.required = True
    run = psub.add_parser("run", help="print the plan, then run the stages that are not up to date",
                          description="Print which stages run and why (a changed value, input file or upstream "
                                      "stage), then run them in order; finished stages are skipped and an "
                                      "interrupted one resumes. A failing stage stops the run with one line.")
    run.add_argument("config", metavar="CONFIG", help="pipeline config (YAML)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config value, e.g. --set train.lr=3e-4 --set distributed.nproc_per_node=4")
    run.add_argument("--until", action="append", default=[], metavar="STAGE",
                     help="run only this stage and those it needs (a group name such as 'extract' means all)")
    run.add_argument("--force", action="append", default=[], metavar="STAGE",
                     help="re-run this stage from scratch, and every stage after it")
    run.add_argument("--dry-run", action="store_true", help="print the plan and run nothing")
    run.add_argument("--ray-address", default=None, metavar="ADDR",
                     help="extract on this Ray cluster ('auto' or host:port; overrides extract.ray_address)")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.set_defaults(handler=_run_pipeline)
    join = psub.add_parser("join", help="on another node: join the multi-node training stage of a pipeline",
                           description="Wait until the pipeline (started on the first node with the same config) "
                                       "launches its training stage, then start this node's share of it. The run "
                                       "directory must be on a file system shared by all nodes.")
    join.add_argument("config", metavar="CONFIG", help="the same pipeline config")
    join.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="the same overrides as on the first node")
    join.add_argument("--stage", default="train", choices=["train", "pretrain"], help="training stage to join")
    join.set_defaults(handler=_run_pipeline_join)


def _run_pipeline(args) -> int:
    from pipelines import load_pipeline, run_pipeline

    config = load_pipeline(args.config, args.overrides)
    if args.ray_address:
        config.extract.ray_address = args.ray_address
    run_pipeline(config, until=args.until, force=args.force, dry_run=args.dry_run, progress=not args.quiet)
    return 0


def _run_pipeline_join(args) -> int:
    from pipelines import join_training, load_pipeline

    join_training(load_pipeline(args.config, args.overrides), args.stage)
    return 0


# ----------------------------------------------------------------------------- serve
def _add_serve(sub) -> None:
    p = sub.add_parser("serve", help="caption videos from a web page (and a JSON API)",
                       description="Serve a page where a video can be uploaded or dropped to read its caption, "
                                   "alternatives, keyframes and timed captions (SRT/WebVTT downloads), and the "
                                   "JSON API behind it: POST /api/caption, GET /api/health, /openapi.json.")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default %(default)s: this machine only; 0.0.0.0 exposes it)")
    p.add_argument("--port", type=int, default=8000, help="port (default %(default)s)")
    p.add_argument("--model", default="default",
                   help="'default' (the model inside the package) or a checkpoint file (.pt); `captioner models` "
                        "lists them")
    p.add_argument("--max-upload-mb", type=float, default=100.0, metavar="N",
                   help="largest accepted upload in MB (default %(default)g); larger ones get HTTP 413")
    p.add_argument("--queue", type=int, default=4, metavar="N",
                   help="uploaded videos waiting for or being captioned (default %(default)s); more get HTTP 503")
    p.add_argument("--uploads", type=int, default=16, metavar="N",
                   help="uploads in progress at once (default %(default)s); more get HTTP 503")
    p.add_argument("--upload-timeout", type=float, default=120.0, metavar="SECONDS",
                   help="time a client may take to send its whole upload (default %(default)g); then HTTP 408")
    p.add_argument("--idle-timeout", type=float, default=15.0, metavar="SECONDS",
                   help="time a client may pause in the middle of an upload (default %(default)g); then HTTP 408")
    p.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                   help="a web origin (e.g. https://example.org) whose pages may post videos here; repeatable. "
                        "Posts from other sites' pages get HTTP 403")
    p.add_argument("--db", default=None, metavar="FILE",
                   help="a library made by `captioner index`: the page adds its gallery (search, keyframes, playback)")
    add_device_argument(p)
    add_runtime_arguments(p)
    p.set_defaults(handler=_run_serve)


def _run_serve(args) -> int:
    from urllib.parse import urlsplit

    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be between 0 and 65535, got {args.port}")
    if not args.max_upload_mb > 0 or args.queue < 1 or args.uploads < 1:
        raise UsageError("--max-upload-mb must be positive and --queue and --uploads at least 1")
    if not (args.upload_timeout > 0 and args.idle_timeout > 0):
        raise UsageError("--upload-timeout and --idle-timeout must be positive numbers of seconds")
    for origin in args.allow_origin:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc or origin != f"{parts.scheme}://{parts.netloc}":
            raise UsageError(f"--allow-origin takes an origin such as https://example.org:8443 "
                             f"(scheme, host and port only), got {origin!r}")
    check_runtime_options(args.runtime, args.precision)
    check_device(args.device)
    from .caption import check_model

    check_model(args.model)  # before the web framework is imported
    if args.db is not None:
        _check_library_path(args.db, must_exist=True)
        from .library import Library

        Library.open(args.db, create=False).close()  # not a library, or a newer one: one line, before the server
    from .serve import ServeLimits, serve

    limits = ServeLimits(max_upload_mb=args.max_upload_mb, queue=args.queue, uploads=args.uploads,
                         upload_timeout=args.upload_timeout, idle_timeout=args.idle_timeout,
                         allow_origins=tuple(args.allow_origin))
    serve(model=args.model, host=args.host, port=args.port, limits=limits, device=args.device,
          runtime=args.runtime, precision=args.precision, db=args.db)
    return 0


# ----------------------------------------------------------------------------- library
def _add_index(sub) -> None:
    p = sub.add_parser("index", help="caption videos into a searchable library (one SQLite file)",
                       description="Caption every input and its timed windows (as `caption --segments`) and keep "
                                   "the captions, concepts, keyframes, duration and pooled features in one database "
                                   "file. Resumable: a re-run skips unchanged videos and redoes changed ones.")
    p.add_argument("inputs", nargs="+", metavar="VIDEO",
                   help="video/image files, folders (searched recursively), glob patterns or .txt lists")
    p.add_argument("--db", required=True, metavar="FILE", help="the library's database file (created if missing)")
    p.add_argument("--segments", type=float, default=5.0, metavar="SECONDS",
                   help="length of the timed windows captioned in each video (default %(default)g)")
    p.add_argument("--model", default="default",
                   help="'default' (the model inside the package) or a checkpoint file (.pt)")
    p.add_argument("--no-thumbnails", dest="thumbnails", action="store_false", help="keep no keyframe JPEGs")
    p.add_argument("--no-features", dest="features", action="store_false", help="keep no pooled feature vectors")
    p.add_argument("--export", default=None, metavar="FILE",
                   help="afterwards, write the whole library as JSON Lines or .parquet (as `captioner export`)")
    p.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="caption on this Ray cluster ('auto' or host:port); this process writes the library")
    add_device_argument(p)
    add_runtime_arguments(p)
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="a progress bar on stderr (default: when stderr is a terminal)")
    p.set_defaults(handler=_run_index)


def _check_library_path(db: str, must_exist: bool) -> None:
    from pathlib import Path

    path = Path(db)
    if path.is_dir():
        raise UsageError(f"{db}: a library is a database file, not a folder")
    if must_exist and not path.exists():
        raise CaptionerError("library not found (create it with `captioner index VIDEOS --db FILE`)", path)
    if not must_exist and not path.exists() and not path.parent.is_dir():
        raise UsageError(f"the folder for --db does not exist: {path.parent}")


def _check_export_path(out: str) -> None:
    from pathlib import Path

    if Path(out).is_dir():
        raise UsageError(f"export needs a file name, not a folder: {out}")
    if Path(out).suffix.lower() == ".parquet":
        from .extras import require

        require("Parquet export", "pyarrow")


def _run_index(args) -> int:
    import sys

    if not args.segments > 0:
        raise UsageError("--segments must be a positive number of seconds")
    _check_library_path(args.db, must_exist=False)
    if args.export:
        _check_export_path(args.export)
    check_runtime_options(args.runtime, args.precision)
    check_device(args.device)
    if args.ray_address:
        from .extras import require

        require("--ray-address", "ray")
    from .caption import check_model

    check_model(args.model)
    from .library import Library

    with Library.open(args.db) as library:
        summary = library.add(args.inputs, segments=args.segments, model=args.model, thumbnails=args.thumbnails,
                              features=args.features, progress=sys.stderr.isatty() if args.progress is None
                              else args.progress, device=args.device, runtime=args.runtime,
                              precision=args.precision, ray_address=args.ray_address)
        print(f"captioner: {summary.line()}", file=sys.stderr)
        if args.export:
            count = library.export(args.export)
            print(f"exported {count} videos to {args.export}")
    return 0 if summary.failed == 0 else 1


def _add_search(sub) -> None:
    p = sub.add_parser("search", help="find videos in a library by words",
                       description="Rank the library's videos by how well their captions, window captions and "
                                   "recognised concepts (with synonyms) match the query; print each hit's id, "
                                   "best-matching window, score, caption, concepts and path.")
    p.add_argument("db", metavar="DB", help="a library made by `captioner index`")
    p.add_argument("query", metavar="QUERY", help="words to look for (quote them); may be empty with a filter")
    p.add_argument("--limit", type=int, default=10, help="hits to print (default %(default)s)")
    p.add_argument("--concept", default=None, help="only videos where this class was recognised, e.g. skateboarding")
    p.add_argument("--min-duration", type=float, default=None, metavar="SECONDS",
                   help="only videos at least this long")
    p.add_argument("--json", action="store_true", help="one JSON object per hit and line")
    p.add_argument("--model", default=None, metavar="CHECKPOINT",
                   help="the checkpoint that indexed the library, to rerank by (the default model is found alone)")
    p.add_argument("--no-rerank", dest="rerank", action="store_false",
                   help="keep the text ranking: the caption model does not reread the top hits (faster)")
    p.set_defaults(handler=_run_search)


def _run_search(args) -> int:
    import json
    import math

    if args.limit < 1:
        raise UsageError("--limit must be at least 1")
    if args.min_duration is not None and not (math.isfinite(args.min_duration) and args.min_duration >= 0):
        raise UsageError("--min-duration must be a number of seconds, 0 or more")
    if not args.query.strip() and args.concept is None and args.min_duration is None:
        raise UsageError("give words to search for, or a filter (--concept, --min-duration)")
    _check_library_path(args.db, must_exist=True)
    if args.model is not None:
        from .caption import check_model

        check_model(args.model)
    from .library import Library

    with Library.open(args.db, create=False) as library:
        hits = library.search(args.query, args.limit, concept=args.concept, min_duration=args.min_duration,
                              rerank=args.rerank, model=args.model)
    for hit in hits:
        if args.json:
            print(json.dumps(hit.to_dict(), ensure_ascii=False))
        else:
            concepts = ", ".join(c["name"] for found in hit.concepts.values() for c in found[:2])
            print(f"{hit.id}\t{hit.start:.1f}-{hit.end:.1f}s\t{hit.score:.2f}\t{hit.caption}\t{concepts}\t{hit.path}")
    return 0


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="write a library as JSON Lines",
                       description="Write every indexed video as one JSON object per line: id, path, duration, "
                                   "caption, alternatives, concepts, timed windows, input fingerprint and the "
                                   "pooled features (pandas.read_json(lines=True), DuckDB and pyarrow read it).")
    p.add_argument("db", metavar="DB", help="a library made by `captioner index`")
    p.add_argument("out", metavar="OUT", help="the JSON Lines file to write (.jsonl)")
    p.add_argument("--no-features", dest="features", action="store_false", help="leave the feature vectors out")
    p.add_argument("--thumbnails", action="store_true", help="add the keyframes as data-URI JPEGs")
    p.set_defaults(handler=_run_export)


def _run_export(args) -> int:
    _check_library_path(args.db, must_exist=True)
    _check_export_path(args.out)
    from .library import Library

    with Library.open(args.db, create=False) as library:
        count = library.export(args.out, features=args.features, thumbnails=args.thumbnails)
    print(f"exported {count} videos to {args.out}")
    return 0


# ----------------------------------------------------------------------------- models
def _add_models(sub) -> None:
    p = sub.add_parser("models", help="list the shipped model, checkpoints under a folder, and the backbones",
                       description="List what `--model` and `--backbone` take: the default model inside the "
                                   "package (and every checkpoint under --runs), with the backbone it reads, "
                                   "then every registered backbone with its feature size, input and the weights "
                                   "it needs (and whether they are installed).")
    p.add_argument("--runs", default=None, metavar="DIR",
                   help="also list the checkpoints (*.pt but last.pt) under this folder, e.g. runs/")
    p.add_argument("--json", action="store_true", help="print one JSON object: models and backbones")
    p.set_defaults(handler=_run_models)


def _run_models(args) -> int:
    import json

    from .catalog import BACKBONES, list_models

    models = list_models(args.runs)
    if args.json:
        print(json.dumps({"models": [m.to_dict() for m in models], "backbones": [b.to_dict() for b in BACKBONES]},
                         indent=2))
        return 0
    print("models (--model):")
    for m in models:
        print(f"  {m.name}")
        if m.name != m.path:
            print(f"      file       {m.path}")
        if m.note:
            print(f"      note       {m.note}")
        else:
            print(f"      id         {m.model_id}")
            print(f"      backbone   {m.backbone} ({m.feature_dim}-d, frames {m.frames})")
            print(f"      vocabulary {m.vocabulary} words")
    from .runtime import shipped_backbones

    shipped = set(shipped_backbones())
    print("backbones (extract --backbone; join with '+'):")
    width = max(len(b.name) for b in BACKBONES)
    for b in BACKBONES:
        dim = f"{b.feature_dim}-d" if b.feature_dim else "arch-d"
        installed = b.installed()
        state = ("  [OpenVINO network ships]" if b.name in shipped and not installed
                 else "" if installed is None else "  [installed]" if installed else f"  [missing: {b.pip}]")
        print(f"  {b.name:<{width}}  {dim:>7}  {b.input:<22}  {b.weights}{state}")
    return 0


# ----------------------------------------------------------------------------- main
class _VersionAction(argparse.Action):
    """`--version`: captioner, Python, torch, OpenVINO and the devices, from package metadata
    (importing torch to ask its version would take seconds)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from .catalog import environment, format_environment

        print(format_environment(environment()))
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="captioner", description="Caption videos in English.")
    parser.add_argument("--version", action=_VersionAction,
                        help="print the versions of captioner, Python, torch and OpenVINO, and the devices")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for add in (_add_extract, _add_features, _add_caption, _add_train, _add_evaluate, _add_report,
                _add_pipeline, _add_serve, _add_models, _add_index, _add_search, _add_export):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except UsageError as exc:
        print(f"captioner: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:  # an extra's module, imported where no check came first
        from .extras import from_import_error

        missing = from_import_error(f"`captioner {args.command}`", exc)
        if missing is None:
            raise
        print(f"captioner: error: {missing}", file=sys.stderr)
        return 2
    except CaptionerError as exc:
        print(f"captioner: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("captioner: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `captioner caption ... | head`
        return 0
    except OSError as exc:
        # A full disk, a quota or a read-only place is the machine's state, not a bug: one line
        # wherever the write was (the writers that can say more catch it themselves).
        if exc.errno not in _ENVIRONMENT_ERRNOS:
            raise
        where = f"{printable(str(exc.filename))}: " if exc.filename else ""
        print(f"captioner: error: {where}cannot write: {exc.strerror}", file=sys.stderr)
        return 1


_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EACCES, errno.EPERM}


if __name__ == "__main__":
    sys.exit(main())
