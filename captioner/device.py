"""Device and precision rules shared by extraction, captioning, serving and training.

Nothing here imports torch at module level: `captioner caption` on a CPU must stay torch-free,
and without an NVIDIA driver there is no CUDA to ask torch about.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .errors import UsageError

DEVICE_HELP = ("auto (a CUDA GPU when torch sees one, else the CPU), cpu, cuda, or cuda:N for the N-th GPU "
               "(default %(default)s)")


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """`--device`, checked by `check_device` (a one-line UsageError, exit 2)."""
    parser.add_argument("--device", default="auto", metavar="DEVICE", help=DEVICE_HELP)


def check_device(device: str) -> None:
    """auto, cpu, cuda or cuda:N; anything else is a usage error. Whether the GPU exists is
    `resolve_device`'s question."""
    if device in ("auto", "cpu", "cuda"):
        return
    kind, _, index = str(device).partition(":")
    if kind != "cuda" or not index.isdigit() or not index.isascii():
        raise UsageError(f"unknown device {device!r} (auto, cpu, cuda or cuda:N)")


def is_cuda(device: str) -> bool:
    return str(device).split(":", 1)[0] == "cuda"


def resolve_device(device: str) -> str:
    """cpu, cuda or cuda:N for a device setting; the same errors for every command."""
    check_device(device)
    if device == "cpu" or (device == "auto" and not _nvidia_driver_present()):
        return "cpu"
    if is_cuda(device) and not _nvidia_driver_present():
        raise UsageError(f"device {device} asked for, but torch sees no CUDA device (no NVIDIA driver)")
    import torch

    if torch.cuda.is_available():
        if device == "auto":
            return "cuda"
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise UsageError(f"device {device} asked for, but torch sees {torch.cuda.device_count()} CUDA "
                             f"device(s), numbered from 0")
        return device
    if is_cuda(device):
        raise UsageError(f"device {device} asked for, but torch sees no CUDA device")
    return "cpu"


def _nvidia_driver_present() -> bool:
    import ctypes.util

    return Path("/proc/driver/nvidia").exists() or ctypes.util.find_library("cuda") is not None


def cuda_autocast_dtype():
    """The mixed-precision type on this GPU: bf16 where it has bf16 units, else fp16, which (unlike
    bf16) needs its loss scaled in training to keep small gradients from vanishing."""
    import torch

    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


_BLAS_CONTROLLER = None


def one_blas_thread():
    """A context in which numpy's BLAS runs on one thread: small products (a beam's rows, a
    query's vector, a handful of reranked videos) only lose to thread start-up and, on a busy
    2-core machine, ran 10-20x slower with BLAS threads (measured). The libraries are looked up
    once per process: threadpoolctl's lookup costs about a millisecond each time."""
    global _BLAS_CONTROLLER
    from threadpoolctl import ThreadpoolController

    if _BLAS_CONTROLLER is None:
        _BLAS_CONTROLLER = ThreadpoolController()
    return _BLAS_CONTROLLER.limit(limits=1, user_api="blas")
