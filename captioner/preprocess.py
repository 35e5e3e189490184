"""Frames to network input without torch: what the OpenVINO runtime and int8 calibration feed.

It resizes and crops as the torch `Backbone.preprocess` does, so every runtime sees the same
pixels; scaling and normalisation happen inside the converted network.
"""

from __future__ import annotations

import numpy as np


def _resized_size(height: int, width: int, size: int) -> tuple[int, int]:
    """Short side to `size`, as torchvision's resize([size]) rounds the long side."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    return (new_long, size) if width <= height else (size, new_long)


def centre_frames_only(dtype, shape: tuple, clip_len: int, name: str) -> bool:
    """Check frames a backbone is given (uint8 (N,H,W,3) or clips (N,L,H,W,3); a ValueError
    naming the backbone otherwise) for both runtimes. True when an image backbone is given clips:
    it sees each clip's centre frame, the points in time a clip backbone beside it samples."""
    dtype = str(dtype).removeprefix("torch.")  # a numpy or a torch dtype
    if dtype != "uint8" or len(shape) not in (4, 5) or shape[-1] != 3:
        raise ValueError(f"{name}: expected uint8 frames (N,H,W,3) or clips (N,L,H,W,3), got {dtype} {tuple(shape)}")
    if clip_len > 1 and len(shape) == 4:
        raise ValueError(f"{name} is a clip backbone: give it clips (N,L,H,W,3)")
    return clip_len == 1 and len(shape) == 5


def centre_crops(frames: np.ndarray, size: int, clip_len: int, name: str) -> np.ndarray:
    """uint8 frames (N,H,W,3) or clips (N,L,H,W,3) -> (N,[L,]size,size,3) uint8, as the torch
    Backbone.preprocess resizes (antialiased bilinear, PIL's, which torchvision's matches) and
    crops; an image backbone given clips sees each clip's centre frame."""
    frames = np.asarray(frames)
    if centre_frames_only(frames.dtype, frames.shape, clip_len, name):
        frames = frames[:, frames.shape[1] // 2]
    height, width = frames.shape[-3:-1]
    new_h, new_w = _resized_size(height, width, size)
    if (new_h, new_w) != (height, width):
        from PIL import Image

        flat = frames.reshape(-1, height, width, 3)
        frames = np.stack([np.asarray(Image.fromarray(f).resize((new_w, new_h), Image.BILINEAR))
                           for f in flat]).reshape(*frames.shape[:-3], new_h, new_w, 3)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    return np.ascontiguousarray(frames[..., top:top + size, left:left + size, :])
