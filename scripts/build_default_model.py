#!/usr/bin/env python3
"""Build the default model shipped in `captioner/assets/default/`, from `../shared/data` only.

The recipe (configs/default_model.yaml), one model for photos and videos that names what the
backbones recognise. Every input is one vector: EfficientNet-Lite2 features beside the class
probabilities of Lite2's ImageNet head and I3D's Kinetics head (`efficientnet_lite2_concepts+
i3d_concepts`, 4 sample points). Training joins three sources in one store:
  - Flickr8k train photos with their captions (a photo has no actions: zeros there);
  - the MSVD train-split clips that have video here;
  - every other MSVD train-split video, known only by its captions: no appearance (zeros) and
    the class probabilities its captions imply, corrupted the way the real heads err
    (`captioner.concepts.text_only_vector`), drawn afresh for each of VIEWS views.
Held out of training, as the video dev set: the 4 MSVD val-split clips and HELD_OUT train-split
clips. The 9 MSVD test-split clips go to a separate store that training never opens; they and
the Flickr8k test photos are only captioned at the end, through `captioner caption`, and scored
with `captioner evaluate`. Model selection: CIDEr on the Flickr8k dev photos.

    python3 scripts/build_default_model.py                       # every step
    python3 scripts/build_default_model.py --steps evaluate      # one step again

Steps: extract, concepts, captions, train, dev, package, evaluate. Each is resumable or cheap to
redo. `dev` scores the trained model on the held-out clips beside the baselines (`--checkpoint`
picks another checkpoint, e.g. last.pt while training runs).
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
TRAIN_STORE = WORK / "features" / "train"  # what training reads: all three sources
VIEW_STORES = [WORK / "features" / f"train_view{i}" for i in (1, 2)]  # other draws of the text-only videos
CLIP_STORE = WORK / "features" / "msvd_clips"  # MSVD train- and val-split clips
FLICKR_STORE = WORK / "features" / "flickr8k"  # Flickr8k train + dev photos, image member only
TEST_STORE = WORK / "features" / "msvd_test"
DEV_CLIPS = WORK / "msvd_dev_clips.txt"
CONFIG = ROOT / "configs" / "default_model.yaml"
BACKBONE = "efficientnet_lite2_concepts+i3d_concepts"
IMAGE_MEMBER = "efficientnet_lite2_concepts"
FRAMES = "uniform:4"  # I3D runs on each point's 16-frame clip: 4 keep a 10-s clip's caption fast
STEPS = ("extract", "concepts", "captions", "train", "dev", "package", "evaluate")
# Train-split clips held out with the val-split ones as the video dev set (every 6th by id).
HELD_OUT_EVERY = 6
TEXT_CAPTIONS_PER_VIDEO = 12
SEED = 0
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


def step_extract(args) -> None:
    from captioner.extract import ExtractConfig, extract

    def run(inputs, store, backbone, frames):
        config = ExtractConfig(backbone=backbone, frames=frames, batch_size=16, device=args.device)
        summary = extract(inputs, store, config)
        if summary.failed:
            sys.exit(f"extraction failed for {summary.failed} inputs; see {store}/failures.jsonl")

    clips = msvd_clips_by_split()
    run(clips["train"] + clips["val"], CLIP_STORE, BACKBONE, FRAMES)
    run(clips["test"], TEST_STORE, BACKBONE, FRAMES)
    # Photos run the image member alone: the clip member's part of a still is zeros by rule
    # (backbones/concepts.py), so running I3D on 7,000 photos would only compute zeros.
    run(flickr_images("Flickr_8k.trainImages.txt") + flickr_images("Flickr_8k.devImages.txt"), FLICKR_STORE,
        IMAGE_MEMBER, "uniform:1")


def step_concepts(args) -> None:
    """The training stores: photos, clips with video, and text-only videos with derived concepts."""
    import numpy as np

    from captioner.concepts import appearance_mask, heads, text_only_vector
    from captioner.datasets import load_captions
    from captioner.store import open_features
    from captioner.text import tokenize

    clips, flickr = open_features(CLIP_STORE), open_features(FLICKR_STORE)
    provenance = clips.provenance
    feature_dim = clips.feature_dim
    concept_heads = heads(provenance)
    image_dim = flickr.feature_dim
    train_ids = [c.stem for c in training_clips()]
    held_out = {c.stem for c in dev_clips()}
    DEV_CLIPS.write_text("".join(f"{c}\n" for c in dev_clips()))
    clip_vectors, _ = clips.pooled_with_meta(train_ids)
    flickr_ids, flickr_vectors = flickr.pooled_matrix()
    rng = np.random.default_rng(SEED)
    # What the heads say of real footage: the training clips (both heads) and photos (objects).
    real = {head.kind: clip_vectors[:, head.start:head.end] for head in concept_heads}
    objects = next(h for h in concept_heads if h.kind == "objects")
    photo_rows = rng.choice(len(flickr_ids), size=min(2000, len(flickr_ids)), replace=False)
    real["objects"] = np.concatenate([real["objects"], flickr_vectors[photo_rows, objects.start:objects.end]])

    msvd = load_captions(DATA / "msvd" / "captions" / "MSVD_train.tsv")
    text_only = sorted(set(msvd) - set(train_ids) - held_out)
    tokens = {vid: [tokenize(c) for c in caps] for vid, caps in msvd.items()}
    for store_path in [TRAIN_STORE, *VIEW_STORES]:
        if store_path.exists():
            shutil.rmtree(store_path)
    train = open_features(TRAIN_STORE, "a")
    train.set_provenance(provenance)
    for vid, vector in zip(train_ids, clip_vectors):
        train.put(vid, vector, {**clips.meta(vid), "source": "msvd clip"})
    padding = np.zeros(feature_dim - image_dim, dtype=np.float32)  # the clip member's zeros
    for vid, vector in zip(flickr_ids, flickr_vectors):
        train.put(vid, np.concatenate([vector, padding]), {"is_image": True, "source": "flickr8k photo"})
    views = [open_features(p, "a") for p in VIEW_STORES]
    for view in views:
        view.set_provenance(provenance)
    # One view shows the clips without their appearance features: caption-only videos have
    # none, and this teaches the decoder to read the real heads' concepts on their own.
    appearance = appearance_mask(feature_dim, concept_heads)
    for vid, vector in zip(train_ids, clip_vectors):
        views[0].put(vid, np.where(appearance, 0.0, vector), {"is_image": False, "source": "msvd clip, no appearance"})
    for store in [train, *views]:
        for vid in text_only:
            vector = text_only_vector(tokens[vid], feature_dim, concept_heads, real, rng)
            store.put(vid, vector, {"is_image": False, "source": "msvd captions only"})
    print(f"{TRAIN_STORE}: {len(flickr_ids)} photos, {len(train_ids)} clips, {len(text_only)} text-only videos "
          f"(+{len(VIEW_STORES)} views); held out: {len(held_out)} clips")


def step_captions(args) -> None:
    """The training captions: Flickr8k train photos, MSVD clips with video, text-only videos."""
    from captioner.datasets import load_captions
    from captioner.store import open_features

    flickr = load_captions(DATA / "flickr8k" / "captions.csv", "train")
    msvd = load_captions(DATA / "msvd" / "captions" / "MSVD_train.tsv")
    in_store = set(open_features(TRAIN_STORE).ids())
    clips = {c.stem for c in training_clips()}
    rows = [{"video": vid, "captions": caps} for vid, caps in flickr.items()]
    rows += [{"video": vid, "captions": msvd[vid]} for vid in sorted(clips)]
    text_only = sorted(vid for vid in msvd if vid in in_store and vid not in clips)
    # Spread over the corpus: captions of one video say much the same thing.
    rows += [{"video": vid, "captions": msvd[vid][:TEXT_CAPTIONS_PER_VIDEO]} for vid in text_only]
    out = WORK / "captions_train.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"{out}: {len(flickr)} Flickr8k photos, {len(clips)} MSVD clips, {len(text_only)} text-only "
          f"MSVD videos, {sum(len(r['captions']) for r in rows)} captions")


def step_train(args) -> None:
    from captioner.train import train_from_config

    run_dir = WORK / "train"
    if run_dir.exists() and not (run_dir / "last.pt").exists():
        shutil.rmtree(run_dir)
    train_from_config(str(CONFIG), [f"run_dir={run_dir}"] + args.set,
                      resume=(run_dir / "last.pt").exists() and args.resume)


def step_dev(args) -> None:
    """Caption the held-out dev clips from their stored features and score them beside the baselines."""
    import torch

    from captioner.caption import DEFAULT_LENGTH_PENALTY
    from captioner.datasets import load_captions
    from captioner.evaluate import evaluate
    from captioner.model import load_checkpoint
    from captioner.store import open_features

    checkpoint = load_checkpoint(args.checkpoint or WORK / "train" / "best.pt")
    clips = open_features(CLIP_STORE)
    ids = [c.stem for c in dev_clips()]
    vectors = clips.pooled_matrix(ids)[1]
    hyps = checkpoint.model.generate(torch.from_numpy(vectors), beam_size=args.beam,
                                     length_penalty=DEFAULT_LENGTH_PENALTY)
    predictions = {vid: checkpoint.decode(best[0][0]) for vid, best in zip(ids, hyps)}
    references = {**load_captions(DATA / "msvd" / "captions" / "MSVD_train.tsv"),
                  **load_captions(DATA / "msvd" / "captions" / "MSVD_val.tsv")}
    train_refs = {vid: caps for vid, caps in load_captions(DATA / "msvd" / "captions" / "MSVD_train.tsv").items()
                  if vid not in set(ids)}
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
          "--train-features", CLIP_STORE, "--test-features", TEST_STORE, "--out", results,
          "--allow-partial"])  # 9 of the 670 test-split videos have video here
    scores["msvd_test"] = json.loads(results.read_text())
    (WORK / "scores.json").write_text(json.dumps(scores, indent=2))
    print(json.dumps(scores["flickr8k_test"], indent=2))
    for line in (WORK / "msvd_test_predictions.jsonl").read_text().splitlines():
        item = json.loads(line)
        print(f"{item['id']}\t{item['caption']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", default=",".join(STEPS), help="comma-separated subset of " + ", ".join(STEPS))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--beam", type=int, default=3)
    parser.add_argument("--resume", action="store_true", help="continue an interrupted training run")
    parser.add_argument("--half", action="store_true", help="package the weights in float16 (half the size)")
    parser.add_argument("--checkpoint", type=Path, default=None, help="dev step: the checkpoint to score")
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
