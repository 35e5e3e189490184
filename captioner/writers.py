"""One writer per output format (txt, json, srt, vtt), as whisper's ResultWriter/get_writer.

A writer turns a `Caption` into the text of its format, or writes that text to a file
atomically. `captioner caption` (--output-dir/--output-format, --srt/--vtt, --json), the web
server's response and the Python API all go through these, so the same caption reads the same
everywhere; a response is built in memory, never through a temporary file.
"""

from __future__ import annotations

import dataclasses
import json
import os
from datetime import timedelta
from pathlib import Path

from .atomic import atomic_write
from .errors import CaptionerError, UsageError

OUTPUT_FORMATS = ("txt", "json", "srt", "vtt")
SUBTITLE_FORMATS = ("srt", "vtt")


class ResultWriter:
    """One output format of a Caption (captioner.caption.Caption)."""

    extension: str

    def text(self, result) -> str | None:
        """The result in this format; None when it has nothing of the kind (subtitles of a
        caption made without segments)."""
        raise NotImplementedError

    def write(self, result, path: str | os.PathLike) -> Path | None:
        """Write `text(result)` to `path` atomically; None (and no file) when there is nothing."""
        text = self.text(result)
        if text is None:
            return None
        atomic_write(path, text)
        return Path(path)


class WriteTXT(ResultWriter):
    extension = "txt"

    def text(self, result) -> str:
        return result.caption + "\n"


class WriteJSON(ResultWriter):
    """What `captioner caption --json` prints for the result, indented for a file."""

    extension = "json"

    def text(self, result) -> str:
        return to_json(result, indent=1) + "\n"


class WriteSubtitles(ResultWriter):
    """The segment captions as timed cues; consecutive segments with the same caption are one cue."""

    def text(self, result) -> str | None:
        return None if result.segments is None else subtitles(result.segments, self.extension)


class WriteSRT(WriteSubtitles):
    extension = "srt"


class WriteVTT(WriteSubtitles):
    extension = "vtt"


WRITERS = {writer.extension: writer() for writer in (WriteTXT, WriteJSON, WriteSRT, WriteVTT)}


def get_writer(fmt: str) -> ResultWriter:
    """The writer of an output format (one of OUTPUT_FORMATS)."""
    if fmt not in WRITERS:
        raise UsageError(f"output format must be one of {', '.join(OUTPUT_FORMATS)}, got {fmt!r}")
    return WRITERS[fmt]


def to_json(result, indent: int | None = None) -> str:
    """The result as JSON: one line (`captioner caption --json`) unless `indent`."""
    return json.dumps(result.to_dict(), indent=indent, ensure_ascii=False)


# ---------------------------------------------------------------------- subtitles
def merge_repeats(segments: list) -> list:
    """Consecutive segments with the same caption as one (from the first's start to the last's end):
    one cue on screen for as long as the caption holds, not the same line flashing again."""
    merged: list = []
    runs: list[int] = []
    for segment in segments:
        if merged and merged[-1].caption == segment.caption:
            last, n = merged[-1], runs[-1]
            merged[-1] = dataclasses.replace(last, end=segment.end, score=(last.score * n + segment.score) / (n + 1))
            runs[-1] += 1
        else:
            merged.append(segment)
            runs.append(1)
    return merged


def subtitles(segments: list, fmt: str) -> str:
    """Segment captions (captioner.caption.Segment) as the text of an SRT or WebVTT file."""
    cues = merge_repeats(segments)
    if fmt == "srt":
        import srt

        return srt.compose([srt.Subtitle(index=i + 1, start=timedelta(seconds=s.start),
                                         end=timedelta(seconds=s.end), content=s.caption)
                            for i, s in enumerate(cues)])
    if fmt == "vtt":
        import webvtt

        vtt = webvtt.WebVTT()
        for s in cues:
            vtt.captions.append(webvtt.Caption(_vtt_time(s.start), _vtt_time(s.end), s.caption))
        return vtt.content
    raise UsageError(f"subtitle format must be srt or vtt, got {fmt!r}")


def write_subtitles(segments: list, path: str | os.PathLike, fmt: str | None = None) -> Path:
    """Write segment captions as SRT or WebVTT (by `fmt`, else by the file extension)."""
    path = Path(path)
    fmt = (fmt or path.suffix.lstrip(".")).lower()
    if fmt not in SUBTITLE_FORMATS:
        raise CaptionerError("subtitle format must be srt or vtt", path)
    atomic_write(path, subtitles(segments, fmt))
    return path


def _vtt_time(seconds: float) -> str:
    millis = int(round(seconds * 1000))
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    return f"{hours:02d}:{minutes:02d}:{rest // 1000:02d}.{rest % 1000:03d}"


# ---------------------------------------------------------------------- output files
def parse_output_formats(spec: str) -> tuple[str, ...]:
    """'txt', 'srt,vtt' or 'all' (whisper's --output_format) as a tuple of OUTPUT_FORMATS."""
    names = [name.strip().lower() for name in str(spec).split(",") if name.strip()]
    if names == ["all"]:
        return OUTPUT_FORMATS
    unknown = [name for name in names if name not in OUTPUT_FORMATS]
    if unknown or not names:
        raise UsageError(f"output format must be one of {', '.join(OUTPUT_FORMATS)} or all "
                         f"(several joined with ','), got {spec!r}")
    return tuple(dict.fromkeys(names))


def output_path(folder: str | os.PathLike, result, fmt: str) -> Path:
    """FOLDER/<id>.<fmt>: ids are unique per run (captioner.inputs.video_ids), so files never collide."""
    return Path(folder) / f"{result.id}.{fmt}"


def write_outputs(result, folder: str | os.PathLike, formats=OUTPUT_FORMATS) -> list[Path]:
    """One file per format for a caption in `folder`: txt (the caption), json (what `caption --json`
    prints), srt and vtt (its segments; skipped when it was captioned without segments)."""
    written = (get_writer(fmt).write(result, output_path(folder, result, fmt)) for fmt in formats)
    return [path for path in written if path is not None]
