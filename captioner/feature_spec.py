"""What a feature vector depends on, resolved once: `FeatureSpec`.

Features from one backbone are not another's, nor the same backbone's with other weights, input
rules, frame sampling or precision, and a caption model trained on one kind says nonsense given
another. So everything features depend on is resolved once, when a backbone is loaded, into one
frozen object (as timm resolves a model's input rules once with `resolve_data_config`), which is
recorded verbatim as the provenance of a feature store (store.json and each entry), of a
checkpoint and of its inference export, and compared by one method:

    spec = FeatureSpec.of(extractor, "uniform:4")    # a loaded backbone (captioner.runtime) + sampling
    spec.to_dict()                                   # what a store, a checkpoint and an export record
    FeatureSpec.from_dict(store.info["provenance"])  # read back, files of every earlier version too
    spec.differences(other)                          # a store's rule: every recorded key but the runtime
    spec.differences(other, MODEL_KEYS)              # a checkpoint's: backbone, feature size, weights
    FeatureSpec.asked(backbone, frames, precision).pipeline_key()   # before anything is loaded

A FeatureSpec is a read-only mapping of its record, so `spec["backbone"]`, `spec.get("members")`
and `dict(spec)` read it as the JSON it is stored as. What decides the precision of a store is
`captioner.precision.resolve` (what was asked, on this CPU) through `features_precision` (what a
combination's features are), recorded here under "precision".
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, Iterator

# Where features were computed, not what they are: PyTorch and OpenVINO features of one precision
# agree to cosine 0.9999 (tests/test_runtime.py), so a store may hold both and lists them.
RUN_KEYS = frozenset({"runtime", "runtimes"})
# What a checkpoint insists on in the features it is given (the rest may differ: sampling,
# precision and runtime change features a little, not their meaning).
MODEL_KEYS = ("backbone", "feature_dim", "weights_sha256")
# A recorded value above this many bytes of JSON is compared, and recorded in each store entry,
# by its digest: a concept member's class list runs to 32 KB, and 45,000 entries need not hold
# 45,000 copies of it nor parse one on every read.
LARGE_VALUE_BYTES = 512


def jsonable(value):
    """json.dumps's `default` for the values records hold (numpy arrays and numbers, specs)."""
    import numpy as np

    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def json_bytes(value) -> bytes:
    """Compact UTF-8 JSON of a record (numpy values, tuples and specs as JSON has them)."""
    return json.dumps(value, default=jsonable, ensure_ascii=False).encode("utf-8")


def digest_large_values(record: Mapping) -> dict:
    """The record with every large value replaced by {"sha256": ...} (values already so stay)."""
    compact = {}
    for key, value in record.items():
        if isinstance(value, Mapping) and set(value) == {"sha256"}:
            compact[key] = dict(value)
            continue
        data = json_bytes(value)
        compact[key] = value if len(data) <= LARGE_VALUE_BYTES else {"sha256": hashlib.sha256(data).hexdigest()}
    return compact


class FeatureSpec(Mapping):
    """Everything a store's or a model's features depend on: backbone (members, weights, input
    size, mean/std, clip length, concept heads), sampling ("frames"), precision, mirroring, int8
    calibration, and the runtime that computed them. Frozen; equal when the records are."""

    __slots__ = ("_record", "_json", "_compact")

    def __init__(self, record: Mapping):
        # A JSON round trip: tuples become lists and numpy scalars numbers, so a spec built in
        # memory equals the same spec read back from a file.
        text = json_bytes(dict(record))
        object.__setattr__(self, "_json", text)
        object.__setattr__(self, "_record", json.loads(text))
        object.__setattr__(self, "_compact", None)

    def __setattr__(self, name, value):
        raise AttributeError("a FeatureSpec is frozen")

    def __reduce__(self):  # pickled as its record (worker processes, Ray tasks)
        return FeatureSpec, (self._record,)

    # --------------------------------------------------------------- made from
    @classmethod
    def from_dict(cls, record: Mapping | None) -> "FeatureSpec | None":
        """A recorded provenance (None stays None: stores and checkpoints that record none)."""
        if record is None or isinstance(record, FeatureSpec):
            return record
        return cls(record)

    @classmethod
    def of(cls, extractor, frames: str | None = None, mirror: bool = False) -> "FeatureSpec":
        """The spec of features a loaded backbone makes (`captioner.runtime`'s extractors record
        their runtime and resolved precision, a torch Backbone its network alone)."""
        record = dict(extractor.provenance())
        if frames is not None:
            record["frames"] = str(frames)
        if mirror:
            record["mirror"] = True
        return cls(record)

    @classmethod
    def asked(cls, backbone: str, frames: str, precision: str = "auto") -> "FeatureSpec":
        """What a command asks for before anything is loaded (a pipeline plans with it)."""
        return cls({"backbone": backbone, "frames": frames, "precision": precision})

    # --------------------------------------------------------------- read
    def __getitem__(self, key: str) -> Any:
        return self._record[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._record)

    def __len__(self) -> int:
        return len(self._record)

    def __hash__(self) -> int:
        return hash(self._json)

    def __repr__(self) -> str:
        shown = {k: self._record.get(k) for k in ("backbone", "frames", "precision", "runtime") if k in self._record}
        return f"FeatureSpec({shown})"

    @property
    def backbone(self) -> str | None:
        return self._record.get("backbone")

    @property
    def frames(self) -> str | None:
        return self._record.get("frames")

    @property
    def precision(self) -> str | None:
        return self._record.get("precision")

    @property
    def feature_dim(self) -> int | None:
        dim = self._record.get("feature_dim")
        return None if dim is None else int(dim)

    @property
    def mirror(self) -> bool:
        return bool(self._record.get("mirror"))

    def to_dict(self) -> dict:
        """The record as stored (a new dict each call)."""
        return json.loads(self._json)

    def compact(self) -> dict:
        """The record as each store entry holds it: large values by their digest."""
        if self._compact is None:
            object.__setattr__(self, "_compact", digest_large_values(self._record))
        return self._compact

    # --------------------------------------------------------------- compared
    def differences(self, other: "FeatureSpec | Mapping | None", keys: tuple[str, ...] | None = None) -> list[str]:
        """The keys on which two specs disagree, sorted.

        keys=None is a store's rule: every key either records, but where the features were
        computed (RUN_KEYS); a key one records and the other lacks differs. Given `keys`, only
        those both record are compared (a checkpoint's rule, MODEL_KEYS: older files recorded
        less). Large values compare by digest, so a store entry's compact record compares with
        the full one."""
        mine, theirs = self.compact(), FeatureSpec.from_dict(other or {}).compact()
        if keys is None:
            return sorted(k for k in (set(mine) | set(theirs)) - RUN_KEYS if mine.get(k) != theirs.get(k))
        return [k for k in keys if k in mine and k in theirs and mine[k] != theirs[k]]

    def pipeline_key(self) -> dict:
        """What a pipeline's extraction stage is keyed by: backbone and sampling, and the
        precision where it was asked by name (`captioner.precision.keyed_precision`)."""
        from .precision import keyed_precision

        return {"backbone": self.backbone, "frames": self.frames, **keyed_precision(self.precision or "auto")}
