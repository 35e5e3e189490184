"""The feature store: per-video frame features, the pooled vector and their provenance.

A store is a directory:

    STORE/store.json          what extracted it (backbone, weights checksum, sampling)
    STORE/videos/<id>.npz     frames (T x D), pooled (D), meta (JSON) and settings (JSON: the
                              store.json provenance it was written under)
    STORE/failures.jsonl      the last extraction's failures, one JSON object per line
    STORE/writer.lock         flock()ed by the one process allowed to write (holds its pid)

One file per video, written to a temporary name and renamed into place, is what makes the
store safe to SIGKILL at any moment: a reader sees a video completely or not at all, and a
re-run only has to ask which files exist. A single HDF5 file cannot promise that (a killed
writer can corrupt the whole file), so HDF5 and `.npy` folders are import/export formats.

One writer at a time: two extractions with different settings would otherwise interleave
their videos under one store.json. The kernel drops an flock when its holder dies, so a
SIGKILLed writer never leaves a stale lock behind. Readers take no lock and never delete.
"""

from __future__ import annotations

import io
import json
import os
import time
import weakref
import zipfile
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Iterable, Iterator
from urllib.parse import quote, unquote

import numpy as np

from . import locking
from .atomic import TMP_PREFIX, atomic_open, atomic_write
from .errors import CaptionerError, UsageError
from .feature_spec import FeatureSpec, json_bytes, jsonable

FORMAT = "captioner-features"
FORMAT_VERSION = 1
_SUFFIX = ".npz"
_GROUP_LEAVES = ("features", "frames", "feats")
_LOCK_NAME = "writer.lock"
_MEMBERS = ("frames", "pooled", "meta")


class MissingFeatures(CaptionerError, KeyError):
    """A video id that the store does not hold."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.format()


class StoreLocked(CaptionerError):
    """Another process is writing the store."""


class OtherSettings(CaptionerError):
    """A stored entry was extracted with other settings than those asked for."""


def _decode_meta(raw: np.ndarray) -> dict:
    return json.loads(bytes(raw).decode("utf-8"))


def _file_name(video_id: str) -> str:
    # Percent-encoding keeps any id (slashes, spaces, non-ASCII) a single, reversible file name.
    name = quote(video_id, safe="-_.,=+@")
    if name.startswith("."):
        name = "%2E" + name[1:]
    return name + _SUFFIX


def _video_id(file_name: str) -> str:
    return unquote(file_name[: -len(_SUFFIX)])


class FeatureStore(AbstractContextManager):
    """Random access to extracted features by video id.

    Open with `captioner.open_features(path)`; extraction opens it with mode="a", which takes
    the store's writer lock (refused with `StoreLocked` while another process holds it) until
    `close()`, the end of a `with` block, or the object's collection.
    """

    def __init__(self, path: str | os.PathLike, mode: str = "r"):
        if mode not in ("r", "a"):
            raise ValueError("mode must be 'r' or 'a'")
        self.path = Path(path)
        self.mode = mode
        self._videos = self.path / "videos"
        self._index_file = self.path / "store.json"
        self._ids: list[str] | None = None
        self._unlock = None
        if mode == "a":
            try:
                self._videos.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise CaptionerError(f"cannot create the feature store: {exc.strerror}", self.path) from None
            key = locking.acquire(self.path, _LOCK_NAME, "writing this feature store",
                                  "wait for it to finish or use another --out (one writer at a time keeps a store "
                                  "consistent)", StoreLocked)
            self._unlock = weakref.finalize(self, locking.release, key)
            if locking.holders(key) == 1:  # the first writer here: no write of ours is under way
                self._remove_stale_temporaries()
            if not self._index_file.exists():
                # Written by the first put() or set_provenance(), after their checks: a refused
                # run must leave no store.json that says nothing (the next run would trust it).
                self.info = {"format": FORMAT, "version": FORMAT_VERSION,
                             "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "provenance": None}
                return
        elif not self.path.is_dir():
            raise CaptionerError("feature store not found (run `captioner extract` first)", self.path)
        elif not self._index_file.exists():
            raise CaptionerError("not a feature store (no store.json); to read an HDF5 file or a "
                                 "folder of .npy files, convert it with `captioner features import`",
                                 self.path)
        self.info = self._read_info()

    # ----------------------------------------------------------------- store level
    def _read_info(self) -> dict:
        try:
            info = json.loads(self._index_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CaptionerError(f"unreadable store.json: {exc}", self._index_file) from None
        if info.get("format") != FORMAT:
            raise CaptionerError("not a captioner feature store", self._index_file)
        if info.get("version", 0) > FORMAT_VERSION:
            raise CaptionerError(f"store format version {info['version']} is newer than this "
                                 f"captioner understands ({FORMAT_VERSION}); upgrade captioner",
                                 self._index_file)
        return info

    def _write_info(self, info: dict) -> None:
        self._write(self._index_file, json.dumps(info, indent=2, default=jsonable).encode())

    def _write(self, path: Path, data: bytes) -> None:
        try:
            atomic_write(path, data)
        except OSError as exc:  # disk full, quota, read-only: the temporary file is already gone
            reason = exc.strerror or str(exc)
            raise CaptionerError(f"cannot write {path.relative_to(self.path)}: {reason}; everything "
                                 "written before is intact (free space and re-run to continue)",
                                 self.path) from None

    def close(self) -> None:
        """Give up writing (releases the writer lock); reading stays possible."""
        if self._unlock is not None:
            self._unlock()
            self.mode = "r"

    def __exit__(self, *exc) -> None:  # `with` closes it (AbstractContextManager's __enter__ gives self)
        self.close()

    @property
    def provenance(self) -> FeatureSpec | None:
        """What every video in this store was extracted with (captioner.feature_spec)."""
        recorded = self.info.get("provenance")
        cached = self.__dict__.get("_spec")
        if cached is None or cached[0] is not recorded:
            cached = self._spec = (recorded, FeatureSpec.from_dict(recorded))
        return cached[1]

    def set_provenance(self, provenance: dict, replace: bool = False) -> None:
        """Record the extraction settings; refuse to mix features of different extractors.

        `replace` (extract --overwrite): record these settings even so, deleting every entry
        made with other ones (a store's entries are never relabelled).

        The runtime that ran the backbone may differ between runs into one store (in one
        precision, PyTorch and OpenVINO features agree to cosine 0.9999; tests/test_runtime.py):
        the store lists every runtime under `runtimes`, each video's meta says its own. The
        precision may not (bf16 vs fp32 features differ more: 0.997 per video for Lite2).
        """
        self._require_writable()
        provenance = FeatureSpec.from_dict(provenance).to_dict()
        runtimes = {provenance.pop("runtime")} if "runtime" in provenance else set()
        own_runtimes = set(runtimes)
        current = self.provenance
        if current is not None:
            current = {k: v for k, v in current.items() if k != "runtimes"}
            runtimes |= set(self.provenance.get("runtimes", [])) if len(self) > 0 else set()
            if "precision" not in current and "precision" in provenance:
                current["precision"] = provenance["precision"]  # written before precisions were recorded
        if replace:
            for video_id in self.ids():
                try:
                    self.verified_meta(video_id, provenance)
                except OtherSettings:
                    self.delete(video_id)
                except CaptionerError:
                    pass  # corrupt: the next extraction redoes it
            runtimes = own_runtimes
        elif current is not None and current != provenance and len(self) > 0:
            raise UsageError(
                "store already holds features extracted with other settings "
                f"({', '.join(FeatureSpec(current).differences(provenance))} differ); use another --out, delete the "
                "store or pass --overwrite to extract them again", self.path)
        elif current is None:
            # store.json lost (or never given settings) beside existing videos: they still say
            # how they were made, and must not be relabelled with other settings.
            for video_id in self.ids():
                try:
                    differing = _differing_settings(self._recorded_settings(video_id), provenance)
                except CaptionerError:
                    continue  # unreadable entries are the next extraction's to redo
                if differing:
                    lost = "is missing" if not self._index_file.exists() else "records no settings"
                    raise UsageError(
                        f"store.json {lost} and the stored videos were extracted with other "
                        f"settings ({', '.join(differing)} differ, e.g. video {video_id!r}); use "
                        "another --out, delete the store or pass --overwrite to extract them again",
                        self.path)
        self.info["provenance"] = {**provenance, **({"runtimes": sorted(runtimes)} if runtimes else {})}
        self._write_info(self.info)

    def _remove_stale_temporaries(self) -> None:
        # Left behind by a writer killed between write and rename; ours to remove only because
        # we hold the writer lock (a reader doing this would delete a running writer's file).
        for folder in (self.path, self._videos):
            for entry in os.scandir(folder):
                if entry.name.startswith(TMP_PREFIX):
                    try:
                        os.unlink(entry.path)
                    except FileNotFoundError:
                        pass

    def _require_writable(self) -> None:
        if self.mode != "a":
            raise CaptionerError("feature store is opened read-only", self.path)

    # ----------------------------------------------------------------- reading
    def ids(self) -> list[str]:
        """Sorted ids of every completely written video."""
        if self._ids is None:
            self._ids = sorted(_video_id(e.name) for e in os.scandir(self._videos)
                               if e.name.endswith(_SUFFIX) and not e.name.startswith(TMP_PREFIX))
        return list(self._ids)

    def refresh(self) -> None:
        self._ids = None

    def __len__(self) -> int:
        return len(self.ids())

    def __contains__(self, video_id: str) -> bool:
        return (self._videos / _file_name(video_id)).exists()

    def __iter__(self) -> Iterator[str]:
        return iter(self.ids())

    def written_ns(self, video_id: str) -> int | None:
        """When the video's features were written (file mtime, ns); None when it has none."""
        try:
            return os.stat(self._videos / _file_name(video_id)).st_mtime_ns
        except FileNotFoundError:
            return None

    def _load(self, video_id: str, key: str):
        return self._load_many(video_id, (key,))[0]

    def _load_many(self, video_id: str, keys: tuple[str, ...]) -> list:
        path = self._videos / _file_name(video_id)
        try:
            with np.load(path, allow_pickle=False) as npz:
                values = [npz[key] for key in keys]
                settings = _decode_meta(npz["settings"]) if "settings" in npz.files else None
        except FileNotFoundError:
            raise MissingFeatures(f"no features for video id {video_id!r}", self.path) from None
        except (zipfile.BadZipFile, ValueError, OSError, KeyError, EOFError) as exc:
            raise CaptionerError(f"corrupt feature file ({exc}); re-run `captioner extract` into "
                                 "this store to redo it", path) from None
        self._check_settings(settings, path)
        return values

    def _check_settings(self, settings: dict | None, path: Path) -> None:
        if settings is None or self.provenance is None:
            return  # written before entries carried their settings, or by an import
        differing = FeatureSpec.from_dict(settings).differences(self.provenance)
        if differing:
            raise CaptionerError(f"features extracted with other settings than store.json records "
                                 f"({', '.join(differing)} differ); re-run `captioner extract` into "
                                 "this store to redo them", path)

    def _recorded_settings(self, video_id: str) -> tuple[dict | None, dict, int]:
        """(settings the entry was written under or None, its meta, its feature size), reading
        the small records and the array headers only."""
        path = self._videos / _file_name(video_id)
        try:
            with zipfile.ZipFile(path) as archive:
                names = set(archive.namelist())
                absent = [m for m in _MEMBERS if f"{m}.npy" not in names]
                if absent:
                    raise CaptionerError(f"corrupt feature file (no {', '.join(absent)})", path)
                meta = _decode_meta(_read_npy(archive, "meta"))
                settings = _decode_meta(_read_npy(archive, "settings")) if "settings.npy" in names else None
                frames_shape = _npy_shape(archive, "frames")
                pooled_shape = _npy_shape(archive, "pooled")
        except FileNotFoundError:
            raise MissingFeatures(f"no features for video id {video_id!r}", self.path) from None
        except (zipfile.BadZipFile, ValueError, OSError, KeyError, EOFError) as exc:
            raise CaptionerError(f"corrupt feature file ({exc})", path) from None
        if len(frames_shape) != 2 or frames_shape[0] < 1 or pooled_shape != frames_shape[1:]:
            raise CaptionerError(f"corrupt feature file (frames {frames_shape}, pooled {pooled_shape})", path)
        return settings, meta, frames_shape[1]

    def verified_meta(self, video_id: str, expected: dict | None = None) -> dict:
        """The meta of a readable entry written with the settings store.json records (or `expected`).

        Cheap enough to run on every entry of a re-run: opens the file's zip directory (a
        truncated file has none), reads the small meta and settings records and the array
        headers, never the arrays. Raises MissingFeatures when the store lacks the video and
        CaptionerError (the reason) when its entry is corrupt, OtherSettings when it was made
        with other settings.
        """
        recorded = self._recorded_settings(video_id)
        differing = _differing_settings(recorded, FeatureSpec(expected) if expected is not None
                                        else self.provenance or FeatureSpec({}))
        if differing:
            raise OtherSettings(f"extracted with other settings than store.json records "
                                 f"({', '.join(differing)} differ)", self._videos / _file_name(video_id))
        return recorded[1]

    def pooled(self, video_id: str) -> np.ndarray:
        """The time-pooled feature vector, shape (D,), float32."""
        return self._load(video_id, "pooled").astype(np.float32, copy=False)

    def frames(self, video_id: str) -> np.ndarray:
        """Per-frame (or per-clip) features, shape (T, D), float32."""
        return self._load(video_id, "frames").astype(np.float32, copy=False)

    def meta(self, video_id: str) -> dict:
        """Provenance of one video: backbone, weights checksum, frame indices, timestamps, ..."""
        return _decode_meta(self._load(video_id, "meta"))

    def pooled_with_meta(self, ids: Iterable[str]) -> tuple[np.ndarray, list[dict]]:
        """Pooled vectors (N, D) and each video's meta, every file opened once (training and
        prediction need both: the meta says whether an input was a still image)."""
        ids = list(ids)
        if not ids:
            return np.zeros((0, self.feature_dim or 0), np.float32), []
        pairs = [self._load_many(i, ("pooled", "meta")) for i in ids]
        return (np.stack([p.astype(np.float32, copy=False) for p, _ in pairs]),
                [_decode_meta(m) for _, m in pairs])

    def pooled_matrix(self, ids: Iterable[str] | None = None) -> tuple[list[str], np.ndarray]:
        """All pooled vectors at once, (N, D): what training and retrieval baselines want."""
        ids = self.ids() if ids is None else list(ids)
        if not ids:
            return ids, np.zeros((0, self.feature_dim or 0), np.float32)
        return ids, np.stack([self.pooled(i) for i in ids])

    @property
    def feature_dim(self) -> int | None:
        prov = self.provenance or {}
        if "feature_dim" in prov:
            return int(prov["feature_dim"])
        ids = self.ids()
        return int(self.pooled(ids[0]).shape[0]) if ids else None

    # ----------------------------------------------------------------- writing
    def put(self, video_id: str, frames: np.ndarray, meta: dict | None = None,
            pooled: np.ndarray | None = None) -> None:
        """Store one video atomically; `pooled` defaults to the mean over time."""
        self._require_writable()
        frames = np.asarray(frames, dtype=np.float32)
        if frames.ndim == 1:
            frames = frames[None, :]
        if frames.ndim != 2 or frames.shape[0] == 0:
            raise ValueError(f"frames must be (T, D) with T >= 1, got {frames.shape}")
        pooled = pool_over_time(frames) if pooled is None else np.asarray(pooled, dtype=np.float32)
        non_finite = non_finite_reason(frames) or non_finite_reason(pooled)
        if non_finite:  # a model trained on one NaN is all NaN
            raise CaptionerError(f"video {video_id!r}: {non_finite}", self.path)
        if not self._index_file.exists():
            self._write_info(self.info)
        records = {"meta": json_bytes(meta or {})}
        if self.provenance is not None:
            records["settings"] = json_bytes(self.provenance.compact())  # large values by digest
        buf = io.BytesIO()
        np.savez(buf, frames=frames, pooled=pooled,
                 **{name: np.frombuffer(data, dtype=np.uint8) for name, data in records.items()})
        self._write(self._videos / _file_name(video_id), buf.getvalue())
        if self._ids is not None and video_id not in self._ids:
            self._ids = None

    def delete(self, video_id: str) -> None:
        self._require_writable()
        try:
            os.unlink(self._videos / _file_name(video_id))
        except FileNotFoundError:
            pass
        self._ids = None

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.path)!r}, {len(self)} videos)"


def pool_over_time(frames: np.ndarray) -> np.ndarray:
    """A video's one vector: the mean of its per-frame (or per-clip) features, as the seed
    paper pools them. Stores keep it beside the frames; captioning computes it the same way."""
    return np.asarray(frames, dtype=np.float32).mean(axis=0)


def non_finite_reason(features: np.ndarray) -> str | None:
    """Why these features cannot be stored or trained on (NaN or infinite values), or None."""
    bad = int(features.size - np.count_nonzero(np.isfinite(features)))
    if bad == 0:
        return None
    return f"features hold NaN or infinite values ({bad} of {features.size}); refusing them"


def _read_npy(archive: zipfile.ZipFile, name: str) -> np.ndarray:
    with archive.open(f"{name}.npy") as fh:
        return np.lib.format.read_array(fh, allow_pickle=False)


def _npy_shape(archive: zipfile.ZipFile, name: str) -> tuple[int, ...]:
    with archive.open(f"{name}.npy") as fh:
        version = np.lib.format.read_magic(fh)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, _ = read_header(fh)
    return tuple(shape)


def _differing_settings(recorded: tuple[dict | None, dict, int], expected: FeatureSpec) -> list[str]:
    """Settings keys on which an entry disagrees with `expected` (a store provenance)."""
    settings, meta, dim = recorded
    if settings is not None:
        differing = set(FeatureSpec.from_dict(settings).differences(expected))
    else:
        # Written before entries carried their settings: extraction copied the provenance
        # into each video's meta, so compare the keys that has.
        shared = {k: meta[k] for k in expected if k in meta}
        differing = set(FeatureSpec.from_dict(shared).differences({k: expected[k] for k in shared}))
    if "feature_dim" in expected and dim != int(expected["feature_dim"]):
        differing.add("feature_dim")
    return sorted(differing)


def open_features(path: str | os.PathLike, mode: str = "r") -> FeatureStore:
    """Open a feature store written by `captioner extract` (mode "a" creates it)."""
    return FeatureStore(path, mode)


# --------------------------------------------------------------------- exchange formats
def export_features(store: FeatureStore, dest: str | os.PathLike, fmt: str = "auto") -> int:
    """Write every video to one HDF5 file (`dest.h5`) or a folder of `<id>.npy` files.

    HDF5: one (T, D) dataset per video id at the root, with the meta JSON as an attribute
    (the layout of video_features and most S2VT-style loaders). NPY: `<id>.npy` holding (T, D).
    """
    dest = Path(dest)
    fmt = _resolve_format(dest, fmt)
    try:
        return _export(store, dest, fmt)
    except OSError as exc:  # disk full, read-only: every file is atomic, so nothing torn is left
        raise CaptionerError(f"cannot write: {exc.strerror or exc}", exc.filename or dest) from None


def _export(store: FeatureStore, dest: Path, fmt: str) -> int:
    ids = store.ids()
    if fmt == "hdf5":
        import h5py

        with atomic_open(dest, "w+b") as fh, h5py.File(fh, "w") as h5:
            h5.attrs["provenance"] = json.dumps(store.provenance or {}, default=jsonable)
            for vid in ids:
                ds = h5.create_dataset(vid.replace("/", "%2F"), data=store.frames(vid))
                ds.attrs["meta"] = json.dumps(store.meta(vid), default=jsonable, ensure_ascii=False)
                ds.attrs["video_id"] = vid
    else:
        dest.mkdir(parents=True, exist_ok=True)
        for vid in ids:  # `features import` reads these back: a killed export must leave no torn file
            with atomic_open(dest / (_file_name(vid)[: -len(_SUFFIX)] + ".npy"), "wb") as fh:
                np.save(fh, store.frames(vid))
    return len(ids)


def import_features(source: str | os.PathLike, store: FeatureStore | str | os.PathLike, fmt: str = "auto",
                    provenance: dict | None = None) -> int:
    """Bring features made by other tools into a store; returns how many videos were added.

    Accepts an HDF5 file whose datasets (at the root or in groups) are (T, D) or (D,) arrays
    named by video id, or a folder of `<id>.npy` files with the same shapes. Every array is
    checked (shape, one feature size, finite values) and the store's settings compared before
    anything is written, so a refused import leaves the store as it was; given a path, the
    store is opened (created) only once the arrays have passed.
    """
    source = Path(source)
    if not source.exists():
        raise CaptionerError("no such file or folder", source)
    fmt = _resolve_format(source, fmt)
    if fmt == "hdf5":
        import h5py

        try:
            h5 = h5py.File(source, "r")
        except OSError as exc:
            raise CaptionerError(f"cannot open as HDF5: {exc}", source) from None
        with h5:
            return _import_arrays(source, _hdf5_arrays(h5), store, provenance)
    files = sorted(source.glob("*.npy"))
    if not files:
        raise CaptionerError("folder holds no .npy files", source)
    return _import_arrays(source, [(unquote(file.stem), file, lambda file=file: _load_npy(file), {})
                                   for file in files], store, provenance)


def _load_npy(file: Path) -> np.ndarray:
    try:
        return np.load(file, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise CaptionerError(f"not a readable .npy file: {exc}", file) from None


def _hdf5_arrays(h5) -> list[tuple]:
    """(video id, where, loader, meta) of every dataset of an open HDF5 file."""
    import h5py

    found = []

    def visit(name, obj):
        if not isinstance(obj, h5py.Dataset):
            return
        parent, _, leaf = name.rpartition("/")
        # Some tools write one group per video holding a "features" dataset.
        vid = obj.attrs.get("video_id") or (parent if parent and leaf in _GROUP_LEAVES else name)
        if isinstance(vid, bytes):
            vid = vid.decode("utf-8")
        meta_raw = obj.attrs.get("meta")
        meta = json.loads(meta_raw) if isinstance(meta_raw, (str, bytes)) else {}
        vid = str(vid).replace("%2F", "/")
        found.append((vid, None, lambda obj=obj: obj[()], meta))

    h5.visititems(visit)
    return found


def _import_arrays(source: Path, arrays: list[tuple], store: FeatureStore, provenance: dict | None) -> int:
    if not arrays:
        raise CaptionerError("no feature arrays found", source)
    dims: set[int] = set()
    for vid, where, load, _ in arrays:  # every check first: the arrays are read twice
        array = np.asarray(load(), dtype=np.float32)
        named = (where, "") if where is not None else (source, f"video {vid!r}: ")
        if array.ndim not in (1, 2) or array.size == 0:
            raise CaptionerError(f"{named[1]}features of shape {array.shape}; expected (T, D) or (D,)", named[0])
        reason = non_finite_reason(array)
        if reason:
            raise CaptionerError(named[1] + reason, named[0])
        dims.add(array.shape[-1])
        if len(dims) > 1:
            raise CaptionerError(f"videos have different feature sizes {sorted(dims)}", source)
    if provenance is None:
        provenance = {"backbone": f"imported:{source.name}", "feature_dim": dims.pop()}
    opened = not isinstance(store, FeatureStore)
    store = open_features(store, "a") if opened else store
    try:
        store.set_provenance(provenance)
        for vid, _, load, meta in arrays:
            array = np.asarray(load(), dtype=np.float32)
            store.put(vid, array if array.ndim == 2 else array[None, :], {**meta, "imported_from": str(source)})
    finally:
        if opened:
            store.close()
    return len(arrays)


def _resolve_format(path: Path, fmt: str) -> str:
    if fmt in ("hdf5", "h5"):
        return "hdf5"
    if fmt == "npy":
        return "npy"
    if fmt != "auto":
        raise CaptionerError(f"unknown feature format {fmt!r} (hdf5 or npy)", path)
    if path.suffix.lower() in (".h5", ".hdf5", ".hdf"):
        return "hdf5"
    if path.is_file():
        return "hdf5"
    return "npy"
