"""Scale-out of extraction over a Ray cluster.

Each Ray task decodes and embeds a chunk of videos on one worker (keeping its backbone loaded
between tasks) and returns the features; the driver alone writes the store. Workers must see
the video paths, as on a shared file system, which is how clusters usually hold datasets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import CaptionerError

_BACKBONES: dict[tuple[str, ...], object] = {}  # per Ray worker process: load weights once


def _embed_chunk(paths: list[str], backbone_name: str, sampling: str, device: str, batch_size: int,
                 mirror: bool = False, runtime: str = "auto", precision: str = "auto"):
    from .extract import _video_meta, mirrored, store_provenance
    from .runtime import load_backbone
    from .video import decode

    key = (backbone_name, device, runtime, precision)
    if key not in _BACKBONES:
        # Each worker resolves `auto` for its own node: its CPU decides OpenVINO's precision.
        _BACKBONES[key] = load_backbone(backbone_name, runtime, precision, device)
    backbone = _BACKBONES[key]
    provenance = store_provenance(backbone, sampling, mirror)
    results = []
    for path in paths:
        try:
            decoded = decode(path, sampling, short_side=backbone.decode_short_side,
                             clip_len=backbone.clip_len)
        except CaptionerError as exc:
            results.append((path, exc.reason))
            continue
        except Exception as exc:
            results.append((path, f"cannot decode ({type(exc).__name__}: {exc})"))
            continue
        frames = mirrored(decoded.frames) if mirror else decoded.frames
        features = np.concatenate([backbone.features(frames[i:i + batch_size], still=decoded.info.is_image)
                                   for i in range(0, len(frames), batch_size)])
        results.append((path, (features, _video_meta(decoded, Path(path), provenance, sampling))))
    return results


def extract_on_ray(paths: list[Path], config, sampling: str, device: str, address: str) -> Iterator[tuple]:
    """Yield (path, (features, meta)) or (path, reason) as chunks finish on the cluster."""
    try:
        import ray
    except ImportError:
        raise CaptionerError("--ray-address needs Ray: pip install 'ray[default]'") from None

    if not ray.is_initialized():
        try:
            ray.init(address=address, log_to_driver=False, include_dashboard=False)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise CaptionerError(f"cannot connect to the Ray cluster at {address}: {exc}") from None
    from .runtime import is_cuda

    resources = {"num_gpus": 1} if is_cuda(device) else {"num_cpus": 1}
    # Ray gives each GPU task one GPU of its own, visible to it as cuda:0; a cuda:N asked for
    # on the driver's machine means nothing on the workers.
    worker_device = "cuda" if is_cuda(device) else device
    remote = ray.remote(**resources)(_embed_chunk)
    step = max(1, config.ray_videos_per_task)
    chunks = [[str(p) for p in paths[i:i + step]] for i in range(0, len(paths), step)]
    # A bounded number of chunks in flight keeps the driver's memory flat on huge inputs.
    window = max(2, 2 * int(ray.cluster_resources().get("GPU" if is_cuda(device) else "CPU", 1)))
    pending: dict = {}

    def collect(ref):
        chunk = pending.pop(ref)
        try:
            return ray.get(ref)
        except (ray.exceptions.RayError, OSError) as exc:  # a lost node fails its chunk, not the run
            reason = f"Ray task failed ({type(exc).__name__})"
            return [(path, reason) for path in chunk]

    for chunk in chunks:
        pending[remote.remote(chunk, config.backbone, sampling, worker_device, config.batch_size, config.mirror,
                              config.runtime, config.precision)] = chunk
        if len(pending) >= window:
            done, _ = ray.wait(list(pending), num_returns=1)
            yield from collect(done[0])
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        yield from collect(done[0])
