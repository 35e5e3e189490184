#!/usr/bin/env python3
"""Cost and memory against video length: `captioner index VIDEO --segments 5` (captions, timed
windows, concepts, keyframes, features) of 1-, 10- and 60-minute videos made from the MSVD clips.

Each long video is the MSVD clips one after another, cycled until it is long enough, re-encoded
at 480x360 and 30 fps in H.264 (made once, under --work). Each is indexed by a fresh process into
a new library; the time and that process's peak resident memory (from the kernel, os.wait4) are
reported, with the time per minute of video. The last line:
`seconds_per_minute_ratio=R rss_ratio=M` (longest against shortest: R near 1 is a cost in
proportion to length, M within 1.1 is memory independent of it).

    python3 scripts/bench_long_video.py                      # 1, 10 and 60 minutes
    python3 scripts/bench_long_video.py --minutes 1,10
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLIPS = ROOT.parent / "shared" / "data" / "msvd" / "clips"
SIZE, FPS = (480, 360), 30


def long_video(out: Path, minutes: float, clips: list[Path]) -> Path:
    """The clips one after another until `minutes` long, re-encoded; made once."""
    import av

    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial.mp4")
    wanted, written = int(minutes * 60 * FPS), 0
    with av.open(str(partial), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(FPS))
        stream.width, stream.height, stream.pix_fmt = *SIZE, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "23"}
        while written < wanted:
            for clip in clips:
                with av.open(str(clip)) as source:
                    for frame in source.decode(video=0):
                        frame = frame.reformat(width=SIZE[0], height=SIZE[1], format="yuv420p")
                        frame.pts, frame.time_base = written, Fraction(1, FPS)
                        container.mux(stream.encode(frame))
                        written += 1
                        if written >= wanted:
                            break
                if written >= wanted:
                    break
        container.mux(stream.encode(None))
    partial.replace(out)
    return out


def index_once(video: Path) -> tuple[float, float]:
    """(seconds, peak resident MB) of a fresh `captioner index` process."""
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        process = subprocess.Popen([sys.executable, "-m", "captioner.cli", "index", str(video), "--db",
                                    str(Path(tmp) / "library.db"), "--segments", "5", "--no-progress"],
                                   cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            sys.exit(f"indexing {video} failed ({process.returncode}): {process.stderr.read().decode()[-2000:]}")
        return seconds, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", default="1,10,60", help="video lengths (default %(default)s)")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "long_video", help="where the videos are made")
    args = parser.parse_args()
    lengths = sorted(float(m) for m in args.minutes.split(","))
    clips = sorted(CLIPS.glob("*.avi"))
    if not clips:
        sys.exit(f"no MSVD clips in {CLIPS}")
    videos = {m: long_video(args.work / f"msvd_{m:g}min.mp4", m, clips) for m in lengths}
    index_once(videos[lengths[0]])  # warm: compiled networks, page cache
    rows = {}
    for minutes, video in videos.items():
        seconds, rss = index_once(video)
        rows[minutes] = (seconds, rss)
        print(f"{minutes:5g} min: {seconds:7.1f} s ({seconds / minutes:5.1f} s per minute of video, "
              f"{minutes * 60 / seconds:4.1f}x real time), peak RSS {rss:6.0f} MB", flush=True)
    (short_s, short_rss), (long_s, long_rss) = rows[lengths[0]], rows[lengths[-1]]
    print(f"seconds_per_minute_ratio={(long_s / lengths[-1]) / (short_s / lengths[0]):.2f} "
          f"rss_ratio={long_rss / short_rss:.2f}")


if __name__ == "__main__":
    main()
