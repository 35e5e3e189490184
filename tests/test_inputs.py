"""One home for inputs (captioner.inputs): every command agrees on what a media file is and what
a video is called, so a clip extracted, captioned, evaluated and reported keeps one id."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import media
from captioner.evaluate import read_predictions
from captioner.inputs import MEDIA_EXTENSIONS, find_inputs, find_media, video_ids
from captioner.report import _find_videos, thumbnail_strips
from pipelines.graph import fingerprint

ROOT = Path(__file__).resolve().parent.parent


def test_video_ids_use_stems_and_disambiguate_collisions():
    paths = [Path("/a/x.mp4"), Path("/b/x.avi"), Path("/c/y.mp4")]
    assert video_ids(paths) == {Path("/a/x.mp4"): "a/x", Path("/b/x.avi"): "b/x", Path("/c/y.mp4"): "y"}


def test_every_media_extension_is_an_input_and_fingerprinted_without_reading_it(tmp_path):
    for extension in sorted(MEDIA_EXTENSIONS):
        (tmp_path / f"clip{extension}").write_bytes(b"not decoded here")
    paths, problems = find_inputs([tmp_path])
    assert problems == [] and sorted(p.suffix for p in paths) == sorted(MEDIA_EXTENSIONS)
    # The pipeline keys media by size and mtime (the feature store re-checks contents itself).
    hashed = [p.name for p in paths if "sha256" in fingerprint(p)]
    assert hashed == []


def test_an_ogv_clip_gets_a_report_thumbnail(tmp_path):
    videos = tmp_path / "videos"
    # This FFmpeg build has no Theora encoder; FFmpeg finds the container from the contents, and
    # what decides whether the report looks at the file is its extension.
    clip = media.synthetic_video(videos / "clip.mp4")
    clip = clip.rename(videos / "clip.ogv")
    found = _find_videos(videos, ["clip"])
    assert found == {"clip": clip}
    assert thumbnail_strips(found, progress=False)["clip"].startswith("data:image/jpeg;base64,")


def test_ids_made_from_relative_inputs_find_their_files_under_an_absolute_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("videos/dupA/clip.mp4", "videos/dupB/clip.avi", "videos/y.mp4", "elsewhere/dupA/clip.mp4"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    paths, _ = find_inputs(["videos"])
    ids = video_ids(paths)
    assert sorted(ids.values()) == ["videos/dupA/clip", "videos/dupB/clip", "y"]
    found = find_media(tmp_path.resolve() / "videos", [*ids.values(), "dupC/clip"])
    assert found == {"videos/dupA/clip": tmp_path / "videos/dupA/clip.mp4",
                     "videos/dupB/clip": tmp_path / "videos/dupB/clip.avi", "y": tmp_path / "videos/y.mp4"}


def test_caption_lines_without_ids_are_named_as_caption_names_its_inputs(tmp_path):
    lines = [{"path": "a/x.mp4", "caption": "a cat"}, {"path": "b/x.mp4", "caption": "a dog"},
             {"path": "c/y.mp4", "caption": "a bird"}]
    predictions = tmp_path / "captions.jsonl"
    predictions.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert read_predictions(predictions) == {"a/x": "a cat", "b/x": "a dog", "y": "a bird"}


def _captioner(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "captioner", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_two_inputs_with_one_stem_caption_and_evaluate(tmp_path, msvd_clips):
    clip = msvd_clips[0]
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / clip.name).symlink_to(clip)
    inputs = [f"a/{clip.name}", f"b/{clip.name}"]
    captioned = _captioner("caption", *inputs, "--json", "--segments", "100", "--srt", "subs", cwd=tmp_path)
    assert captioned.returncode == 0, captioned.stderr
    records = [json.loads(line) for line in captioned.stdout.splitlines()]
    assert [r["id"] for r in records] == [f"a/{clip.stem}", f"b/{clip.stem}"]
    assert sorted(p.relative_to(tmp_path / "subs").as_posix() for p in (tmp_path / "subs").rglob("*.srt")) == \
        [f"a/{clip.stem}.srt", f"b/{clip.stem}.srt"]  # one file each, not one overwriting the other
    (tmp_path / "captions.jsonl").write_text(captioned.stdout)
    references = {r["id"]: ["a man is riding a motorcycle", "someone rides a bike"] for r in records}
    (tmp_path / "references.json").write_text(json.dumps(references))
    scored = _captioner("evaluate", "--predictions", "captions.jsonl", "--references", "references.json",
                        "--metrics", "BLEU-1", "--json", cwd=tmp_path)
    assert scored.returncode == 0, scored.stderr
    assert json.loads(scored.stdout)["n"] == {"scored": 2, "missing": 0}


def test_a_fifo_or_device_is_not_a_regular_file_and_nothing_waits_on_it(tmp_path):
    """issue 23 #10: a FIFO named .mp4 was reported as an "empty file" (and extract blocked reading it)."""
    from captioner.errors import CaptionerError
    from captioner.video import decode

    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)
    listed = tmp_path / "list.txt"
    listed.write_text("pipe.mp4\n")
    paths, problems = find_inputs([fifo, "/dev/zero", listed])
    assert paths == []
    assert [str(error) for _, error in problems] == [
        f"{fifo}: not a regular file (a FIFO)", "/dev/zero: not a regular file (a character device)",
        f"{listed}:1: not a regular file (a FIFO): {fifo}"]
    with pytest.raises(CaptionerError, match=r"pipe\.mp4: not a regular file \(a FIFO\)"):
        decode(fifo)
    extract = subprocess.run([sys.executable, "-m", "captioner.cli", "extract", str(fifo), "--out",
                              str(tmp_path / "store")], capture_output=True, text=True, timeout=120,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert extract.returncode == 1
    assert extract.stderr.splitlines() == [f"captioner: {fifo}: not a regular file (a FIFO)",
                                           "captioner: error: nothing to extract: every input above is missing or "
                                           "holds no media"]


def test_control_characters_in_names_stay_on_one_line_and_one_field(tmp_path):
    """issue 23 #9: a newline or tab in a file name broke `path<TAB>caption` and error lines apart."""
    from captioner.errors import CaptionerError, printable

    odd = "a\tb\nc\\d\x07e é.mp4"
    assert printable(odd) == "a\\tb\\nc\\\\d\\x07e é.mp4"
    assert printable("plain é.mp4") == "plain é.mp4"
    assert str(CaptionerError("file not found", tmp_path / odd)) == f"{tmp_path}/{printable(odd)}: file not found"
    missing = subprocess.run([sys.executable, "-m", "captioner.cli", "caption", str(tmp_path / odd)],
                             capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert missing.returncode == 1 and missing.stdout == ""
    assert missing.stderr.splitlines() == [f"captioner: {tmp_path}/{printable(odd)}: file not found"]
