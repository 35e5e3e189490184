#!/usr/bin/env python3
"""Flicker of `captioner caption --segments`: distinct captions per minute, windows captioned
alone against steadied (captioner/segments.py), on the MSVD train- and val-split clips that have
video (never the test split) at least --min-seconds long.

    OMP_NUM_THREADS=1 python3 scripts/measure_flicker.py --segments 2 [--model default]

Each window's features are computed once; both ways decode the same vectors.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))


def main() -> None:
    from build_default_model import msvd_clips_by_split

    from captioner.caption import Captioner, segment_windows
    from captioner.concepts import appearance_mask
    from captioner.segments import OWN_WEIGHT, flicker, merge_same_meaning, shot_starts, smooth_windows
    from captioner.video import probe

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--segments", type=float, default=2.0)
    parser.add_argument("--min-seconds", type=float, default=10.0)
    parser.add_argument("--limit", type=int, default=None, help="the first N such clips by id")
    parser.add_argument("--cache", type=Path, default=None,
                        help="keep each clip's window vectors here and reuse them (another model or setting)")
    parser.add_argument("--own-weight", type=float, default=None, help="segments.OWN_WEIGHT to try")
    parser.add_argument("--out", type=Path, default=None, help="per-clip captions as JSON")
    args = parser.parse_args()

    captioner = Captioner.load(args.model, load_backbone=False)  # loaded on the first window not cached
    splits = msvd_clips_by_split()
    clips = [c for c in splits["train"] + splits["val"] if probe(c).duration >= args.min_seconds][:args.limit]
    decoding = captioner.decoding
    rows, alone_rates, steady_rates, cut = [], [], [], 0
    for clip in clips:
        duration = probe(clip).duration
        windows = segment_windows(duration, args.segments)
        timing: dict = {}
        cached = args.cache / f"{clip.stem}_{args.segments:g}s.npy" if args.cache else None
        if cached is not None and cached.is_file():
            pooled = np.load(cached)
        else:
            pooled = np.stack([captioner.pooled_features(clip, start, end, timing)
                               for start, end in windows])
            if cached is not None:
                cached.parent.mkdir(parents=True, exist_ok=True)
                np.save(cached, pooled)
        describe = lambda vectors: [tuple(b[0]) for b in captioner._describe(vectors, ["video"] * len(vectors),
                                                                             decoding.but(n_best=1), [timing])]
        alone = [c for c, _ in describe(pooled)]
        starts = shot_starts(pooled[:, appearance_mask(pooled.shape[1], captioner.concept_heads)])
        cut += len(starts) > 1
        own = OWN_WEIGHT if args.own_weight is None else args.own_weight
        steady = [c for c, _ in merge_same_meaning(describe(smooth_windows(pooled, starts, own)), starts)]
        alone_rates.append(flicker(alone, duration))
        steady_rates.append(flicker(steady, duration))
        rows.append({"clip": clip.stem, "seconds": round(duration, 1), "shots": len(starts), "alone": alone,
                     "steady": steady})
        print(f"{clip.stem} {duration:.0f}s shots {len(starts)}: {len(set(alone))} -> {len(set(steady))} distinct"
              f" | {' / '.join(dict.fromkeys(alone))} || {' / '.join(dict.fromkeys(steady))}", flush=True)
    print(f"{len(clips)} clips >= {args.min_seconds:.0f} s, {args.segments:g}-s windows, {cut} split into shots: "
          f"distinct captions per minute {np.mean(alone_rates):.1f} alone -> {np.mean(steady_rates):.1f} steadied "
          f"(median {np.median(alone_rates):.1f} -> {np.median(steady_rates):.1f})")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
