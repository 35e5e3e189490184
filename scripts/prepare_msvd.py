"""Per-split lists of MSVD clip paths, from the files MSVD is distributed with.

    python scripts/prepare_msvd.py --clips data/msvd/YouTubeClips \
        --mapping data/msvd/youtube_mapping.txt --out data/msvd/lists

`youtube_mapping.txt` maps each clip id (`{VideoID}_{Start}_{End}`) to vidN; the standard
split is vid1-1200 train, vid1201-1300 val, vid1301-1970 test. Writes OUT/{train,val,test}.txt
(one absolute clip path per line, what `captioner extract` and the pipeline configs read) and
OUT/missing.txt (clips of the mapping not found in the folder), and prints a count per split.
Exits 1 when no clip of the mapping is in the folder.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from captioner.atomic import atomic_write  # noqa: E402
from captioner.datasets import MSVD_SPLIT_BOUNDS  # noqa: E402
from captioner.errors import CaptionerError  # noqa: E402
from captioner.inputs import is_media  # noqa: E402


def read_mapping(path: Path) -> dict[str, int]:
    """clip id -> N of vidN. The official file has CRLF line endings."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise CaptionerError(f"cannot read the mapping: {exc}", path) from None
    mapping: dict[str, int] = {}
    for line_number, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not re.fullmatch(r"vid\d+", parts[1]):
            raise CaptionerError(f"expected 'clip_id vidN', got {line.strip()[:60]!r}", path, line_number)
        mapping[parts[0]] = int(parts[1][3:])
    if not mapping:
        raise CaptionerError("no clips in the mapping", path)
    return mapping


def split_of(number: int) -> str | None:
    return next((name for name, low, high in MSVD_SPLIT_BOUNDS if low <= number <= high), None)


def prepare(clips: Path, mapping_file: Path, out: Path) -> dict[str, tuple[int, int]]:
    """Write the lists; returns {split: (clips found, clips in the split)}."""
    if not clips.is_dir():
        raise CaptionerError("clips folder not found", clips)
    mapping = read_mapping(mapping_file)
    files = {p.stem: p.absolute() for p in sorted(clips.rglob("*"))
             if is_media(p) and not p.name.startswith(".")}
    lists: dict[str, list[str]] = {name: [] for name, _, _ in MSVD_SPLIT_BOUNDS}
    wanted: dict[str, int] = {name: 0 for name in lists}
    missing = []
    for clip_id, number in sorted(mapping.items(), key=lambda item: item[1]):
        split = split_of(number)
        if split is None:
            continue
        wanted[split] += 1
        if clip_id in files:
            lists[split].append(str(files[clip_id]))
        else:
            missing.append(f"{clip_id} vid{number} {split}")
    for split, paths in lists.items():  # pipelines and extraction read these lists back
        atomic_write(out / f"{split}.txt", "".join(p + "\n" for p in paths))
    atomic_write(out / "missing.txt", "".join(m + "\n" for m in missing))
    unmapped = sorted(set(files) - set(mapping))
    if unmapped:
        print(f"{len(unmapped)} file(s) in {clips} are not in {mapping_file} and are left out "
              f"({', '.join(unmapped[:3])}{', ...' if len(unmapped) > 3 else ''})", file=sys.stderr)
    return {split: (len(lists[split]), wanted[split]) for split in lists}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", required=True, type=Path, help="the YouTubeClips folder")
    parser.add_argument("--mapping", required=True, type=Path, help="youtube_mapping.txt")
    parser.add_argument("--out", required=True, type=Path, help="folder for train.txt, val.txt, test.txt")
    args = parser.parse_args(argv)
    try:
        counts = prepare(args.clips, args.mapping, args.out)
    except CaptionerError as exc:
        print(f"prepare_msvd: error: {exc}", file=sys.stderr)
        return 1
    missing = sum(total - found for found, total in counts.values())
    for split, (found, total) in counts.items():
        print(f"{split}: {found} of {total} clips" + (f" ({total - found} missing)" if found < total else ""))
    if missing:
        print(f"{missing} clip(s) missing from {args.clips}: listed in {args.out / 'missing.txt'}")
    return 1 if not any(found for found, _ in counts.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
