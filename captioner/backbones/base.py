"""What every backbone shares: the `Backbone` interface, preprocessing, weight files.

A backbone turns uint8 video frames into one feature vector per sample point. Image backbones
see one frame per point; clip backbones (I3D) see `clip_len` consecutive frames per point.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import pickle
import re
from pathlib import Path

import torch
import torchvision.transforms.v2.functional as TF

from ..atomic import atomic_write
from ..cache import cache_dir
from ..device import cuda_autocast_dtype
from ..errors import CaptionerError
from ..hashing import file_sha256
from ..preprocess import centre_frames_only


class Backbone(torch.nn.Module):
    """A pretrained network with the preprocessing that its weights were trained with.

    Subclasses implement `forward` (preprocessed input -> features) and, where the weights
    have a classifier, `logits` and pass `class_names`.
    """

    def __init__(self, name: str, *, input_size: int, mean: tuple[float, float, float],
                 std: tuple[float, float, float], feature_dim: int, weights: str | os.PathLike | tuple,
                 clip_len: int = 1, class_names: list[str] | None = None):
        """`weights`: the weight file the network was read from, or for a network built from
        others (a combination, a concept head) (their checksum, their weight files)."""
        super().__init__()
        self.name = name
        self.input_size = int(input_size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.feature_dim = int(feature_dim)
        self.clip_len = int(clip_len)
        # preprocess centre-crops a square of the short side, so more pixels would be wasted.
        self.decode_short_side = self.input_size
        if isinstance(weights, tuple):
            self.weights_sha256, files = weights
        else:
            self.weights_sha256, files = cached_file_sha256(weights), [weights]
        # The files whose change must invalidate anything made from this network (the OpenVINO cache).
        self.weight_files = tuple(sorted({Path(f).resolve() for f in files}))
        self._class_names = class_names

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 (N,H,W,3) or clips (N,L,H,W,3) -> normalised float (N,3,S,S) or (N,3,L,S,S).

        An image backbone given clips sees each clip's centre frame, which is how it samples
        the same points in time as a clip backbone it is combined with.
        """
        if centre_frames_only(frames.dtype, tuple(frames.shape), self.clip_len, self.name):
            frames = frames[:, frames.shape[1] // 2]
        frames = frames.to(self.device, non_blocking=True)
        leading = frames.shape[:-3]
        images = frames.reshape(-1, *frames.shape[-3:]).permute(0, 3, 1, 2)
        # Resizing while still uint8 keeps full-resolution frames out of float memory.
        images = TF.resize(images, [self.input_size], antialias=True)
        images = TF.center_crop(images, [self.input_size, self.input_size])
        x = normalize(images, self.mean, self.std)
        x = x.reshape(*leading, *x.shape[1:])
        if x.ndim == 5:  # (N,L,3,S,S) -> (N,3,L,S,S), the Conv3d layout
            return x.permute(0, 2, 1, 3, 4).contiguous()
        return x.contiguous(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def fold_batchnorm(self) -> "Backbone":
        """Make inference faster by folding batch norms into convolutions, where the network's
        layout is known to allow it; the features stay equal to float precision. `create` calls
        it; others keep the network as published."""
        return self

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        raise self._no_head()

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both outputs of one preprocessed batch; families override it to run the trunk once."""
        return self(x), self.logits(x)

    @torch.inference_mode()
    def features(self, frames_uint8: torch.Tensor, still: bool = False) -> torch.Tensor:
        """(N, feature_dim) float32 features of uint8 frames or clips; `still`: the input is a
        photo, which a combination's clip members do not run on (see CombinedBackbone)."""
        x = self.preprocess(frames_uint8)
        with self.autocast():
            return self(x).float()

    @torch.inference_mode()
    def classify(self, frames_uint8: torch.Tensor) -> torch.Tensor:
        """(N, len(class_names())) float32 class logits of uint8 frames or clips."""
        if self._class_names is None:
            raise self._no_head()
        x = self.preprocess(frames_uint8)
        with self.autocast():
            return self.logits(x).float()

    def class_names(self) -> list[str]:
        if self._class_names is None:
            raise self._no_head()
        return list(self._class_names)

    def provenance(self) -> dict:
        return {"backbone": self.name, "weights_sha256": self.weights_sha256,
                "feature_dim": self.feature_dim, "input_size": self.input_size,
                "mean": list(self.mean), "std": list(self.std), "clip_len": self.clip_len}

    def _no_head(self) -> CaptionerError:
        return CaptionerError(f"backbone {self.name} has no classification head (its weights are "
                              "a feature extractor only)")

    def autocast(self):
        """Mixed precision on CUDA (bf16 where supported), full precision elsewhere."""
        device = self.device
        if device.type != "cuda":
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=cuda_autocast_dtype())

    def extra_repr(self) -> str:
        return f"name={self.name!r}, feature_dim={self.feature_dim}, input_size={self.input_size}"


def normalize(images_uint8: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 (..., 3, H, W) -> float (x/255 - mean) / std, as one multiply-add."""
    shape = (3, 1, 1)
    std_t = torch.tensor(std, device=images_uint8.device).view(shape)
    scale = 1.0 / (255.0 * std_t)
    shift = -torch.tensor(mean, device=images_uint8.device).view(shape) / std_t
    return torch.addcmul(shift, images_uint8.float(), scale)


# ---------------------------------------------------------------------------- weight files
def weights_file(name: str, weights: str | os.PathLike | None, inside: str) -> Path:
    """The weight file backbone `name` loads: `weights` if given, else the file `inside` the
    package that ships them (a glob: the first match), as captioner.catalog names it. A missing
    package or file is a one-line CaptionerError saying what to install."""
    if weights is None:
        from .. import catalog

        info = catalog.backbone_info(name)
        spec = importlib.util.find_spec(info.module)
        found = sorted(Path(spec.submodule_search_locations[0]).glob(inside)) if spec else []
        if not found:
            raise CaptionerError(f"{name} needs the weights package: {info.pip}")
        weights = found[0]
    path = Path(weights)
    if not path.is_file():
        raise CaptionerError("weights file not found", path)
    return path


def cached_file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a weight file, cached on disk by (path, mtime, size).

    Backbones are created on every `captioner caption`; re-hashing ~100 MB each time would
    cost more than building the network.
    """
    path = Path(path).resolve()
    stat = path.stat()
    key = f"{path}|{stat.st_mtime_ns}|{stat.st_size}"
    cache_file = cache_dir() / "sha256.json"
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    if isinstance(cache.get(key), str):
        return cache[key]
    cache[key] = file_sha256(path)
    _write_json_atomic(cache_file, cache)  # best effort: a read-only home only costs time
    return cache[key]


def _write_json_atomic(path: Path, data: dict) -> None:
    try:
        atomic_write(path, json.dumps(data))
    except OSError:
        pass


# Wrappers that training scripts put around a model's state dict.
_NESTING_KEYS = ("state_dict", "model_state_dict", "model", "net", "module", "params")
_PREFIXES = ("module.", "model.", "_orig_mod.")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from a .pth/.pt/.bin/.safetensors file, unwrapped and without prefixes."""
    path = Path(path)
    if not path.is_file():
        raise CaptionerError("weights file not found", path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(path)
        else:
            # timm's train.py stores its argparse.Namespace next to the weights: harmless data.
            with torch.serialization.safe_globals([argparse.Namespace]):
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # Unpickling arbitrary objects could run code from the file, so only tensors are read.
        unsupported = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if unsupported:
            raise CaptionerError(f"the checkpoint holds Python objects ({unsupported.group(1)}), not just "
                                 "tensors; save the weights alone with torch.save(model.state_dict(), path)",
                                 path) from None
        raise CaptionerError("cannot read weights: not a PyTorch checkpoint", path) from None
    except Exception as exc:  # a torch/zip/safetensors error: the file is not a readable checkpoint
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        raise CaptionerError(f"cannot read weights: {reason}", path) from None
    while isinstance(obj, dict) and not _is_state_dict(obj):
        nested = next((obj[k] for k in _NESTING_KEYS if isinstance(obj.get(k), dict)), None)
        if nested is None:
            break
        obj = nested
    if not isinstance(obj, dict) or not obj or not _is_state_dict(obj):
        raise CaptionerError("not a state dict (expected a dict of tensor names to tensors, "
                             "e.g. saved with torch.save(model.state_dict(), path))", path)
    stripped = True
    while stripped:
        stripped = False
        for prefix in _PREFIXES:
            if all(k.startswith(prefix) for k in obj):
                obj = {k[len(prefix):]: v for k, v in obj.items()}
                stripped = True
    return obj


def _is_state_dict(obj: dict) -> bool:
    return bool(obj) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def load_strict(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], path, what: str) -> None:
    """load_state_dict(strict=True), with a one-line CaptionerError naming what does not fit."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong_shape = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
                   for k, v in expected.items() if k in state_dict and state_dict[k].shape != v.shape]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
        if keys:
            shown = ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")
            problems.append(f"{len(keys)} {label} ({shown})")
    if problems:
        raise CaptionerError(f"weights do not fit {what}: " + "; ".join(problems), path)
    model.load_state_dict(state_dict, strict=True)
