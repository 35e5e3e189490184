"""The backbone registry: families register factories here and `create` builds from them.

Family modules import `register` from this module, and the package's `__init__` imports the
families (so they are registered before anyone can call `create`); the registry itself imports
no family, which keeps the package free of import cycles.
"""

from __future__ import annotations

from typing import Callable

import torch

from .. import catalog
from .base import Backbone

_FACTORIES: dict[str, Callable[..., Backbone]] = {}


def register(name: str):
    """Decorator: `factory(weights: str | None) -> Backbone`, or for a family prefix "fam:",
    `factory(arch: str, weights: str | None) -> Backbone`. Factories build on the CPU. The name
    must be an entry of `captioner.catalog`'s table, the one list of backbones."""

    def decorator(factory):
        if name in _FACTORIES:
            raise ValueError(f"backbone {name!r} registered twice")
        if name not in catalog.backbone_names() and name.removesuffix(":") not in catalog.FAMILIES:
            raise ValueError(f"backbone {name!r} is not in captioner.catalog.BACKBONES")
        _FACTORIES[name] = factory
        return factory

    return decorator


def available() -> list[str]:
    """Names that `create` accepts without a weights file."""
    return sorted(name for name in _FACTORIES if not name.endswith(":"))


def create(name: str, *, device: str | torch.device = "cpu", weights: str | None = None,
           fold_batchnorm: bool = True) -> Backbone:
    """A backbone in eval mode on `device`.

    `name` is a catalogued name, `timm:ARCH` or `torchvision:ARCH`, optionally `NAME=PATH`
    for a local weights file (the CLI passes one string), or several joined by "+"
    (`captioner.catalog.parse_backbone` reads it). `fold_batchnorm=False` keeps the network
    exactly as published (slower; for comparisons).
    """
    parts = catalog.parse_backbone(name, weights)
    if len(parts) > 1:
        from .combined import CombinedBackbone

        backbone = CombinedBackbone([_create_one(part) for part in parts])
    else:
        backbone = _create_one(parts[0])
    backbone = backbone.eval()
    if fold_batchnorm:
        backbone.fold_batchnorm()
    return backbone.to(device)


def _create_one(part: catalog.BackbonePart) -> Backbone:
    if part.family is not None:
        return _FACTORIES[part.family + ":"](part.arch, part.weights)
    return _FACTORIES[part.name](part.weights)
