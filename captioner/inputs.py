"""What counts as an input and what it is called: media extensions, expanding what the user
named (files, folders, globs, `.txt` lists) into media files, and the video-id rule.

Every command that takes videos (extract, caption, the pipeline, the server) and every reader
that matches captions back to videos (evaluate, report) goes through here, so a file the
caption command accepts is also one the report finds a thumbnail for, and two files with the
same stem get the same two ids in a feature store, in `caption --json` and in an evaluation.

Imports only the standard library: `captioner caption` and `captioner --help` stay fast.
"""

from __future__ import annotations

import collections
import glob
import os
from pathlib import Path, PurePath
from typing import Iterable, Sequence

from .errors import CaptionerError

VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv",
                              ".3gp", ".ogv", ".ts", ".mts", ".m2ts", ".vob", ".gif"})
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
MEDIA_EXTENSIONS = VIDEO_EXTENSIONS | IMAGE_EXTENSIONS
LIST_EXTENSION = ".txt"


def is_media(path: PurePath) -> bool:
    """A video or image file name (by extension, case-insensitive); the contents are not read."""
    return path.suffix.lower() in MEDIA_EXTENSIONS


# ----------------------------------------------------------------------------- video ids
def video_ids(paths: Iterable[PurePath]) -> dict[PurePath, str]:
    """An id per input: its file stem, or where stems collide, the path without its extension
    (`a/x.mp4` and `b/x.avi` are "a/x" and "b/x"), so that two inputs never share an id."""
    paths = list(paths)
    stems = collections.Counter(p.stem for p in paths)
    return {path: video_id(path) if stems[path.stem] == 1 else path.with_suffix("").as_posix().lstrip("/")
            for path in paths}


def video_id(path: PurePath) -> str:
    """The id of an input given on its own (nothing to collide with): its file stem."""
    return path.stem


def id_matches(video_id: str, path: PurePath) -> bool:
    """Whether `video_id` can name `path` under `video_ids`: its stem, or a trailing part of its path
    without the extension (an id made from a relative path still names the file found elsewhere)."""
    if video_id == path.stem:
        return True
    parts = PurePath(video_id).parts
    named = path.with_suffix("").parts
    return 0 < len(parts) <= len(named) and tuple(named[len(named) - len(parts):]) == parts


def find_media(root: str | os.PathLike, ids: Iterable[str]) -> dict[str, Path]:
    """The media file under `root` (searched recursively, sorted) that each of `ids` names;
    ids without one are left out. The first file in sorted order wins a tie."""
    wanted = list(dict.fromkeys(ids))
    by_stem: dict[str, list[str]] = collections.defaultdict(list)
    for video_id in wanted:
        by_stem[PurePath(video_id).name].append(video_id)
    found: dict[str, Path] = {}
    for path in sorted(Path(root).rglob("*")):
        if not is_media(path) or path.stem not in by_stem:
            continue
        for video_id in by_stem[path.stem]:
            if video_id not in found and id_matches(video_id, path) and path.is_file():
                found[video_id] = path
    return found


# ----------------------------------------------------------------------------- expanding inputs
def expand_globs(patterns: Sequence[str]) -> tuple[list[str], list[str]]:
    """Glob patterns to the paths they match (sorted, `**` recursive); other names pass as they are.

    Returns (paths, patterns that matched nothing). A name with glob characters that exists as
    a file (`clip[1].mp4`) is that file, not a pattern.
    """
    paths, unmatched = [], []
    for pattern in patterns:
        if glob.has_magic(pattern) and not Path(pattern).exists():
            matches = sorted(glob.glob(pattern, recursive=True))
            if not matches:
                unmatched.append(pattern)
            paths.extend(matches)
        else:
            paths.append(pattern)
    return paths, unmatched


def find_inputs(inputs: Sequence[str | os.PathLike]) -> tuple[list[Path], list[tuple[Path, CaptionerError]]]:
    """The media files named by `inputs`, in order, and every named path that is missing or empty.

    Each input is a file (taken as is, even with an unknown extension, so that decoding reports
    it), a folder (searched recursively for video and image files, sorted, hidden files skipped)
    or a .txt file listing one path per line (relative to the list's folder; blank lines and
    '#' comments skipped; a listed path may be a file or a folder). A path named twice is one
    input; symlinks and hard links under other names are inputs of their own, as a glob would
    make them. Problems come as (path, one-line error naming where it was given), so a batch can
    report them all and go on with the rest.
    """
    found: list[Path] = []
    problems: list[tuple[Path, CaptionerError]] = []
    for item in inputs:
        path = Path(item)
        if not path.exists():
            problems.append((path, CaptionerError("file not found", path)))
        elif not_regular(path):
            problems.append((path, CaptionerError(not_regular(path), path)))
        elif path.is_file() and path.suffix.lower() == LIST_EXTENSION:
            try:
                entries = list(_list_entries(path))
            except CaptionerError as exc:
                problems.append((path, exc))
                continue
            for line_number, entry in entries:
                listed = path.parent / entry
                if not listed.exists():
                    problems.append((listed, CaptionerError(f"listed file not found: {listed}", path, line_number)))
                elif not_regular(listed):
                    problems.append((listed, CaptionerError(f"{not_regular(listed)}: {listed}", path, line_number)))
                elif listed.is_file() and listed.suffix.lower() == LIST_EXTENSION:
                    problems.append((listed, CaptionerError(f"lists of lists are not supported: {listed}", path,
                                                            line_number)))
                else:
                    found += _expand_reporting(listed, problems)
        else:
            found += _expand_reporting(path, problems)
    unique: dict[str, Path] = {}
    for path in found:
        unique.setdefault(os.path.abspath(path), path)
    return list(unique.values()), problems


def not_regular(path: Path) -> str | None:
    """Why `path` (which exists) is neither a folder nor a regular file, or None. Reading a FIFO
    or a device would wait for a writer, or never end."""
    import stat

    mode = path.stat().st_mode
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else
            "a character device" if stat.S_ISCHR(mode) else "a block device" if stat.S_ISBLK(mode) else "special")
    return f"not a regular file ({kind})"


def collect_inputs(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """`find_inputs` for callers that need every input: the first missing path is an error."""
    paths, problems = find_inputs(inputs)
    if problems:
        raise problems[0][1]
    if not paths:
        raise CaptionerError("no video or image files found in " + ", ".join(str(i) for i in inputs))
    return paths


def _list_entries(list_file: Path):
    try:
        lines = list_file.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError:
        raise CaptionerError("path list is not UTF-8 text", list_file) from None
    for line_number, line in enumerate(lines, 1):
        entry = line.strip()
        if entry and not entry.startswith("#"):
            yield line_number, entry


def _expand_reporting(path: Path, problems: list) -> list[Path]:
    media = _expand(path)
    if not media:  # a folder without any: most likely the wrong folder
        problems.append((path, CaptionerError("no video or image files in this folder", path)))
    return media


def _expand(path: Path) -> list[Path]:
    if not path.is_dir():
        return [path]
    return sorted(p for p in path.rglob("*") if is_media(p) and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(path).parts))
