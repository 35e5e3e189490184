"""User-facing errors.

Anything a user can cause (a bad file, a bad flag, a missing tool) raises `CaptionerError`
with a one-line message that names the file and the problem. The CLI prints that line and
exits non-zero; every other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import os


def printable(name: str) -> str:
    """`name` on one line and one field: backslash, tab, newline and every other control
    character written as \\\\, \\t, \\n, \\r or \\xHH, so a file name holding them can
    neither break a `path<TAB>caption` line nor an error message (and can be read back)."""
    if name.isprintable() and "\\" not in name:
        return name
    escaped = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
    return "".join(escaped.get(c, c if c.isprintable() or c == " " else
                               f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}") for c in name)


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
        where = printable(self.path) if self.line is None else f"{printable(self.path)}:{self.line}"
        return f"{where}: {self.reason}"


class UsageError(CaptionerError):
    """Bad command-line usage: exit code 2."""


def check_file_format(payload, expected: str, version: int, what: str, path) -> None:
    """Refuse a file (its decoded payload or metadata dict) that is not `what` in the format
    `expected`, or was written by a newer captioner (a `version` above this one's)."""
    if not isinstance(payload, dict) or payload.get("format") != expected:
        raise CaptionerError(f"not a captioner {what}", path)
    if payload.get("version", 0) > version:
        raise CaptionerError(f"{what} version {payload['version']} is newer than this captioner understands; "
                             "upgrade captioner", path)
