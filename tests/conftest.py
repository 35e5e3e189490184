"""Shared fixtures: the real data in ../shared/data and features extracted from it once."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("CAPTIONER_DATA", ROOT.parent / "shared" / "data"))
MSVD_CLIPS = DATA / "msvd" / "clips"

# The split that `../shared/data/README.md` gives for the 18 clips.
MSVD_TRAIN_CLIPS = ["vid98", "vid114", "vid184", "vid311", "vid710", "vid836", "vid930", "vid950", "vid1025"]
MSVD_TEST_CLIPS = ["vid1429", "vid1509", "vid1563", "vid1712", "vid1721", "vid1766", "vid1817", "vid1847",
                   "vid1876"]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.fail(f"real data not found at {DATA} (set CAPTIONER_DATA)")
    return DATA


@pytest.fixture(scope="session")
def msvd_clips(data_dir) -> list[Path]:
    clips = sorted(MSVD_CLIPS.glob("*.avi"))
    assert len(clips) == 18, f"expected 18 MSVD clips in {MSVD_CLIPS}"
    return clips


@pytest.fixture(scope="session")
def msvd_store(msvd_clips, tmp_path_factory) -> Path:
    """All 18 MSVD clips extracted once with the smallest backbone (ids are the clip stems)."""
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
