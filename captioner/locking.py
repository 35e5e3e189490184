"""One process at a time in a directory: an flock()ed lock file holding the holder's pid.

A feature store (one writer), a pipeline's run directory and a training run directory are each
locked this way, so two runs started together cannot interleave their work. The kernel drops an
flock when its holder dies, so a SIGKILLed run never leaves a stale lock behind.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from .errors import CaptionerError


class DirectoryLocked(CaptionerError):
    """Another process holds the directory's lock."""


# Locks this process holds: lock file -> [open file, number of holders]. flock() conflicts between
# two opens even within one process, and code such as a pipeline stage legitimately opens a store
# for writing while the extraction it calls opens it again; the lock is about other processes.
_held: dict[str, list] = {}


def acquire(directory: str | os.PathLike, name: str, busy: str, advice: str,
            error: type[CaptionerError] = DirectoryLocked) -> str:
    """Lock DIRECTORY/NAME (the directory must exist) or raise `error`: "process PID is BUSY; ADVICE".
    Returns the key `release` takes."""
    directory = Path(directory)
    lock_path = directory / name
    key = os.path.realpath(lock_path)
    held = _held.get(key)
    if held is not None:
        held[1] += 1
        return key
    handle = open(lock_path, "a+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        handle.seek(0)
        holder = handle.read().strip()
        handle.close()
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise CaptionerError(f"cannot lock {name}: {exc.strerror}", lock_path) from None
        who = f"process {holder}" if holder.isdigit() else "another process"
        raise error(f"{who} is {busy}; {advice}", directory) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    _held[key] = [handle, 1]
    return key


def holders(key: str) -> int:
    """How many holders in this process share the lock `key` (0: not held here)."""
    held = _held.get(key)
    return held[1] if held else 0


def release(key: str) -> None:
    held = _held[key]
    held[1] -= 1
    if held[1] == 0:
        del _held[key]
        held[0].close()  # closing the descriptor releases the flock
