"""User-facing errors.

Anything a user can cause (a bad file, a bad flag, a missing tool) raises `CaptionerError`
with a one-line message that names the file and the problem. The CLI prints that line and
exits non-zero; every other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import os


class CaptionerError(Exception):
    """An error caused by the user's input or environment, shown as one line."""

    def __init__(self, message: str, path: str | os.PathLike | None = None, line: int | None = None):
        self.path = os.fspath(path) if path is not None else None
        self.line = line
        self.reason = " ".join(str(message).split())  # one line, always
        super().__init__(self.format())

    def format(self) -> str:
        if self.path is None:
            return self.reason
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        return f"{where}: {self.reason}"


class UsageError(CaptionerError):
    """Bad command-line usage: exit code 2."""
