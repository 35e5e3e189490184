"""The feature store: atomic writes, random access, exchange formats."""

from __future__ import annotations

import errno
import json
import os
import signal

import h5py
import numpy as np
import pytest

from captioner import open_features
from captioner.errors import CaptionerError, UsageError
from captioner.store import MissingFeatures, StoreLocked, export_features, import_features

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


def test_stale_temporaries_are_invisible_and_cleaned_by_the_next_writer(tmp_path):
    store, _ = _filled(tmp_path)
    store.close()
    stale = [store.path / "videos" / ".tmp-deadbeef", store.path / ".tmp-cafe"]
    for path in stale:
        path.write_bytes(b"half a file")
    assert open_features(store.path).ids() == sorted(ODD_IDS)
    assert all(path.exists() for path in stale)  # readers never delete
    with open_features(store.path, "a"):
        assert not any(path.exists() for path in stale)


def test_a_second_writer_is_refused_and_readers_leave_the_writers_files_alone(other_writer):
    store_path, proc = other_writer
    in_flight = store_path / "videos" / ".tmp-inflight"
    for _ in range(3):  # the loop of opens that used to delete a running writer's file
        assert open_features(store_path).ids() == ["done"]
        with pytest.raises(StoreLocked, match=f"process {proc.pid} is writing this feature store"):
            open_features(store_path, "a")
    assert in_flight.exists()
    assert open_features(store_path).pooled("done").tolist() == [1.0, 2.0]


def test_a_killed_writer_leaves_no_stale_lock(other_writer):
    store_path, proc = other_writer
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with open_features(store_path, "a") as store:
        assert store.ids() == ["done"]
        assert not (store_path / "videos" / ".tmp-inflight").exists()
        store.put("more", [[0.0, 1.0]])
    with open_features(store_path, "a"):  # closing released it
        pass


def test_writers_in_one_process_share_the_lock(tmp_path):
    # A pipeline stage prunes a store, then the extraction it calls opens it again.
    outer = open_features(tmp_path / "s", "a")
    inner = open_features(tmp_path / "s", "a")
    inner.put("x", np.ones((1, 2)))
    inner.close()
    outer.put("y", np.ones((1, 2)))
    assert open_features(tmp_path / "s").ids() == ["x", "y"]


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


def test_an_exported_extraction_imports_again(tmp_path):
    # Its meta names the backbone; the imported store's provenance names the file instead.
    store = open_features(tmp_path / "s", "a")
    store.set_provenance({"backbone": "lite0", "feature_dim": 4})
    store.put("x", np.ones((2, 4)), {"backbone": "lite0", "frames": "uniform:2"})
    export_features(store, tmp_path / "x.h5")
    copy = open_features(tmp_path / "copy", "a")
    assert import_features(tmp_path / "x.h5", copy) == 1
    assert copy.provenance == {"backbone": "imported:x.h5", "feature_dim": 4}
    assert copy.meta("x")["backbone"] == "lite0"


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


def test_entries_carry_their_settings_and_reads_check_them(tmp_path):
    # What two racing writers used to leave: store.json says one extractor, a video another.
    store = open_features(tmp_path / "s", "a")
    store.set_provenance({"backbone": "lite1", "frames": "uniform:8", "feature_dim": 2})
    store.put("x", np.ones((3, 2)))
    info = json.loads((tmp_path / "s" / "store.json").read_text())
    info["provenance"]["backbone"] = "lite0"
    (tmp_path / "s" / "store.json").write_text(json.dumps(info))
    reader = open_features(tmp_path / "s")
    with pytest.raises(CaptionerError, match=r"x\.npz: features extracted with other settings .*\(backbone differ\)"):
        reader.pooled("x")
    with pytest.raises(CaptionerError, match=r"other settings .*\(backbone differ\)"):
        reader.verified_meta("x")


def test_entries_record_a_large_setting_by_its_digest_and_still_check_it(tmp_path):
    members = [{"name": "lite2", "labels": [f"class {i}" for i in range(1000)]}]
    store = open_features(tmp_path / "s", "a")
    store.set_provenance({"backbone": "concepts", "members": members, "feature_dim": 2})
    store.put("x", np.ones((3, 2)))
    assert (store.path / "videos" / "x.npz").stat().st_size < 4096  # the class list is 14 KB
    assert open_features(tmp_path / "s").verified_meta("x") == {}
    info = json.loads((tmp_path / "s" / "store.json").read_text())
    info["provenance"]["members"][0]["labels"][999] = "another class"
    (tmp_path / "s" / "store.json").write_text(json.dumps(info))
    with pytest.raises(CaptionerError, match=r"other settings .*\(members differ\)"):
        open_features(tmp_path / "s").pooled("x")


def test_verified_meta_finds_truncated_and_inconsistent_entries(tmp_path):
    store, _ = _filled(tmp_path)
    assert store.verified_meta("plain") == {"frames": "uniform:4", "id": "plain"}
    with pytest.raises(MissingFeatures):
        store.verified_meta("absent")
    entry = store.path / "videos" / "plain.npz"
    entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])
    with pytest.raises(CaptionerError, match=r"plain\.npz: corrupt feature file"):
        store.verified_meta("plain")
    store.put("wide", np.ones((2, 16)))  # store.json says feature_dim 8
    with pytest.raises(CaptionerError, match="feature_dim differ"):
        store.verified_meta("wide")


def test_a_lost_store_json_does_not_relabel_the_videos(tmp_path):
    store = open_features(tmp_path / "s", "a")
    settings = {"backbone": "lite0", "frames": "uniform:8", "feature_dim": 2}
    store.set_provenance(settings)
    store.put("x", np.ones((3, 2)), {**settings, "path": "x.avi"})
    store.close()
    (tmp_path / "s" / "store.json").unlink()
    with open_features(tmp_path / "s", "a") as store:
        with pytest.raises(UsageError, match=r"store\.json is missing .*\(backbone, frames differ"):
            store.set_provenance({"backbone": "lite2", "frames": "uniform:16", "feature_dim": 2})
        store.set_provenance(settings)  # the same settings: the store carries on
    assert open_features(tmp_path / "s").provenance == settings


def test_disk_full_is_one_line_naming_the_store_and_loses_nothing(tmp_path, monkeypatch):
    store, arrays = _filled(tmp_path)

    def full_disk(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(CaptionerError) as caught:
        store.put("one_more", np.ones((2, 8)))
    assert str(caught.value) == (f"{store.path}: cannot write videos/one_more.npz: No space left on device; "
                                 "everything written before is intact (free space and re-run to continue)")
    monkeypatch.undo()
    assert not [name for name in os.listdir(store.path / "videos") if name.startswith(".tmp-")]
    reader = open_features(store.path)
    assert reader.ids() == sorted(ODD_IDS)
    for vid, frames in arrays.items():
        np.testing.assert_allclose(reader.frames(vid), frames)


def test_a_refused_settings_check_leaves_no_store_json_and_stays_refused(tmp_path):
    """issue 23 #1: the refused run used to write store.json ("provenance": null) before the check,
    so the same command run again found no videos to compare and relabelled the store."""
    settings = {"backbone": "lite0", "frames": "uniform:4", "feature_dim": 2}
    with open_features(tmp_path / "s", "a") as store:
        store.set_provenance(settings)
        store.put("x", np.ones((3, 2)), {**settings, "path": "x.avi"})
    (tmp_path / "s" / "store.json").unlink()
    other = {**settings, "frames": "uniform:8"}
    for _ in range(2):
        with open_features(tmp_path / "s", "a") as store:
            with pytest.raises(UsageError, match=r"store\.json is missing .*\(frames differ"):
                store.set_provenance(other)
        assert not (tmp_path / "s" / "store.json").exists()
    # A store.json that says nothing (written by the old code) must not let other settings in either.
    (tmp_path / "s" / "store.json").write_text(json.dumps({"format": "captioner-features", "version": 1,
                                                          "provenance": None}))
    with open_features(tmp_path / "s", "a") as store:
        with pytest.raises(UsageError, match=r"\(frames differ"):
            store.set_provenance(other)
    assert json.loads((tmp_path / "s" / "store.json").read_text())["provenance"] is None
    assert open_features(tmp_path / "s").verified_meta("x", settings)["frames"] == "uniform:4"


def test_replace_settings_deletes_the_entries_of_other_settings(tmp_path):
    settings = {"backbone": "lite0", "frames": "uniform:4", "feature_dim": 2}
    with open_features(tmp_path / "s", "a") as store:
        store.set_provenance(settings)
        store.put("x", np.ones((3, 2)))
        other = {**settings, "frames": "uniform:8"}
        store.set_provenance(other, replace=True)
        assert store.ids() == [] and store.provenance == other


def test_a_store_opened_for_writing_writes_nothing_until_it_is_written(tmp_path):
    with open_features(tmp_path / "s", "a"):
        pass
    assert not (tmp_path / "s" / "store.json").exists()
    with open_features(tmp_path / "s", "a") as store:
        store.put("x", np.ones((1, 2)))  # an entry without settings: the store is readable at once
    assert open_features(tmp_path / "s").ids() == ["x"]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_import_refuses_non_finite_features_and_imports_nothing(tmp_path, bad):
    """issue 23 #2: NaN or inf features trained a NaN model."""
    folder = tmp_path / "npy"
    folder.mkdir()
    np.save(folder / "a.npy", np.ones((2, 4), np.float32))
    poisoned = np.ones((2, 4), np.float32)
    poisoned[1, 2] = bad
    np.save(folder / "b.npy", poisoned)
    with pytest.raises(CaptionerError) as caught:
        import_features(folder, open_features(tmp_path / "s", "a"))
    assert str(caught.value) == f"{folder / 'b.npy'}: features hold NaN or infinite values (1 of 8); refusing them"
    assert not (tmp_path / "s" / "store.json").exists() and not list((tmp_path / "s" / "videos").iterdir())
    with h5py.File(tmp_path / "f.h5", "w") as h5:
        h5["ok"] = np.ones((2, 4), np.float32)
        h5["bad"] = np.full((2, 4), bad, np.float32)
    with pytest.raises(CaptionerError, match=r"f\.h5: video 'bad': features hold NaN or infinite values \(8 of 8\)"):
        import_features(tmp_path / "f.h5", open_features(tmp_path / "s2", "a"))
    assert not list((tmp_path / "s2" / "videos").iterdir())
    with pytest.raises(CaptionerError, match="NaN or infinite"):
        open_features(tmp_path / "s3", "a").put("x", poisoned)


def test_import_into_a_store_of_other_settings_changes_nothing(tmp_path):
    store, arrays = _filled(tmp_path)
    store.close()
    folder = tmp_path / "npy"
    folder.mkdir()
    np.save(folder / "plain.npy", np.zeros((2, 8), np.float32))
    with pytest.raises(UsageError, match="other settings"):
        import_features(folder, open_features(store.path, "a"))
    np.testing.assert_allclose(open_features(store.path).frames("plain"), arrays["plain"])


def test_a_refused_import_creates_no_store(tmp_path, capsys):
    """"Nothing is created before the checks pass": `features import` used to open (create) the
    store before reading the source."""
    from captioner.cli import main as cli_main

    folder = tmp_path / "npy"
    folder.mkdir()
    np.save(folder / "a.npy", np.full((2, 4), np.inf, np.float32))
    assert cli_main(["features", "import", str(folder), "--out", str(tmp_path / "s")]) == 1
    assert cli_main(["features", "import", str(tmp_path / "absent"), "--out", str(tmp_path / "s")]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"captioner: error: {folder / 'a.npy'}: features hold NaN or infinite values (8 of 8); refusing them",
        f"captioner: error: {tmp_path / 'absent'}: no such file or folder"]
    assert not (tmp_path / "s").exists()
    np.save(folder / "a.npy", np.ones((2, 4), np.float32))
    assert cli_main(["features", "import", str(folder), "--out", str(tmp_path / "s")]) == 0
    assert open_features(tmp_path / "s").ids() == ["a"]


def test_a_full_disk_during_export_or_any_command_is_one_line(tmp_path, monkeypatch, capsys):
    """The class of issue 23 #6: `features export` (and any write no writer catches) on a full disk."""
    from captioner.cli import main as cli_main

    store, _ = _filled(tmp_path)
    store.close()

    def full_disk(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full_disk)
    assert cli_main(["features", "export", str(store.path), str(tmp_path / "out.h5")]) == 1
    monkeypatch.undo()
    assert capsys.readouterr().err.splitlines() == [
        f"captioner: error: {tmp_path / 'out.h5'}: cannot write: No space left on device"]
    assert not (tmp_path / "out.h5").exists() and not list(tmp_path.glob(".tmp-*"))
