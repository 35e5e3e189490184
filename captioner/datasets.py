"""Caption files as users download them, read into `{video id: [caption, ...]}`.

Supported (the format is detected from the file itself):

- MSVD corpus CSV (VideoID, Start, End, ..., Language, Description): English rows only,
  id `{VideoID}_{Start}_{End}`; splits from `youtube_mapping.txt` (clip id -> vidN; vid1-1200
  train, 1201-1300 val, 1301-1970 test), looked up next to the file or one folder up.
- MSVD one-line-per-clip TSV: `caption, caption, ..., <TAB>clip_id` (same split rule).
- MSR-VTT `videodatainfo.json` / `train_val_videodatainfo.json` (splits train/validate/test).
- Flickr8k/30k: `image,caption` CSV, the `.token` file (`IMAGE#N<TAB>caption`), the
  Flickr30k `image_name| comment_number| comment` CSV, or Karpathy's `dataset_*.json`.
  Flickr8k splits come from `Flickr_8k.{train,dev,test}Images.txt` beside the file. The id is
  the image file stem, which is what the feature store calls it.
- Generic JSONL: `{"video": ID, "captions": [...], "split": optional}` per line.
- Plain JSON `{id: [captions]}`.

`split` is a split name (train, val, test; dev/validate/validation mean val) or the path of a
file listing ids, one per line. Bad files raise a one-line `CaptionerError` naming file and line.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
from pathlib import Path
from typing import Callable, Iterable

from .errors import CaptionerError, UsageError

log = logging.getLogger("captioner")

Captions = dict[str, list[str]]
SPLITS = {"train": "train", "val": "val", "dev": "val", "validate": "val", "validation": "val",
          "test": "test"}
MSVD_SPLIT_BOUNDS = (("train", 1, 1200), ("val", 1201, 1300), ("test", 1301, 1970))


def load_captions(path: str | os.PathLike, split: str | None = None) -> Captions:
    """Raw caption strings per id, in file order, from any supported caption file."""
    path = Path(path)
    if not path.is_file():
        raise CaptionerError("caption file not found", path)
    text = _read_utf8(path)
    reader = _detect(path, text)
    captions, split_of = reader(path, text)
    if not captions:
        raise CaptionerError("no captions found", path)
    if split is not None:
        captions = _select_split(path, captions, split, split_of)
    return captions


# The evaluation code reads references with this name; they are the same raw captions.
load_references = load_captions


def join_features(captions: Captions, store_ids: Iterable[str], captions_path, store_path) -> Captions:
    """Keep the videos that have features; say once how many do not (never drop them silently)."""
    available = set(store_ids)
    kept = {vid: caps for vid, caps in captions.items() if vid in available}
    missing = [vid for vid in captions if vid not in available]
    if not kept:
        example = next(iter(available), None)
        raise CaptionerError(f"none of the {len(captions)} videos in {captions_path} has features in "
                             f"this store (caption ids look like {missing[0]!r}, store ids like "
                             f"{example!r})", store_path)
    if missing:
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        log.warning(f"warning: {len(missing)} of {len(captions)} videos in {captions_path} have no "
                    f"features in {store_path} and are skipped ({shown})")
    return kept


# --------------------------------------------------------------------------- reading helpers
def _read_utf8(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise CaptionerError(f"not UTF-8 text (byte 0x{data[exc.start]:02x}); re-save the file as "
                             "UTF-8", path, line) from None


def _add(captions: Captions, path: Path, line: int | None, vid: str, caption) -> None:
    if caption is not None and not isinstance(caption, str):  # None: a CSV row that lacks the field
        raise CaptionerError(f"caption of {vid!r} must be a string, got {type(caption).__name__} {caption!r}",
                             path, line)
    if not caption or not caption.strip():
        raise CaptionerError(f"empty caption for {vid!r}", path, line)
    captions.setdefault(vid, []).append(" ".join(caption.split()))


def _csv_rows(path: Path, text: str, delimiter: str = ","):
    """(line number, row dict) for each CSV row; the header must exist."""
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter, skipinitialspace=True)
    try:
        for row in reader:
            if None in row:
                raise CaptionerError(f"row has {len(reader.fieldnames) + len(row[None])} fields, the "
                                     f"header {len(reader.fieldnames)}", path, reader.line_num)
            yield reader.line_num, row
    except csv.Error as exc:
        raise CaptionerError(f"malformed CSV: {exc}", path, reader.line_num) from None


# --------------------------------------------------------------------------- formats
# Each reader returns the captions and a function giving a video's split (or None if unknown).
SplitOf = Callable[[str], "str | None"] | None


def _read_msvd_corpus(path: Path, text: str) -> tuple[Captions, SplitOf]:
    captions: Captions = {}
    split_of = _msvd_split_of(path)
    for line, row in _csv_rows(path, text):
        missing = [c for c in ("VideoID", "Start", "End", "Language", "Description") if row.get(c) is None]
        if missing:
            raise CaptionerError(f"missing column(s) {', '.join(missing)}", path, line)
        if row["Language"].strip() != "English":
            continue
        vid = f"{row['VideoID']}_{row['Start']}_{row['End']}"
        _check_msvd_id(split_of, vid, path, line)
        _add(captions, path, line, vid, row["Description"])
    return captions, split_of


def _read_msvd_tsv(path: Path, text: str) -> tuple[Captions, SplitOf]:
    captions: Captions = {}
    split_of = _msvd_split_of(path)
    for line, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        joined, tab, vid = raw.rpartition("\t")
        if not tab or not vid.strip():
            raise CaptionerError("expected 'caption, caption, ..., <TAB>clip_id'", path, line)
        joined = joined.strip()
        if joined.endswith(","):  # every line ends its list with ", " before the tab
            joined = joined[:-1]
        vid = vid.strip()
        _check_msvd_id(split_of, vid, path, line)
        for caption in joined.split(", "):
            _add(captions, path, line, vid, caption)
    return captions, split_of


def _check_msvd_id(split_of: SplitOf, vid: str, path: Path, line: int) -> None:
    if split_of is not None and split_of(vid) is None:
        raise CaptionerError(f"clip {vid!r} is not in {split_of.source} (a typo in VideoID, Start "
                             "or End?)", path, line)


def _msvd_split_of(path: Path) -> SplitOf:
    for folder in (path.parent, path.parent.parent):
        mapping_file = folder / "youtube_mapping.txt"
        if mapping_file.is_file():
            break
    else:
        return None
    number_of: dict[str, int] = {}
    for line, raw in enumerate(_read_utf8(mapping_file).splitlines(), 1):
        parts = raw.split()
        if not parts:
            continue
        if len(parts) != 2 or not re.fullmatch(r"vid\d+", parts[1]):
            raise CaptionerError("expected 'clip_id vidN'", mapping_file, line)
        number_of[parts[0]] = int(parts[1][3:])

    def split_of(vid: str) -> str | None:
        number = number_of.get(vid)
        return next((name for name, lo, hi in MSVD_SPLIT_BOUNDS if number and lo <= number <= hi), None)

    split_of.source = mapping_file  # type: ignore[attr-defined]
    return split_of


def _read_flickr_csv(path: Path, text: str, delimiter=",", image="image", caption="caption") -> tuple[Captions, SplitOf]:
    captions: Captions = {}
    for line, row in _csv_rows(path, text, delimiter):
        if row.get(image) is None or row.get(caption) is None:
            raise CaptionerError(f"missing column {image!r} or {caption!r}", path, line)
        if not row[image].strip():
            raise CaptionerError("empty image name", path, line)
        _add(captions, path, line, Path(row[image].strip()).stem, row[caption])
    return captions, _flickr_split_of(path)


def _read_flickr30k_csv(path: Path, text: str) -> tuple[Captions, SplitOf]:
    # Kaggle's flickr30k results.csv: "image_name| comment_number| comment".
    text = "\n".join(re.sub(r"\s*\|\s*", "|", raw) for raw in text.splitlines())
    return _read_flickr_csv(path, text, "|", "image_name", "comment")


def _read_flickr_token(path: Path, text: str) -> tuple[Captions, SplitOf]:
    captions: Captions = {}
    for line, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        key, tab, caption = raw.partition("\t")
        if not tab or "#" not in key:
            raise CaptionerError("expected 'IMAGE#N<TAB>caption'", path, line)
        _add(captions, path, line, Path(key.rsplit("#", 1)[0]).stem, caption)
    return captions, _flickr_split_of(path)


def _flickr_split_of(path: Path) -> SplitOf:
    lists = {"train": "*trainImages.txt", "val": "*devImages.txt", "test": "*testImages.txt"}
    split_by_id: dict[str, str] = {}
    for name, pattern in lists.items():
        for file in sorted(path.parent.glob(pattern)):
            for image in _read_utf8(file).split():  # the dev list has no final newline
                split_by_id[Path(image).stem] = name
    return split_by_id.get if split_by_id else None


def _read_karpathy_json(path: Path, data: dict) -> tuple[Captions, SplitOf]:
    captions: Captions = {}
    split_by_id: dict[str, str] = {}
    for n, image in enumerate(data["images"]):
        try:
            vid = Path(image["filename"]).stem
            sentences = [s["raw"] for s in image["sentences"]]
        except (KeyError, TypeError):
            raise CaptionerError(f"images[{n}] lacks 'filename' or 'sentences[].raw'", path) from None
        for caption in sentences:
            _add(captions, path, None, vid, caption)
        # Karpathy's "restval" images are training images held out of val in the original split.
        split_by_id[vid] = "train" if image.get("split") == "restval" else SPLITS.get(image.get("split"))
    return captions, split_by_id.get


def _read_msrvtt(path: Path, data: dict) -> tuple[Captions, SplitOf]:
    try:
        split_by_id = {v["video_id"]: SPLITS.get(v.get("split"), v.get("split")) for v in data["videos"]}
    except (KeyError, TypeError):
        raise CaptionerError("every entry of 'videos' needs a 'video_id'", path) from None
    captions: Captions = {vid: [] for vid in split_by_id}
    for n, sentence in enumerate(data["sentences"]):
        if not isinstance(sentence, dict) or "video_id" not in sentence or "caption" not in sentence:
            raise CaptionerError(f"sentences[{n}] needs 'video_id' and 'caption'", path)
        if sentence["video_id"] not in split_by_id:
            raise CaptionerError(f"sentences[{n}] names unknown video {sentence['video_id']!r} "
                                 "(not in 'videos')", path)
        _add(captions, path, None, sentence["video_id"], sentence["caption"])
    return {vid: caps for vid, caps in captions.items() if caps}, split_by_id.get


def _read_plain_json(path: Path, data: dict) -> tuple[Captions, SplitOf]:
    captions: Captions = {}
    for vid, caps in data.items():
        if isinstance(caps, str):
            caps = [caps]
        if not isinstance(caps, list):
            raise CaptionerError(f"captions of {vid!r} must be a list of strings", path)
        for caption in caps:
            _add(captions, path, None, str(vid), caption)
    return captions, None


class _DuplicateKey(ValueError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _unique_pairs(pairs: list[tuple[str, object]]) -> dict:
    seen: dict = {}
    for key, value in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen[key] = value
    return seen


def parse_json(text: str, path: Path, line: int | None = None):
    """json.loads, refusing an object that names a key twice (json.loads keeps the last value:
    a prediction or reference file with an id twice would silently lose one)."""
    try:
        return json.loads(text, object_pairs_hook=_unique_pairs)
    except _DuplicateKey as exc:
        if line is None:  # the line of the key's second appearance
            found = [m.start() for m in re.finditer(re.escape(json.dumps(exc.key)) + r"\s*:", text)]
            line = text.count("\n", 0, found[1]) + 1 if len(found) > 1 else None
        raise CaptionerError(f"duplicate key {exc.key!r} in a JSON object (each may appear once)", path,
                             line) from None
    except ValueError as exc:
        raise CaptionerError(f"invalid JSON: {exc.msg if hasattr(exc, 'msg') else exc}", path,
                             line if line is not None else getattr(exc, "lineno", None)) from None


def jsonl_records(path: Path, text: str):
    """(line number, parsed value) for every non-blank line of a JSON Lines file."""
    for line, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        yield line, parse_json(raw, path, line)


def _read_jsonl(path: Path, text: str) -> tuple[Captions, SplitOf]:
    captions: Captions = {}
    split_by_id: dict[str, str | None] = {}
    for line, record in jsonl_records(path, text):
        if not isinstance(record, dict) or "video" not in record or "captions" not in record:
            raise CaptionerError('expected {"video": ID, "captions": [...]}', path, line)
        caps = record["captions"]
        if not isinstance(caps, list) or not caps:
            raise CaptionerError("'captions' must be a non-empty list of strings", path, line)
        vid = str(record["video"])
        for caption in caps:
            _add(captions, path, line, vid, caption)
        split_by_id[vid] = SPLITS.get(record.get("split"), record.get("split"))
    has_splits = any(s is not None for s in split_by_id.values())
    return captions, split_by_id.get if has_splits else None


def _json_reader(path: Path, text: str):
    data = parse_json(text, path)
    if isinstance(data, dict) and "videos" in data and "sentences" in data:
        return lambda p, t: _read_msrvtt(p, data)
    if isinstance(data, dict) and "images" in data:
        return lambda p, t: _read_karpathy_json(p, data)
    if isinstance(data, dict):
        return lambda p, t: _read_plain_json(p, data)
    raise CaptionerError("unrecognised JSON caption file (expected MSR-VTT videodatainfo, Karpathy "
                         "dataset_*.json or {id: [captions]})", path)


def _detect(path: Path, text: str):
    first = next((raw for raw in text.splitlines() if raw.strip()), "")
    stripped = first.lstrip()
    if path.suffix.lower() == ".jsonl" or (stripped.startswith("{") and stripped.rstrip().endswith("}")
                                           and path.suffix.lower() != ".json"):
        return _read_jsonl
    if stripped.startswith(("{", "[")):
        return _json_reader(path, text)
    columns = {c.strip().strip('"') for c in first.split(",")}
    if {"VideoID", "Description"} <= columns:
        return _read_msvd_corpus
    if {"image", "caption"} <= columns:
        return _read_flickr_csv
    if {"image_name", "comment"} <= {c.strip() for c in first.split("|")}:
        return _read_flickr30k_csv
    if "\t" in first:
        key = first.split("\t", 1)[0]
        return _read_flickr_token if re.search(r"#\d+$", key) else _read_msvd_tsv
    for delimiter in (";", "\t", "|"):
        if {"image", "caption"} <= set(first.split(delimiter)) or "VideoID" in first.split(delimiter):
            raise CaptionerError(f"CSV uses {delimiter!r} as delimiter; caption CSVs must be "
                                 "comma-separated", path, 1)
    raise CaptionerError("unrecognised caption file: expected an MSVD corpus CSV (VideoID, ..., "
                         "Description), an 'image,caption' CSV, a .token/.tsv file, JSON or JSONL; "
                         f"first line is {first[:60]!r}", path, 1)


def _select_split(path: Path, captions: Captions, split: str, split_of: SplitOf) -> Captions:
    if os.path.isfile(split):  # an id list
        wanted = set(_read_utf8(Path(split)).split())
        wanted |= {Path(w).stem for w in wanted}
        selected = {vid: caps for vid, caps in captions.items() if vid in wanted}
        if not selected:
            raise CaptionerError(f"none of the ids listed in {split} is in the caption file", path)
        return selected
    name = SPLITS.get(split.lower())
    if name is None:
        raise UsageError(f"unknown split {split!r}: use train, val, test or a file listing ids", path)
    if split_of is None:
        raise CaptionerError(f"cannot select split {split!r}: this file has no split information and "
                             "no split list was found beside it (MSVD: youtube_mapping.txt; Flickr8k: "
                             "Flickr_8k.*Images.txt); pass a file listing ids as the split", path)
    selected = {vid: caps for vid, caps in captions.items() if split_of(vid) == name}
    if not selected:
        raise CaptionerError(f"no video of this file is in the {name} split", path)
    return selected
