"""Runtimes: OpenVINO features agree with PyTorch fp32 on real frames for every backbone; the
compiled-model cache hits, misses and rebuilds when it should; bad flags are usage errors."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from captioner.errors import CaptionerError, UsageError
from captioner.precision import cpu_has_bf16
from captioner.runtime import OpenVINOFeatures, TorchFeatures, load_backbone
from captioner.video import decode
from runtime_helpers import load_in_fresh_process

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module", autouse=True)
def _private_cache(tmp_path_factory):
    """One converted-model cache for the module: later tests reuse earlier conversions."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
        yield


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def real_frames(clips, fx, points: int) -> np.ndarray:
    """Frames (or clips) of real MSVD videos, decoded as extraction decodes them."""
    return np.concatenate([decode(c, f"uniform:{points}", short_side=fx.decode_short_side,
                                  clip_len=fx.clip_len).frames for c in clips])


def flickr_photos(data_dir, count: int) -> np.ndarray:
    """Full-size photos (500 px, not a backbone's size): the resize path of preprocessing."""
    with open(data_dir / "flickr8k" / "captions.csv", newline="") as fh:
        names = list(dict.fromkeys(row["image"] for row in csv.DictReader(fh)))[:40]
    images = [cv2.cvtColor(cv2.imread(str(data_dir / "flickr8k" / "images" / n)), cv2.COLOR_BGR2RGB)
              for n in names]
    shape = images[0].shape
    return np.stack([im for im in images if im.shape == shape][:count])


# ------------------------------------------------------------------ agreement on real frames

@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2",
                                  "inception_v3", "i3d", "efficientnet_lite0+i3d"])
def test_openvino_features_agree_with_torch_fp32(name, msvd_clips, data_dir):
    """OpenVINO with precision auto equals torch fp32 per frame: fp32 for image backbones, clip
    members in bf16 (I3D keeps cosine 0.9999 there). bf16 everywhere rounds each layer: measured
    on the MSVD clips, EfficientNet-Lite2's frames keep cosine 0.986 at worst and its pooled video
    vectors 0.997, which is why it is opt-in; this checks it stays there."""
    reference = load_backbone(name, runtime="torch", precision="fp32")
    exact = load_backbone(name, runtime="openvino", precision="auto")
    assert isinstance(exact, OpenVINOFeatures) and isinstance(reference, TorchFeatures)
    mixed = reference.clip_len > 1 and cpu_has_bf16()
    assert exact.precision == ("mixed" if mixed else "fp32")
    assert (exact.decode_short_side, exact.clip_len, exact.feature_dim) == \
           (reference.decode_short_side, reference.clip_len, reference.feature_dim)
    assert {**exact.provenance(), "runtime": "torch", "precision": "fp32"} == reference.provenance()
    fast = load_backbone(name, runtime="openvino", precision="bf16") if cpu_has_bf16() else None
    points = 2 if reference.clip_len > 1 else 4
    for clip in msvd_clips[-4:]:
        frames = real_frames([clip], reference, points)
        expected = reference.features(frames)
        assert expected.shape == (points, reference.feature_dim) and expected.dtype == np.float32
        assert cosines(exact.features(frames), expected).min() >= (0.999 if mixed else 0.9999)
        if fast is not None:
            approximate = fast.features(frames)
            assert cosines(approximate, expected).min() >= 0.98
            assert cosines(approximate.mean(0, keepdims=True), expected.mean(0, keepdims=True))[0] >= 0.995
    if reference.clip_len == 1:
        photos = flickr_photos(data_dir, 4)
        assert cosines(exact.features(photos), reference.features(photos)).min() >= 0.9999


def test_class_names_come_from_the_cache_like_torch():
    ov_fx = load_backbone("efficientnet_lite0", runtime="openvino")
    assert ov_fx.class_names() == load_backbone("efficientnet_lite0", runtime="torch").class_names()
    with pytest.raises(CaptionerError, match="no classification head"):
        load_backbone("inception_v3", runtime="openvino").class_names()


def test_still_images_skip_clip_members(data_dir):
    photos = flickr_photos(data_dir, 2)
    clips = np.repeat(photos[:, None], 16, axis=1)  # how decode gives a photo to a clip backbone
    for runtime in ("torch", "openvino"):
        fx = load_backbone("efficientnet_lite0+i3d", runtime=runtime, precision="fp32")
        still = fx.features(clips, still=True)
        assert still.shape == (2, 1280 + 1024)
        assert not still[:, 1280:].any() and still[:, :1280].any()
        moving = fx.features(clips)
        assert moving[:, 1280:].any()
        assert cosines(still[:, :1280], moving[:, :1280]).min() >= 0.9999


# ------------------------------------------------------------------ the compiled-model cache

def _user_weights(path: Path, seed: int) -> Path:
    import timm

    torch.manual_seed(seed)
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), path)
    return path


def test_cache_hits_without_torch_misses_on_new_weights_and_rebuilds_corrupt_files(tmp_path):
    weights = _user_weights(tmp_path / "r18.pth", seed=0)
    spec = f"timm:resnet18={weights}"
    first = load_backbone(spec, runtime="openvino")
    assert not first.cache_hit
    loaded = load_in_fresh_process(spec)
    assert (loaded["hit"], loaded["imported"], loaded["shape"]) == (True, [], [1, 512])

    # A changed weights file (same path) must not be served the old network.
    _user_weights(weights, seed=1)
    changed = load_backbone(spec, runtime="openvino", precision="fp32")
    assert not changed.cache_hit
    assert changed.provenance()["weights_sha256"] != first.provenance()["weights_sha256"]
    frames = np.random.default_rng(0).integers(0, 256, (2, 240, 320, 3), dtype=np.uint8)
    reference = load_backbone(spec, runtime="torch").features(frames)
    assert cosines(changed.features(frames), reference).min() >= 0.9999

    root = Path(os.environ["XDG_CACHE_HOME"]) / "captioner" / "openvino"
    (root / "index.json").write_bytes(b"\0garbage")
    rebuilt = load_backbone(spec, runtime="openvino", precision="fp32")
    assert not rebuilt.cache_hit
    assert cosines(rebuilt.features(frames), reference).min() >= 0.9999
    index = json.loads((root / "index.json").read_text())
    (key,) = next(e for k, e in index.items() if k.startswith(spec + "|"))["members"]  # spec is absolute
    blobs = list((root / key / "compiled").iterdir())
    assert blobs, "OpenVINO's compiled-model cache is not used"
    for blob in blobs:
        blob.write_bytes(b"\0garbage")
    assert cosines(load_backbone(spec, runtime="openvino", precision="fp32").features(frames),
                   reference).min() >= 0.9999
    # A damaged network file is only read once the compiled blob is unusable too.
    for damaged in [root / key / "model.bin", *(root / key / "compiled").iterdir()]:
        damaged.write_bytes(b"\0garbage")
    rebuilt = load_backbone(spec, runtime="openvino", precision="fp32")
    assert not rebuilt.cache_hit
    assert cosines(rebuilt.features(frames), reference).min() >= 0.9999


def test_unconvertible_backbone_falls_back_to_torch_or_fails_cleanly(tmp_path, monkeypatch):
    import openvino

    def refuse(*args, **kwargs):
        raise RuntimeError("Model wasn't fully converted: aten::unsupported_op\nmore detail")

    monkeypatch.setattr(openvino, "convert_model", refuse)
    spec = f"timm:resnet18={_user_weights(tmp_path / 'r18.pth', seed=2)}"
    with pytest.warns(UserWarning, match=r"runs on PyTorch: OpenVINO cannot convert it .*aten::unsupported_op"):
        fx = load_backbone(spec, runtime="auto")
    assert isinstance(fx, TorchFeatures) and fx.provenance()["runtime"] == "torch"
    with pytest.raises(CaptionerError, match=r"cannot run on OpenVINO: RuntimeError: .*unsupported_op$"):
        load_backbone(spec, runtime="openvino")


# ------------------------------------------------------------------ options

@pytest.mark.parametrize("flag, value", [("--runtime", "tensorrt"), ("--precision", "fp16")])
def test_bad_runtime_or_precision_is_a_one_line_usage_error(flag, value, tmp_path):
    result = subprocess.run([sys.executable, "-m", "captioner.cli", "extract", str(tmp_path), "--out",
                             str(tmp_path / "store"), flag, value], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"captioner: error: unknown {flag} {value!r} " +
                                                  ("(auto, torch or openvino)" if flag == "--runtime"
                                                   else "(auto, fp32, bf16, mixed or int8)")]
    with pytest.raises(UsageError):
        load_backbone("efficientnet_lite0", runtime="onnx")


def test_mixed_precision_is_bf16_for_clip_members_only():
    """auto on a bf16 CPU: image backbones stay fp32 (their bf16 changes captions), a concept
    combination runs I3D in bf16; `mixed` is OpenVINO's and means nothing to torch."""
    with pytest.raises(UsageError, match="OpenVINO precision"):
        load_backbone("efficientnet_lite0", runtime="torch", precision="mixed")
    if cpu_has_bf16():
        assert load_backbone("efficientnet_lite0", runtime="openvino", precision="mixed").precision == "fp32"
        combined = load_backbone("efficientnet_lite0+i3d", runtime="openvino", precision="auto")
        assert combined.precision == "mixed" and combined.provenance()["precision"] == "mixed"
    else:  # machines differ: without bf16 units `mixed` is refused and `auto` is plain fp32
        with pytest.raises(UsageError, match="no bf16 units"):
            load_backbone("efficientnet_lite0", runtime="openvino", precision="mixed")
        assert load_backbone("efficientnet_lite0+i3d", runtime="openvino", precision="auto").precision == "fp32"


def test_store_mixes_runtimes_but_not_precisions(tmp_path):
    from captioner.store import open_features

    store = open_features(tmp_path / "store", "a")
    base = {"backbone": "efficientnet_lite0", "weights_sha256": "ab", "feature_dim": 2, "frames": "uniform:2"}
    store.set_provenance({**base, "runtime": "openvino", "precision": "fp32"})
    store.put("a", np.ones((2, 2)), {"runtime": "openvino"})
    store.set_provenance({**base, "runtime": "torch", "precision": "fp32"})
    assert store.provenance == {**base, "precision": "fp32", "runtimes": ["openvino", "torch"]}
    with pytest.raises(UsageError, match=r"\(precision differ\)"):
        store.set_provenance({**base, "runtime": "openvino", "precision": "bf16"})
    with pytest.raises(UsageError, match="backbone differ"):
        store.set_provenance({**base, "backbone": "efficientnet_lite1", "runtime": "torch", "precision": "fp32"})
    assert json.loads((tmp_path / "store" / "store.json").read_text())["provenance"]["runtimes"] == \
           ["openvino", "torch"]

    # A store written before runtimes and precisions were recorded takes either.
    legacy = open_features(tmp_path / "legacy", "a")
    legacy.set_provenance(base)
    legacy.put("a", np.ones((2, 2)))
    legacy.set_provenance({**base, "runtime": "openvino", "precision": "fp32"})
    assert legacy.provenance == {**base, "precision": "fp32", "runtimes": ["openvino"]}
