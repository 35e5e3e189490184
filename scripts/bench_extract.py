#!/usr/bin/env python3
"""Extraction throughput on the real MSVD clips, every figure from this one run.

  decode-only    captioner.video.decode of every clip, one process, frames/s
  backbone-only  the backbone on already-decoded frames, same batch size, frames/s
  end-to-end     captioner.extract.extract into a fresh store, frames/s
  naive          OpenCV reads every frame in order, keeps the same sampled frames, runs the
                 network as published (timm's module; no batch-norm folding) one frame at a
                 time and averages: what glue scripts usually do

The bound is what a perfect pipeline could reach from the two measured halves: on CPU they
compete for the same cores, so 1/(1/decode + 1/backbone); on a GPU they overlap, so
min(decode, backbone). The last line is `ratio_vs_naive=X.XX ratio_vs_bound=Y.YY`.
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


def measure(fn):
    start = time.perf_counter()
    frames = fn()
    return frames / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=Path, default=DEFAULT_CLIPS)
    parser.add_argument("--backbone", default="efficientnet_lite2")
    parser.add_argument("--frames", default="uniform:16")
    parser.add_argument("--batch-size", type=int, default=None, help="default: extraction's default for the device")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    import cv2
    import torch

    from captioner import backbones
    from captioner.extract import ExtractConfig, default_batch_size, extract, resolve_device
    from captioner.video import Sampling, decode, probe, sample_indices

    device = resolve_device(args.device)
    args.batch_size = args.batch_size or default_batch_size(device)
    clips = sorted(args.clips.glob("*.avi"))
    backbone = backbones.create(args.backbone, device=device)
    published = backbones.create(args.backbone, device=device, fold_batchnorm=False)
    sampling = Sampling.parse(args.frames)
    print(f"{len(clips)} clips, backbone {args.backbone} on {device}"
          f"{' (' + torch.cuda.get_device_name() + ')' if device == 'cuda' else ''}, "
          f"{args.frames}, batch {args.batch_size}, torch threads {torch.get_num_threads()}")

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    # Warm-up: first calls pay for lazy initialisation that a long run pays once.
    warm = decode(clips[0], sampling, short_side=backbone.decode_short_side, clip_len=backbone.clip_len)
    backbone.features(torch.from_numpy(warm.frames).to(device))
    published.features(torch.from_numpy(warm.frames[:1]).to(device))
    sync()

    decoded = []

    def decode_all():
        for clip in clips:
            decoded.append(decode(clip, sampling, short_side=backbone.decode_short_side,
                                  clip_len=backbone.clip_len).frames)
        return sum(len(f) for f in decoded)

    decode_fps = measure(decode_all)

    def backbone_all():
        # Frames of different videos differ in size: preprocess per video (resize, crop,
        # normalise: part of the backbone's work), then run the network in fixed-size batches.
        with torch.inference_mode():
            inputs = torch.cat([backbone.preprocess(torch.from_numpy(f).to(device)) for f in decoded])
            for i in range(0, len(inputs), args.batch_size):
                with backbone.autocast():
                    backbone(inputs[i:i + args.batch_size])
        sync()
        return len(inputs)

    backbone_fps = measure(backbone_all)

    def end_to_end():
        with tempfile.TemporaryDirectory() as tmp, open(os.devnull, "w") as quiet:
            config = ExtractConfig(backbone=args.backbone, frames=args.frames, batch_size=args.batch_size,
                                   device=device)
            summary = extract(clips, Path(tmp) / "store", config,
                              progress=False, log=quiet)
            assert summary.failed == 0, summary.failures
            return summary.frames

    e2e_fps = measure(end_to_end)

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
    bound = min(decode_fps, backbone_fps) if device == "cuda" else 1 / (1 / decode_fps + 1 / backbone_fps)
    print(f"decode_only_fps={decode_fps:.1f}")
    print(f"backbone_only_fps={backbone_fps:.1f}")
    print(f"bound_fps={bound:.1f}")
    print(f"end_to_end_fps={e2e_fps:.1f}")
    print(f"naive_fps={naive_fps:.1f}")
    print(f"ratio_vs_naive={e2e_fps / naive_fps:.2f} ratio_vs_bound={e2e_fps / bound:.2f}")


if __name__ == "__main__":
    main()
