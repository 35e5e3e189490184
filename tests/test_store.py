"""The feature store: atomic writes, random access, exchange formats."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from captioner import open_features
from captioner.errors import CaptionerError
from captioner.store import MissingFeatures, export_features, import_features

ODD_IDS = ["plain", "with space", "slash/inside", "vidéo 日本", ".hidden", "a%b"]


def _filled(tmp_path, dim=8):
    store = open_features(tmp_path / "store", "a")
    rng = np.random.default_rng(0)
    arrays = {vid: rng.normal(size=(i + 1, dim)).astype(np.float32) for i, vid in enumerate(ODD_IDS)}
    for vid, frames in arrays.items():
        store.put(vid, frames, {"frames": "uniform:4", "id": vid})
    store.set_provenance({"backbone": "test", "feature_dim": dim})
    return store, arrays


def test_round_trip_with_odd_ids(tmp_path):
    _, arrays = _filled(tmp_path)
    store = open_features(tmp_path / "store")
    assert store.ids() == sorted(ODD_IDS)
    for vid, frames in arrays.items():
        assert vid in store
        np.testing.assert_allclose(store.frames(vid), frames)
        np.testing.assert_allclose(store.pooled(vid), frames.mean(0), rtol=1e-6)
        assert store.pooled(vid).shape == (8,) and store.pooled(vid).dtype == np.float32
        assert store.meta(vid)["id"] == vid
    ids, matrix = store.pooled_matrix()
    assert ids == sorted(ODD_IDS) and matrix.shape == (len(ODD_IDS), 8)
    assert store.feature_dim == 8
    same, metas = store.pooled_with_meta(ids)
    np.testing.assert_array_equal(same, matrix)
    assert [m["id"] for m in metas] == ids


def test_missing_id_and_missing_store(tmp_path):
    store, _ = _filled(tmp_path)
    with pytest.raises(MissingFeatures, match="nope"):
        store.pooled("nope")
    with pytest.raises(CaptionerError, match="not found"):
        open_features(tmp_path / "absent")
    (tmp_path / "plain_dir").mkdir()
    with pytest.raises(CaptionerError, match="not a feature store"):
        open_features(tmp_path / "plain_dir")


def test_stale_temporaries_are_invisible_and_cleaned(tmp_path):
    store, _ = _filled(tmp_path)
    stale = store.path / "videos" / ".tmp-deadbeef"
    stale.write_bytes(b"half a file")
    assert open_features(store.path).ids() == sorted(ODD_IDS)
    open_features(store.path, "a")
    assert not stale.exists()


def test_corrupt_file_is_a_clear_error(tmp_path):
    store, _ = _filled(tmp_path)
    (store.path / "videos" / "plain.npz").write_bytes(b"garbage")
    with pytest.raises(CaptionerError, match="corrupt feature file"):
        open_features(store.path).pooled("plain")


def test_refuses_to_mix_extractors(tmp_path):
    store, _ = _filled(tmp_path)
    with pytest.raises(CaptionerError, match="backbone"):
        store.set_provenance({"backbone": "other", "feature_dim": 8})
    store.set_provenance({"backbone": "test", "feature_dim": 8})  # same settings: fine


def test_hdf5_and_npy_round_trip(tmp_path):
    store, arrays = _filled(tmp_path)
    assert export_features(store, tmp_path / "all.h5") == len(ODD_IDS)
    assert export_features(store, tmp_path / "npy") == len(ODD_IDS)
    for source in (tmp_path / "all.h5", tmp_path / "npy"):
        copy = open_features(tmp_path / f"copy_{source.name}", "a")
        assert import_features(source, copy) == len(ODD_IDS)
        assert copy.ids() == sorted(ODD_IDS)
        for vid, frames in arrays.items():
            np.testing.assert_allclose(copy.frames(vid), frames)


def test_import_foreign_layouts(tmp_path):
    # video_features-style: one dataset per id; some tools nest a "features" dataset per group.
    with h5py.File(tmp_path / "foreign.h5", "w") as h5:
        h5["vid1"] = np.ones((5, 4), np.float32)
        h5.create_group("vid2")["features"] = np.zeros((3, 4), np.float32)
        h5["vid3"] = np.full((4,), 2.0, np.float32)  # already pooled
    store = open_features(tmp_path / "s", "a")
    assert import_features(tmp_path / "foreign.h5", store) == 3
    assert store.ids() == ["vid1", "vid2", "vid3"]
    assert store.frames("vid3").shape == (1, 4)
    assert store.provenance["feature_dim"] == 4


def test_import_rejects_mixed_dims_and_bad_files(tmp_path):
    folder = tmp_path / "npy"
    folder.mkdir()
    np.save(folder / "a.npy", np.ones((2, 4)))
    np.save(folder / "b.npy", np.ones((2, 5)))
    with pytest.raises(CaptionerError, match="different feature sizes"):
        import_features(folder, open_features(tmp_path / "s1", "a"))
    (tmp_path / "bad.h5").write_bytes(b"not hdf5")
    with pytest.raises(CaptionerError, match="bad.h5"):
        import_features(tmp_path / "bad.h5", open_features(tmp_path / "s2", "a"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CaptionerError, match="no .npy files"):
        import_features(empty, open_features(tmp_path / "s3", "a"))


def test_meta_is_json(tmp_path):
    store = open_features(tmp_path / "s", "a")
    store.put("x", np.ones((2, 3)), {"timestamps": np.array([0.5, 1.5]), "n": np.int64(3)})
    assert json.dumps(store.meta("x")) == '{"timestamps": [0.5, 1.5], "n": 3}'
