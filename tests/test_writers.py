"""One writer per output format (captioner.writers), and the timing every report shows."""

from __future__ import annotations

import json

import pytest
import srt
import webvtt

from captioner.caption import Caption, Segment, run_timing
from captioner.errors import UsageError
from captioner.writers import OUTPUT_FORMATS, get_writer, to_json, write_outputs


def _caption(segments=None) -> Caption:
    return Caption(path="clips/a dog.mp4", id="a dog", caption="a dog runs", score=-0.5,
                   alternatives=[{"caption": "a dog runs", "score": -0.5}], model="default:x:0",
                   timing={"decode": 0.1}, segments=segments)


def test_every_format_as_text_and_as_a_file(tmp_path):
    segments = [Segment(0.0, 2.0, "a dog runs", -0.4), Segment(2.0, 4.0, "a dog runs", -0.6),
                Segment(4.0, 5.5, "a dog jumps", -0.7)]
    result = _caption(segments)
    assert get_writer("txt").text(result) == "a dog runs\n"
    assert json.loads(get_writer("json").text(result)) == json.loads(to_json(result)) == result.to_dict()
    assert "\n" not in to_json(result)  # `captioner caption --json`: one line per input
    cues = list(srt.parse(get_writer("srt").text(result)))
    assert [(c.start.total_seconds(), c.end.total_seconds(), c.content) for c in cues] == [
        (0, 4, "a dog runs"), (4, 5.5, "a dog jumps")]
    vtt = get_writer("vtt").write(result, tmp_path / "a.vtt")
    assert [(c.start, c.end, c.text) for c in webvtt.read(str(vtt))] == [
        ("00:00:00.000", "00:00:04.000", "a dog runs"), ("00:00:04.000", "00:00:05.500", "a dog jumps")]
    written = write_outputs(result, tmp_path, OUTPUT_FORMATS)
    assert [p.name for p in written] == ["a dog.txt", "a dog.json", "a dog.srt", "a dog.vtt"]
    assert written[2].read_text() == get_writer("srt").text(result)


def test_subtitles_of_a_caption_without_segments_are_nothing(tmp_path):
    result = _caption()
    assert get_writer("srt").text(result) is None and get_writer("vtt").write(result, tmp_path / "a.vtt") is None
    assert not (tmp_path / "a.vtt").exists()
    assert [p.name for p in write_outputs(result, tmp_path)] == ["a dog.txt", "a dog.json"]
    with pytest.raises(UsageError, match="output format must be one of txt, json, srt, vtt, got 'doc'"):
        get_writer("doc")


def test_the_package_offers_the_writers():
    import captioner

    assert captioner.get_writer is get_writer


def test_run_timing_wraps_the_input_s_own_seconds():
    timing = run_timing({"decode": 0.12345, "backbone": 0.5, "caption": 0.01}, 1.234567, 0.5, 2.0)
    assert list(timing) == ["startup", "model_load", "decode", "backbone", "caption", "total"]
    assert timing["startup"] == 1.2346 and timing["total"] == 2.0
