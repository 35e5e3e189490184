#!/usr/bin/env python3
"""Extraction throughput on the real MSVD clips, every figure from this one run.

  decode-only    captioner.video.decode of every clip, one process, frames/s
  backbone-only  the backbone on already-decoded frames (resize, crop, network), in the batch
                 size extraction uses, on the runtime and precision in use, frames/s
  end-to-end     captioner.extract.extract into a fresh store, frames/s
  naive          OpenCV reads every frame in order, keeps the same sampled frames, runs the
                 network as published (timm's module in PyTorch fp32; no batch-norm folding)
                 one frame at a time and averages: what glue scripts usually do

The bound is what a perfect pipeline could reach from the two measured halves of the runtime
in use: on CPU they compete for the same cores, so 1/(1/decode + 1/backbone); on a GPU they
overlap, so min(decode, backbone). Unless --no-table, a table follows with backbone-only and
end-to-end frames/s and the features' cosine to PyTorch fp32 (worst frame, worst pooled
video) for each runtime and precision (torch fp32, torch bf16, openvino fp32, openvino bf16,
openvino int8: NNCF-quantized, see captioner/quantize.py; a row that cannot run says why).
With --routes, end-to-end frames/s of the ways tried to close the gap to 3x naive follow
(decoding at full size instead of the backbone's, decoding one video ahead in a thread
while the backbone runs, int8), all in this run. The last line is
`ratio_vs_naive=X.XX ratio_vs_bound=Y.YY` for the runtime in use.

Clips: by default the 9 test-split clips of the shared MSVD folder (MSVD's split by video
number, as tests/conftest.py), so a run takes minutes; --subset all takes all 61.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DEFAULT_CLIPS = ROOT.parent / "shared" / "data" / "msvd" / "clips"
RUNTIME_TABLE = [("torch", "fp32"), ("torch", "bf16"), ("openvino", "fp32"), ("openvino", "bf16"),
                 ("openvino", "int8")]


def measure(fn):
    start = time.perf_counter()
    frames = fn()
    return frames / (time.perf_counter() - start)


def select_clips(folder: Path, subset: str) -> list[Path]:
    clips = sorted(folder.glob("*.avi"))
    if subset == "all":
        return clips
    # MSVD's split: videos 1301-1970 are its test set (youtube_mapping.txt maps clip names to vidN).
    lines = (folder.parent / "youtube_mapping.txt").read_text().split()
    numbers = {name: int(vid.removeprefix("vid")) for name, vid in zip(lines[0::2], lines[1::2])}
    return [c for c in clips if numbers.get(c.stem, 0) > 1300]


def cosine_floor(a, b) -> float:
    import numpy as np

    return float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).min())


def pooled(features, lengths):
    """Per-video mean of per-frame features laid end to end."""
    import numpy as np

    return np.stack([part.mean(0) for part in np.split(features, np.cumsum(lengths)[:-1])])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=Path, default=DEFAULT_CLIPS)
    parser.add_argument("--backbone", default="efficientnet_lite2")
    parser.add_argument("--frames", default="uniform:16")
    parser.add_argument("--batch-size", type=int, default=None, help="default: extraction's default for the device")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--runtime", default="auto", help="runtime of the ratios: auto, torch or openvino")
    parser.add_argument("--precision", default="auto", help="auto, fp32 or bf16")
    parser.add_argument("--subset", default="test", choices=["test", "all"],
                        help="MSVD's test-split clips of --clips (default) or all of them")
    parser.add_argument("--no-table", action="store_true", help="skip the per-runtime table")
    parser.add_argument("--routes", action="store_true", help="also time the end-to-end variants (see above)")
    args = parser.parse_args()

    import cv2
    import numpy as np
    import torch

    from captioner import backbones
    from captioner.device import resolve_device
    from captioner.errors import CaptionerError
    from captioner.extract import ExtractConfig, default_batch_size, extract
    from captioner.precision import cpu_has_bf16
    from captioner.runtime import load_backbone
    from captioner.video import Sampling, decode, probe, sample_indices

    device = resolve_device(args.device)
    clips = select_clips(args.clips, args.subset)
    backbone = load_backbone(args.backbone, args.runtime, args.precision, device)
    batch_size = args.batch_size or default_batch_size(device, backbone.runtime)
    published = backbones.create(args.backbone, device=device, fold_batchnorm=False)
    sampling = Sampling.parse(args.frames)
    cpu = _cpu_name()
    print(f"{len(clips)} clips ({', '.join(c.stem for c in clips)})")
    print(f"backbone {args.backbone} on {device} ({torch.cuda.get_device_name() if device == 'cuda' else cpu}), "
          f"runtime {backbone.runtime} {backbone.precision}, {args.frames}, batch {batch_size}, "
          f"torch threads {torch.get_num_threads()}")

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    # Warm-up: first calls pay for lazy initialisation that a long run pays once.
    warm = decode(clips[0], sampling, short_side=backbone.decode_short_side, clip_len=backbone.clip_len)
    backbone.features(warm.frames)
    published.features(torch.from_numpy(warm.frames[:1]).to(device))
    sync()

    decoded = []

    def decode_all():
        for clip in clips:
            decoded.append(decode(clip, sampling, short_side=backbone.decode_short_side,
                                  clip_len=backbone.clip_len).frames)
        return sum(len(f) for f in decoded)

    decode_fps = measure(decode_all)

    def backbone_fps(fx, batch: int) -> tuple[float, np.ndarray]:
        """Frames of different videos differ in size: prepare per video (resize, crop: part of
        the backbone's work), then run the network in fixed-size batches, as extraction does."""
        outputs = []

        def run():
            inputs = fx.concat([fx.prepare(f) for f in decoded])
            count = sum(len(f) for f in decoded)
            for i in range(0, count, batch):
                rows = tuple(x[i:i + batch] for x in inputs) if isinstance(inputs, tuple) else inputs[i:i + batch]
                outputs.append(fx.infer(rows))
            sync()
            return count

        return measure(run), np.concatenate(outputs)

    def end_to_end(runtime: str, precision: str, batch: int | None, decode_ahead: bool | None = None) -> float:
        def run():
            if decode_ahead is not None:
                import captioner.extract

                captioner.extract.DECODE_AHEAD = decode_ahead
            with tempfile.TemporaryDirectory() as tmp, open(os.devnull, "w") as quiet:
                config = ExtractConfig(backbone=args.backbone, frames=args.frames, batch_size=batch,
                                       device=device, runtime=runtime, precision=precision)
                summary = extract(clips, Path(tmp) / "store", config, progress=False, log=quiet)
                assert summary.failed == 0, summary.failures
                return summary.frames

        return measure(run)

    backbone_only, _ = backbone_fps(backbone, batch_size)
    e2e_fps = end_to_end(args.runtime, args.precision, args.batch_size)

    def naive():
        frames_done = 0
        for clip in clips:
            wanted = set(sample_indices(probe(clip), sampling).tolist())
            capture = cv2.VideoCapture(str(clip))
            features, index = [], 0
            while True:
                ok, frame = capture.read()
                if not ok:
                    break
                if index in wanted:
                    rgb = torch.from_numpy(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))[None].to(device)
                    features.append(published.features(rgb))
                index += 1
            capture.release()
            torch.stack(features).mean(0)
            frames_done += len(features)
        sync()
        return frames_done

    naive_fps = measure(naive)

    if not args.no_table and device == "cpu":
        print(f"\nper runtime, {cpu}:")
        print("| runtime | precision | batch | backbone-only frames/s | end-to-end frames/s "
              "| cosine to torch fp32: worst frame | worst video (pooled) |")
        print("|---|---|---|---|---|---|---|")
        reference = None
        lengths = [len(f) for f in decoded]
        for runtime, precision in RUNTIME_TABLE:
            if precision == "bf16" and runtime == "openvino" and not cpu_has_bf16():
                continue
            try:
                fx = load_backbone(args.backbone, runtime, precision, device)
            except CaptionerError as exc:  # int8 without NNCF or calibration data
                print(f"| {runtime} | {precision} | — | — | — | {exc} | |")
                continue
            batch = args.batch_size or default_batch_size(device, runtime)
            fx.features(warm.frames)
            fps, features = backbone_fps(fx, batch)
            reference = features if reference is None else reference
            print(f"| {runtime} | {precision} | {batch} | {fps:.1f} | {end_to_end(runtime, precision, batch):.1f} "
                  f"| {cosine_floor(features, reference):.4f} "
                  f"| {cosine_floor(pooled(features, lengths), pooled(reference, lengths)):.4f} |", flush=True)
        print()

    if args.routes:
        import captioner.extract

        default_ahead = captioner.extract.DECODE_AHEAD
        print("routes, end-to-end frames/s (same run):")
        def decode_at(short_side):
            return sum(len(decode(c, sampling, short_side=short_side, clip_len=backbone.clip_len).frames) for c in clips)

        full_size, reduced = measure(lambda: decode_at(None)), measure(lambda: decode_at(backbone.decode_short_side))
        print(f"  decode-only at full size (no short_side): {full_size:.1f}, at the backbone's size: {reduced:.1f}")
        for runtime, precision in [(args.runtime, args.precision), ("openvino", "int8")]:
            for ahead in (False, True):
                try:
                    fps = end_to_end(runtime, precision, args.batch_size, decode_ahead=ahead)
                except CaptionerError as exc:
                    print(f"  {runtime} {precision}: {exc}")
                    break
                beside = measure(naive)  # the load of a shared machine drifts: compare with a naive run next to it
                print(f"  {runtime} {precision}, {'decode one video ahead in a thread' if ahead else 'decode inline'}: "
                      f"{fps:.1f} ({fps / beside:.2f}x the naive run right after it, {beside:.1f})", flush=True)
        captioner.extract.DECODE_AHEAD = default_ahead
        print()

    bound = min(decode_fps, backbone_only) if device == "cuda" else 1 / (1 / decode_fps + 1 / backbone_only)
    print(f"decode_only_fps={decode_fps:.1f}")
    print(f"backbone_only_fps={backbone_only:.1f}")
    print(f"bound_fps={bound:.1f}")
    print(f"end_to_end_fps={e2e_fps:.1f}")
    print(f"naive_fps={naive_fps:.1f}")
    print(f"ratio_vs_naive={e2e_fps / naive_fps:.2f} ratio_vs_bound={e2e_fps / bound:.2f}")


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    main()
