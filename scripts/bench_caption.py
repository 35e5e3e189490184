#!/usr/bin/env python3
"""Wall time of `captioner caption` of one 10-s real clip in a fresh process: OpenVINO against PyTorch.

Each measurement is a new `python -m captioner.cli caption CLIP --json` process, timed from
launch to exit, as a user runs it: interpreter start-up, imports, model and backbone loading,
video decoding, the backbone and the decoder. The two paths alternate within this one run:

  openvino   --runtime openvino (precision auto): the numpy decoder, no torch or timm imported
  torch      --runtime torch: PyTorch imported, the backbone in PyTorch fp32

  lite2_only the same OpenVINO path with a Lite2-only model, by default the previous shipped
             default (git history, commit LITE2_COMMIT): what recognising actions (I3D) costs.
             Skipped with a note when that checkpoint cannot be had (no git history).

One untimed run of each comes first, so the OpenVINO compiled-model cache, the inference export
beside the checkpoint and the OS file cache are warm for both, as on any run after the first.
The clip is the shared MSVD clip whose duration is closest to 10 s. Per path the median of
--repeats runs is reported with the time split the command itself records (--json timing).
The line before last is `lite2_only_wall_s=L concept_cost=C` (C = X / L; the goal is <= 2),
the last line `caption_wall_s=X torch_wall_s=Y ratio_vs_torch=Z` (Z = Y / X).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DEFAULT_CLIPS = ROOT.parent / "shared" / "data" / "msvd" / "clips"
PATHS = {"openvino": ["--runtime", "openvino"], "torch": ["--runtime", "torch"]}
# The last default model with a Lite2-only backbone (uniform:16 frames), before concepts.
LITE2_COMMIT = "fce6ea7"


def lite2_only_model(out: Path) -> Path | None:
    """The previous, Lite2-only default model from git history, or None without it."""
    result = subprocess.run(["git", "show", f"{LITE2_COMMIT}:captioner/assets/default/model.pt"], cwd=ROOT,
                            capture_output=True)
    if result.returncode != 0:
        return None
    out.write_bytes(result.stdout)
    return out


def ten_second_clip(folder: Path, seconds: float = 10.0) -> tuple[Path, float]:
    from captioner.video import probe

    durations = {clip: probe(clip).duration for clip in sorted(folder.glob("*.avi"))}
    if not durations:
        sys.exit(f"no .avi clips in {folder}")
    clip = min(durations, key=lambda c: abs(durations[c] - seconds))
    return clip, durations[clip]


def run_once(clip: Path, model: str, flags: list[str]) -> tuple[float, dict]:
    cmd = [sys.executable, "-m", "captioner.cli", "caption", str(clip), "--model", model, "--json", *flags]
    started = time.perf_counter()
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stderr[-2000:]}")
    return wall, json.loads(result.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=Path, default=DEFAULT_CLIPS, help="folder of real clips (default %(default)s)")
    parser.add_argument("--model", default="default", help="'default' or a checkpoint (.pt)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per path (default %(default)s)")
    parser.add_argument("--lite2-model", type=Path, default=None,
                        help=f"a Lite2-only checkpoint to time beside it (default: the previous default model, "
                             f"from git commit {LITE2_COMMIT})")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")

    clip, duration = ten_second_clip(args.clips)
    print(f"clip {clip.name}: {duration:.2f} s", flush=True)
    runs = {name: (args.model, flags) for name, flags in PATHS.items()}
    with tempfile.TemporaryDirectory() as tmp:
        lite2 = args.lite2_model or lite2_only_model(Path(tmp) / "model.pt")
        if lite2 is None:
            print(f"lite2_only: skipped (no git history with commit {LITE2_COMMIT}; pass --lite2-model)")
        else:
            runs["lite2_only"] = (str(lite2), PATHS["openvino"])
        for model, flags in runs.values():  # warm-up, untimed
            run_once(clip, model, flags)
        walls: dict[str, list[float]] = {name: [] for name in runs}
        timings: dict[str, list[dict]] = {name: [] for name in runs}
        captions: dict[str, set[str]] = {name: set() for name in runs}
        for _ in range(args.repeats):
            for name, (model, flags) in runs.items():
                wall, output = run_once(clip, model, flags)
                walls[name].append(wall)
                timings[name].append(output["timing"])
                captions[name].add(output["caption"])

    for name in runs:
        split = {key: statistics.median(t[key] for t in timings[name]) for key in timings[name][0]}
        print(f"{name:9s} wall median {statistics.median(walls[name]):.3f} s (runs "
              + ", ".join(f"{w:.2f}" for w in walls[name]) + "); inside: "
              + ", ".join(f"{k} {v:.3f}" for k, v in split.items()))
        print(f"{name:9s} caption: {' | '.join(sorted(captions[name]))}")
    print("same caption on both paths:", captions["openvino"] == captions["torch"])
    caption_wall, torch_wall = statistics.median(walls["openvino"]), statistics.median(walls["torch"])
    if "lite2_only" in runs:
        lite2_wall = statistics.median(walls["lite2_only"])
        print(f"lite2_only_wall_s={lite2_wall:.3f} concept_cost={caption_wall / lite2_wall:.2f}")
    print(f"caption_wall_s={caption_wall:.3f} torch_wall_s={torch_wall:.3f} "
          f"ratio_vs_torch={torch_wall / caption_wall:.2f}")


if __name__ == "__main__":
    main()
