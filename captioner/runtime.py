"""Where a backbone runs: PyTorch, or OpenVINO compiled from the project's own torch module.

    fx = load_backbone("efficientnet_lite2")            # runtime="auto", precision="auto"
    fx.features(frames_uint8)                           # (N, feature_dim) float32 numpy

`auto` runs OpenVINO on a CPU (2-2.5x PyTorch fp32 there) and PyTorch on CUDA; which precision
each network runs in is `captioner.precision`'s rule (fp32, bf16, mixed, int8).

The OpenVINO model is converted from the same module `backbones.create` builds (so every
backbone that converts gets it, user weights included), with preprocessing (uint8 NHWC in,
scale, shift, transpose) inside the graph and a dynamic batch dimension, and saved to disk:

    CACHE/openvino/index.json          backbone spec -> its weight files' (mtime, size) and members
    CACHE/openvino/<key>/model.xml|bin one member's converted network, key = sha256 of the weights
                                       checksum, input rules, OpenVINO version and FORMAT_VERSION
    CACHE/openvino/<key>/compiled/     OpenVINO's own compiled blobs (its key includes the precision)
    CACHE/openvino/<key>/int8-<calib>/ the int8 network and its compiled blobs, calib = sha256 of
                                       the calibration files, settings and NNCF version
    CACHE/openvino/<key>/batch-4/      a clip member's network with its batch fixed (CLIP_BATCH)

A run whose index entry still matches the weight files loads the model without importing
torch or timm. Anything unreadable in the cache is rebuilt from the torch module, never fatal.
A combination ("a+b") is compiled member by member, so a still image can skip its clip members.

The default model's backbones ship already converted (SHIPPED_DIR, built by
scripts/build_openvino_ir.py from the same modules, weights stored in fp16 where that keeps
cosine >= 0.9999): a spec made of shipped networks loads from the package, converts nothing and
needs no torch. Their compiled blobs (and int8 networks) go to the cache, the package being
possibly read-only:

    CACHE/openvino/shipped/<member>-<weights sha256[:16]>/compiled/   and .../int8-<calib>/, .../batch-4/
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import threading
import warnings
from pathlib import Path

import numpy as np

from .atomic import atomic_write, publish_directory
from .cache import cache_dir
from .device import resolve_device
from .errors import CaptionerError
from .feature_spec import FeatureSpec
from .openvino_env import openvino, quiet_openvino
from .precision import features_precision, member_precision, resolve
from .preprocess import centre_crops

# Bump when conversion or the graph's preprocessing changes: older cached models then miss.
FORMAT_VERSION = 1
# The networks of the default model's backbones, converted once from the same torch modules
# (scripts/build_openvino_ir.py): a fresh install runs them without torch and converts nothing.
SHIPPED_DIR = Path(__file__).resolve().parent / "assets" / "openvino"
# Clip networks (I3D) are compiled for batches of this many clips, the default model's 4 per
# video or window, and other counts are run in such batches (the last padded): with a static
# shape OpenVINO ran I3D 15-25% faster than with a dynamic batch, in less memory that no longer
# crept up over a long video, with the same features to the bit (measured on MSVD clips).
CLIP_BATCH = 4

# int8: the operations NNCF quantized run in int8, the others (pooling, softmax, ...) in fp32.
_OV_PRECISION = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    """`--runtime` and `--precision` for every command that runs a backbone. Values are checked
    by `captioner.precision.check`, which raises a one-line UsageError (exit 2)."""
    parser.add_argument("--runtime", default="auto", metavar="RUNTIME",
                        help="auto (OpenVINO on CPU, PyTorch on CUDA), torch or openvino")
    parser.add_argument("--precision", default="auto", metavar="PRECISION",
                        help="auto (on CPU: fp32, with clip members such as I3D in bf16 where the CPU has "
                             "bf16 units; mixed precision on CUDA), fp32, bf16 (faster, features within cosine "
                             "0.98-0.9999 of fp32), mixed (OpenVINO: bf16 clip members, fp32 image members) or "
                             "int8 (OpenVINO, opt-in: image members NNCF-quantized, calibrated once on Flickr8k train photos)")


_CORE = None


def _core():
    global _CORE
    if _CORE is None:
        _CORE = openvino().Core()
    return _CORE


def load_backbone(spec: str, runtime: str = "auto", precision: str = "auto", device: str = "cpu"):
    """A feature extractor for a backbone spec, on the runtime and precision asked for; what its
    features are is `FeatureSpec.of(extractor, frames)`. With runtime="auto", a backbone OpenVINO
    cannot convert runs on PyTorch (with a warning that says why); with runtime="openvino" that is
    a CaptionerError."""
    from .catalog import check_backbone

    check_backbone(spec)  # a typo is reported before torch or OpenVINO loads
    device = resolve_device(device)
    asked = runtime
    runtime, precision = resolve(runtime, precision, device)
    if runtime == "torch":
        return TorchFeatures(_create_torch(spec, device, "--runtime torch"), precision)
    try:
        return OpenVINOFeatures.load(spec, precision)
    except ConversionError as exc:
        if asked == "openvino" or precision == "int8":
            raise CaptionerError(f"backbone {spec} cannot run on OpenVINO: {exc}") from None
        warnings.warn(f"backbone {spec} runs on PyTorch: OpenVINO cannot convert it ({exc})", stacklevel=2)
        return TorchFeatures(_create_torch(spec, device, f"backbone {spec} on PyTorch"), precision)


def _create_torch(spec: str, device: str, what: str):
    """The torch backbone; without torch installed, a MissingExtra that says `what` needs it."""
    from .extras import require

    require(what, "torch", "torchvision", "timm")
    from . import backbones

    return backbones.create(spec, device=device)


class ConversionError(Exception):
    """OpenVINO could not convert or compile a backbone; the message says why."""


# ----------------------------------------------------------------------------- preprocessing
# ----------------------------------------------------------------------------- PyTorch
class TorchFeatures:
    """A torch Backbone behind the runtime interface (numpy in, numpy out)."""

    runtime = "torch"

    def __init__(self, backbone, precision: str):
        self.backbone = backbone
        self.precision = precision
        self.name = backbone.name
        self.clip_len = backbone.clip_len
        self.decode_short_side = backbone.decode_short_side
        self.feature_dim = backbone.feature_dim
        members = getattr(backbone, "members", None)
        self._members = list(members) if members is not None else [backbone]

    def class_names(self) -> list[str]:
        return self.backbone.class_names()

    def provenance(self) -> dict:
        return {**self.backbone.provenance(), "runtime": self.runtime, "precision": self.precision}

    @property
    def has_clip_members(self) -> bool:
        return _has_clip_members(self._members)

    def _autocast(self):
        import torch

        if self.precision == "bf16":
            return torch.autocast(self.backbone.device.type, dtype=torch.bfloat16)
        if self.precision == "autocast":
            return self.backbone.autocast()
        return contextlib.nullcontext()

    def prepare(self, frames: np.ndarray):
        """Frames -> network input, which `infer` takes sliced and concatenated along axis 0."""
        import torch

        tensor = torch.from_numpy(np.ascontiguousarray(frames))
        if self.backbone.device.type == "cuda":
            tensor = tensor.pin_memory()
        with torch.inference_mode():
            return self.backbone.preprocess(tensor)

    @staticmethod
    def concat(inputs: list):
        import torch

        return torch.cat(inputs)

    def infer(self, inputs) -> np.ndarray:
        import torch

        with torch.inference_mode(), self._autocast():
            return self.backbone(inputs).float().cpu().numpy()

    def features(self, frames: np.ndarray, still: bool = False) -> np.ndarray:
        if still and self.has_clip_members:
            return _concat_members(self._members, frames, self._member_features)
        return self.infer(self.prepare(frames))

    def _member_features(self, member, frames: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode(), self._autocast():
            x = member.preprocess(torch.from_numpy(np.ascontiguousarray(frames)))
            return member(x).float().cpu().numpy()


def _has_clip_members(members) -> bool:
    """Whether a combination has clip networks (I3D), which a still image has nothing to give."""
    return len(members) > 1 and any(m.clip_len > 1 for m in members)


def _concat_members(members, frames: np.ndarray, run) -> np.ndarray:
    """A still image's features: image members run, clip members are zeros (no motion)."""
    parts = [np.zeros((len(frames), m.feature_dim), np.float32) if m.clip_len > 1 else run(m, frames)
             for m in members]
    return np.concatenate(parts, axis=1)


# ----------------------------------------------------------------------------- OpenVINO
class _CompiledMember:
    """One backbone's network compiled by OpenVINO: uint8 (N,[L,]S,S,3) in, features out."""

    def __init__(self, meta: dict, compiled, calibration: str | None = None, batch: int | None = None):
        self.calibration = calibration  # int8: the calibration key
        self.batch = batch  # the batch size of a network compiled for one; None: any
        self.name = meta["provenance"]["backbone"]
        self.input_size = meta["input_size"]
        self.clip_len = meta["clip_len"]
        self.feature_dim = meta["provenance"]["feature_dim"]
        self._compiled = compiled
        self._requests = threading.local()

    def crop(self, frames: np.ndarray) -> np.ndarray:
        return centre_crops(frames, self.input_size, self.clip_len, self.name)

    def infer(self, crops: np.ndarray) -> np.ndarray:
        # One request per thread: a compiled model's implicit request is not safe across threads,
        # and a request made per call allocates the network's working memory again each time
        # (a long video's peak memory crept up with it).
        request = getattr(self._requests, "request", None)
        if request is None:
            request = self._requests.request = self._compiled.create_infer_request()
        if self.batch is None:
            request.infer([crops])
            return np.array(request.get_output_tensor(0).data, dtype=np.float32)
        outputs = []
        for start in range(0, len(crops), self.batch):  # the last batch padded with blank clips
            part = crops[start:start + self.batch]
            if len(part) < self.batch:
                part = np.concatenate([part, np.zeros((self.batch - len(part), *part.shape[1:]), part.dtype)])
            request.infer([part])
            outputs.append(np.array(request.get_output_tensor(0).data[:len(crops) - start], dtype=np.float32))
        return np.concatenate(outputs)


class OpenVINOFeatures:
    """A backbone compiled by OpenVINO, loaded from the on-disk cache (see the module doc)."""

    runtime = "openvino"

    def __init__(self, entry: dict, members: list[_CompiledMember], precision: str, cache_hit: bool):
        provenance = entry["provenance"]
        self._provenance = provenance
        self._class_names = entry.get("class_names")
        self._members = members
        self.precision = precision
        self.name = provenance["backbone"]
        self.clip_len = provenance["clip_len"]
        self.decode_short_side = entry["decode_short_side"]
        self.feature_dim = provenance["feature_dim"]
        self.cache_hit = cache_hit  # True when nothing was converted

    def class_names(self) -> list[str]:
        if self._class_names is None:
            raise CaptionerError(f"backbone {self.name} has no classification head (its weights are "
                                 "a feature extractor only)")
        return list(self._class_names)

    def provenance(self) -> dict:
        calibration = [m.calibration for m in self._members if m.calibration]
        # int8 features depend on the calibration: a store refuses int8 features of another one.
        return {**self._provenance, "runtime": self.runtime, "precision": self.precision,
                **({"int8_calibration": "+".join(calibration)} if calibration else {})}

    @property
    def has_clip_members(self) -> bool:
        return _has_clip_members(self._members)

    def prepare(self, frames: np.ndarray) -> tuple[np.ndarray, ...]:
        return tuple(member.crop(frames) for member in self._members)

    @staticmethod
    def concat(inputs: list[tuple[np.ndarray, ...]]) -> tuple[np.ndarray, ...]:
        return tuple(np.concatenate(parts) for parts in zip(*inputs))

    def infer(self, inputs: tuple[np.ndarray, ...]) -> np.ndarray:
        outputs = [member.infer(crops) for member, crops in zip(self._members, inputs)]
        return outputs[0] if len(outputs) == 1 else np.concatenate(outputs, axis=1)

    def features(self, frames: np.ndarray, still: bool = False) -> np.ndarray:
        if still and self.has_clip_members:
            return _concat_members(self._members, frames, lambda m, f: m.infer(m.crop(f)))
        return self.infer(self.prepare(frames))

    # ------------------------------------------------------------------------ loading
    @classmethod
    def load(cls, spec: str, precision: str) -> "OpenVINOFeatures":
        cache = _ModelCache(cache_dir() / "openvino")
        shipped = _shipped_entry(spec)
        if shipped and not all(cache.shipped_compiled(name) for name in shipped["members"]):
            from .console import notice

            notice(f"compiling backbone {spec} for this CPU, once (a few seconds; cached in {cache.root})")
        members = [cache.compile_shipped(name, precision) for name in shipped["members"]] if shipped else []
        if shipped and all(m is not None for m in members):
            entry, cache_hit = shipped, True
        else:
            entry = cache.lookup(spec)
            cache_hit = entry is not None
            members = [cache.compile(key, precision) for key in entry["members"]] if cache_hit else []
        if not cache_hit or any(m is None for m in members):
            cache_hit = False
            entry = cache.convert(spec)
            members = [cache.compile(key, precision) for key in entry["members"]]
            if any(m is None for m in members):
                raise ConversionError("OpenVINO cannot compile the converted network")
        return cls(entry, members, features_precision(precision, [m.clip_len for m in members]),
                   cache_hit=cache_hit)


# ----------------------------------------------------------------------------- shipped networks
def _shipped_index() -> dict:
    try:
        index = json.loads((SHIPPED_DIR / "index.json").read_text())
    except (OSError, ValueError):
        return {}
    return index if isinstance(index, dict) else {}


def _shipped_entry(spec: str) -> dict | None:
    """The shipped index entry of a spec made of registry names only (user weights never ship)."""
    if "=" in spec:
        return None
    return _shipped_index().get("+".join(part.strip() for part in spec.split("+")))


def shipped_backbones() -> list[str]:
    """Backbone specs whose OpenVINO networks ship inside the package: they run without torch."""
    return sorted(_shipped_index())


def _compile(network_dir: Path, work_dir: Path, precision: str) -> _CompiledMember | None:
    """Compile the network in `network_dir` (model.xml, meta.json) for `precision`; OpenVINO's
    compiled blobs and an int8 network are kept under `work_dir`. None when a file is unreadable."""
    try:
        meta = json.loads((network_dir / "meta.json").read_text())
        precision = member_precision(precision, meta["clip_len"])
        network, calibration = network_dir, None
        if precision == "int8":
            network, calibration = _quantized(network_dir, work_dir, meta)
        compiled_dir = work_dir / "compiled" if network == network_dir else network / "compiled"
        config = {"INFERENCE_PRECISION_HINT": _OV_PRECISION[precision], "CACHE_DIR": str(compiled_dir)}
        if meta["clip_len"] > 1:
            fixed = _fixed_batch_network(network / "model.xml", work_dir, CLIP_BATCH)
            return _CompiledMember(meta, _core().compile_model(str(fixed), "CPU", config), calibration, CLIP_BATCH)
        return _CompiledMember(meta, _core().compile_model(str(network / "model.xml"), "CPU", config), calibration)
    except (OSError, ValueError, KeyError, RuntimeError):
        return None


def _fixed_batch_network(model_xml: Path, work_dir: Path, batch: int) -> Path:
    """The network with its batch size fixed, saved once under `work_dir`: compiled from a file,
    OpenVINO's cache finds it by the file instead of hashing the whole network at every load."""
    folder = work_dir / f"batch-{batch}"
    if not (folder / "model.xml").is_file():
        model = _core().read_model(str(model_xml))
        shape = model.input(0).get_partial_shape()
        model.reshape({model.input(0): [batch, *(dim.get_length() for dim in list(shape)[1:])]})
        work_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-batch-", dir=work_dir))
        try:
            openvino().save_model(model, str(tmp / "model.xml"), compress_to_fp16=False)
            publish_directory(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return folder / "model.xml"


def _quantized(network_dir: Path, work_dir: Path, meta: dict) -> tuple[Path, str]:
    """The member's int8 network folder (quantized now if not cached) and its calibration key."""
    from . import quantize

    files = quantize.calibration_files()
    calibration = quantize.calibration_key(files)
    quantized = work_dir / f"int8-{calibration}"
    if not (quantized / "model.xml").exists():
        quantize.quantize(network_dir / "model.xml", quantized, meta)
    # An unreadable int8 network fails compile_model, which drops the folder it is under: it is
    # converted (or, shipped, just compiled) and quantized again.
    return quantized, calibration


def _ov_version() -> str:
    return openvino().get_version()


class _ModelCache:
    def __init__(self, root: Path):
        self.root = root
        self.index_file = root / "index.json"

    def _index_key(self, spec: str) -> str:
        return f"{_absolute_paths(spec)}|openvino {_ov_version()}|format {FORMAT_VERSION}"

    def _read_index(self) -> dict:
        try:
            index = json.loads(self.index_file.read_text())
        except (OSError, ValueError):
            return {}  # missing or corrupt: everything is rebuilt
        return index if isinstance(index, dict) else {}

    def lookup(self, spec: str) -> dict | None:
        """The index entry of `spec` if every weight file it was built from is unchanged."""
        entry = self._read_index().get(self._index_key(spec))
        try:
            for path, (mtime_ns, size) in entry["files"].items():
                stat = os.stat(path)
                if (stat.st_mtime_ns, stat.st_size) != (mtime_ns, size):
                    return None
            for key in ("provenance", "members", "decode_short_side"):
                entry[key]  # noqa: B018  an entry missing any of these is from a broken write
        except (TypeError, KeyError, ValueError, OSError):
            return None
        return entry

    def compile(self, key: str, precision: str) -> _CompiledMember | None:
        """The member's compiled model, or None when its files are missing or unreadable."""
        model_dir = self.root / key
        member = _compile(model_dir, model_dir, precision)
        if member is None:
            # A truncated or corrupt file: drop the model so it is converted again.
            shutil.rmtree(model_dir, ignore_errors=True)
        return member

    def _shipped_work_dir(self, name: str) -> Path | None:
        try:
            weights = json.loads((SHIPPED_DIR / name / "meta.json").read_text())["provenance"]["weights_sha256"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return self.root / "shipped" / f"{name}-{weights[:16]}"

    def shipped_compiled(self, name: str) -> bool:
        """Whether OpenVINO's compiled blobs of a shipped member are cached (any precision)."""
        work_dir = self._shipped_work_dir(name)
        return work_dir is not None and any((work_dir / "compiled").glob("*.blob"))

    def compile_shipped(self, name: str, precision: str) -> _CompiledMember | None:
        """A shipped member's compiled model. The package folder may be read-only, so OpenVINO's
        blobs (and an int8 network) go to the cache, under the shipped weights' checksum: a
        package update with other weights gets folders of its own. None when unreadable."""
        work_dir = self._shipped_work_dir(name)
        if work_dir is None:
            return None
        network = SHIPPED_DIR / name
        member = _compile(network, work_dir, precision)
        if member is None:
            shutil.rmtree(work_dir, ignore_errors=True)  # a damaged blob or int8 network is made again
            member = _compile(network, work_dir, precision)
        return member

    def convert(self, spec: str) -> dict:
        """Build the torch backbone, convert each member not already cached, record the spec."""
        from .console import notice
        from .extras import require

        shipped = ", ".join(shipped_backbones()) or "none"
        what = f"converting backbone {spec} to OpenVINO once (the networks that ship: {shipped})"
        require(what, "torch", "torchvision", "timm")
        notice(f"converting backbone {spec} to OpenVINO, once (10-60 s; cached in {self.root})")
        backbone = _create_torch(spec, "cpu", what)
        members = list(getattr(backbone, "members", None) or [backbone])
        keys = []
        for member in members:
            key = _model_key(member)
            if not (self.root / key / "model.xml").exists() or not (self.root / key / "meta.json").exists():
                self._save(member, key)
            keys.append(key)
        try:
            class_names = backbone.class_names()
        except CaptionerError:
            class_names = None
        entry = {"files": {str(p): [os.stat(p).st_mtime_ns, os.stat(p).st_size] for p in backbone.weight_files},
                 "provenance": backbone.provenance(), "class_names": class_names,
                 "decode_short_side": backbone.decode_short_side, "members": keys}
        index = self._read_index()
        index[self._index_key(spec)] = entry
        try:
            atomic_write(self.index_file, json.dumps(index))
        except OSError:
            pass  # a read-only cache only costs a conversion next time
        return entry

    def _save(self, member, key: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.root))
        try:
            # compress_to_fp16=False: fp16 weights must first be shown to keep the features
            # (scripts/build_openvino_ir.py checks that for the networks that ship).
            save_network(member, tmp, compress_to_fp16=False)
            publish_directory(tmp, self.root / key)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def save_network(member, directory: Path, compress_to_fp16: bool) -> None:
    """Convert one torch backbone to OpenVINO (preprocessing inside the graph, dynamic batch) and
    write directory/model.xml, model.bin and meta.json (what loading needs besides the network)."""
    import torch

    ov = openvino()

    size, clip_len = member.input_size, member.clip_len
    shape = [-1, 3, size, size] if clip_len == 1 else [-1, 3, clip_len, size, size]
    example = torch.zeros(1, *shape[1:])
    try:
        with warnings.catch_warnings(), torch.no_grad(), quiet_openvino():
            warnings.simplefilter("ignore")  # tracer warnings about shapes, fixed here but batch
            model = ov.convert_model(member.eval(), example_input=example, input=[ov.PartialShape(shape)])
        model = _with_preprocessing(model, member, clip_len)
    except Exception as exc:  # the converter's own errors: an unsupported operation, a failed trace
        raise ConversionError(f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}") from None
    meta = {"provenance": member.provenance(), "input_size": size, "clip_len": clip_len,
            "input": _input_rules(member), "openvino": _ov_version(), "format": FORMAT_VERSION,
            "weights_compression": "fp16" if compress_to_fp16 else None}
    try:
        class_names = member.class_names()
    except CaptionerError:
        class_names = None
    meta["class_names"] = class_names
    with quiet_openvino():
        ov.save_model(model, str(directory / "model.xml"), compress_to_fp16=compress_to_fp16)
    (directory / "meta.json").write_text(json.dumps(meta))


def _absolute_paths(spec: str) -> str:
    """The spec with each NAME=PATH's path made absolute: a relative path names another file
    when run from another directory."""
    parts = []
    for part in spec.split("+"):
        name, sep, path = part.strip().partition("=")
        parts.append(f"{name.strip()}={Path(path.strip()).resolve()}" if sep and path.strip() else part.strip())
    return "+".join(parts)


def _input_rules(member) -> dict:
    return {"dtype": "u8", "layout": "NHWC" if member.clip_len == 1 else "NLHWC", "batch": "dynamic",
            "size": member.input_size, "clip_len": member.clip_len, "mean": list(member.mean),
            "std": list(member.std)}


def _model_key(member) -> str:
    material = {"provenance": FeatureSpec.of(member).to_dict(), "input": _input_rules(member),
                "openvino": _ov_version(), "format": FORMAT_VERSION}
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:32]


def _with_preprocessing(model, member, clip_len: int):
    """uint8 channels-last pixels in; (x - 255 mean) / (255 std) and the transpose run in the graph."""
    ov = openvino()
    from openvino.preprocess import PrePostProcessor

    ppp = PrePostProcessor(model)
    source = ppp.input().tensor()
    source.set_element_type(ov.Type.u8)
    if clip_len == 1:
        source.set_layout(ov.Layout("NHWC"))
        ppp.input().model().set_layout(ov.Layout("NCHW"))
    else:
        source.set_layout(ov.Layout("NDHWC"))
        ppp.input().model().set_layout(ov.Layout("NCDHW"))
    steps = ppp.input().preprocess()
    steps.convert_element_type(ov.Type.f32)
    steps.mean([255.0 * m for m in member.mean])
    steps.scale([255.0 * s for s in member.std])
    return ppp.build()
