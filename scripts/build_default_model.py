#!/usr/bin/env python3
"""Build the default model shipped in `captioner/assets/default/`, from `../shared/data` only.

The recipe (configs/default_model.yaml): one model for images and videos, as in the seed paper's
transfer setting. Flickr8k train images (each a one-frame video) and the MSVD train-split clips
are extracted with the same backbone and sampling into one store and trained on jointly; model
selection uses CIDEr on the Flickr8k dev images. The 9 MSVD test-split clips go to a separate
store that training never opens; they, and the Flickr8k test images, are only captioned at the
end, through `captioner caption`, and scored with `captioner evaluate`.

    python3 scripts/build_default_model.py                       # every step
    python3 scripts/build_default_model.py --steps evaluate      # one step again

Steps: extract, captions, train, package, evaluate. Each is resumable or cheap to redo.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"
WORK = ROOT / "runs" / "default_model"
TRAIN_STORE = WORK / "features" / "train"
TEST_STORE = WORK / "features" / "msvd_test"
CONFIG = ROOT / "configs" / "default_model.yaml"
STEPS = ("extract", "captions", "train", "package", "evaluate")
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


def step_extract(args) -> None:
    from captioner.extract import ExtractConfig, extract

    config = ExtractConfig(backbone=args.backbone, frames=args.frames, batch_size=32, device=args.device)
    clips = msvd_clips_by_split()
    flickr = flickr_images("Flickr_8k.trainImages.txt") + flickr_images("Flickr_8k.devImages.txt")
    for inputs, store in ((flickr + clips["train"] + clips["val"], TRAIN_STORE), (clips["test"], TEST_STORE)):
        summary = extract(inputs, store, config)
        if summary.failed:
            sys.exit(f"extraction failed for {summary.failed} inputs; see {store}/failures.jsonl")


def step_captions(args) -> None:
    """The joint training captions: Flickr8k train images + MSVD train-split clips with features."""
    from captioner.datasets import load_captions

    flickr = load_captions(DATA / "flickr8k" / "captions.csv", "train")
    msvd = load_captions(DATA / "msvd" / "captions" / "MSVD_train.tsv")
    train_clips = {c.stem for c in msvd_clips_by_split()["train"]}
    rows = [{"video": vid, "captions": caps} for vid, caps in flickr.items()]
    rows += [{"video": vid, "captions": msvd[vid]} for vid in sorted(train_clips)]
    out = WORK / "captions_train.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"{out}: {len(flickr)} Flickr8k images, {len(train_clips)} MSVD clips, "
          f"{sum(len(r['captions']) for r in rows)} captions")


def step_train(args) -> None:
    from captioner.train import train_from_config

    run_dir = WORK / "train"
    if run_dir.exists() and not (run_dir / "last.pt").exists():
        shutil.rmtree(run_dir)
    train_from_config(str(CONFIG), [f"run_dir={run_dir}"] + args.set,
                      resume=(run_dir / "last.pt").exists() and args.resume)


def step_package(args) -> None:
    """Copy best.pt without the optimizer state into the package (it must stay small), with its
    inference export beside it (the decoder `captioner caption` runs without torch)."""
    from captioner.caption import DEFAULT_MODEL
    from captioner.model import export_checkpoint, export_inference, load_checkpoint

    export_checkpoint(WORK / "train" / "best.pt", DEFAULT_MODEL, half=args.half)
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
    test_list = WORK / "flickr8k_test.txt"
    test_list.write_text("\n".join(map(str, flickr_images("Flickr_8k.testImages.txt"))) + "\n")
    flickr_preds = WORK / "flickr8k_test_predictions.jsonl"
    _run(["caption", test_list, "--json", "--beam", str(args.beam)], flickr_preds)
    scores["flickr8k_test"] = json.loads(_run(["evaluate", "--predictions", flickr_preds, "--references",
                                               DATA / "flickr8k" / "captions.csv", "--split", "test", "--json"]))

    msvd_preds = WORK / "msvd_test_predictions.jsonl"
    _run(["caption", *msvd_clips_by_split()["test"], "--json", "--beam", str(args.beam)], msvd_preds)
    train_refs = WORK / "msvd_train_references.json"
    from captioner.datasets import load_captions

    msvd_train = load_captions(DATA / "msvd" / "captions" / "MSVD_train.tsv")
    train_refs.write_text(json.dumps({c.stem: msvd_train[c.stem] for c in msvd_clips_by_split()["train"]}))
    results = WORK / "msvd_test_results.json"
    _run(["evaluate", "--predictions", msvd_preds, "--references", DATA / "msvd" / "captions" / "MSVD_test.tsv",
          "--train-references", DATA / "msvd" / "captions" / "MSVD_train.tsv",
          "--train-features", TRAIN_STORE, "--test-features", TEST_STORE, "--out", results])
    scores["msvd_test"] = json.loads(results.read_text())
    (WORK / "scores.json").write_text(json.dumps(scores, indent=2))
    print(json.dumps(scores["flickr8k_test"], indent=2))
    for line in (WORK / "msvd_test_predictions.jsonl").read_text().splitlines():
        item = json.loads(line)
        print(f"{item['id']}\t{item['caption']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", default=",".join(STEPS), help="comma-separated subset of " + ", ".join(STEPS))
    parser.add_argument("--backbone", default="efficientnet_lite2")
    parser.add_argument("--frames", default="uniform:16")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--beam", type=int, default=3)
    parser.add_argument("--resume", action="store_true", help="continue an interrupted training run")
    parser.add_argument("--half", action="store_true", help="package the weights in float16 (half the size)")
    parser.add_argument("--set", action="append", default=[], help="training config override")
    args = parser.parse_args()
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = set(steps) - set(STEPS)
    if unknown:
        parser.error(f"unknown steps {sorted(unknown)}")
    for step in STEPS:
        if step in steps:
            print(f"== {step}", flush=True)
            globals()[f"step_{step}"](args)


if __name__ == "__main__":
    main()
