"""The backbone registry: families register factories here and `create` builds from them.

Family modules import `register` from this module, and the package's `__init__` imports the
families (so they are registered before anyone can call `create`); the registry itself imports
no family, which keeps the package free of import cycles.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..errors import CaptionerError, UsageError
from .base import Backbone

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
