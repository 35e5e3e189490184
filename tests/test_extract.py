"""`captioner extract` on the real clips: batching, resuming, bad inputs, SIGKILL, Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import media
from captioner import open_features
from captioner.cli import main as cli_main
from captioner.extract import ExtractConfig, extract, video_ids

ROOT = Path(__file__).resolve().parent.parent
FAST = ExtractConfig(backbone="efficientnet_lite0", frames="uniform:4", batch_size=8, workers=1, device="cpu")


def _cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "captioner.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_video_ids_use_stems_and_disambiguate_collisions():
    paths = [Path("/a/x.mp4"), Path("/b/x.avi"), Path("/c/y.mp4")]
    assert video_ids(paths) == {Path("/a/x.mp4"): "a/x", Path("/b/x.avi"): "b/x", Path("/c/y.mp4"): "y"}


@pytest.mark.slow
def test_extract_real_clips_then_resume(tmp_path, msvd_clips):
    clips = msvd_clips[:5]
    summary = extract(clips, tmp_path / "store", FAST, progress=False)
    assert (summary.done, summary.skipped, summary.failed) == (5, 0, 0)
    store = open_features(tmp_path / "store")
    assert store.ids() == sorted(c.stem for c in clips)
    assert store.provenance["backbone"] == "efficientnet_lite0"
    assert store.provenance["frames"] == "uniform:4"
    for clip in clips:
        frames = store.frames(clip.stem)
        assert frames.shape == (4, 1280) and np.isfinite(frames).all()
        np.testing.assert_allclose(store.pooled(clip.stem), frames.mean(0), rtol=1e-5, atol=1e-6)
        meta = store.meta(clip.stem)
        assert len(meta["frame_indices"]) == 4 and len(meta["timestamps"]) == 4
        assert meta["duration"] > 1 and meta["fps"] > 1 and meta["weights_sha256"]
    # Different clips give different features (not a constant pipeline).
    _, matrix = store.pooled_matrix()
    assert np.linalg.matrix_rank(matrix) == 5

    again = extract(clips, tmp_path / "store", FAST, progress=False)
    assert (again.done, again.skipped, again.failed) == (0, 5, 0)


def test_a_replaced_file_is_extracted_again(tmp_path, msvd_clips):
    """Same name, other content: the re-run must not keep the old file's features."""
    import shutil

    video = tmp_path / "in" / "clip.avi"
    video.parent.mkdir()
    shutil.copyfile(msvd_clips[0], video)
    extract([video], tmp_path / "store", FAST, progress=False)
    before = open_features(tmp_path / "store").pooled("clip")
    again = extract([video], tmp_path / "store", FAST, progress=False)
    assert (again.done, again.skipped, again.changed) == (0, 1, 0)

    shutil.copyfile(msvd_clips[1], video)
    os.utime(video, ns=(time.time_ns() + 10**9,) * 2)  # a coarse file-system clock must not hide it
    replaced = extract([video], tmp_path / "store", FAST, progress=False)
    assert (replaced.done, replaced.skipped, replaced.changed) == (1, 0, 1)
    assert "1 changed since their last extraction" in replaced.line()
    extract([msvd_clips[1]], tmp_path / "reference", FAST, progress=False)
    after = open_features(tmp_path / "store").pooled("clip")
    np.testing.assert_allclose(after, open_features(tmp_path / "reference").pooled(msvd_clips[1].stem),
                               rtol=1e-4, atol=1e-5)
    assert np.abs(after - before).max() > 1e-2


def test_mirror_extracts_the_left_right_flipped_frames(tmp_path, data_dir):
    """--mirror of a photo gives the features of its flipped copy, and says so in the provenance."""
    import cv2

    photo = cv2.imread(str(sorted((data_dir / "flickr8k" / "images").glob("*.jpg"))[0]))
    cv2.imwrite(str(tmp_path / "photo.png"), photo)
    (tmp_path / "flipped").mkdir()
    cv2.imwrite(str(tmp_path / "flipped" / "photo.png"), photo[:, ::-1])
    assert cli_main(["extract", str(tmp_path / "photo.png"), "--out", str(tmp_path / "mirror"), "--mirror",
                     "--backbone", "efficientnet_lite0", "--quiet"]) == 0
    assert cli_main(["extract", str(tmp_path / "flipped" / "photo.png"), "--out", str(tmp_path / "plain"),
                     "--backbone", "efficientnet_lite0", "--quiet"]) == 0
    mirror, plain = open_features(tmp_path / "mirror"), open_features(tmp_path / "plain")
    assert mirror.provenance["mirror"] is True and "mirror" not in plain.provenance
    np.testing.assert_allclose(mirror.pooled("photo"), plain.pooled("photo"), rtol=1e-4, atol=1e-5)
    assert cli_main(["extract", str(tmp_path / "photo.png"), "--out", str(tmp_path / "unflipped"),
                     "--backbone", "efficientnet_lite0", "--quiet"]) == 0
    unflipped = open_features(tmp_path / "unflipped")
    assert np.abs(unflipped.pooled("photo") - plain.pooled("photo")).max() > 1e-2


@pytest.mark.slow
def test_batching_does_not_change_features(tmp_path, msvd_clips):
    """Frames of several videos share a batch; each video's features must be its own."""
    clips = msvd_clips[:3]
    small = ExtractConfig(**{**FAST.__dict__, "batch_size": 3, "workers": 0})
    large = ExtractConfig(**{**FAST.__dict__, "batch_size": 12})
    extract(clips, tmp_path / "a", small, progress=False)
    extract(clips, tmp_path / "b", large, progress=False)
    a, b = open_features(tmp_path / "a"), open_features(tmp_path / "b")
    for clip in clips:
        np.testing.assert_allclose(a.frames(clip.stem), b.frames(clip.stem), rtol=1e-3, atol=1e-4)


@pytest.mark.slow
def test_bad_inputs_fail_one_by_one_and_the_batch_goes_on(tmp_path, msvd_clips):
    truncated = media.truncated_clip(tmp_path, msvd_clips[0])
    bad = {
        media.empty_file(tmp_path): "empty",
        media.random_bytes_mp4(tmp_path): None,
        truncated: None,
        media.audio_only(tmp_path): "video",
    }
    odd = [media.one_frame_video(tmp_path), media.video_4k(tmp_path), media.portrait_video(tmp_path),
           media.vfr_video(tmp_path), media.path_with_spaces_and_unicode(tmp_path, msvd_clips[1])]
    listing = tmp_path / "inputs.txt"
    listing.write_text("\n".join(str(p) for p in [*bad, *odd, msvd_clips[2]]) + "\n", encoding="utf-8")

    result = _cli("extract", str(listing), "--out", str(tmp_path / "store"), "--backbone", "efficientnet_lite0",
                  "--frames", "uniform:4", "--workers", "1", "--quiet")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("captioner: ")]
    store = open_features(tmp_path / "store")
    failures = [json.loads(line) for line in (tmp_path / "store" / "failures.jsonl").read_text().splitlines()]
    failed_paths = {f["path"] for f in failures}
    truncated_ok = str(truncated) not in failed_paths
    # A truncated clip may still decode its intact frames; everything else bad must fail.
    assert len(failures) == len(bad) - truncated_ok
    for path, reason_word in bad.items():
        if str(path) in failed_paths:
            line = next(line for line in error_lines if str(path) in line)
            if reason_word:
                assert reason_word in line.lower()
    assert len(store) == len(odd) + 1 + truncated_ok
    for path in odd:
        assert path.stem in store, f"{path} should have been extracted"


@pytest.mark.slow
def test_usage_errors_exit_2(tmp_path, msvd_clips, capsys):
    assert cli_main(["extract", str(msvd_clips[0]), "--out", str(tmp_path / "s"), "--frames", "every:3"]) == 2
    assert cli_main(["extract", str(tmp_path / "missing.mp4"), "--out", str(tmp_path / "s")]) != 0
    err = capsys.readouterr().err
    assert "missing.mp4" in err and "Traceback" not in err


@pytest.mark.slow
def test_store_of_other_settings_is_a_usage_error(tmp_path, data_dir, capsys):
    photo = next((data_dir / "flickr8k" / "images").glob("*.jpg"))
    store = tmp_path / "s"
    assert cli_main(["extract", str(photo), "--out", str(store), "--backbone", "efficientnet_lite0"]) == 0
    capsys.readouterr()
    assert cli_main(["extract", str(photo), "--out", str(store), "--backbone", "efficientnet_lite1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"captioner: error: {store}: store already holds features extracted with other settings")
    assert len(open_features(store)) == 1  # what was extracted stays


@pytest.mark.slow
def test_sigkill_mid_run_keeps_the_store_intact_and_rerun_completes(tmp_path, msvd_clips):
    store_path = tmp_path / "store"
    args = [sys.executable, "-m", "captioner.cli", "extract", str(msvd_clips[0].parent), "--out", str(store_path),
            "--backbone", "efficientnet_lite0", "--frames", "uniform:8", "--batch-size", "8", "--workers", "1",
            "--quiet"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    videos = store_path / "videos"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        done = len([f for f in os.listdir(videos) if f.endswith(".npz")]) if videos.is_dir() else 0
        if done >= 3 or proc.poll() is not None:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "extraction finished before it could be killed: " + proc.stderr.read().decode()
    os.killpg(proc.pid, signal.SIGKILL)  # the whole group: decoding workers die too
    proc.wait()

    survived = open_features(store_path)
    kept = survived.ids()
    assert 3 <= len(kept) < 18
    for vid in kept:  # every stored video is complete and readable
        assert survived.frames(vid).shape == (8, 1280)
        assert survived.meta(vid)["frames"] == "uniform:8"

    result = _cli(*args[3:])
    assert result.returncode == 0, result.stderr
    assert f"skipped {len(kept)}" in result.stderr
    assert sorted(open_features(store_path).ids()) == sorted(c.stem for c in msvd_clips)


@pytest.mark.slow
def test_extract_on_a_local_ray_cluster(tmp_path, msvd_clips, ray_head):
    address, _ = ray_head
    clips = msvd_clips[:4]
    bad = media.random_bytes_mp4(tmp_path)
    result = _cli("extract", *map(str, clips), str(bad), "--out", str(tmp_path / "store"),
                  "--backbone", "efficientnet_lite0", "--frames", "uniform:4", "--ray-address", address,
                  "--quiet")
    assert result.returncode == 1, result.stderr
    assert str(bad) in result.stderr
    store = open_features(tmp_path / "store")
    assert store.ids() == sorted(c.stem for c in clips)
    local = tmp_path / "local"
    extract(clips[:1], local, FAST, progress=False)
    np.testing.assert_allclose(store.frames(clips[0].stem), open_features(local).frames(clips[0].stem),
                               rtol=1e-3, atol=1e-4)
    # Ray workers mirror as the local path does.
    result = _cli("extract", str(clips[0]), "--out", str(tmp_path / "mirror_ray"), "--mirror", "--backbone",
                  "efficientnet_lite0", "--frames", "uniform:4", "--ray-address", address, "--quiet")
    assert result.returncode == 0, result.stderr
    extract(clips[:1], tmp_path / "mirror_local", ExtractConfig(**{**FAST.__dict__, "mirror": True}), progress=False)
    ray_store, local_store = open_features(tmp_path / "mirror_ray"), open_features(tmp_path / "mirror_local")
    assert ray_store.provenance == local_store.provenance and ray_store.provenance["mirror"] is True
    np.testing.assert_allclose(ray_store.frames(clips[0].stem), local_store.frames(clips[0].stem),
                               rtol=1e-3, atol=1e-4)


def test_runtimes_share_a_store_and_each_video_says_which_made_it(tmp_path, msvd_clips):
    clips = msvd_clips[:2]
    for clip, runtime in zip(clips, ("openvino", "torch")):
        config = ExtractConfig(**{**FAST.__dict__, "runtime": runtime, "precision": "fp32"})
        assert extract([clip], tmp_path / "store", config, progress=False).done == 1
    store = open_features(tmp_path / "store")
    assert store.provenance["runtimes"] == ["openvino", "torch"] and store.provenance["precision"] == "fp32"
    assert [(store.meta(c.stem)["runtime"], store.meta(c.stem)["precision"]) for c in clips] == \
           [("openvino", "fp32"), ("torch", "fp32")]
    torch_config = ExtractConfig(**{**FAST.__dict__, "runtime": "torch", "precision": "fp32"})
    extract(clips[:1], tmp_path / "torch", torch_config, progress=False)
    ov_frames, torch_frames = store.frames(clips[0].stem), open_features(tmp_path / "torch").frames(clips[0].stem)
    cosines = (ov_frames * torch_frames).sum(1) / np.linalg.norm(ov_frames, axis=1) / np.linalg.norm(torch_frames, axis=1)
    assert cosines.min() >= 0.9999
