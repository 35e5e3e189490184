"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Everything the project writes that a later run trusts (features, checkpoints, failure lists,
stage markers) goes through here, which is what makes a SIGKILL at any moment safe.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

TMP_PREFIX = ".tmp-"  # readers skip such names; writers may delete stale ones


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None):
    """Open a temporary file beside `path`; on a clean exit it is synced and renamed over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=path.parent)
    # mkstemp creates 0600; give the file the permissions an ordinary open() would have, so
    # colleagues on a shared cluster can read stores and checkpoints.
    os.fchmod(fd, 0o666 & ~_umask())
    try:
        with os.fdopen(fd, mode, encoding=encoding) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    if isinstance(data, str):
        with atomic_open(path, "w", encoding="utf-8") as fh:
            fh.write(data)
    else:
        with atomic_open(path, "wb") as fh:
            fh.write(data)
