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

--folder: throughput of `Captioner.caption_many` over a folder of real clips (the first --count
MSVD clips), plain and with --segments, for today's code and for an earlier revision of the
project (--baseline, taken from git history into a temporary folder) side by side. Each
measurement is a fresh process that loads the default model, captions one clip untimed (warm
caches) and then the folder; the two revisions alternate, --repeats times. Per path: clips/s,
real-time factor (seconds of video per second), the seconds each stage took summed over the
clips (decode, Lite2, I3D, the other backbone work: resizing, cropping, pooling; the caption
decoder), and whether its captions equal the baseline's. The last lines, one per setting:
`folder segments=S clips_per_s_baseline=A clips_per_s=B ratio=B/A realtime=R`.
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
# --folder's "today's code" before the folder and window throughput work (issue 25).
FOLDER_BASELINE = "00a480d"
# Run in a fresh process for each --folder measurement: argv = project folder, clips folder,
# count, segments ("none" or seconds). Prints one JSON line.
FOLDER_RUN = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from captioner import Captioner
from captioner.video import probe
clips = sorted(Path(sys.argv[2]).glob("*.avi"))[:int(sys.argv[3])]
segments = None if sys.argv[4] == "none" else float(sys.argv[4])
captioner = Captioner.load()
captioner.caption(clips[0])
backbone, spent = captioner.backbone, {}
for member in backbone._members:
    def timed(crops, infer=member.infer, name=member.name):
        started = time.perf_counter()
        try:
            return infer(crops)
        finally:
            spent[name] = spent.get(name, 0.0) + time.perf_counter() - started
    member.infer = timed
started = time.perf_counter()
timing, captions = {}, {}
for path, result in captioner.caption_many(clips, segments=segments):
    for key, seconds in result.timing.items():
        timing[key] = timing.get(key, 0.0) + seconds
    captions[Path(path).name] = [result.caption] + [s.caption for s in result.segments or []]
wall = time.perf_counter() - started
print(json.dumps({"wall": wall, "timing": timing, "members": spent, "captions": captions,
                  "video_seconds": sum(probe(c).duration for c in clips)}))
"""


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


def folder_once(project: Path, clips: Path, count: int, segments: str) -> dict:
    result = subprocess.run([sys.executable, "-c", FOLDER_RUN, str(project), str(clips), str(count), segments],
                            cwd=project, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"captioning the folder with {project} failed ({result.returncode}):\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.splitlines()[-1])


def baseline_tree(revision: str, into: Path) -> Path:
    """The project as it was at `revision`, unpacked from git history into `into`."""
    archive = subprocess.run(["git", "archive", "--format=tar", revision], cwd=ROOT, capture_output=True)
    if archive.returncode != 0:
        sys.exit(f"--baseline {revision}: not in this checkout's git history ({archive.stderr.decode().strip()})")
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def folder(args) -> None:
    settings = [s.strip() for s in args.segments.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"baseline": baseline_tree(args.baseline, Path(tmp)), "today": ROOT}
        runs: dict = {(name, s): [] for s in settings for name in trees}
        for _ in range(args.repeats):
            for setting in settings:
                for name, tree in trees.items():
                    runs[name, setting].append(folder_once(tree, args.clips, args.count, setting))
    print(f"{args.count} clips from {args.clips}, {runs['today', settings[0]][0]['video_seconds']:.1f} s of video; "
          f"baseline = revision {args.baseline}; median of {args.repeats} alternating runs each")
    summary = []
    for setting in settings:
        medians = {}
        for name in trees:
            done = runs[name, setting]
            wall = statistics.median(r["wall"] for r in done)
            pick = min(done, key=lambda r: abs(r["wall"] - wall))
            members = {k.split("_")[0]: v for k, v in pick["members"].items()}
            other = pick["timing"].get("backbone", 0.0) - sum(members.values())
            medians[name] = (wall, pick)
            print(f"segments={setting:4s} {name:8s} {args.count / wall:5.2f} clips/s, "
                  f"{pick['video_seconds'] / wall:5.1f}x real time (runs " + ", ".join(f"{r['wall']:.1f}" for r in done)
                  + " s); stages (s, summed): decode " + f"{pick['timing'].get('decode', 0):.1f}, "
                  + ", ".join(f"{k} {v:.1f}" for k, v in members.items())
                  + f", other backbone work {other:.1f}, decoder {pick['timing'].get('caption', 0):.1f}")
        base, today = medians["baseline"][1]["captions"], medians["today"][1]["captions"]
        whole = sum(base[c][0] == today[c][0] for c in base)
        windows = [(b[1:], t[1:]) for b, t in ((base[c], today[c]) for c in base)]
        print(f"segments={setting:4s} same captions as the baseline: whole {whole}/{len(base)}"
              + ("" if setting == "none" else
                 f", windows {sum(x == y for b, t in windows for x, y in zip(b, t))}/{sum(len(b) for b, _ in windows)}"))
        ratio = medians["baseline"][0] / medians["today"][0]
        summary.append(f"folder segments={setting} clips_per_s_baseline={args.count / medians['baseline'][0]:.3f} "
                       f"clips_per_s={args.count / medians['today'][0]:.3f} ratio={ratio:.2f} "
                       f"realtime={medians['today'][1]['video_seconds'] / medians['today'][0]:.1f}")
    print("\n".join(summary))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=Path, default=DEFAULT_CLIPS, help="folder of real clips (default %(default)s)")
    parser.add_argument("--model", default="default", help="'default' or a checkpoint (.pt)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per path (default %(default)s)")
    parser.add_argument("--lite2-model", type=Path, default=None,
                        help=f"a Lite2-only checkpoint to time beside it (default: the previous default model, "
                             f"from git commit {LITE2_COMMIT})")
    parser.add_argument("--folder", action="store_true", help="folder throughput, today's code against --baseline")
    parser.add_argument("--count", type=int, default=20, help="--folder: clips to caption (default %(default)s)")
    parser.add_argument("--segments", default="none,5",
                        help="--folder: settings to time, 'none' or seconds, comma-separated (default %(default)s)")
    parser.add_argument("--baseline", default=FOLDER_BASELINE,
                        help="--folder: the git revision to compare with (default %(default)s)")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.folder:
        folder(args)
        return

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
