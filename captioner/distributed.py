"""Running chunks of work on a Ray cluster.

The caller passes the function to run on each chunk and its arguments; this module knows how to
reach the cluster, keep a bounded number of tasks in flight and turn a lost task into a failure
of each item of its chunk, and nothing of what the function does. Workers must see whatever the
items name (paths on a shared file system, as clusters usually hold datasets).
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

from .errors import CaptionerError


def map_chunks_on_ray(function: Callable[..., list[tuple]], items: Sequence, chunk_size: int, args: tuple,
                      address: str, gpu: bool = False) -> Iterator[tuple]:
    """Yield the (item, outcome) pairs `function(chunk, *args)` returns, chunk by chunk as they finish.

    Each task gets one GPU with `gpu`, else one CPU. A task that fails (a lost node, a worker
    that died) yields (item, reason) for every item of its chunk instead of stopping the run.
    """
    try:
        import ray
    except ImportError:
        raise CaptionerError("--ray-address needs Ray: pip install 'ray[default]'") from None

    if not ray.is_initialized():
        try:
            ray.init(address=address, log_to_driver=False, include_dashboard=False)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise CaptionerError(f"cannot connect to the Ray cluster at {address}: {exc}") from None
    remote = ray.remote(**({"num_gpus": 1} if gpu else {"num_cpus": 1}))(function)
    step = max(1, chunk_size)
    chunks = [list(items[i:i + step]) for i in range(0, len(items), step)]
    # A bounded number of chunks in flight keeps the driver's memory flat on huge inputs.
    window = max(2, 2 * int(ray.cluster_resources().get("GPU" if gpu else "CPU", 1)))
    pending: dict = {}

    def collect(ref):
        chunk = pending.pop(ref)
        try:
            return ray.get(ref)
        except (ray.exceptions.RayError, OSError) as exc:  # a lost node fails its chunk, not the run
            reason = f"Ray task failed ({type(exc).__name__})"
            return [(item, reason) for item in chunk]

    for chunk in chunks:
        pending[remote.remote(chunk, *args)] = chunk
        if len(pending) >= window:
            done, _ = ray.wait(list(pending), num_returns=1)
            yield from collect(done[0])
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        yield from collect(done[0])
