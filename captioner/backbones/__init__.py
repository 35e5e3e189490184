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

# Importing the families registers them.
from . import concept_backbone, efficientnet, i3d, inception, local  # noqa: F401
from .base import Backbone
from .registry import available, create, register

__all__ = ["Backbone", "available", "create", "register"]
