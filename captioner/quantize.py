"""`--precision int8`: NNCF post-training quantization of a converted OpenVINO backbone.

Opt-in, never what `auto` means. Each member of a backbone is quantized once, from a fixed
calibration set, and cached beside its fp32 network (see `captioner.runtime`):

    CACHE/openvino/<key>/int8-<calibration key>/model.xml|bin   the quantized network
    CACHE/openvino/<key>/int8-<calibration key>/compiled/       OpenVINO's compiled blobs

The calibration key is the SHA-256 of the calibration files (names, sizes and contents), the
number of samples, the quantization settings and the NNCF version, so a changed set or another
NNCF quantizes again; a cached network loads without importing NNCF or torch.

Calibration data (never test-split data), under `CAPTIONER_DATA` (default `../shared/data`
beside the checkout, where the project's tests read it):
  image members  the first CALIBRATION_PHOTOS photos of Flickr8k's train split
                 (flickr8k/Flickr_8k.trainImages.txt, flickr8k/images/)
  clip members   CALIBRATION_CLIPS MSVD train-split clips (vid1-vid1200 by
                 msvd/youtube_mapping.txt), CLIP_WINDOWS windows of each
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from importlib import metadata
from pathlib import Path

import numpy as np

from .errors import CaptionerError

CALIBRATION_PHOTOS = 300
CALIBRATION_CLIPS = 8
CLIP_WINDOWS = 2
# NNCF's settings; part of the calibration key.
SETTINGS = {"preset": "performance", "fast_bias_correction": True}


def data_root() -> Path:
    default = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
    return Path(os.environ.get("CAPTIONER_DATA", default))


def nncf_version() -> str:
    try:
        return metadata.version("nncf")
    except metadata.PackageNotFoundError:
        raise CaptionerError("--precision int8 quantizes with NNCF, which is not installed "
                             "(pip install nncf, or the project's extra: pip install -e '.[int8]')") from None


def calibration_files(clip_len: int) -> list[Path]:
    """The calibration inputs of a member: Flickr8k train photos, or MSVD train-split clips."""
    root = data_root()
    try:
        if clip_len == 1:
            names = (root / "flickr8k" / "Flickr_8k.trainImages.txt").read_text().split()[:CALIBRATION_PHOTOS]
            files = [root / "flickr8k" / "images" / name for name in names]
        else:
            words = (root / "msvd" / "youtube_mapping.txt").read_text().split()
            train = {name for name, vid in zip(words[0::2], words[1::2]) if int(vid.removeprefix("vid")) <= 1200}
            files = sorted(p for p in (root / "msvd" / "clips").glob("*.avi") if p.stem in train)
            files = files[:CALIBRATION_CLIPS]
        missing = [f for f in files if not f.is_file()]
    except (OSError, ValueError) as exc:
        raise _no_data(root, clip_len, str(exc)) from None
    if missing or not files:
        raise _no_data(root, clip_len, f"{missing[0]} not found" if missing else "no files")
    return files


def _no_data(root: Path, clip_len: int, why: str) -> CaptionerError:
    what = "Flickr8k train photos" if clip_len == 1 else "MSVD train-split clips"
    return CaptionerError(f"--precision int8 calibrates on {what} under {root} (set CAPTIONER_DATA): {why}")


def calibration_key(files: list[Path], clip_len: int) -> str:
    digest = hashlib.sha256()
    material = {"nncf": nncf_version(), "settings": SETTINGS, "clip_len": clip_len,
                "samples": CALIBRATION_PHOTOS if clip_len == 1 else [CALIBRATION_CLIPS, CLIP_WINDOWS]}
    digest.update(json.dumps(material, sort_keys=True).encode())
    for path in files:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise _no_data(data_root(), clip_len, f"{path}: {exc.strerror or exc}") from None
        digest.update(f"{path.name}:{len(data)}:".encode())
        digest.update(hashlib.sha256(data).digest())
    return digest.hexdigest()[:24]


def calibration_inputs(files: list[Path], size: int, clip_len: int, name: str) -> list[np.ndarray]:
    """Network inputs (uint8, one sample each) from the calibration files, cropped as inference crops."""
    from .runtime import centre_crops
    from .video import decode

    samples = []
    for path in files:
        if clip_len == 1:
            from PIL import Image

            with Image.open(path) as image:
                frames = np.asarray(image.convert("RGB"))[None]
        else:
            frames = decode(path, f"uniform:{CLIP_WINDOWS}", short_side=size, clip_len=clip_len).frames
        samples.extend(centre_crops(frames, size, clip_len, name)[:, None])
    return samples


def quantize(model_xml: Path, out_dir: Path, meta: dict) -> None:
    """Quantize the fp32 network at `model_xml` into `out_dir` (written atomically)."""
    import openvino as ov

    nncf_version()
    import nncf

    files = calibration_files(meta["clip_len"])
    samples = calibration_inputs(files, meta["input_size"], meta["clip_len"], meta["provenance"]["backbone"])
    model = ov.Core().read_model(str(model_xml))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantized = nncf.quantize(model, nncf.Dataset(samples), subset_size=len(samples),
                                      preset=nncf.QuantizationPreset.PERFORMANCE,
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
        shutil.rmtree(out_dir, ignore_errors=True)
        try:
            os.replace(tmp, out_dir)
        except OSError:  # another process has just put the same model in place
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
