"""Device rules are one module's: every command resolves `auto`/`cpu`/`cuda` with the same errors."""

from __future__ import annotations

import pytest
import torch
import yaml

import media
from captioner import device as device_rules
from captioner.cli import main

NO_CUDA = "captioner: error: device cuda asked for, but torch sees no CUDA device\n"


@pytest.fixture
def driver_without_cuda(monkeypatch):
    """A machine with an NVIDIA driver on which torch finds no usable GPU."""
    monkeypatch.setattr(device_rules, "_nvidia_driver_present", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_cuda_without_a_gpu_is_one_error_from_extract_caption_and_train(tmp_path, capsys, driver_without_cuda):
    clip = media.synthetic_video(tmp_path / "clip.mp4")
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "device": "cuda",
                                      "data": {"features": str(tmp_path / "store"), "captions": "c.json"}}))
    outcomes = []
    for argv in (["extract", str(clip), "--out", str(tmp_path / "store"), "--device", "cuda", "--quiet"],
                 ["caption", str(clip), "--device", "cuda"],
                 ["train", str(config)]):
        code = main(argv)
        outcomes.append((argv[0], code, capsys.readouterr().err))
    assert outcomes == [(command, 2, NO_CUDA) for command in ("extract", "caption", "train")]
    assert not (tmp_path / "store").exists() and not (tmp_path / "run").exists()


def test_auto_is_the_cpu_without_a_usable_gpu(driver_without_cuda):
    assert device_rules.resolve_device("auto") == "cpu"
    assert device_rules.resolve_device("cpu") == "cpu"


def test_an_unknown_device_is_a_usage_error():
    with pytest.raises(device_rules.UsageError, match="unknown device 'gpu' \\(auto, cpu, cuda or cuda:N\\)"):
        device_rules.resolve_device("gpu")
