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


def check_output_path(path: str | os.PathLike, folder: bool, flag: str) -> None:
    """Refuse, before any work, an output path the writers above could not use.

    `folder`: a directory is wanted (created if missing); else a file, which is replaced if it
    exists, as command-line tools do. The error names the path and what is wrong with it.
    """
    from .errors import UsageError

    path = Path(path)
    if path.exists():
        if folder and not path.is_dir():
            raise UsageError(f"{flag} names an existing file; it must be a folder (or a path to create one)", path)
        if not folder and path.is_dir():
            raise UsageError(f"{flag} names a folder; give a file path", path)
        writable = path if path.is_dir() else path.parent
    else:
        writable = path.parent
        while not writable.exists():
            writable = writable.parent
        if not writable.is_dir():
            raise UsageError(f"{flag}: cannot create it: {writable} is a file, not a folder", path)
    if not os.access(writable, os.W_OK | os.X_OK):
        raise UsageError(f"{flag}: cannot write there: {writable} is not writable", path)


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


def publish_directory(built: str | os.PathLike, final: str | os.PathLike) -> None:
    """Move a directory built beside `final` into its place, replacing what was there. Readers see
    the old directory or the new one, never a half-written one; when another process has just
    published the same directory, its copy stays (both were built from the same inputs)."""
    import shutil

    shutil.rmtree(final, ignore_errors=True)
    try:
        os.replace(built, final)
    except OSError:
        pass
