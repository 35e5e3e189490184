"""Pretrained feature backbones behind one registry.

    create("efficientnet_lite2")                    # ImageNet EfficientNet-Lite2, 1280-d
    create("i3d")                                   # Kinetics-400 I3D, 1024-d per 16-frame clip
    create("efficientnet_lite2+i3d")                # both, concatenated per sample point
    create("efficientnet_lite2_concepts+i3d_concepts")  # Lite2 features + ImageNet and Kinetics
                                                    # class probabilities (what they recognise)
    create("timm:resnet152", weights="r152.pth")    # any timm/torchvision architecture ...
    create("torchvision:resnet152=r152.pth")        # ... with a local weights file

Every weight file is local: nothing is downloaded. Families register a factory under a name
(`@register("efficientnet_lite2")`), or under a prefix ending in ":" for families that take
an architecture name (`@register("timm:")`).
"""

from __future__ import annotations

from typing import Callable

import torch

from ..errors import CaptionerError, UsageError
from .base import Backbone

__all__ = ["Backbone", "available", "create", "register"]

_FACTORIES: dict[str, Callable[..., Backbone]] = {}


def register(name: str):
    """Decorator: `factory(weights: str | None) -> Backbone`, or for a prefix "fam:",
    `factory(arch: str, weights: str | None) -> Backbone`. Factories build on the CPU."""

    def decorator(factory):
        if name in _FACTORIES:
            raise ValueError(f"backbone {name!r} registered twice")
        _FACTORIES[name] = factory
        return factory

    return decorator


def available() -> list[str]:
    """Names that `create` accepts without a weights file."""
    return sorted(name for name in _FACTORIES if not name.endswith(":"))


def create(name: str, *, device: str | torch.device = "cpu", weights: str | None = None,
           fold_batchnorm: bool = True) -> Backbone:
    """A backbone in eval mode on `device`.

    `name` is a registered name, `timm:ARCH` or `torchvision:ARCH`, optionally `NAME=PATH`
    for a local weights file (the CLI passes one string), or several joined by "+".
    `fold_batchnorm=False` keeps the network exactly as published (slower; for comparisons).
    """
    parts = [part.strip() for part in name.split("+")]
    if len(parts) > 1:
        if weights is not None:
            raise CaptionerError(f"backbone {name}: give each part of a combination its own "
                                 "weights as NAME=PATH")
        from .combined import CombinedBackbone

        backbone = CombinedBackbone([_create_one(part, None) for part in parts])
    else:
        backbone = _create_one(parts[0], weights)
    backbone = backbone.eval()
    if fold_batchnorm:
        backbone.fold_batchnorm()
    return backbone.to(device)


def _create_one(spec: str, weights: str | None) -> Backbone:
    name, sep, path = spec.partition("=")
    name = name.strip()
    if sep:
        if weights is not None:
            raise CaptionerError(f"backbone {spec}: weights given twice (in the name and as weights=)")
        weights = path.strip()
    if not name:
        raise UsageError(f"empty backbone name in {spec!r}; available: {_names_hint()}")
    if weights is not None and not weights:
        raise UsageError(f"backbone {name}: empty weights path")
    prefix, colon, arch = name.partition(":")
    if colon:
        factory = _FACTORIES.get(prefix + ":")
        if factory is None or not arch:
            raise UsageError(f"unknown backbone {name!r}; available: {_names_hint()}")
        return factory(arch, weights)
    factory = _FACTORIES.get(name)
    if factory is None:
        raise UsageError(f"unknown backbone {name!r}; available: {_names_hint()}")
    return factory(weights)


def _names_hint() -> str:
    families = sorted(f"{prefix}ARCH=PATH" for prefix in _FACTORIES if prefix.endswith(":"))
    return ", ".join(available() + families)


# Importing the families registers them.
from . import concepts, efficientnet, i3d, inception, local  # noqa: E402,F401
