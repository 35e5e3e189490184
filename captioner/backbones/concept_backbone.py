"""What a backbone's own classifier recognises, as features: `create("efficientnet_lite2_concepts")`.

A concept backbone returns the softmax class probabilities of its member's classifier head
(ImageNet objects for EfficientNet-Lite, Kinetics-400 actions for I3D), after the member's
features where `with_features`. Mean-pooled over a video they say which objects and actions
it shows, in words the caption model can be taught (see `captioner/concepts.py`), which is how
a decoder trained mostly on text learns to name what the backbones see.

A clip member's probabilities are zeros for a still input (a photo decoded as a clip of
identical frames): an action needs motion, and a 3D network shown one repeated frame answers
with confident nonsense. This is decided inside `forward`, so every runtime that runs the
module agrees.
"""

from __future__ import annotations

import torch

from .registry import register
from .base import Backbone


class ConceptBackbone(Backbone):
    def __init__(self, member: Backbone, with_features: bool):
        classes = member.class_names()
        feature_dim = (member.feature_dim if with_features else 0) + len(classes)
        super().__init__(f"{member.name}_concepts", input_size=member.input_size, mean=member.mean,
                         std=member.std, feature_dim=feature_dim, weights=(member.weights_sha256, member.weight_files),
                         clip_len=member.clip_len, class_names=classes)
        self.member = member
        self.with_features = with_features
        self.decode_short_side = member.decode_short_side

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features, logits = self.member.features_and_logits(x)
        probs = logits.float().softmax(dim=-1)
        if x.ndim == 5:  # (N,3,L,S,S): a clip whose frames are all equal has no motion
            moving = (x.amax(dim=2) - x.amin(dim=2)).flatten(1).amax(dim=1) > 0
            probs = probs * moving[:, None].to(probs.dtype)
        return torch.cat([features.float(), probs], dim=1) if self.with_features else probs

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.member.features_and_logits(x)[1]

    def fold_batchnorm(self) -> "ConceptBackbone":
        self.member.fold_batchnorm()
        return self

    def provenance(self) -> dict:
        offset = self.member.feature_dim if self.with_features else 0
        return {**super().provenance(), "concepts": {
            "kind": "objects" if self.clip_len == 1 else "actions", "offset": offset,
            "classes": self.class_names()}}


def _concepts(member_name: str, with_features: bool):
    def factory(weights: str | None) -> ConceptBackbone:
        from ..catalog import BackbonePart
        from .registry import _create_one

        return ConceptBackbone(_create_one(BackbonePart(member_name, weights=weights)), with_features)
    return factory


for _variant in (0, 1, 2):
    register(f"efficientnet_lite{_variant}_concepts")(_concepts(f"efficientnet_lite{_variant}", True))
# I3D's appearance is in the image member beside it; its 1024-d features would only add width.
register("i3d_concepts")(_concepts("i3d", False))
