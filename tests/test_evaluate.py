"""The evaluation stage: prediction formats, id matching, baselines and the `evaluate` command."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest

from captioner.baselines import constant_caption, nearest_neighbour_captions
from captioner.errors import CaptionerError
from captioner.evaluate import (CONSTANT, MIN_COVERAGE, MODEL, NEAREST, evaluate, match_ids, read_predictions,
                                read_references, read_results, write_results)
from captioner.store import open_features
from eval_helpers import ROOT, assert_one_line_error, msvd_test_refs, run_cli, scorer  # noqa: F401  (fixtures)

KEYS = ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"]


def _write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- predictions
def test_prediction_formats(tmp_path):
    want = {"vid1": "a man is cooking", "vid2": "a cat sleeps"}
    as_dict = _write(tmp_path / "p.json", json.dumps(want))
    coco = _write(tmp_path / "coco.json", json.dumps([{"image_id": "vid1", "caption": "a man is cooking"},
                                                      {"video_id": "vid2", "caption": "a cat sleeps"}]))
    jsonl = _write(tmp_path / "captions.out", "\n".join([
        json.dumps({"path": "/data/clips/vid1.avi", "caption": "a man is cooking", "score": -3.2}),
        json.dumps({"path": "/data/other/x.mp4", "id": "vid2", "caption": "a cat sleeps"}),
        json.dumps({"path": "/data/broken.mp4", "error": "cannot decode"}), ""]))
    one_line = _write(tmp_path / "one.json", json.dumps({"path": "a/vid1.avi", "caption": "a man is cooking"}))
    assert read_predictions(as_dict) == want
    assert read_predictions(coco) == want
    assert read_predictions(jsonl) == want  # the failed video is skipped (and said so)
    assert read_predictions(one_line) == {"vid1": "a man is cooking"}
    numeric = _write(tmp_path / "ids.json", json.dumps([{"id": 7, "caption": "x"}]))
    assert read_predictions(numeric) == {"7": "x"}


@pytest.mark.parametrize("name, content, fragments", [
    ("bad.json", '{"vid1": "a man",', ["bad.json:1", "invalid JSON"]),
    ("refs.json", '{"vid1": ["a man", "a woman"]}', ["refs.json", "is this a references file?"]),
    ("bad.jsonl", '{"path": "a.mp4", "caption": "x"}\n{"path": "b.mp4", "caption": \n', ["bad.jsonl:2", "invalid JSON"]),
    ("dup.jsonl", '{"path": "a/v.mp4", "caption": "x"}\n{"path": "a/v.mp4", "caption": "y"}\n', ["dup.jsonl:2", "'a/v'"]),
    ("nocap.jsonl", '{"path": "a.mp4", "text": "x"}\n', ["nocap.jsonl:1", "'caption'"]),
    # issue 23 #8: an id twice in a JSON object silently kept the last caption.
    ("dup.json", '{"vid1": "a man",\n "vid2": "a cat",\n "vid1": "a dog"}', ["dup.json:3", "duplicate key 'vid1'"]),
    ("dupkey.jsonl", '{"path": "a.mp4", "caption": "x", "caption": "y"}\n', ["dupkey.jsonl:1",
                                                                              "duplicate key 'caption'"]),
    ("list.json", '[{"caption": "x"}]', ["list.json", "item 0"]),
    ("empty.json", "  \n", ["empty.json", "empty predictions file"]),
    ("number.json", "42", ["number.json", "expected {id: caption}"]),
])
def test_bad_prediction_files_give_one_line(tmp_path, name, content, fragments):
    path = _write(tmp_path / name, content)
    with pytest.raises(CaptionerError) as info:
        read_predictions(path)
    assert "\n" not in str(info.value)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_missing_and_non_utf8_files(tmp_path):
    with pytest.raises(CaptionerError, match="predictions file not found"):
        read_predictions(tmp_path / "nope.json")
    latin1 = tmp_path / "latin1.json"
    latin1.write_bytes('{"v": "caf\u00e9"}'.encode("latin-1"))
    with pytest.raises(CaptionerError, match="not UTF-8"):
        read_predictions(latin1)


def test_id_matching_reports_and_excludes(caplog):
    predictions = {"a": "x", "b": "y", "extra": "z"}
    references = {"a": ["x"], "b": ["y"], "c": ["w"], "d": ["v"]}
    with caplog.at_level(logging.WARNING, logger="captioner"):
        assert match_ids(predictions, references, "P", "R") == ["a", "b"]
    messages = [r.getMessage() for r in caplog.records]
    assert any("1 predicted ids have no references in R" in m and "extra" in m for m in messages)
    assert any("2 reference ids have no prediction in P" in m for m in messages)
    with pytest.raises(CaptionerError, match="no video id is in both P and R"):
        match_ids({"x": "y"}, references, "P", "R")


def test_coverage_below_the_minimum_is_refused_before_scoring():
    references = {f"v{i}": ["a dog runs"] for i in range(1, 21)}
    with pytest.raises(CaptionerError, match=r"P: predictions cover 1 of 20 reference ids \(5%\), below the 95%"):
        match_ids({"v1": "a dog runs"}, references, "P", "R", min_coverage=MIN_COVERAGE)
    nineteen = {f"v{i}": "a dog runs" for i in range(1, 20)}
    assert len(match_ids(nineteen, references, min_coverage=MIN_COVERAGE)) == 19  # 95%: a failed video or so
    assert match_ids({"v1": "a dog runs"}, references) == ["v1"]  # the API scores any overlap unless told


def test_references_that_are_not_strings_say_so(tmp_path):
    refs = _write(tmp_path / "refs.json", json.dumps({"v1": [1, 2]}))
    with pytest.raises(CaptionerError) as info:
        read_references(refs)
    assert str(info.value) == f"{refs}: caption of 'v1' must be a string, got int 1"
    empty = _write(tmp_path / "empty.json", json.dumps({"v1": ["a dog", "  "]}))
    with pytest.raises(CaptionerError, match="empty caption for 'v1'"):
        read_references(empty)


# ----------------------------------------------------------------------------- baselines
def test_constant_caption_is_the_most_frequent_normalised_caption():
    train = {"v1": ["A dog runs.", "a cat sleeps"], "v2": ["a dog  runs", "a bird sings"], "v3": ["a cat sleeps!"],
             "v4": ["A dog runs"]}
    assert constant_caption(train) == "a dog runs"
    with pytest.raises(CaptionerError):
        constant_caption({"v": ["", "  "]})


def _store(path, features: dict[str, np.ndarray], backbone="toy"):
    store = open_features(path, "a")
    for video_id, vector in features.items():
        store.put(video_id, np.asarray(vector, np.float32)[None, :])
    store.set_provenance({"backbone": backbone, "feature_dim": len(next(iter(features.values())))})
    return open_features(path)


def test_nearest_neighbour_picks_the_consensus_of_the_nearest_videos(tmp_path):
    train_refs = {"cook": ["a man is cooking food", "a man is cooking", "a person cooks food in a pan",
                           "someone plays a guitar"],  # one outlier: consensus must not pick it
                  "cook2": ["a woman is cooking food", "a man cooks"],
                  "guitar": ["a man plays a guitar", "a man is playing the guitar", "someone plays guitar"],
                  "no_features": ["a dog runs"]}
    train = _store(tmp_path / "train", {"cook": [1, 0, 0], "cook2": [0.9, 0.1, 0], "guitar": [0, 1, 0]})
    test = _store(tmp_path / "test", {"t_cook": [0.95, 0.05, 0.01], "t_guitar": [0.1, 2.0, 0.0]})
    one = nearest_neighbour_captions(train, train_refs, test, ["t_cook", "t_guitar"], k=1)
    assert one["t_cook"] in {"a man is cooking food", "a man is cooking"}
    assert one["t_guitar"] in {"a man plays a guitar", "a man is playing the guitar"}
    two = nearest_neighbour_captions(train, train_refs, test, ["t_cook"], k=2)
    assert "cook" in two["t_cook"] and "guitar" not in two["t_cook"]
    with pytest.raises(CaptionerError, match="1 of 2 evaluated videos have no features"):
        nearest_neighbour_captions(train, train_refs, test, ["t_cook", "unknown"])
    other = _store(tmp_path / "other", {"t_cook": [1, 0, 0]}, backbone="resnet")
    with pytest.raises(CaptionerError, match="same backbone"):
        nearest_neighbour_captions(train, train_refs, other, ["t_cook"])


def test_evaluate_scores_model_and_baselines_on_the_same_ids(tmp_path, msvd_test_refs, scorer):
    ids = list(msvd_test_refs)[:12]
    references = {i: msvd_test_refs[i][1:] for i in ids}
    predictions = {i: msvd_test_refs[i][0] for i in ids[2:]}  # two videos left unpredicted
    train_refs = {f"train{n}": msvd_test_refs[i][:5] for n, i in enumerate(list(msvd_test_refs)[100:130])}
    rng = np.random.default_rng(0)
    store = _store(tmp_path / "features", {i: rng.normal(size=8) for i in [*train_refs, *ids]})
    evaluation = evaluate(predictions, references, train_references=train_refs, train_features=store,
                          k=3, scorer=scorer)
    assert [s.name for s in evaluation.systems] == [MODEL, CONSTANT, NEAREST]
    assert evaluation.ids == ids[2:] and evaluation.excluded == {"predictions": 0, "references": 2}
    for system in evaluation.systems:
        assert set(system.captions) == set(evaluation.ids) == set(system.per_video)
    assert evaluation.model.corpus == scorer.score(predictions, {i: references[i] for i in ids[2:]})
    assert len(set(evaluation.systems[1].captions.values())) == 1
    # The model here predicts human captions: it must beat both baselines.
    for baseline in evaluation.systems[1:]:
        assert evaluation.model.corpus["CIDEr"] > baseline.corpus["CIDEr"]
    json.dumps(evaluation.to_dict())
    # The report's caveat needs the pool each retrieval baseline drew from, saved results included.
    assert evaluation.baseline_pools == {NEAREST: 30} and evaluation.references_file is None
    evaluation.references_file = "corpus_test.csv"
    saved = read_results(write_results(evaluation, tmp_path / "results.json"))
    assert (saved.baseline_pools, saved.references_file) == ({NEAREST: 30}, "corpus_test.csv")


# ----------------------------------------------------------------------------- the command
def test_cli_json_matches_the_api_from_a_hostile_path_with_no_java_left(tmp_path, msvd_test_refs, scorer):
    """`captioner evaluate --json` run where pycocoevalcap used to break: the package installed
    under a path with spaces and non-ASCII, the working directory and data files likewise, the
    C locale, non-ASCII captions. Its numbers must be the API's, and no java may outlive it."""
    import pycocoevalcap

    site = tmp_path / "my site packages" / "données"
    shutil.copytree(next(iter(pycocoevalcap.__path__)), site / "pycocoevalcap",
                    ignore=shutil.ignore_patterns("spice", "__pycache__", "example"))
    data = tmp_path / "évaluation à faire"
    data.mkdir()
    ids = list(msvd_test_refs)[20:45]
    predictions = {i: msvd_test_refs[i][-1] for i in ids} | {"extra": "un café très chaud"}
    references = {i: msvd_test_refs[i][:-1] for i in ids} | {"extra": ["un café très chaud", "a hot coffee"]}
    pred_file = _write(data / "prédictions.json", json.dumps(predictions, ensure_ascii=False))
    ref_file = _write(data / "références.json", json.dumps(references, ensure_ascii=False))
    env = {"PYTHONPATH": f"{site}:{ROOT}", "LC_ALL": "C", "LANG": "C"}
    proc, leftovers = run_cli("evaluate", "--predictions", pred_file.name, "--references", ref_file.name, "--json",
                              cwd=data, env=env)
    assert proc.returncode == 0, proc.stderr
    assert leftovers == []
    result = json.loads(proc.stdout)
    assert list(result) == KEYS + ["n"]
    assert result.pop("n") == {"scored": 26, "missing": 0}
    assert result == scorer.score(predictions, references)


def test_cli_errors_are_one_line(tmp_path, msvd_test_refs):
    refs = _write(tmp_path / "refs.json", json.dumps({"a": ["a dog runs"], "b": ["a cat sleeps"]}))
    bad = _write(tmp_path / "preds.jsonl", '{"path": "a.mp4", "caption": "a dog"}\nnot json\n')
    proc, _ = run_cli("evaluate", "--predictions", str(bad), "--references", str(refs))
    assert_one_line_error(proc, "preds.jsonl:2", "invalid JSON")

    other = _write(tmp_path / "other.json", json.dumps({"x": "a dog"}))
    proc, _ = run_cli("evaluate", "--predictions", str(other), "--references", str(refs), "--metrics", "BLEU")
    assert_one_line_error(proc, "no video id is in both")

    bad_refs = _write(tmp_path / "bad_refs.json", '{"a": ["a dog"')
    good = _write(tmp_path / "good.json", json.dumps({"a": "a dog", "zzz": "a cat"}))
    proc, _ = run_cli("evaluate", "--predictions", str(good), "--references", str(bad_refs), "--metrics", "BLEU")
    assert_one_line_error(proc, "bad_refs.json")

    proc, _ = run_cli("evaluate", "--predictions", str(good), "--references", str(refs), "--metrics", "BLUE")
    assert_one_line_error(proc, "unknown metric", code=2)

    # Java missing: a one-line hint; (dropping METEOR does not help: the PTB tokenizer is Java too).
    proc, _ = run_cli("evaluate", "--predictions", str(good), "--references", str(refs), "--metrics", "BLEU,CIDEr",
                      "--allow-partial", env={"PATH": str(tmp_path)})
    assert_one_line_error(proc, "Java not found", "apt-get install -y default-jre-headless")

    # Predictions for 1 of the 2 reference ids: refused (it used to print a score and exit 0)...
    proc, _ = run_cli("evaluate", "--predictions", str(good), "--references", str(refs), "--metrics", "BLEU-1",
                      "--json")
    assert proc.returncode == 1 and proc.stdout == ""
    assert f"captioner: error: {good}: predictions cover 1 of 2 reference ids (50%), below the 95%" in proc.stderr
    assert "--allow-partial" in proc.stderr
    # ...unless asked for: then the overlap is reported on stderr and scored, with its counts, on stdout.
    proc, leftovers = run_cli("evaluate", "--predictions", str(good), "--references", str(refs),
                              "--metrics", "BLEU-1,CIDEr", "--json", "--allow-partial")
    assert proc.returncode == 0, proc.stderr
    assert "1 predicted ids have no references" in proc.stderr and "1 reference ids have no prediction" in proc.stderr
    result = json.loads(proc.stdout)
    assert set(result) == {"BLEU-1", "CIDEr", "n"} and leftovers == []
    assert result["n"] == {"scored": 1, "missing": 1}
