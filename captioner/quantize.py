"""`--precision int8`: NNCF post-training quantization of a converted OpenVINO backbone.

Opt-in, never what `auto` means. Each image member of a backbone is quantized once, from a
fixed calibration set, and cached beside its fp32 network (see `captioner.runtime`); clip
members (I3D) are not quantized but run as precision auto runs them (bf16 where the CPU has
it): quantized, I3D kept only cosine 0.973 per video and ran slower than in bf16 (README).


    CACHE/openvino/<key>/int8-<calibration key>/model.xml|bin   the quantized network
    CACHE/openvino/<key>/int8-<calibration key>/compiled/       OpenVINO's compiled blobs

The calibration key is the SHA-256 of the calibration files (names, sizes and contents), the
number of samples, the quantization settings and the NNCF version, so a changed set or another
NNCF quantizes again; a cached network loads without importing NNCF or torch.

Calibration data (never test-split data): the first CALIBRATION_PHOTOS photos of Flickr8k's
train split (flickr8k/Flickr_8k.trainImages.txt, flickr8k/images/) under `CAPTIONER_DATA`
(default `../shared/data` beside the checkout, where the project's tests read it).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import warnings
from importlib import metadata
from pathlib import Path

import numpy as np

from .atomic import publish_directory
from .errors import CaptionerError
from .extras import MissingExtra, require

CALIBRATION_PHOTOS = 300
# NNCF's settings; part of the calibration key. The first convolutions (EfficientNet-Lite2's stem
# and first block) and the last one stay in fp32, and so do matrix products (classifier heads):
# quantized too, Lite2's features kept only cosine 0.975 per frame (0.989 per video) against
# 0.994 (0.998) with them in fp32, measured on the MSVD test clips (README, Runtimes). Full bias
# correction (not NNCF's fast one) costs 20 s once and is what keeps the default model's
# Flickr8k test scores within 0.005 of fp32 features (CIDEr -0.0042; -0.0071 with the fast one).
SETTINGS = {"preset": "performance", "fast_bias_correction": False, "fp32_first_convolutions": 3,
            "fp32_last_convolutions": 1, "fp32_types": ["MatMul"]}


def data_root() -> Path:
    default = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
    return Path(os.environ.get("CAPTIONER_DATA", default))


def nncf_version() -> str:
    try:
        return metadata.version("nncf")
    except metadata.PackageNotFoundError:
        raise MissingExtra("--precision int8", "nncf") from None


def calibration_files() -> list[Path]:
    """The calibration photos: the first CALIBRATION_PHOTOS of Flickr8k's train split."""
    root = data_root()
    try:
        names = (root / "flickr8k" / "Flickr_8k.trainImages.txt").read_text().split()[:CALIBRATION_PHOTOS]
    except OSError as exc:
        raise _no_data(root, exc.strerror or str(exc)) from None
    files = [root / "flickr8k" / "images" / name for name in names]
    missing = [f for f in files if not f.is_file()]
    if missing or not files:
        raise _no_data(root, f"{missing[0]} not found" if missing else "the split list is empty")
    return files


def _no_data(root: Path, why: str) -> CaptionerError:
    return CaptionerError(f"--precision int8 calibrates on Flickr8k train photos under {root} "
                          f"(set CAPTIONER_DATA): {why}")


def calibration_key(files: list[Path]) -> str:
    digest = hashlib.sha256()
    material = {"nncf": nncf_version(), "settings": SETTINGS, "photos": len(files)}
    digest.update(json.dumps(material, sort_keys=True).encode())
    for path in files:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise _no_data(data_root(), f"{path}: {exc.strerror or exc}") from None
        digest.update(f"{path.name}:{len(data)}:".encode())
        digest.update(hashlib.sha256(data).digest())
    return digest.hexdigest()[:24]


def calibration_inputs(files: list[Path], size: int, name: str) -> list[np.ndarray]:
    """Network inputs (uint8 (1,S,S,3) each) from the photos, resized and cropped as inference does."""
    from PIL import Image

    from .preprocess import centre_crops
    from .video import to_rgb

    samples = []
    for path in files:
        with Image.open(path) as image:
            samples.append(centre_crops(np.asarray(to_rgb(image))[None], size, 1, name))
    return samples


def quantize(model_xml: Path, out_dir: Path, meta: dict) -> None:
    """Quantize the fp32 network at `model_xml` into `out_dir` (written atomically)."""
    from .openvino_env import openvino

    require("--precision int8 (quantizing a network, once)", "nncf")
    ov = openvino()
    nncf_version()
    import logging

    import nncf

    nncf.set_log_level(logging.ERROR)  # its INFO lines list every layer
    files = calibration_files()
    samples = calibration_inputs(files, meta["input_size"], meta["provenance"]["backbone"])
    model = ov.Core().read_model(str(model_xml))
    convolutions = [op.get_friendly_name() for op in model.get_ordered_ops()
                    if op.get_type_name() in ("Convolution", "GroupConvolution")]
    first, last = SETTINGS["fp32_first_convolutions"], SETTINGS["fp32_last_convolutions"]
    fp32 = nncf.IgnoredScope(names=convolutions[:first] + convolutions[len(convolutions) - last:],
                             types=SETTINGS["fp32_types"], validate=False)
    print(f"captioner: quantizing {meta['provenance']['backbone']} to int8, once "
          f"({len(samples)} Flickr8k train photos)", file=sys.stderr)
    try:
        # NNCF's progress bars go to stdout, which may be carrying `caption --json`.
        with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
            warnings.simplefilter("ignore")
            quantized = nncf.quantize(model, nncf.Dataset(samples), subset_size=len(samples),
                                      preset=nncf.QuantizationPreset.PERFORMANCE, ignored_scope=fp32,
                                      fast_bias_correction=SETTINGS["fast_bias_correction"])
    except Exception as exc:  # NNCF's own errors: an operation it cannot quantize, ...
        raise CaptionerError(f"NNCF cannot quantize {meta['provenance']['backbone']}: "
                             f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}") from None
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-int8-", dir=out_dir.parent))
    try:
        ov.save_model(quantized, str(tmp / "model.xml"), compress_to_fp16=False)
        (tmp / "calibration.json").write_text(json.dumps({
            "files": [str(f) for f in files], "nncf": nncf_version(), "settings": SETTINGS}))
        publish_directory(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
