#!/usr/bin/env python3
"""Build the default model shipped in `captioner/assets/default/`, from `../shared/data` only.

The recipe is the pipeline `configs/pipeline_default.yaml` (its comments and MODEL_CARD.md
explain it): extraction with the concept backbone, the training-set stage that joins photos,
clips and caption-only videos (`captioner/training_set.py`), training, and predictions,
scores and a report on the 9 MSVD test-split clips. Around it this script
  - writes the pipeline's lists of clips and photos from the data's splits (`lists`),
  - scores the trained model on held-out dev clips beside the baselines (`dev`),
  - packages best.pt with its inference export (`package`),
  - captions the held-out sets through `captioner caption` with the packaged model and scores
    them with `captioner evaluate` (`evaluate`): the figures in MODEL_CARD.md.

    python3 scripts/build_default_model.py                       # every step
    python3 scripts/build_default_model.py --steps evaluate      # one step again

Steps: lists, pipeline, dev, package, evaluate. The pipeline's stages are cached and an
interrupted training resumes; `--set KEY=VALUE` overrides the pipeline config (e.g.
`--set train.epochs=12`). The 9 MSVD test-split clips are never trained on.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"
WORK = ROOT / "runs" / "default_model"
CONFIG = ROOT / "configs" / "pipeline_default.yaml"
LISTS = ROOT / "configs" / "lists"
STEPS = ("lists", "pipeline", "dev", "package", "evaluate")
# Train-split clips held out with the val-split ones as the video dev set (every 6th by id).
HELD_OUT_EVERY = 6
# The checkpoint and its inference export together: what the package may carry.
PACKAGE_LIMIT = 30 * 2**20


def msvd_clips_by_split() -> dict[str, list[Path]]:
    from captioner.datasets import load_captions

    clips = sorted((DATA / "msvd" / "clips").glob("*.avi"))
    split = {}
    for name in ("train", "val", "test"):
        ids = set(load_captions(DATA / "msvd" / "captions" / f"MSVD_{name}.tsv"))
        split[name] = [c for c in clips if c.stem in ids]
    assert sum(map(len, split.values())) == len(clips), "every shared clip belongs to one MSVD split"
    return split


def flickr_images(split_file: str) -> list[Path]:
    names = (DATA / "flickr8k" / split_file).read_text().split()
    return [DATA / "flickr8k" / "images" / name for name in names]


def dev_clips() -> list[Path]:
    clips = msvd_clips_by_split()
    return clips["train"][::HELD_OUT_EVERY] + clips["val"]


def training_clips() -> list[Path]:
    held_out = set(dev_clips())
    return [c for c in msvd_clips_by_split()["train"] if c not in held_out]


def _pipeline(args):
    from pipelines import build_stages, load_pipeline

    config = load_pipeline(args.config, args.set)
    return config, build_stages(config, progress=False)


def _stage_dirs(args) -> dict[str, Path]:
    """Where each pipeline stage keeps its outputs (its cache key decides)."""
    from pipelines.graph import plan

    config, stages = _pipeline(args)
    return {step.stage.name: step.dir for step in plan(stages, Path(config.run_dir).resolve())}


def step_lists(args) -> None:
    """The pipeline's input lists, paths relative to the list's folder as `captioner` reads them."""
    clips = msvd_clips_by_split()
    lists = {"msvd_train_clips": training_clips(), "msvd_dev_clips": dev_clips(), "msvd_test_clips": clips["test"],
             "flickr8k_train": flickr_images("Flickr_8k.trainImages.txt"),
             "flickr8k_dev": flickr_images("Flickr_8k.devImages.txt"),
             "flickr8k_test": flickr_images("Flickr_8k.testImages.txt")}
    LISTS.mkdir(parents=True, exist_ok=True)
    for name, paths in lists.items():
        lines = [Path(os.path.relpath(p, LISTS)).as_posix() for p in paths]
        (LISTS / f"{name}.txt").write_text("".join(f"{line}\n" for line in lines))
        print(f"{LISTS / name}.txt: {len(lines)}")


def step_pipeline(args) -> None:
    from pipelines import load_pipeline, run_pipeline

    run_pipeline(load_pipeline(args.config, args.set))


def step_dev(args) -> None:
    """Caption the held-out dev clips and score them beside the baselines (never the test split)."""
    from captioner.datasets import load_captions
    from captioner.evaluate import evaluate
    from captioner.extract import extract
    from captioner.model import load_checkpoint
    from captioner.store import open_features

    config, _ = _pipeline(args)
    dev_store = args.work / "features" / "msvd_dev"
    summary = extract([LISTS / "msvd_dev_clips.txt"], dev_store, config.extract, progress=False)
    if summary.failed:
        sys.exit(f"extraction failed for {summary.failed} dev clips; see {dev_store}/failures.jsonl")
    checkpoint = load_checkpoint(args.checkpoint or _stage_dirs(args)["train"] / "best.pt")
    clips = open_features(dev_store)
    ids = [c.stem for c in dev_clips()]
    vectors = clips.pooled_matrix(ids)[1]
    # The checkpoint's own decoding settings, as `captioner caption` uses them.
    hyps = checkpoint.predict(vectors, "video", decoding=checkpoint.decoding.but(beam=args.beam))
    predictions = {vid: best[0].caption for vid, best in zip(ids, hyps)}
    msvd_train = load_captions(DATA / "msvd" / "captions" / "MSVD_train.tsv")
    references = {**msvd_train, **load_captions(DATA / "msvd" / "captions" / "MSVD_val.tsv")}
    train_refs = {vid: caps for vid, caps in msvd_train.items() if vid not in set(ids)}
    result = evaluate(predictions, {vid: references[vid] for vid in ids}, train_references=train_refs,
                      test_features=clips)
    for system in result.systems:
        print(f"{system.name:20s} " + "  ".join(f"{m} {system.corpus[m]:.3f}" for m in result.metrics
                                                if m in ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr")))
    for vid in ids:
        print(f"{vid}\t{predictions[vid]}\t| {references[vid][0]}")


def step_package(args) -> None:
    """Copy best.pt without the optimizer state into the package (it must stay small), with its
    inference export beside it (the decoder `captioner caption` runs without torch)."""
    from captioner.catalog import DEFAULT_MODEL
    from captioner.model import export_checkpoint, export_inference, load_checkpoint

    export_checkpoint(_stage_dirs(args)["train"] / "best.pt", DEFAULT_MODEL, half=args.half)
    export = export_inference(DEFAULT_MODEL)
    packaged = load_checkpoint(DEFAULT_MODEL)
    size = sum(path.stat().st_size for path in (DEFAULT_MODEL, export))
    print(f"{DEFAULT_MODEL}: {DEFAULT_MODEL.stat().st_size / 2**20:.1f} MiB + {export.name} "
          f"{export.stat().st_size / 2**20:.1f} MiB, epoch {packaged.epoch}, validation {packaged.metrics}")
    if size > PACKAGE_LIMIT:
        sys.exit(f"the packaged model is {size / 2**20:.1f} MiB, over the {PACKAGE_LIMIT / 2**20:.0f} MiB the "
                 "package allows; re-run the package step with --half")


def _run(cmd: list[str], stdout_path: Path | None = None) -> str:
    result = subprocess.run([sys.executable, "-m", "captioner.cli", *map(str, cmd)], cwd=ROOT,
                            capture_output=True, text=True)
    sys.stderr.write(result.stderr[-3000:])
    if result.returncode != 0:
        sys.exit(f"captioner {cmd[0]} failed with exit code {result.returncode}")
    if stdout_path is not None:
        stdout_path.write_text(result.stdout, encoding="utf-8")
    return result.stdout


def step_evaluate(args) -> None:
    """Caption the held-out sets through the CLI with the packaged model and score them."""
    scores = {}
    dirs = _stage_dirs(args)
    work = args.work
    flickr_preds = work / "flickr8k_test_predictions.jsonl"
    _run(["caption", LISTS / "flickr8k_test.txt", "--json", "--beam", str(args.beam)], flickr_preds)
    scores["flickr8k_test"] = json.loads(_run(["evaluate", "--predictions", flickr_preds, "--references",
                                               DATA / "flickr8k" / "captions.csv", "--split", "test", "--json"]))

    msvd_preds = work / "msvd_test_predictions.jsonl"
    _run(["caption", LISTS / "msvd_test_clips.txt", "--json", "--beam", str(args.beam)], msvd_preds)
    results = work / "msvd_test_results.json"
    # corpus_test.csv: the canonical MSVD references (README, "Which MSVD reference file is canonical").
    _run(["evaluate", "--predictions", msvd_preds, "--references", DATA / "msvd" / "captions" / "corpus_test.csv",
          "--train-references", DATA / "msvd" / "captions" / "MSVD_train.tsv",
          "--train-features", dirs["extract-train"] / "features", "--test-features", dirs["extract-test"] / "features",
          "--out", results, "--allow-partial"])  # 9 of the 670 test-split videos have video here
    scores["msvd_test"] = json.loads(results.read_text())
    (work / "scores.json").write_text(json.dumps(scores, indent=2))
    print(json.dumps(scores["flickr8k_test"], indent=2))
    for line in msvd_preds.read_text().splitlines():
        item = json.loads(line)
        print(f"{item['id']}\t{item['caption']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", default=",".join(STEPS), help="comma-separated subset of " + ", ".join(STEPS))
    parser.add_argument("--beam", type=int, default=3)
    parser.add_argument("--config", type=Path, default=CONFIG, help="the pipeline (default: %(default)s)")
    parser.add_argument("--work", type=Path, default=WORK,
                        help="where the evaluate step writes predictions and scores (default: %(default)s)")
    parser.add_argument("--half", action=argparse.BooleanOptionalAction, default=True,
                        help="package the weights in float16 (half the size; default)")
    parser.add_argument("--checkpoint", type=Path, default=None, help="dev step: the checkpoint to score")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="pipeline config override, e.g. train.epochs=12 (repeatable)")
    args = parser.parse_args()
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = set(steps) - set(STEPS)
    if unknown:
        parser.error(f"unknown steps {sorted(unknown)}")
    os.chdir(ROOT)  # the pipeline config's relative paths are relative to the project root
    for step in STEPS:
        if step in steps:
            print(f"== {step}", flush=True)
            globals()[f"step_{step}"](args)


if __name__ == "__main__":
    main()
