"""Several backbones as one: `create("efficientnet_lite2+i3d")` concatenates their features.

Each sample point is a clip of the longest member's `clip_len`; image members see its centre
frame. Preprocessing crops once at the largest input size and leaves pixels in [0, 1]; each
member then resizes and normalises that crop for itself, which equals its own preprocessing
since a centre square of a centre square is the same square.
"""

from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CaptionerError
from .base import Backbone


class CombinedBackbone(Backbone):
    def __init__(self, members: list[Backbone]):
        clip_lens = {m.clip_len for m in members if m.clip_len > 1}
        if len(clip_lens) > 1:
            raise CaptionerError("cannot combine clip backbones with different clip lengths: "
                                 + ", ".join(f"{m.name} ({m.clip_len})" for m in members))
        digest = hashlib.sha256("+".join(m.weights_sha256 for m in members).encode()).hexdigest()
        super().__init__("+".join(m.name for m in members), input_size=max(m.input_size for m in members),
                         mean=(0.0,) * 3, std=(1.0,) * 3, feature_dim=sum(m.feature_dim for m in members),
                         weights=(digest, [f for m in members for f in m.weight_files]),
                         clip_len=max(m.clip_len for m in members))
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: preprocessed (N,3,S,S) or clips (N,3,L,S,S), pixels in [0, 1]."""
        return torch.cat([member(self._member_input(member, x)) for member in self.members], dim=1)

    def _member_input(self, member: Backbone, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 5 and member.clip_len == 1:
            x = x[:, :, x.shape[2] // 2]
        frames = x.transpose(1, 2) if x.ndim == 5 else x  # resize works on (..., 3, H, W)
        leading = frames.shape[:-3]
        frames = frames.reshape(-1, *frames.shape[-3:])
        if frames.shape[-1] != member.input_size:
            frames = F.interpolate(frames, size=(member.input_size,) * 2, mode="bilinear",
                                   antialias=True, align_corners=False)
        mean = torch.tensor(member.mean, device=x.device, dtype=x.dtype).view(3, 1, 1)
        std = torch.tensor(member.std, device=x.device, dtype=x.dtype).view(3, 1, 1)
        frames = ((frames - mean) / std).reshape(*leading, *frames.shape[-3:])
        if frames.ndim == 5:
            return frames.transpose(1, 2).contiguous()
        return frames.contiguous(memory_format=torch.channels_last)

    @torch.inference_mode()
    def features(self, frames_uint8: torch.Tensor, still: bool = False) -> torch.Tensor:
        """As Backbone.features; for a still input (a photo) clip members give zeros without running:
        a photo has no motion (captioner.runtime applies the same rule)."""
        if not (still and any(m.clip_len > 1 for m in self.members)):
            return super().features(frames_uint8)
        x = self.preprocess(frames_uint8)
        parts = []
        with self.autocast():
            for member in self.members:
                if member.clip_len > 1:
                    parts.append(torch.zeros(len(x), member.feature_dim, device=x.device))
                else:
                    parts.append(member(self._member_input(member, x)).float())
        return torch.cat(parts, dim=1)

    def fold_batchnorm(self) -> "CombinedBackbone":
        for member in self.members:
            member.fold_batchnorm()
        return self

    def provenance(self) -> dict:
        return {**super().provenance(), "members": [m.provenance() for m in self.members]}
