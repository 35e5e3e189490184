"""The caption model the serve tests share, and a client-side view of the upload folder.

The tests need a working checkpoint, not a good one: the shipped default model when the package
has it, otherwise a tiny model trained in seconds on the features of the real MSVD training
clips (the `msvd_store` fixture). Loading it costs seconds, so one Captioner serves every test
module of the process.
"""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from captioner.caption import DEFAULT_MODEL, Captioner

_shared: dict = {}


def tiny_checkpoint(features: Path, data_dir: Path, run_dir: Path) -> Path:
    """A small LSTM trained for a few epochs on the MSVD training clips' captions."""
    from captioner.model import ModelConfig
    from captioner.train import DataConfig, TrainConfig, train

    config = TrainConfig(
        run_dir=str(run_dir), epochs=6, batch_size=64, lr=1e-2, warmup_steps=0, val_metrics=[], device="cpu",
        model=ModelConfig(embed_size=32, hidden_size=48, dropout=0.0),
        data=DataConfig(features=str(features), captions=str(data_dir / "msvd" / "captions" / "MSVD_train.tsv"),
                        split="train", val_split=None, min_count=1))
    return train(config)


def shared_captioner(request, data_dir: Path, tmp_path_factory) -> tuple[Captioner, str]:
    """(the captioner, its --model argument): the default model if shipped, else the tiny one.

    Loaded once per test process.
    """
    if "captioner" not in _shared:
        if DEFAULT_MODEL.is_file():
            model = "default"
        else:
            features = request.getfixturevalue("msvd_store")
            model = str(tiny_checkpoint(features, data_dir, tmp_path_factory.mktemp("serve-model") / "run"))
        _shared["captioner"], _shared["model"] = Captioner.load(model, device="cpu"), model
    return _shared["captioner"], _shared["model"]


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).rglob("*"))


@contextmanager
def running_server(app) -> Iterator[str]:
    """Serve `app` with uvicorn on a free loopback port in a thread; yields its base URL."""
    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"uvicorn did not start on port {port}")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
