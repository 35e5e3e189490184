"""Any timm or torchvision image classifier, with weights from a local file.

    create("timm:resnet152", weights="r152.pth")   or   create("torchvision:resnet152=r152.pth")

The file decides the head: a classifier whose weights are in the file is kept (ImageNet class
names when it has 1000 outputs), one whose weights are not is dropped. Features are the input
of the classifier, so their size comes from the architecture.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import torch
from torch import nn

from ..errors import CaptionerError, UsageError
from .base import Backbone, load_strict, read_state_dict
from .registry import register
from .efficientnet import TimmBackbone, imagenet_class_names


def _need_weights(family: str, arch: str, weights: str | None) -> Path:
    if weights is None:
        raise UsageError(f"{family}:{arch} needs a local weights file: {family}:{arch}=PATH "
                             "(nothing is downloaded)")
    return Path(weights)


def _unknown_arch(family: str, arch: str, known: list[str]) -> CaptionerError:
    close = difflib.get_close_matches(arch, known, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return UsageError(f"unknown {family} architecture {arch!r}{hint}")


def _class_names(num_classes: int) -> list[str] | None:
    if num_classes == 0:
        return None
    if num_classes == 1000:
        return imagenet_class_names()
    return [f"class {i}" for i in range(num_classes)]


@register("timm:")
def _timm(arch: str, weights: str | None) -> TimmBackbone:
    import timm
    from timm.data import resolve_model_data_config

    path = _need_weights("timm", arch, weights)
    if not timm.is_model(arch):
        raise _unknown_arch("timm", arch, timm.list_models())
    state = read_state_dict(path)
    model = timm.create_model(arch, pretrained=False)
    classifier = model.pretrained_cfg.get("classifier")
    classifier = classifier[0] if isinstance(classifier, (tuple, list)) else classifier
    head_weight = state.get(f"{classifier}.weight")
    num_classes = head_weight.shape[0] if head_weight is not None else 0
    if num_classes != model.num_classes:
        model = timm.create_model(arch, pretrained=False, num_classes=num_classes)
    load_strict(model, state, path, f"timm:{arch}")
    config = resolve_model_data_config(model)
    return TimmBackbone(f"timm:{arch}", model, path, input_size=config["input_size"][-1],
                        mean=config["mean"], std=config["std"], class_names=_class_names(num_classes))


class TorchvisionBackbone(Backbone):
    """A torchvision classifier split at its last Linear layer: body -> features, head -> logits."""

    def __init__(self, name: str, body: nn.Module, head: nn.Linear | None, feature_dim: int, path: Path,
                 *, input_size: int, mean, std):
        super().__init__(name, input_size=input_size, mean=mean, std=std, feature_dim=feature_dim,
                         weights=path,
                         class_names=_class_names(head.out_features) if head is not None else None)
        self.body = body.to(memory_format=torch.channels_last)
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.head is None:
            raise self._no_head()
        return self.head(self.body(x))


@register("torchvision:")
def _torchvision(arch: str, weights: str | None) -> TorchvisionBackbone:
    import torchvision

    path = _need_weights("torchvision", arch, weights)
    known = torchvision.models.list_models(module=torchvision.models)  # image classifiers only
    if arch not in known:
        raise _unknown_arch("torchvision", arch, known)
    state = read_state_dict(path)
    model = torchvision.models.get_model(arch, weights=None)
    head_name, head = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    feature_dim = head.in_features
    head_weight = state.get(f"{head_name}.weight")
    if head_weight is not None and head_weight.shape[0] != head.out_features:
        model = torchvision.models.get_model(arch, weights=None, num_classes=head_weight.shape[0])
    if head_weight is None:
        _replace(model, head_name, nn.Identity())
    load_strict(model, state, path, f"torchvision:{arch}")
    head = _replace(model, head_name, nn.Identity()) if head_weight is not None else None
    # The architecture's published weights define its preprocessing; ours just has none.
    transforms = next(iter(torchvision.models.get_model_weights(arch))).transforms()
    return TorchvisionBackbone(f"torchvision:{arch}", model, head, feature_dim, path,
                               input_size=transforms.crop_size[0], mean=transforms.mean, std=transforms.std)


def _replace(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put `new` at dotted `name`; returns what was there."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name)
    old = parent.get_submodule(child)
    setattr(parent, child, new)
    return old
