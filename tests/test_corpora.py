"""The text-only corpora: counts on the real files, the VATEX <-> Kinetics join, one-line errors."""

from __future__ import annotations

import json

import pytest

from captioner.corpora import load_coco, load_kinetics_labels, load_msrvtt, load_vatex, vatex_by_action, vatex_clip
from captioner.errors import CaptionerError

from conftest import DATA


def test_msrvtt_counts_splits_and_categories():
    corpus = load_msrvtt(DATA / "msrvtt" / "train_val_videodatainfo.json")
    assert len(corpus.captions) == 6993
    assert sum(map(len, corpus.captions.values())) == 139_860
    assert (len(corpus.videos("train")), len(corpus.videos("val"))) == (6496, 497)
    assert set(corpus.category.values()) == set(range(20))


def test_vatex_counts_and_ids():
    val = load_vatex(DATA / "vatex" / "val.en")
    test = load_vatex(DATA / "vatex" / "public_test.en")
    assert (len(val), sum(map(len, val.values()))) == (2810, 14_050)
    assert (len(test), sum(map(len, test.values()))) == (5655, 28_275)
    assert val["G9zN5TTuGO4_000179_000189"][0] == "a person is climbing down a snowy cliff with the help of a rope ."
    assert vatex_clip("G9zN5TTuGO4_000179_000189") == ("G9zN5TTuGO4", 179, 189)
    assert vatex_clip("a_b_c_000001_000011") == ("a_b_c", 1, 11)  # youtube ids may hold underscores


def test_every_vatex_val_video_joins_its_kinetics_class():
    labels = load_kinetics_labels(DATA / "kinetics" / "kinetics-600_val.csv")
    assert len(labels) == 30_000 and len(set(labels.values())) == 600
    joined = vatex_by_action(load_vatex(DATA / "vatex" / "val.en"), labels)
    assert joined.unmatched == []
    assert sum(len(videos) for videos in joined.by_action.values()) == 2810
    assert sum(len(joined.captions(action)) for action in joined.by_action) == 14_050
    assert any("rope" in c for c in joined.captions("abseiling"))
    # The public test videos are not Kinetics-600 validation clips: none joins.
    assert vatex_by_action(load_vatex(DATA / "vatex" / "public_test.en"), labels).by_action == {}


def test_coco_counts():
    captions = load_coco(DATA / "coco" / "captions_val2017.json")
    assert (len(captions), sum(map(len, captions.values()))) == (5000, 25_014)


def _one_line(error: CaptionerError) -> str:
    text = str(error)
    assert "\n" not in text
    return text


def test_vatex_malformed_id_line_names_file_and_line(tmp_path):
    (tmp_path / "x.en").write_text("a man is running .\na dog barks .\n")
    (tmp_path / "x.id").write_text("abc_000001_000011&0\nnot-an-id\n")
    with pytest.raises(CaptionerError) as caught:
        load_vatex(tmp_path / "x.en")
    text = _one_line(caught.value)
    assert "x.id" in text and ":2" in text and "not-an-id" in text


def test_vatex_files_of_different_lengths_and_empty_captions(tmp_path):
    (tmp_path / "x.en").write_text("a man is running .\n")
    (tmp_path / "x.id").write_text("abc_000001_000011&0\nabc_000001_000011&1\n")
    with pytest.raises(CaptionerError, match="1 lines but x.id 2"):
        load_vatex(tmp_path / "x.en")
    (tmp_path / "x.en").write_text("a man is running .\n   \n")
    with pytest.raises(CaptionerError) as caught:
        load_vatex(tmp_path / "x.en")
    assert "x.en" in _one_line(caught.value) and ":2" in str(caught.value)


def test_kinetics_malformed_row_names_file_and_line(tmp_path):
    path = tmp_path / "k.csv"
    path.write_text("label,youtube_id,time_start,time_end,split\nabseiling,yq_M1PMw2hY,38,48,val\n"
                    "abseiling,7pRfb0t34uo,1x,168,val\n")
    with pytest.raises(CaptionerError) as caught:
        load_kinetics_labels(path)
    text = _one_line(caught.value)
    assert "k.csv" in text and ":3" in text and "whole seconds" in text
    path.write_text("label,youtube_id\nabseiling,yq\n")
    with pytest.raises(CaptionerError, match="expected the columns"):
        load_kinetics_labels(path)


def test_msrvtt_and_coco_malformed_entries(tmp_path):
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"videos": [{"video_id": "video0", "split": "train", "category": 1}],
                                "sentences": [{"video_id": "video0", "caption": "a man talks"},
                                              {"video_id": "video9", "caption": "a dog"}]}))
    with pytest.raises(CaptionerError) as caught:
        load_msrvtt(path)
    assert "m.json" in _one_line(caught.value) and "sentences[1]" in str(caught.value)
    path.write_text('{"videos": [}')
    with pytest.raises(CaptionerError) as caught:
        load_msrvtt(path)
    assert "invalid JSON" in _one_line(caught.value) and ":1" in str(caught.value)
    coco = tmp_path / "c.json"
    coco.write_text(json.dumps({"annotations": [{"image_id": 1, "caption": "a cat"}, {"image_id": 2}]}))
    with pytest.raises(CaptionerError) as caught:
        load_coco(coco)
    assert "c.json" in _one_line(caught.value) and "annotations[1]" in str(caught.value)
