"""Text-only caption corpora: more video and photo language than MSVD's 1,970 clips.

Readers for the corpora in `../shared/data` that have no video or photo here (their README
describes them), each into `{id: [caption, ...]}` in file order:
  - MSR-VTT `train_val_videodatainfo.json` (`load_msrvtt`: captions, split and category per video);
  - VATEX `{val,public_test}.{en,id}` (`load_vatex`: one caption per line of the `.en` file,
    its `videoID&n` on the same line of the `.id` file);
  - Kinetics-600 `kinetics-600_val.csv` (`load_kinetics_labels`) and its join with VATEX
    (`vatex_by_action`): the captions people wrote for clips whose action class is known;
  - COCO `captions_*.json` (`load_coco`).
A malformed line or entry is a one-line CaptionerError naming the file and the line (or the
entry of a JSON file). Captions keep their raw text; `text.tokenize` normalises them as the
scorers do ("a man is climbing ." -> a man is climbing).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import CaptionerError

Captions = dict[str, list[str]]

# A VATEX video id is a Kinetics clip: "<youtube id>_<start, 6 digits>_<end, 6 digits>".
_VATEX_ID = re.compile(r"^(?P<youtube>.+)_(?P<start>\d{6})_(?P<end>\d{6})$")


def _read_text(path: Path) -> str:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise CaptionerError(f"cannot read the caption corpus ({error.strerror or error})", path) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise CaptionerError(f"not UTF-8 text (byte 0x{data[error.start]:02x})", path,
                             data[:error.start].count(b"\n") + 1) from None


def _read_json(path: Path):
    text = _read_text(path)
    try:
        return json.loads(text)
    except ValueError as error:
        raise CaptionerError(f"invalid JSON: {error.msg}", path, getattr(error, "lineno", None)) from None


def _caption(value, path: Path, where: str, line: int | None = None) -> str:
    if not isinstance(value, str) or not value.strip():
        raise CaptionerError(f"{where}: empty or non-text caption {value!r}", path, line)
    return " ".join(value.split())


# ------------------------------------------------------------------------------ MSR-VTT
@dataclass
class MsrVtt:
    captions: Captions  # video id -> its captions (20 each)
    split: dict[str, str]  # video id -> "train" or "val"
    category: dict[str, int]  # video id -> category number (msrvtt/category.txt names them)

    def videos(self, split: str) -> list[str]:
        return [vid for vid in self.captions if self.split[vid] == split]


def load_msrvtt(path: str | os.PathLike) -> MsrVtt:
    """MSR-VTT's `videodatainfo` JSON (v1.0 layout: `videos` and `sentences`)."""
    path = Path(path)
    data = _read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("videos"), list) \
            or not isinstance(data.get("sentences"), list):
        raise CaptionerError("not an MSR-VTT videodatainfo file (expected 'videos' and 'sentences' lists)", path)
    split, category = {}, {}
    for n, video in enumerate(data["videos"]):
        if not isinstance(video, dict) or not {"video_id", "split", "category"} <= set(video):
            raise CaptionerError(f"videos[{n}] needs 'video_id', 'split' and 'category'", path)
        if video["split"] not in ("train", "validate", "test"):
            raise CaptionerError(f"videos[{n}]: unknown split {video['split']!r}", path)
        split[video["video_id"]] = "val" if video["split"] == "validate" else video["split"]
        category[video["video_id"]] = int(video["category"])
    captions: Captions = {}
    for n, sentence in enumerate(data["sentences"]):
        if not isinstance(sentence, dict) or "video_id" not in sentence or "caption" not in sentence:
            raise CaptionerError(f"sentences[{n}] needs 'video_id' and 'caption'", path)
        if sentence["video_id"] not in split:
            raise CaptionerError(f"sentences[{n}] names video {sentence['video_id']!r}, which 'videos' lacks", path)
        captions.setdefault(sentence["video_id"], []).append(_caption(sentence["caption"], path, f"sentences[{n}]"))
    return MsrVtt(captions, {v: split[v] for v in captions}, {v: category[v] for v in captions})


# ------------------------------------------------------------------------------ VATEX
def load_vatex(captions_path: str | os.PathLike, ids_path: str | os.PathLike | None = None) -> Captions:
    """VATEX English captions: line k of `x.en` describes the video on line k of `x.id`
    (`videoID&n`); `ids_path` defaults to the `.id` file beside the `.en` one."""
    captions_path = Path(captions_path)
    ids_path = Path(ids_path) if ids_path is not None else captions_path.with_suffix(".id")
    texts = _read_text(captions_path).splitlines()
    ids = _read_text(ids_path).splitlines()
    if len(texts) != len(ids):
        shorter, line = (captions_path, len(texts) + 1) if len(texts) < len(ids) else (ids_path, len(ids) + 1)
        raise CaptionerError(f"{captions_path.name} has {len(texts)} lines but {ids_path.name} {len(ids)}: "
                             "every caption needs its video id on the same line", shorter, line)
    captions: Captions = {}
    for line, (text, key) in enumerate(zip(texts, ids), 1):
        vid, amp, number = key.strip().rpartition("&")
        if not amp or not number.isdigit() or not _VATEX_ID.match(vid):
            raise CaptionerError(f"expected '<youtube id>_<start>_<end>&<n>', got {key.strip()!r}", ids_path, line)
        captions.setdefault(vid, []).append(_caption(text, captions_path, "caption", line))
    return captions


def vatex_clip(video_id: str) -> tuple[str, int, int]:
    """(youtube id, start s, end s) of a VATEX video id."""
    match = _VATEX_ID.match(video_id)
    if match is None:
        raise CaptionerError(f"not a VATEX video id: {video_id!r}")
    return match["youtube"], int(match["start"]), int(match["end"])


# ------------------------------------------------------------------------------ Kinetics
def load_kinetics_labels(path: str | os.PathLike) -> dict[tuple[str, int, int], str]:
    """Kinetics annotations CSV (label, youtube_id, time_start, time_end, split):
    (youtube id, start s, end s) -> action class."""
    path = Path(path)
    reader = csv.DictReader(io.StringIO(_read_text(path), newline=""))
    needed = {"label", "youtube_id", "time_start", "time_end"}
    if not needed <= set(reader.fieldnames or ()):
        raise CaptionerError(f"expected the columns {', '.join(sorted(needed))}; the header is "
                             f"{','.join(reader.fieldnames or [])!r}", path, 1)
    labels = {}
    try:
        for row in reader:
            line = reader.line_num
            if None in row or any(row[c] is None for c in needed):
                raise CaptionerError(f"row has {len(row) - (None in row) + len(row.get(None) or [])} fields, "
                                     f"the header {len(reader.fieldnames)}", path, line)
            try:
                key = (row["youtube_id"], int(row["time_start"]), int(row["time_end"]))
            except ValueError:
                raise CaptionerError(f"time_start and time_end must be whole seconds, got "
                                     f"{row['time_start']!r} and {row['time_end']!r}", path, line) from None
            if not row["label"].strip() or not row["youtube_id"].strip():
                raise CaptionerError("empty label or youtube_id", path, line)
            labels[key] = row["label"].strip()
    except csv.Error as error:
        raise CaptionerError(f"malformed CSV: {error}", path, reader.line_num) from None
    return labels


@dataclass
class LabelledCaptions:
    by_action: dict[str, Captions]  # action class -> {VATEX video id: captions}
    unmatched: list[str]  # VATEX videos that are no row of the labels

    def captions(self, action: str) -> list[str]:
        return [c for caps in self.by_action.get(action, {}).values() for c in caps]


def vatex_by_action(vatex: Captions, labels: dict[tuple[str, int, int], str]) -> LabelledCaptions:
    """VATEX videos joined to their Kinetics clip's action class (on youtube id, start and end)."""
    by_action: dict[str, Captions] = {}
    unmatched = []
    for vid, caps in vatex.items():
        label = labels.get(vatex_clip(vid))
        if label is None:
            unmatched.append(vid)
        else:
            by_action.setdefault(label, {})[vid] = caps
    return LabelledCaptions(by_action, unmatched)


# ------------------------------------------------------------------------------ COCO
def load_coco(path: str | os.PathLike) -> Captions:
    """COCO captions JSON (`annotations`: image_id, caption): image id -> its captions."""
    path = Path(path)
    data = _read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise CaptionerError("not a COCO captions file (expected an 'annotations' list)", path)
    captions: Captions = {}
    for n, note in enumerate(data["annotations"]):
        if not isinstance(note, dict) or "image_id" not in note or "caption" not in note:
            raise CaptionerError(f"annotations[{n}] needs 'image_id' and 'caption'", path)
        captions.setdefault(f"coco{note['image_id']}", []).append(_caption(note["caption"], path, f"annotations[{n}]"))
    return captions
