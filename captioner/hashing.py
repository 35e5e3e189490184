"""The SHA-256 of a whole file: checkpoints, weight files and the inputs of pipeline stages."""

from __future__ import annotations

import hashlib
import os

_BLOCK = 1 << 20


def file_sha256(path: str | os.PathLike) -> str:
    """The hex SHA-256 of the file's contents, read in blocks so memory stays flat."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()
