#!/usr/bin/env python3
"""Train the library search's visual map (captioner/visual_search.py) and write
captioner/assets/visual_search.npz.

    python3 scripts/train_visual_search.py --training-set RUN/pipeline/training-set/latest \\
        --train-clips RUN/pipeline/extract-train/latest/features

The recipe, chosen on the 12 dev clips' queries only (docs/library.md has the figures):
- learned map: ridge regression (lambda 30,000) from the standardised square-rooted ImageNet
  and Kinetics probabilities to the unit mean all-MiniLM-L6-v2 embedding of a video's captions,
  on the default model's training set's caption-only MSVD videos (their probabilities derived
  from their captions and corrupted as the real heads err: captioner/training_set.py).
  Appearance features get no weight: those examples have none. Left out: Flickr8k photos (a
  weaker map), the 40 train-split clips with video (the benchmark gallery holds them: the map
  learns their own captions and ranks them above the clips queried), the 21 held-out clips
  (configs/lists/msvd_{dev,test}_clips.txt), every clip cut from the same YouTube video as one
  of them, and the MSVD test split;
- zero-shot part: the class names as phrases, top 10 classes per head, weights p ** 0.5;
- fusion: 8 x z(visual) beside z(text score) before the rerank, 4 x inside it.
The map is stored in float16 (2 MB; the dev figures are the same as in float32). About 4 minutes
on one core, nearly all of it encoding the 13,524 captions.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"
LAMBDA = 30_000.0
ZEROSHOT = {"k": 10, "power": 0.5}
FUSION = {"pre_weight": 8.0, "post_weight": 4.0}


def clip_ids(name: str) -> list[str]:
    return [Path(line.strip()).stem for line in (ROOT / "configs" / "lists" / name).read_text().splitlines()
            if line.strip()]


def youtube_id(clip_id: str) -> str:
    return clip_id.rsplit("_", 2)[0]


def training_examples(training_set: Path, train_clips: Path):
    """The caption-only MSVD videos of a training set: ids, pooled features, captions, provenance."""
    from captioner.datasets import load_captions
    from captioner.store import open_features

    held = set(clip_ids("msvd_dev_clips.txt") + clip_ids("msvd_test_clips.txt"))
    held_videos = {youtube_id(c) for c in held}
    test_split = set(load_captions(DATA / "msvd" / "captions" / "MSVD_test.tsv"))
    msvd_train = load_captions(DATA / "msvd" / "captions" / "MSVD_train.tsv")
    with_video = set(open_features(train_clips).ids())
    store = open_features(training_set / "features")
    ids = [i for i in store.ids() if i in msvd_train and i not in with_video and i not in held
           and youtube_id(i) not in held_videos and i not in test_split]
    captions = {}
    for line in (training_set / "captions.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        captions[record["video"]] = record["captions"]
    features = np.stack([store.pooled(i) for i in ids]).astype(np.float64)
    return ids, features, [captions[i] for i in ids], store.provenance


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--training-set", type=Path, required=True,
                        help="the default pipeline's training-set stage folder (features/ and captions.jsonl)")
    parser.add_argument("--train-clips", type=Path, required=True,
                        help="the feature store of the train-split clips with video (left out)")
    parser.add_argument("--out", type=Path, default=ROOT / "captioner" / "assets" / "visual_search.npz")
    args = parser.parse_args()
    from captioner.concepts import display_name, heads
    from captioner.embeddings import encoder

    started = time.perf_counter()
    ids, features, captions, provenance = training_examples(args.training_set, args.train_clips)
    concept_heads = heads(provenance)
    start, end = min(h.start for h in concept_heads), max(h.end for h in concept_heads)
    flat = [c for cs in captions for c in cs]
    owner = np.repeat(np.arange(len(captions)), [len(cs) for cs in captions])
    targets = np.zeros((len(ids), 384))
    np.add.at(targets, owner, encoder().encode(flat, batch_size=128).astype(np.float64))
    targets /= np.linalg.norm(targets, axis=1, keepdims=True)
    # Ridge on standardised inputs with an unpenalised intercept, folded into one affine map.
    inputs = np.sqrt(np.clip(features[:, start:end], 0, None))
    mean, std = inputs.mean(0), inputs.std(0)
    std = np.maximum(std, 1e-3 * std.max())
    z = (inputs - mean) / std
    solution = np.linalg.solve(z.T @ z + LAMBDA * np.eye(z.shape[1]), z.T @ (targets - targets.mean(0)))
    weights, bias = solution / std[:, None], targets.mean(0) - (mean / std) @ solution
    class_vectors = {h.kind: encoder().encode([display_name(c) for c in h.classes]) for h in concept_heads}
    meta = {"format": "visual-search", "version": 1, "embedding": "all-MiniLM-L6-v2",
            "feature_dim": int(provenance["feature_dim"]), "backbone": provenance["backbone"],
            "weights_sha256": provenance["weights_sha256"], "prob_start": int(start), "prob_end": int(end),
            "heads": [{"kind": h.kind, "start": h.start, "end": h.end} for h in concept_heads],
            "learned": {"recipe": "ridge", "lambda": LAMBDA, "examples": len(ids), "captions": len(flat)},
            "zeroshot": ZEROSHOT, "fusion": FUSION}
    np.savez_compressed(args.out, W=weights.astype(np.float16), b=bias.astype(np.float16),
                        meta=np.array(json.dumps(meta)),
                        **{f"class_emb_{kind}": v.astype(np.float16) for kind, v in class_vectors.items()})
    print(f"{len(ids)} videos, {len(flat)} captions, {time.perf_counter() - started:.0f} s: {args.out} "
          f"({args.out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
