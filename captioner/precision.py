"""What precision features are computed in: the whole rule, and the one bf16 detector.

    resolve("auto", "auto", "cpu")            # ("openvino", "fp32" or "mixed"): what was asked, resolved
    member_precision("mixed", clip_len=16)    # what one network of a combination runs in
    features_precision("mixed", [1])          # what a combination's features are ("fp32": no clip member)
    captioning_precision(provenance, ...)     # what `auto` means when captioning with a trained model
    keyed_precision("bf16")                   # what a pipeline's extraction key records

`auto` runs OpenVINO on a CPU and PyTorch on CUDA. On OpenVINO, bf16 keeps Inception-v3 and I3D
features within cosine 0.9999 of fp32, but EfficientNet-Lite1/2's only within 0.997-0.998 per
video (0.986 per frame), below the 0.999 the project asks of a runtime, and it changes some
captions. So `auto` there is fp32 for image networks and `mixed` for combinations with a clip
network: the clip networks (I3D, most of the time of a concept model) in bf16, the image networks
in fp32, on CPUs with bf16 units. `bf16` runs every network in bf16. `int8` (OpenVINO, opt-in)
runs each image network quantized by NNCF and clip networks as `auto` does (`captioner.quantize`
says why). On CUDA `auto` keeps the backbone's own mixed precision ("autocast").

Elsewhere torch and OpenVINO emulate bf16, which is slower than fp32, so bf16 is asked of the
CPU's units, never assumed: some machines are Intel Xeon with AMX, others AMD EPYC Zen 4 with
AVX-512 BF16 and no AMX, others have neither.
"""

from __future__ import annotations

import os
import platform
from functools import lru_cache

from .device import is_cuda
from .errors import UsageError

RUNTIMES = ("auto", "torch", "openvino")
PRECISIONS = ("auto", "fp32", "bf16", "mixed", "int8")


@lru_cache(maxsize=1)
def cpu_info() -> dict:
    """{"model", "cores", "flags"}: the CPU as /proc/cpuinfo describes it (flags empty where there
    is none to read, as on macOS and Windows)."""
    model, flags = platform.processor() or platform.machine(), frozenset()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = frozenset(value.split())
                    break
    except OSError:
        pass
    return {"model": model, "cores": os.cpu_count(), "flags": flags}


@lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """Whether this CPU computes in bf16 itself (AVX-512 BF16 or AMX): the one answer every
    precision decision, training's `cpu_bf16` and `captioner --version` use. Without
    /proc/cpuinfo, OpenVINO's list of what it can run in bf16 here decides."""
    flags = cpu_info()["flags"]
    if flags:
        return bool(flags & {"avx512_bf16", "amx_bf16"})
    try:
        from .openvino_env import openvino

        return "BF16" in openvino().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:  # no OpenVINO, or it cannot read the CPU: assume no bf16 units
        return False


def check(runtime: str, precision: str) -> None:
    """Refuse an unknown --runtime or --precision (one line, exit 2), before any work."""
    if runtime not in RUNTIMES:
        raise UsageError(f"unknown --runtime {runtime!r} (auto, torch or openvino)")
    if precision not in PRECISIONS:
        raise UsageError(f"unknown --precision {precision!r} (auto, fp32, bf16, mixed or int8)")


def resolve(runtime: str, precision: str, device: str) -> tuple[str, str]:
    """(runtime, precision) that what was asked means on this device; a combination this device
    cannot run is a UsageError that says what to ask instead."""
    check(runtime, precision)
    if runtime == "auto":
        runtime = "torch" if is_cuda(device) else "openvino"
    if runtime == "openvino" and is_cuda(device):
        raise UsageError("--runtime openvino runs on the CPU; with --device cuda use --runtime torch or auto")
    if precision in ("mixed", "int8") and runtime != "openvino":
        raise UsageError(f"--precision {precision} is an OpenVINO precision; with --runtime torch use fp32 or bf16")
    if precision == "auto":
        if runtime == "torch":
            precision = "autocast" if is_cuda(device) else "fp32"
        else:
            precision = "mixed" if cpu_has_bf16() else "fp32"
    if precision in ("bf16", "mixed") and runtime == "openvino" and not cpu_has_bf16():
        raise UsageError(f"--precision {precision}: this CPU has no bf16 units (AVX-512 BF16 or AMX); use fp32")
    if precision == "int8":
        from .openvino_env import openvino

        if "INT8" not in openvino().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            raise UsageError("--precision int8: OpenVINO lists no INT8 support for this CPU; use fp32")
    return runtime, precision


def member_precision(precision: str, clip_len: int) -> str:
    """What one network of a backbone runs in under a resolved precision: `mixed` is bf16 for
    clip networks and fp32 for image ones; clip networks are never quantized (int8 I3D kept only
    cosine 0.973 per video), they run as `auto` would."""
    if precision == "mixed":
        return "bf16" if clip_len > 1 else "fp32"
    if precision == "int8" and clip_len > 1:
        return "bf16" if cpu_has_bf16() else "fp32"
    return precision


def features_precision(precision: str, clip_lens: list[int]) -> str:
    """What a backbone's features are, as its provenance records them: `mixed` without a clip
    network is plain fp32, and `int8` with only clip networks is what they ran in."""
    if precision == "mixed" and not any(n > 1 for n in clip_lens):
        return "fp32"
    if precision == "int8" and clip_lens and all(n > 1 for n in clip_lens):
        return member_precision(precision, max(clip_lens))
    return precision


def captioning_precision(provenance: dict, runtime: str, device: str) -> str:
    """What `--precision auto` means when captioning: the precision the model's training features
    were computed in, where this CPU can run it.

    A model fed features computed as in training says what it was validated to say; OpenVINO
    bf16 features changed 2 of the 18 test clips' captions of the fp32-trained default model
    (measured). Stores record their precision; older ones were PyTorch fp32. On PyTorch the
    runtime's own `auto` stands."""
    if resolve(runtime, "auto", device)[0] != "openvino":
        return "auto"
    if provenance.get("precision") in ("bf16", "mixed") and cpu_has_bf16():
        return provenance["precision"]
    return "fp32"


def keyed_precision(precision: str) -> dict:
    """The precision part of a pipeline extraction stage's cache key. bf16 and mixed change the
    features a little (int8 more) and are keyed when asked for by name; `auto` and fp32 are not, so the keys of
    stores made before precisions existed stay what they were. What `auto` resolved to is recorded
    in the store, which is never filled in two precisions."""
    return {"precision": precision} if precision in ("bf16", "mixed", "int8") else {}
