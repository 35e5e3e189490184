"""The command line's contract, in fresh processes: a usage error (an unknown name, a bad value,
a bad config key) is one line and exit 2, a failure while running (a missing file) one line and
exit 1, and both come before torch or any other heavy library is imported. And what the CLI
tells about itself: `captioner models`, `--version`, help for every argument.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import captioner
from captioner.cli import build_parser
from captioner.errors import UsageError
from captioner.device import _nvidia_driver_present, check_device, is_cuda, resolve_device
from captioner.precision import resolve

ROOT = Path(__file__).resolve().parent.parent
CLIP = "Kqb-mmkEWqU_1_5.avi"  # 4 s: the shortest real clip
# What a fast failure must not have imported: each takes seconds to load on the project's machine.
HEAVY = ("torch", "torchvision", "timm", "openvino", "cv2", "fastapi", "uvicorn", "ray")
# Runs the CLI as `captioner` does, then says on stderr's last line which heavy modules got imported.
PROBE = f"""
import json, sys
from captioner.cli import main
try:
    code = main(sys.argv[1:])
finally:
    print("HEAVY=" + json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)), file=sys.stderr)
sys.exit(code)
"""


def probe(*args, cwd: Path = ROOT) -> tuple[int, list[str], list[str], str]:
    """(exit code, stderr lines, heavy modules imported, stdout) of `captioner ARGS`."""
    proc = subprocess.run([sys.executable, "-c", PROBE, *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    lines = proc.stderr.splitlines()
    assert lines and lines[-1].startswith("HEAVY="), proc.stderr
    return proc.returncode, lines[:-1], json.loads(lines[-1].removeprefix("HEAVY=")), proc.stdout


@pytest.fixture(scope="module")
def files(tmp_path_factory, data_dir):
    """A real clip, a valid training config, a pipeline config and a predictions file."""
    root = tmp_path_factory.mktemp("cli")
    config = root / "train.yaml"
    config.write_text(yaml.safe_dump({"run_dir": str(root / "run"),
                                      "data": {"features": str(root / "store"),
                                               "captions": str(data_dir / "msvd" / "captions" / "MSVD_train.tsv")}}))
    no_data = root / "no_data.yaml"
    no_data.write_text(yaml.safe_dump({"run_dir": str(root / "run")}))
    predictions = root / "preds.json"
    predictions.write_text(json.dumps({"vid1301": "a man is talking"}))
    return {"clip": data_dir / "msvd" / "clips" / CLIP, "train": config, "no_data": no_data,
            "pipeline": ROOT / "configs" / "pipeline_smoke.yaml", "predictions": predictions,
            "references": data_dir / "msvd" / "captions" / "MSVD_test.tsv", "root": root}


# (arguments, exit code, what the one line says); {name} is filled from the `files` fixture.
CASES = [
    # runtime failures: exit 1
    (["caption", "missing.mp4"], 1, "missing.mp4: file not found"),
    (["caption", "{clip}", "--model", "nope.pt"], 1, "nope.pt: checkpoint not found"),
    (["extract", "missing.mp4", "--out", "{root}/store"], 1, "missing.mp4: file not found"),
    (["train", "missing.yaml"], 1, "missing.yaml: config file not found"),
    (["evaluate", "--predictions", "missing.json", "--references", "{references}"], 1,
     "missing.json: predictions file not found"),
    (["report", "--predictions", "missing.json", "--references", "{references}", "--out", "{root}/report"], 1,
     "missing.json: predictions file not found"),
    (["pipeline", "run", "missing.yaml"], 1, "missing.yaml: config file not found"),
    (["features", "info", "{root}/nostore"], 1, "feature store not found"),
    (["serve", "--model", "nope.pt"], 1, "nope.pt: checkpoint not found"),
    (["models", "--runs", "{root}/noruns"], 1, "noruns: no such folder"),
    # usage errors: exit 2
    (["caption", "{clip}", "--model", "nope"], 2, "unknown model 'nope'"),
    (["caption", "{clip}", "--n-best", "5", "--beam", "2"], 2, "--n-best 5 is more than --beam 2"),
    # One rule for --n-best, with or without --beam: the default model's own beam is 3.
    (["caption", "{clip}", "--n-best", "5"], 2, "--n-best 5 is more than --beam 3"),
    (["caption", "{clip}", "--beam", "0"], 2, "--beam must be at least 1, got 0"),
    (["caption", "{clip}", "--length-penalty", "nan"], 2, "--length-penalty must be a number >= 0, got nan"),
    (["caption", "{clip}", "--device", "gpu"], 2, "unknown device 'gpu'"),
    (["caption", "{clip}", "--device", "cuda:one"], 2, "unknown device 'cuda:one'"),
    (["caption", "{clip}", "--runtime", "tensorrt"], 2, "unknown --runtime 'tensorrt'"),
    (["caption", "{clip}", "--precision", "int4"], 2, "unknown --precision 'int4'"),
    (["extract", "{clip}", "--out", "{root}/store", "--backbone", "resnet9000"], 2, "unknown backbone 'resnet9000'"),
    (["extract", "{clip}", "--out", "{root}/store", "--backbone", "efficientnet_lite2+nope"], 2,
     "unknown backbone 'nope'"),
    (["extract", "{clip}", "--out", "{root}/store", "--backbone", "timm:resnet50"], 2,
     "timm:resnet50 needs a local weights file"),
    (["extract", "{clip}", "--out", "{root}/store", "--frames", "uniform:0"], 2, "uniform:N needs"),
    (["extract", "{clip}", "--out", "{root}/store", "--device", "tpu"], 2, "unknown device 'tpu'"),
    (["train", "{train}", "--set", "model.hiden_size=3"], 2, "unknown config key 'model.hiden_size'"),
    (["train", "{train}", "--set", "epochs=0"], 2, "epochs must be at least 1, got 0"),
    (["train", "{train}", "--set", "model.video_input=sideways"], 2, "model.video_input must be"),
    (["train", "{no_data}"], 2, "data.features and data.captions must be set"),
    (["evaluate", "--predictions", "{predictions}", "--references", "{references}", "--metrics", "BLUE"], 2,
     "unknown metric 'BLUE'"),
    (["evaluate", "--predictions", "{predictions}", "--references", "{references}", "--split", "tset"], 2,
     "unknown split 'tset'"),
    (["evaluate", "--predictions", "{predictions}", "--references", "{references}", "--k", "0"], 2,
     "--k must be at least 1"),
    (["pipeline", "run", "{pipeline}", "--set", "train.epochs=0", "--dry-run"], 2, "epochs must be at least 1"),
    (["pipeline", "run", "{pipeline}", "--set", "extract.backbone=resnet9000", "--dry-run"], 2,
     "unknown backbone 'resnet9000'"),
    (["pipeline", "run", "{pipeline}", "--set", "trian.epochs=3", "--dry-run"], 2, "unknown config section 'trian'"),
    (["serve", "--model", "nope"], 2, "unknown model 'nope'"),
    (["serve", "--device", "cuda:x"], 2, "unknown device 'cuda:x'"),
    (["serve", "--port", "99999"], 2, "--port must be between 0 and 65535"),
]


@pytest.mark.parametrize("args, code, message", CASES, ids=[" ".join(c[0][:4]) for c in CASES])
def test_errors_are_one_line_with_their_exit_code_before_heavy_imports(files, args, code, message):
    exit_code, stderr, heavy, stdout = probe(*(a.format(**files) for a in args))
    assert exit_code == code, stderr
    # extract reports each missing input, then why there is nothing to do (as the README shows).
    lines = 2 if args[:2] == ["extract", "missing.mp4"] else 1
    assert len(stderr) == lines and all(ln.startswith("captioner: ") for ln in stderr), stderr
    assert message in stderr[0], stderr
    assert heavy == [], f"imported {heavy} before failing"
    assert stdout == ""


def test_cuda_devices_are_checked_by_form_then_by_what_exists():
    for device in ("auto", "cpu", "cuda", "cuda:0", "cuda:1", "cuda:12"):
        check_device(device)
    for device in ("gpu", "cuda:", "cuda:-1", "cuda:1.0", "cuda:x", "cpu:0", "CUDA", "cuda:１"):
        with pytest.raises(UsageError, match="unknown device"):
            check_device(device)
    assert is_cuda("cuda:1") and is_cuda("cuda") and not is_cuda("cpu")
    # cuda:N runs where cuda does: PyTorch (OpenVINO is CPU-only), mixed precision.
    assert resolve("auto", "auto", "cuda:1") == ("torch", "autocast")
    with pytest.raises(UsageError, match="runs on the CPU"):
        resolve("openvino", "auto", "cuda:1")
    if not _nvidia_driver_present():
        with pytest.raises(UsageError, match="device cuda:1 asked for, but torch sees no CUDA device"):
            resolve_device("cuda:1")


def test_every_argument_has_help_and_frames_help_shows_the_window_syntax():
    parser = build_parser()
    missing = []

    def walk(p, path):
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    if not sub.description:
                        missing.append(f"{path} {name}: no description")
                    walk(sub, f"{path} {name}")
            elif not action.help and action.dest != "help":
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")

    walk(parser, "captioner")
    assert missing == []
    for command in ("extract", "caption"):
        text = subprocess.run([sys.executable, "-m", "captioner.cli", command, "--help"], capture_output=True,
                              text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}).stdout
        if command == "extract":
            assert "@START-END" in text and "uniform:8@2.5-10" in text
        assert "cuda:N" in text  # --device
    text = subprocess.run([sys.executable, "-m", "captioner.cli", "features", "import", "--help"],
                          capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}).stdout
    assert "Copy features made elsewhere into a feature store" in text and "SOURCE's format" in text


def test_version_names_python_torch_openvino_and_devices_without_importing_torch():
    exit_code, stderr, heavy, stdout = probe("--version")
    assert exit_code == 0 and heavy == [] and stderr == []
    lines = stdout.splitlines()
    assert lines[0] == f"captioner {captioner.__version__}"
    assert lines[1].startswith(f"python {platform.python_version()} ")
    assert f"torch {importlib.metadata.version('torch')}," in stdout
    assert f"openvino {importlib.metadata.version('openvino')}," in stdout
    assert any(line.startswith("cpu: ") and "cores" in line for line in lines)
    assert any(line.startswith("cuda: ") for line in lines)


@pytest.mark.slow
def test_caption_json_carries_the_version_that_version_prints(files):
    proc = subprocess.run([sys.executable, "-m", "captioner.cli", "caption", str(files["clip"]), "--json",
                           "--device", "cpu"], capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["captioner_version"] == captioner.__version__


def test_models_lists_the_default_model_checkpoints_under_runs_and_every_backbone(tmp_path):
    from captioner.caption import DEFAULT_MODEL
    from captioner.hashing import file_sha256
    from captioner.numpy_decoder import export_path, read_export

    run = tmp_path / "runs" / "mine"
    run.mkdir(parents=True)
    shutil.copy(DEFAULT_MODEL, run / "best.pt")
    shutil.copy(export_path(DEFAULT_MODEL), export_path(run / "best.pt"))
    (run / "last.pt").write_bytes(b"the working copy, not listed")
    (tmp_path / "runs" / "old").mkdir()
    (tmp_path / "runs" / "old" / "best.pt").write_bytes(b"no export beside it")

    exit_code, stderr, heavy, stdout = probe("models", "--runs", tmp_path / "runs", "--json")
    assert exit_code == 0 and heavy == [] and stderr == []
    listing = json.loads(stdout)
    export = read_export(export_path(DEFAULT_MODEL))
    backbone = export.provenance["backbone"]
    default, mine, old = listing["models"]
    assert default["name"] == "default" and default["backbone"] == backbone
    assert default["model_id"] == f"default:{backbone}:{file_sha256(DEFAULT_MODEL)[:12]}"
    assert default["vocabulary"] == len(export.vocab) and default["feature_dim"] == export.provenance["feature_dim"]
    assert mine["path"] == str(run / "best.pt") and mine["model_id"].startswith(f"best:{backbone}:")
    assert old["backbone"] is None and "no current inference export" in old["note"]
    names = {b["name"] for b in listing["backbones"]}
    assert {"efficientnet_lite2", "efficientnet_lite2_concepts", "inception_v3", "i3d", "i3d_concepts",
            "timm:ARCH=PATH", "torchvision:ARCH=PATH"} <= names
    lite2 = next(b for b in listing["backbones"] if b["name"] == "efficientnet_lite2")
    assert (lite2["feature_dim"], lite2["installed"]) == (1280, True) and "pip install" in lite2["pip"]

    exit_code, _, heavy, text = probe("models")
    assert exit_code == 0 and heavy == []
    assert "default" in text and backbone in text and "i3d_concepts" in text and "400-d" in text


def test_the_catalogue_matches_the_backbone_registry():
    from captioner import backbones, catalog
    from captioner.backbones import registry

    assert catalog.backbone_names() == backbones.available()
    families = sorted(name[:-1] for name in registry._FACTORIES if name.endswith(":"))
    assert families == sorted(catalog.FAMILIES)
    with pytest.raises(ValueError, match="not in captioner.catalog.BACKBONES"):
        registry.register("resnet_uncatalogued")(lambda weights: None)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2",
                                  "efficientnet_lite0_concepts", "efficientnet_lite2_concepts", "inception_v3",
                                  "i3d", "i3d_concepts"])
def test_the_catalogue_gives_each_backbones_real_size_and_input(name, one_torch_thread):
    from captioner import backbones, catalog
    from captioner.backbones import registry

    info = next(b for b in catalog.BACKBONES if b.name == name)
    made = backbones.create(name)
    assert made.feature_dim == info.feature_dim
    assert info.input.startswith(f"{made.clip_len}-frame clips, {made.input_size} px" if made.clip_len > 1
                                 else f"{made.input_size} px")


def test_a_write_failure_no_writer_caught_is_still_one_line(monkeypatch, capsys):
    """The class of issue 23 #6 for every command: disk full, quota or read-only is one line, exit 1."""
    import errno

    import captioner.cli as cli

    def full_disk(args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "out/report.html")

    monkeypatch.setattr(cli, "_run_features_info", full_disk)
    assert cli.main(["features", "info", "s"]) == 1
    assert capsys.readouterr().err.splitlines() == ["captioner: error: out/report.html: cannot write: No space left "
                                                    "on device"]

    def bug(args):
        raise OSError(errno.EBADF, os.strerror(errno.EBADF))

    monkeypatch.setattr(cli, "_run_features_info", bug)
    with pytest.raises(OSError):  # anything else is a bug and keeps its traceback
        cli.main(["features", "info", "s"])
