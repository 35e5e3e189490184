"""`captioner extract` on the real clips: batching, resuming, bad inputs, SIGKILL, Ray."""

from __future__ import annotations

import dataclasses
import errno
import io
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
from captioner.extract import ExtractConfig, extract, source_fingerprint

ROOT = Path(__file__).resolve().parent.parent
FAST = ExtractConfig(backbone="efficientnet_lite0", frames="uniform:4", batch_size=8, workers=1, device="cpu")


def _cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "captioner.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


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
def test_missing_inputs_are_each_reported_and_the_rest_extracted(tmp_path, data_dir):
    """A missing path or list entry used to stop the whole batch before any work, naming only the first."""
    clip = next((data_dir / "flickr8k" / "images").glob("*.jpg"))  # a one-frame video: quick to extract
    links = tmp_path / "links"
    links.mkdir()
    for name in ("take1", "take2"):  # links to one clip: one input each, as a glob would give
        (links / f"{name}.jpg").symlink_to(clip)
    listing = tmp_path / "inputs.txt"
    listing.write_text(f"{clip}\ngone.avi\nalso_gone.avi\n")
    log = io.StringIO()
    summary = extract([listing, tmp_path / "nope.mp4", links], tmp_path / "store",
                      dataclasses.replace(FAST, workers=0), progress=False, log=log)
    assert (summary.total, summary.done, summary.failed) == (6, 3, 3)
    assert sorted(open_features(tmp_path / "store").ids()) == sorted([clip.stem, "take1", "take2"])
    lines = log.getvalue().splitlines()
    assert lines[:3] == [f"captioner: {listing}:2: listed file not found: {tmp_path / 'gone.avi'}",
                         f"captioner: {listing}:3: listed file not found: {tmp_path / 'also_gone.avi'}",
                         f"captioner: {tmp_path / 'nope.mp4'}: file not found"]
    failures = [json.loads(line) for line in (tmp_path / "store" / "failures.jsonl").read_text().splitlines()]
    assert [f["path"] for f in failures] == [str(tmp_path / n) for n in ("gone.avi", "also_gone.avi", "nope.mp4")]


def test_an_output_path_that_is_a_file_is_refused_before_any_work(tmp_path, msvd_clips, capsys):
    taken = tmp_path / "features.npz"
    taken.write_bytes(b"not a store")
    for out in (taken, taken / "store"):
        assert cli_main(["extract", str(msvd_clips[0]), "--out", str(out), "--backbone", "efficientnet_lite0"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"captioner: error: {out}: --out") and err.count("\n") == 1, err
    assert taken.read_bytes() == b"not a store"


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
    args = [sys.executable, "-m", "captioner.cli", "extract", *map(str, msvd_clips), "--out", str(store_path),
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


# ----------------------------------------------------------------------------- store reliability
TINY = ExtractConfig(backbone="efficientnet_lite0", frames="uniform:2", batch_size=4, workers=0, device="cpu")


def test_extract_refuses_a_store_another_process_is_writing(tmp_path, msvd_clips, other_writer, capsys):
    store_path, proc = other_writer
    code = cli_main(["extract", str(msvd_clips[0]), "--out", str(store_path), "--backbone", "efficientnet_lite0",
                     "--frames", "uniform:2", "--workers", "0", "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert err.strip().splitlines() == [f"captioner: error: {store_path}: process {proc.pid} is writing this "
                                        "feature store; wait for it to finish or use another --out (one writer "
                                        "at a time keeps a store consistent)"]
    assert open_features(store_path).ids() == ["done"]
    assert (store_path / "videos" / ".tmp-inflight").exists()


def test_a_lost_store_json_does_not_let_other_settings_skip_the_videos(tmp_path, msvd_clips, capsys):
    store = tmp_path / "store"
    extract(msvd_clips[:1], store, TINY, progress=False)
    (store / "store.json").unlink()
    code = cli_main(["extract", str(msvd_clips[0]), "--out", str(store), "--backbone", "efficientnet_lite0",
                     "--frames", "uniform:4", "--workers", "0", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith(f"captioner: error: {store}: store.json is missing and the stored videos were "
                              "extracted with other settings (frames differ")
    # issue 23 #1: the refused run leaves nothing behind, so the same command stays refused
    # instead of replacing the uniform:2 features with uniform:4 ones.
    assert not (store / "store.json").exists()
    entry = store / "videos" / f"{msvd_clips[0].stem}.npz"
    before = entry.read_bytes()
    code = cli_main(["extract", str(msvd_clips[0]), "--out", str(store), "--backbone", "efficientnet_lite0",
                     "--frames", "uniform:4", "--workers", "0", "--quiet"])
    assert code == 2 and not (store / "store.json").exists()
    # The same settings as the videos: the run carries on and store.json is back.
    again = extract(msvd_clips[:1], store, TINY, progress=False)
    assert (again.done, again.skipped) == (0, 1)
    assert open_features(store).provenance["frames"] == "uniform:2"
    assert entry.read_bytes() == before


def test_entries_of_other_settings_are_replaced_only_with_overwrite(tmp_path, msvd_clips, capsys):
    store = tmp_path / "store"
    extract(msvd_clips[:1], store, TINY, progress=False)
    # store.json says uniform:4 while the entry is uniform:2 (what the old bug left behind).
    info = json.loads((store / "store.json").read_text())
    info["provenance"]["frames"] = "uniform:4"
    (store / "store.json").write_text(json.dumps(info))
    entry = store / "videos" / f"{msvd_clips[0].stem}.npz"
    written = entry.stat().st_mtime_ns
    args = ["extract", str(msvd_clips[0]), "--out", str(store), "--backbone", "efficientnet_lite0",
            "--frames", "uniform:4", "--workers", "0", "--quiet"]
    capsys.readouterr()
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"captioner: error: {entry}: extracted with other settings than store.json records (frames "
                   "differ); pass --overwrite to extract it again with the settings asked for, or use another --out"]
    assert entry.stat().st_mtime_ns == written
    assert cli_main(args + ["--overwrite"]) == 0
    assert open_features(store).frames(msvd_clips[0].stem).shape == (4, 1280)
    # Other settings in store.json itself: refused, then replaced with --overwrite.
    args[args.index("uniform:4")] = "uniform:3"
    assert cli_main(args) == 2
    assert open_features(store).provenance["frames"] == "uniform:4"
    assert cli_main(args + ["--overwrite"]) == 0
    assert open_features(store).frames(msvd_clips[0].stem).shape == (3, 1280)


def test_fingerprint_tells_apart_files_of_equal_size_and_mtime(tmp_path):
    span = 1 << 20
    first, second = tmp_path / "a.mp4", tmp_path / "b.mp4"
    body = np.random.default_rng(0).integers(0, 256, 3 * span, dtype=np.uint8).tobytes()
    first.write_bytes(body)
    second.write_bytes(body[:-1] + bytes([body[-1] ^ 1]))  # differs in the last byte only
    os.utime(second, ns=(first.stat().st_atime_ns, first.stat().st_mtime_ns))
    a, b = source_fingerprint(first), source_fingerprint(second)
    assert (a["size"], a["mtime_ns"]) == (b["size"], b["mtime_ns"])
    assert a != b
    assert source_fingerprint(first) == a


@pytest.mark.parametrize("mtime_ns", [time.time_ns() + 10**9, 10**18], ids=["newer", "older"])
def test_a_replaced_file_is_extracted_again(tmp_path, msvd_clips, mtime_ns):
    """Same name, other content: the re-run must not keep the old file's features, whether the new
    file's mtime is newer (a coarse file-system clock must not hide it) or older (`cp -p` of
    another clip over the input: 2001 is older than any extraction)."""
    import shutil

    video = tmp_path / "in" / "clip.avi"
    video.parent.mkdir()
    shutil.copyfile(msvd_clips[0], video)
    extract([video], tmp_path / "store", TINY, progress=False)
    before = open_features(tmp_path / "store").pooled("clip")
    again = extract([video], tmp_path / "store", TINY, progress=False)
    assert (again.done, again.skipped, again.changed) == (0, 1, 0)

    shutil.copy2(msvd_clips[1], video)
    os.utime(video, ns=(mtime_ns,) * 2)
    replaced = extract([video], tmp_path / "store", TINY, progress=False)
    assert (replaced.done, replaced.skipped, replaced.changed) == (1, 0, 1)
    assert "1 changed since their last extraction" in replaced.line()
    extract([msvd_clips[1]], tmp_path / "reference", TINY, progress=False)
    store = open_features(tmp_path / "store")
    np.testing.assert_allclose(store.pooled("clip"), open_features(tmp_path / "reference").pooled(msvd_clips[1].stem),
                               rtol=1e-4, atol=1e-5)
    assert np.abs(store.pooled("clip") - before).max() > 1e-2
    assert store.meta("clip")["source"] == source_fingerprint(video)
    assert extract([video], tmp_path / "store", TINY, progress=False).skipped == 1


def test_a_rerun_redoes_corrupt_entries(tmp_path, msvd_clips, capsys):
    clips = msvd_clips[:2]
    extract(clips, tmp_path / "store", TINY, progress=False)
    entry = tmp_path / "store" / "videos" / f"{clips[0].stem}.npz"
    entry.write_bytes(entry.read_bytes()[:1000])
    capsys.readouterr()
    again = extract(clips, tmp_path / "store", TINY, progress=False)
    assert (again.done, again.skipped, again.redone, again.failed) == (1, 1, 1, 0)
    err = capsys.readouterr().err
    assert f"captioner: {entry}: corrupt feature file" in err and "extracting it again" in err
    assert "1 redone: stored features were corrupt or of other settings" in again.line()
    store = open_features(tmp_path / "store")
    assert store.frames(clips[0].stem).shape == (2, 1280)


def test_disk_full_during_extract_is_one_line_and_keeps_what_was_written(tmp_path, msvd_clips, monkeypatch,
                                                                         capsys):
    store_path = tmp_path / "store"
    real_fsync = os.fsync
    videos_written = []

    def fills_up_after_one_video(fd):
        if videos_written:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)
        if os.readlink(f"/proc/self/fd/{fd}").startswith(str(store_path / "videos")):
            videos_written.append(fd)

    monkeypatch.setattr(os, "fsync", fills_up_after_one_video)
    clips = msvd_clips[:3]
    code = cli_main(["extract", *map(str, clips), "--out", str(store_path), "--backbone", "efficientnet_lite0",
                     "--frames", "uniform:2", "--batch-size", "2", "--workers", "0", "--quiet"])
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert err.strip().splitlines() == [
        f"captioner: error: {store_path}: cannot write videos/{clips[1].stem}.npz: No space left on device; "
        "everything written before is intact (free space and re-run to continue)"]
    store = open_features(store_path)
    assert store.ids() == [clips[0].stem] and store.frames(clips[0].stem).shape == (2, 1280)
    assert not [name for name in os.listdir(store_path / "videos") if name.startswith(".tmp-")]


def _children(pid: int) -> list[int]:
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # an orphan nobody reaps yet is dead all the same


def _ignores_sigint(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status").read_text()
    ignored = int(next(line for line in status.splitlines() if line.startswith("SigIgn:")).split()[1], 16)
    return bool(ignored >> (signal.SIGINT - 1) & 1)


def _own_session_with_default_ctrl_c() -> None:
    os.setsid()
    # A test run started in the background inherits SIGINT ignored, and would pass that on.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _extract_with_a_decoding_worker(tmp_path, msvd_clips) -> tuple[subprocess.Popen, list[int]]:
    """`captioner extract --workers 1` started in its own session, once the worker decodes."""
    store_path = tmp_path / "store"
    proc = subprocess.Popen([sys.executable, "-m", "captioner.cli", "extract", *map(str, msvd_clips),
                             "--out", str(store_path), "--backbone", "efficientnet_lite0", "--frames", "uniform:2",
                             "--batch-size", "2", "--workers", "1", "--quiet"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_own_session_with_default_ctrl_c)
    deadline = time.monotonic() + 300
    videos = store_path / "videos"
    while time.monotonic() < deadline and proc.poll() is None:
        if videos.is_dir() and any(f.endswith(".npz") for f in os.listdir(videos)):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "extraction ended before the test could interrupt it: " + proc.stderr.read()
    children = _children(proc.pid)
    assert children, "no decoding worker"
    return proc, children


@pytest.mark.slow
def test_sigkill_of_extract_takes_its_workers_along(tmp_path, msvd_clips):
    proc, children = _extract_with_a_decoding_worker(tmp_path, msvd_clips)
    proc.send_signal(signal.SIGKILL)  # the parent only, as an OOM killer or `kill -9 PID` does
    try:
        _, err = proc.communicate(timeout=30)  # stderr closes once every process holding it is gone
    finally:
        for pid in children:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while any(map(_alive, children)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(map(_alive, children))
    assert "Traceback" not in err


@pytest.mark.slow
def test_ctrl_c_of_extract_prints_one_line(tmp_path, msvd_clips):
    proc, children = _extract_with_a_decoding_worker(tmp_path, msvd_clips)
    workers = [pid for pid in children if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    # A worker waiting for work when Ctrl-C came printed a KeyboardInterrupt traceback; whether
    # one waits at that moment is luck, so check the cause: workers must ignore SIGINT.
    assert workers and all(_ignores_sigint(pid) for pid in workers)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal does: the whole foreground group
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        os.killpg(proc.pid, signal.SIGKILL) if proc.poll() is None else None
    assert proc.returncode == 130
    assert err.strip().splitlines() == ["captioner: interrupted"]


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


def test_a_video_whose_features_are_not_finite_fails_alone(tmp_path, msvd_clips, monkeypatch, capsys):
    """issue 23 #2 at extraction: a backbone overflowing (low precision) must not store NaN."""
    import captioner.extract as extract_module

    clips = msvd_clips[:2]
    real_add = extract_module._Batcher.add

    def overflowing(self, video_id, frames, still=False):
        finished = real_add(self, video_id, frames, still)
        return [(vid, np.full_like(f, np.inf) if vid == clips[0].stem else f) for vid, f in finished]

    monkeypatch.setattr(extract_module._Batcher, "add", overflowing)
    summary = extract(clips, tmp_path / "store", dataclasses.replace(TINY, batch_size=2), progress=False)
    assert (summary.done, summary.failed) == (1, 1)
    reason = "features hold NaN or infinite values (2560 of 2560); refusing them"
    assert summary.failures == [{"path": str(clips[0]), "id": clips[0].stem, "reason": reason}]
    assert f"captioner: {clips[0]}: {reason}" in capsys.readouterr().err
    assert open_features(tmp_path / "store").ids() == [clips[1].stem]
