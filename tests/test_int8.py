"""`--precision int8`: NNCF-quantized OpenVINO image backbones, calibrated on Flickr8k train
photos, cached under a key of the calibration set and NNCF's version; features checked against
torch fp32 on real MSVD frames."""

from __future__ import annotations

import gc
import json
from pathlib import Path

import numpy as np
import pytest

from captioner import quantize
from captioner.errors import CaptionerError, UsageError
from captioner.runtime import cache_dir, load_backbone
from captioner.video import decode
from runtime_helpers import load_in_fresh_process

ROOT = Path(__file__).resolve().parent.parent

pytest.importorskip("nncf")


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


@pytest.fixture(autouse=True)
def _data(data_dir, monkeypatch):
    monkeypatch.setenv("CAPTIONER_DATA", str(data_dir))


def test_int8_is_an_openvino_precision():
    with pytest.raises(UsageError, match="OpenVINO precision"):
        load_backbone("efficientnet_lite0", runtime="torch", precision="int8")


@pytest.mark.slow
def test_int8_lite2_features_agree_with_torch_fp32_on_real_frames(msvd_clips):
    """Measured on the 9 MSVD test clips, 16 frames each (README, Runtimes): worst frame 0.9943,
    worst pooled video 0.9985 (bf16: 0.9854 / 0.9985); the gate is 0.99 for both."""
    reference = load_backbone("efficientnet_lite2", runtime="torch", precision="fp32")
    int8 = load_backbone("efficientnet_lite2", runtime="openvino", precision="int8")
    assert int8.precision == "int8" and int8.provenance()["int8_calibration"]
    for clip in msvd_clips[-4:]:
        frames = decode(clip, "uniform:8", short_side=int8.decode_short_side).frames
        expected, got = reference.features(frames), int8.features(frames)
        assert cosines(got, expected).min() >= 0.99
        assert cosines(got.mean(0), expected.mean(0)) >= 0.99


@pytest.mark.slow
def test_int8_quantizes_image_members_only():
    """A combination's clip member (I3D) runs as precision auto runs it, not quantized."""
    int8 = load_backbone("efficientnet_lite0+i3d", runtime="openvino", precision="int8")
    auto = load_backbone("efficientnet_lite0+i3d", runtime="openvino", precision="auto")
    exact = load_backbone("efficientnet_lite0", runtime="openvino", precision="fp32")
    assert int8.provenance()["precision"] == "int8" and "+" not in int8.provenance()["int8_calibration"]
    clips = np.random.default_rng(1).integers(0, 256, (1, 16, 224, 224, 3), dtype=np.uint8)
    got, expected = int8.features(clips), auto.features(clips)
    assert np.allclose(got[:, 1280:], expected[:, 1280:], atol=1e-5)
    assert not np.allclose(got[:, :1280], exact.features(clips), atol=1e-3)  # Lite0 is quantized
    assert load_backbone("i3d", runtime="openvino", precision="int8").precision in ("bf16", "fp32")


def _int8_dirs() -> list[Path]:
    return sorted(cache_dir().glob("openvino/*/int8-*"))


@pytest.mark.slow
def test_int8_is_cached_by_calibration_set_and_loads_without_torch_or_nncf(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(quantize, "CALIBRATION_PHOTOS", 16)  # small: this checks the cache, not accuracy
    first = load_backbone("efficientnet_lite0", runtime="openvino", precision="int8")
    (quantized,) = _int8_dirs()
    assert json.loads((quantized / "calibration.json").read_text())["nncf"] == quantize.nncf_version()
    fp32 = load_backbone("efficientnet_lite0", runtime="openvino", precision="fp32")
    assert "int8_calibration" not in fp32.provenance()
    frames = np.random.default_rng(0).integers(0, 256, (2, 240, 320, 3), dtype=np.uint8)
    expected = first.features(frames)

    # Loaded again, it is not quantized again: in this process, and in a fresh one that imports
    # neither torch nor NNCF.
    def refuse(*args, **kwargs):
        raise AssertionError("quantized again")

    original = quantize.quantize
    monkeypatch.setattr(quantize, "quantize", refuse)
    again = load_backbone("efficientnet_lite0", runtime="openvino", precision="int8")
    assert np.array_equal(again.features(frames), expected)
    assert again.provenance() == first.provenance()
    loaded = load_in_fresh_process("efficientnet_lite0", "int8", setup="import captioner.quantize as q\n"
                                   "q.CALIBRATION_PHOTOS = 16\n")
    assert (loaded["hit"], loaded["imported"], loaded["provenance"]["int8_calibration"]) == (
        True, [], first.provenance()["int8_calibration"])

    # Another calibration set is another key: quantized anew, recorded in the provenance.
    monkeypatch.setattr(quantize, "quantize", original)
    monkeypatch.setattr(quantize, "CALIBRATION_PHOTOS", 8)
    other = load_backbone("efficientnet_lite0", runtime="openvino", precision="int8")
    assert len(_int8_dirs()) == 2
    assert other.provenance()["int8_calibration"] != first.provenance()["int8_calibration"]

    # A corrupt int8 network is rebuilt, not fatal. (Live compiled models map their weights file:
    # drop them before it is overwritten, or they would fault on it.)
    quantized_features = other.features(frames)
    del first, again, other
    gc.collect()
    for path in _int8_dirs():
        (path / "model.bin").write_bytes(b"\0garbage")
        for blob in (path / "compiled").iterdir():
            blob.write_bytes(b"\0garbage")
    rebuilt = load_backbone("efficientnet_lite0", runtime="openvino", precision="int8")
    assert cosines(rebuilt.features(frames), quantized_features).min() >= 0.9999


def test_int8_without_calibration_data_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("CAPTIONER_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(CaptionerError, match=r"int8 calibrates on Flickr8k train photos under .*nowhere "
                                             r"\(set CAPTIONER_DATA\)"):
        load_backbone("efficientnet_lite0", runtime="openvino", precision="int8")
