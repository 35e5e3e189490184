#!/usr/bin/env python3
"""What each caption corpus adds: the quality recipe trained on growing sets of sources, each
scored on dev by scripts/dev_quality.py (never on the MSVD test split).

    python3 scripts/ablate_sources.py                 # every arm, then the table
    python3 scripts/ablate_sources.py --arms msvd,msrvtt --set train.epochs=2

Arms add the recipe's `training_set.text_corpora` in order: `msvd` (none: MSVD and Flickr8k
as the default recipe has them), `msrvtt` (+ MSR-VTT train), `vatex` (+ VATEX with the Kinetics
labels), `coco` (+ COCO: the whole recipe). Every arm shares the recipe's extraction stages and
run directory; the training-set and train stages are cached per arm, so a killed run resumes.
The table (and runs/quality/ablation.json) lists each arm's captions, training time and dev scores.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ARMS = {"msvd": 0, "msrvtt": 1, "vatex": 3, "coco": 4}  # how many of the recipe's text corpora each arm keeps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "pipeline_quality.yaml")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated subset of {', '.join(ARMS)}")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override every arm gets (e.g. train.epochs=2)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "quality" / "ablation.json")
    args = parser.parse_args()
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        parser.error(f"unknown arm(s) {', '.join(unknown)}; choose from {', '.join(ARMS)}")

    from pipelines import load_pipeline
    from pipelines.stages import run_pipeline

    corpora = load_pipeline(args.config).training_set.text_corpora
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    for arm in arms:
        kept = [_plain(c) for c in corpora[: ARMS[arm]]]
        overrides = args.overrides + [f"training_set.text_corpora={json.dumps(kept)}"]
        config = load_pipeline(args.config, overrides)
        started = time.perf_counter()
        steps = run_pipeline(config, until=["train"], progress=False)
        train_dir = next(step.dir for step in steps if step.stage.name == "train")
        counts = json.loads((next(step.dir for step in steps if step.stage.name == "training-set")
                             / "counts.json").read_text())
        dev_file = args.out.parent / f"ablation_{arm}_dev.json"
        subprocess.run([sys.executable, str(ROOT / "scripts" / "dev_quality.py"), "--checkpoint",
                        str(train_dir / "best.pt"), "--config", str(args.config), "--weights", "0",
                        "--msrvtt", "0", "--retrieval", "0", "--out", str(dev_file)], check=True)
        dev = json.loads(dev_file.read_text())["msvd_dev"]["0.0"]
        results[arm] = {"captions": counts.get("captions"), "train_dir": str(train_dir),
                        "seconds": round(time.perf_counter() - started, 1), "overrides": args.overrides,
                        **{k: dev[k] for k in ("BLEU-4", "METEOR", "CIDEr", "generic", "copied",
                                               "hallucinated_per_caption")}}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))
    print(f"{'arm':8} {'captions':>9} {'BLEU-4':>7} {'METEOR':>7} {'CIDEr':>6} {'copied':>7} {'halluc.':>7}")
    for arm, r in results.items():
        print(f"{arm:8} {r['captions'] or '?':>9} {r['BLEU-4']:7.3f} {r['METEOR']:7.3f} {r['CIDEr']:6.3f} "
              f"{r['copied']:7.2f} {r['hallucinated_per_caption']:7.2f}")


def _plain(corpus) -> dict:
    """A text-corpus config as the YAML override takes it."""
    from dataclasses import asdict, is_dataclass

    return asdict(corpus) if is_dataclass(corpus) else dict(corpus)


if __name__ == "__main__":
    main()
