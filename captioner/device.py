"""Device and precision rules shared by extraction, captioning and training.

Nothing here imports torch at module level: `captioner caption` on a CPU must stay torch-free,
and without an NVIDIA driver there is no CUDA to ask torch about.
"""

from __future__ import annotations

from pathlib import Path

from .errors import UsageError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str) -> str:
    """"cpu" or "cuda" for a device setting (auto, cpu or cuda); the same errors for every command."""
    if device not in DEVICES:
        raise UsageError(f"unknown device {device!r} (cpu, cuda or auto)")
    if device == "cpu" or (device == "auto" and not _nvidia_driver_present()):
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if device == "cuda":
        raise UsageError("device cuda asked for, but torch sees no CUDA device")
    return "cpu"


def _nvidia_driver_present() -> bool:
    import ctypes.util

    return Path("/proc/driver/nvidia").exists() or ctypes.util.find_library("cuda") is not None


def cuda_autocast_dtype():
    """The mixed-precision type on this GPU: bf16 where it has bf16 units, else fp16, which (unlike
    bf16) needs its loss scaled in training to keep small gradients from vanishing."""
    import torch

    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
