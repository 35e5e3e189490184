"""Caption files in the formats users download, and one-line errors for bad ones."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest

from captioner import open_features
from captioner.datasets import join_features, load_captions, load_references
from captioner.errors import CaptionerError


@pytest.fixture(scope="module")
def msvd(data_dir):
    return data_dir / "msvd"


def test_msvd_tsv_train_split_holds_the_standard_counts(msvd):
    captions = load_captions(msvd / "captions" / "MSVD_train.tsv", "train")
    assert len(captions) == 1200
    assert sum(map(len, captions.values())) == 48_774
    assert captions["0lh_UWF9ZP4_62_69"][0]  # one of the 18 clips in ../shared/data
    assert all(c and not c.endswith(",") for caps in captions.values() for c in caps)


def test_msvd_corpus_csv_matches_the_tsv_clips(msvd):
    corpus = load_captions(msvd / "captions" / "corpus_val.csv", split="val")
    tsv = load_captions(msvd / "captions" / "MSVD_val.tsv")
    assert set(corpus) == set(tsv) and len(corpus) == 100
    assert sum(map(len, corpus.values())) == 4291  # the TSV lost one caption when it was cut at commas
    assert corpus["buJ5HDCinrM_150_166"][0] == "A woman is putting make up on her face."


def test_msvd_split_comes_from_youtube_mapping(msvd):
    with pytest.raises(CaptionerError, match="no video of this file is in the test split"):
        load_captions(msvd / "captions" / "MSVD_val.tsv", "test")
    test = load_captions(msvd / "captions" / "corpus_test.csv", "test")
    assert len(test) == 670 and "j2Dhf-xFUxU_13_20" in test


def test_flickr8k_csv_and_split_lists(data_dir):
    path = data_dir / "flickr8k" / "captions.csv"
    sizes = {split: len(load_captions(path, split)) for split in ("train", "val", "test")}
    assert sizes == {"train": 6000, "val": 1000, "test": 1000}  # the dev list has no final newline
    captions = load_captions(path, "dev")
    first = next(iter(captions))
    assert not first.endswith(".jpg") and len(captions[first]) == 5
    assert (data_dir / "flickr8k" / "images" / f"{first}.jpg").exists()


def test_flickr_token_file_reads_like_the_csv(data_dir, tmp_path):
    csv_captions = load_captions(data_dir / "flickr8k" / "captions.csv")
    some = dict(list(csv_captions.items())[:50])
    lines = [f"{vid}.jpg#{n}\t{c}" for vid, caps in some.items() for n, c in enumerate(caps)]
    (tmp_path / "Flickr8k.token.txt").write_text("\n".join(lines), encoding="utf-8")
    assert load_captions(tmp_path / "Flickr8k.token.txt") == some


def test_msrvtt_json_splits(tmp_path):
    info = {"videos": [{"video_id": "video0", "split": "train"}, {"video_id": "video1", "split": "validate"},
                       {"video_id": "video2", "split": "test"}],
            "sentences": [{"video_id": "video0", "caption": "a man is cooking", "sen_id": 0},
                          {"video_id": "video1", "caption": "a cat plays", "sen_id": 1},
                          {"video_id": "video0", "caption": "someone cooks", "sen_id": 2}]}
    path = tmp_path / "videodatainfo.json"
    path.write_text(json.dumps(info))
    assert load_captions(path, "train") == {"video0": ["a man is cooking", "someone cooks"]}
    assert load_captions(path, "val") == {"video1": ["a cat plays"]}
    assert set(load_references(path)) == {"video0", "video1"}


def test_jsonl_and_plain_json(tmp_path):
    jsonl = tmp_path / "mine.jsonl"
    jsonl.write_text('{"video": "a", "captions": ["x y", "z"], "split": "train"}\n\n'
                     '{"video": "b", "captions": ["w"], "split": "test"}\n')
    assert load_captions(jsonl, "train") == {"a": ["x y", "z"]}
    plain = tmp_path / "refs.json"
    plain.write_text(json.dumps({"a": ["x y"], "b": "one"}))
    assert load_references(plain) == {"a": ["x y"], "b": ["one"]}
    with pytest.raises(CaptionerError, match="no split information"):
        load_references(plain, "test")


def test_split_may_be_a_file_of_ids(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text('{"video": "a", "captions": ["x"]}\n{"video": "b", "captions": ["y"]}\n')
    (tmp_path / "ids.txt").write_text("b\n")
    assert load_captions(path, str(tmp_path / "ids.txt")) == {"b": ["y"]}


# ------------------------------------------------------------------------- bad files
def _error(path, split=None) -> str:
    with pytest.raises(CaptionerError) as info:
        load_captions(path, split)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_column_names_file_and_line(tmp_path):
    path = tmp_path / "corpus.csv"
    path.write_text("VideoID,Start,End,Language,Description\nabc,1,2,English,a dog runs\nabc,1,2\n")
    assert _error(path).startswith(f"{path}:3: ")


def test_non_utf8_names_the_line(tmp_path):
    path = tmp_path / "captions.csv"
    path.write_bytes("image,caption\n1.jpg,a dog\n2.jpg,a caf\xe9\n".encode("latin-1"))
    message = _error(path)
    assert message.startswith(f"{path}:3: ") and "UTF-8" in message


def test_empty_caption_names_the_line(tmp_path):
    path = tmp_path / "captions.csv"
    path.write_text("image,caption\n1.jpg,a dog\n2.jpg,  \n")
    assert _error(path) == f"{path}:3: empty caption for '2'"
    tsv = tmp_path / "MSVD_train.tsv"
    tsv.write_text("a dog, a cat, \tclip_1_2\na man, , a woman, \tclip_3_4\n")
    assert _error(tsv).startswith(f"{tsv}:2: empty caption")


def test_unknown_msvd_clip_names_the_line(msvd, tmp_path):
    shutil.copy(msvd / "youtube_mapping.txt", tmp_path / "youtube_mapping.txt")
    path = tmp_path / "corpus.csv"
    path.write_text("VideoID,Start,End,Language,Description\n"
                    "0lh_UWF9ZP4,62,69,English,a dog runs\n0lh_UWF9ZP4,62,70,English,a typo\n")
    message = _error(path, "train")
    assert message.startswith(f"{path}:3: ") and "0lh_UWF9ZP4_62_70" in message


def test_wrong_delimiter_is_named(tmp_path):
    path = tmp_path / "captions.csv"
    path.write_text("image;caption\n1.jpg;a dog\n")
    assert _error(path) == f"{path}:1: CSV uses ';' as delimiter; caption CSVs must be comma-separated"


def test_bad_jsonl_line_and_unknown_format(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"video": "a", "captions": ["x"]}\n{"video": "b"}\n')
    assert _error(path).startswith(f"{path}:2: ")
    other = tmp_path / "c.txt"
    other.write_text("hello world\n")
    assert _error(other).startswith(f"{other}:1: unrecognised caption file")


# ------------------------------------------------------------------------- joining features
def test_join_reports_missing_ids_once_with_a_count(tmp_path, caplog):
    store = open_features(tmp_path / "store", "a")
    for vid in ("a", "b"):
        store.put(vid, np.ones((1, 4), np.float32))
    captions = {"a": ["x"], "b": ["y"], "c": ["z"], "d": ["w"]}
    with caplog.at_level(logging.WARNING, logger="captioner"):
        kept = join_features(captions, store.ids(), "caps.jsonl", store.path)
    assert kept == {"a": ["x"], "b": ["y"]}
    assert len(caplog.records) == 1 and "2 of 4 videos in caps.jsonl have no features" in caplog.text
    with pytest.raises(CaptionerError, match="none of the 1 videos"):
        join_features({"zz": ["x"]}, store.ids(), "caps.jsonl", store.path)


def test_a_reference_id_named_twice_in_json_is_refused(tmp_path):
    """issue 23 #8, the same class in caption files: json.loads kept only the last list."""
    refs = tmp_path / "refs.json"
    refs.write_text('{"vid1": ["a man cooks"],\n "vid1": ["a dog runs"]}')
    with pytest.raises(CaptionerError) as caught:
        load_references(refs)
    assert str(caught.value) == f"{refs}:2: duplicate key 'vid1' in a JSON object (each may appear once)"
