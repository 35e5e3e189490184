"""Shared fixtures: the real data in ../shared/data and features extracted from it once."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("CAPTIONER_DATA", ROOT.parent / "shared" / "data"))
MSVD_CLIPS = DATA / "msvd" / "clips"

# What `../shared/data/README.md` says the clips folder holds, per MSVD split.
MSVD_SPLIT_SIZES = {"train": 48, "val": 4, "test": 9}
# Tests run on a fixed subset so CI stays fast as the shared data grows: these 9 train-split
# clips (the ones the folder held first) and the 9 test-split clips.
MSVD_TRAIN_SUBSET = ["vid98", "vid114", "vid184", "vid311", "vid710", "vid836", "vid930", "vid950", "vid1025"]
MSVD_TEST_CLIPS = ["vid1429", "vid1509", "vid1563", "vid1712", "vid1721", "vid1766", "vid1817", "vid1847",
                   "vid1876"]


def msvd_vid_numbers() -> dict[str, str]:
    """clip id -> vidN, from the corpus's youtube_mapping.txt (CRLF line endings)."""
    lines = (DATA / "msvd" / "youtube_mapping.txt").read_text().split()
    return dict(zip(lines[0::2], lines[1::2]))


def msvd_split(vid: str) -> str:
    number = int(vid.removeprefix("vid"))
    return "train" if number <= 1200 else "val" if number <= 1300 else "test"


@pytest.fixture(scope="session", autouse=True)
def _private_cache_home(tmp_path_factory):
    """Caches (weight checksums, converted OpenVINO models) go to a temporary home, never the
    user's: subprocesses inherit it, and conversions are shared within one test session."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg_cache")))
        yield


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.fail(f"real data not found at {DATA} (set CAPTIONER_DATA)")
    return DATA


@pytest.fixture(scope="session")
def all_msvd_clips(data_dir) -> dict[str, list[Path]]:
    """Every shared MSVD clip, by split, checked against the data README's counts."""
    vids = msvd_vid_numbers()
    by_split = {name: [] for name in MSVD_SPLIT_SIZES}
    for clip in sorted(MSVD_CLIPS.glob("*.avi")):
        by_split[msvd_split(vids[clip.stem])].append(clip)
    sizes = {name: len(clips) for name, clips in by_split.items()}
    assert sizes == MSVD_SPLIT_SIZES, f"{MSVD_CLIPS}: clips per split {sizes}, expected {MSVD_SPLIT_SIZES}"
    return by_split


@pytest.fixture(scope="session")
def msvd_clips(all_msvd_clips) -> list[Path]:
    """The 18-clip test subset (9 train-split, 9 test-split), sorted by file name."""
    vids = msvd_vid_numbers()
    wanted = set(MSVD_TRAIN_SUBSET + MSVD_TEST_CLIPS)
    clips = sorted(c for split in all_msvd_clips.values() for c in split if vids[c.stem] in wanted)
    assert len(clips) == len(wanted), f"{MSVD_CLIPS}: some of the test subset's clips are missing"
    return clips


@pytest.fixture(scope="session")
def msvd_store(msvd_clips, tmp_path_factory) -> Path:
    """The 18-clip test subset extracted once with the smallest backbone (ids are the clip stems)."""
    from captioner.extract import ExtractConfig, extract

    path = tmp_path_factory.mktemp("features") / "msvd_lite0"
    config = ExtractConfig(backbone="efficientnet_lite0", frames="uniform:8", batch_size=32, workers=1,
                           device="cpu")
    summary = extract(msvd_clips, path, config, progress=False)
    assert summary.failed == 0, summary.failures
    return path


@pytest.fixture(scope="session")
def caption_model(msvd_store, data_dir, tmp_path_factory) -> Path:
    """A working checkpoint: the shipped default model, else a tiny one trained in seconds.

    Tests that use it check behaviour (formats, errors, timing), never caption quality.
    """
    from captioner.caption import DEFAULT_MODEL

    if DEFAULT_MODEL.is_file():
        return DEFAULT_MODEL
    from captioner.model import ModelConfig
    from captioner.train import DataConfig, TrainConfig, train

    run = tmp_path_factory.mktemp("tiny_model")
    captions = str(data_dir / "msvd" / "captions" / "MSVD_train.tsv")
    config = TrainConfig(run_dir=str(run), epochs=15, batch_size=64, lr=3e-3, warmup_steps=0, val_metrics=[],
                         device="cpu", model=ModelConfig(embed_size=64, hidden_size=128),
                         data=DataConfig(features=str(msvd_store), captions=captions, split="train",
                                         val_split=None, min_count=1))
    return train(config)


@pytest.fixture
def other_writer(tmp_path):
    """Another process holding a store open for writing, with a video half written."""
    store_path = tmp_path / "shared"
    script = ("import sys; from captioner import open_features; "
              f"store = open_features({str(store_path)!r}, 'a'); "
              "store.set_provenance({'backbone': 'test', 'feature_dim': 2}); store.put('done', [[1.0, 2.0]]); "
              "open(store.path / 'videos' / '.tmp-inflight', 'wb').write(b'half'); "
              "print('ready', flush=True); sys.stdin.read()")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout.readline().strip() == "ready"
        yield store_path, proc
    finally:
        proc.kill()
        proc.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def ray_head():
    """A one-node Ray cluster on loopback, stopped by ending the `ray start --block` we started.

    Yields (address, temp dir). Stopping our own head, rather than `ray stop --force`, leaves
    any other Ray cluster on the machine alone.
    """
    pytest.importorskip("ray")
    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # Unix socket paths must stay short
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    head = subprocess.Popen(["ray", "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1",
                             "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats",
                             f"--temp-dir={temp_dir}"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not list(Path(temp_dir).glob("session_*/logs/gcs_server.out")):
            assert head.poll() is None and time.monotonic() < deadline, "ray head did not start"
            time.sleep(0.5)
        yield f"127.0.0.1:{port}", Path(temp_dir)
    finally:
        head.send_signal(signal.SIGTERM)  # --block shuts its own node down on exit
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture
def one_torch_thread():
    """For tests of tiny models: on a shared 2-core machine OpenMP threads cost 10-30x more than
    they save (measured 0.33 s vs 0.009 s per step), so such tests run torch on one thread."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
