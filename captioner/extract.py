"""Batch feature extraction: videos in, a feature store out.

Decoding runs in worker processes while the main process batches frames from several videos
through the backbone, so neither side waits for the other longer than it must. The main
process is the store's only writer (holding its writer lock, so no other run can interleave
videos of other settings), and each video is written atomically, which is what makes a
SIGKILL at any moment lose only the videos in flight. With `ray_address`, whole videos are
decoded and embedded on a Ray cluster and the features come back to the same single writer.

Worker processes import only `captioner.video` (no torch), and are replaced after a fixed
number of videos because decord's readers leak memory over thousands of files.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import ctypes
import dataclasses
import hashlib
import json
import multiprocessing
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .atomic import atomic_write, check_output_path
from .device import is_cuda, resolve_device
from .errors import CaptionerError, UsageError, printable
from .feature_spec import FeatureSpec
from .inputs import find_inputs, video_ids
from .version import __version__

# Videos a decoding process handles before it is replaced (bounds decord's leak).
VIDEOS_PER_WORKER = 64
# Bytes hashed at each end of an input to tell a replaced file from the one extracted.
FINGERPRINT_SPAN = 1 << 20
# Without decoding processes (workers=0), decode the next video in a thread while the backbone
# runs on the current one (FFmpeg and OpenVINO both release the GIL).
DECODE_AHEAD = False


@dataclass
class ExtractConfig:
    backbone: str = "efficientnet_lite2"
    frames: str = "uniform:16"
    batch_size: int | None = None  # frames per backbone batch; None: by device (see default_batch_size)
    workers: int | None = None  # decoding processes (0: decode inline); None: by device and cores
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    runtime: str = "auto"  # auto | torch | openvino (see captioner.runtime)
    precision: str = "auto"  # auto | fp32 | bf16 | mixed (captioner.runtime)
    ray_address: str | None = None
    ray_videos_per_task: int = 8
    # Mirror every frame left-right: a second view of a training set, for data.augment_features.
    mirror: bool = False

    def validate(self) -> None:
        """Every value's form, without torch: a pipeline config is checked when it is loaded."""
        from .catalog import check_backbone
        from .device import check_device
        from .precision import check
        from .video import Sampling

        Sampling.parse(self.frames)
        if self.batch_size is not None and self.batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.workers is not None and self.workers < 0:
            raise UsageError(f"--workers must be 0 or more, got {self.workers}")
        if self.ray_videos_per_task < 1:
            raise UsageError(f"ray_videos_per_task must be at least 1, got {self.ray_videos_per_task}")
        check(self.runtime, self.precision)
        check_device(self.device)
        check_backbone(self.backbone)


@dataclass
class ExtractSummary:
    total: int = 0
    done: int = 0
    skipped: int = 0
    changed: int = 0  # in the store already, but the file changed since: extracted again
    redone: int = 0  # in the store already, but unreadable or made with other settings: extracted again
    failures: list[dict] = field(default_factory=list)
    frames: int = 0
    seconds: float = 0.0

    @property
    def failed(self) -> int:
        return len(self.failures)

    def line(self) -> str:
        rate = f"{self.done / self.seconds:.2f} videos/s, {self.frames / self.seconds:.1f} frames/s" \
            if self.seconds > 0 and self.done else "nothing extracted" if self.failed else "nothing to do"
        notes = [f"{self.changed} changed since their last extraction"] if self.changed else []
        notes += [f"{self.redone} redone: stored features were corrupt or of other settings"] if self.redone else []
        changed = f" ({'; '.join(notes)})" if notes else ""
        return (f"extracted {self.done}{changed}, skipped {self.skipped} (already in store), "
                f"failed {self.failed} of {self.total} inputs in {self.seconds:.1f}s ({rate})")


# ----------------------------------------------------------------------------- settings
def default_batch_size(device: str, runtime: str = "torch") -> int:
    # Measured with EfficientNet-Lite2 on 2 CPU cores: PyTorch 25 frames/s at batch 1-4 against
    # 15 at batch 32 (small batches stay in cache); OpenVINO gains up to batch 16.
    # GPUs want large batches.
    if is_cuda(device):
        return 64
    return 16 if runtime == "openvino" else 4


def default_workers(device: str) -> int:
    cores = os.cpu_count() or 1
    if is_cuda(device):
        return max(1, min(cores - 1, 16))  # the GPU is fast: every spare core decodes
    # On CPU, inference needs the cores: a decoding process beside torch's threads slows both
    # (measured on 2 cores: 11 frames/s with one worker against 13 decoding inline).
    return cores // 4


# ----------------------------------------------------------------------------- decoding
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _decoder_worker_init(parent_pid: int) -> None:
    """Runs first in every decoding process: die with the parent, and leave Ctrl-C to it.

    Without this a SIGKILLed extraction leaves its decoder (and, through the descriptor the
    decoder inherited, multiprocessing's resource tracker) running for minutes, holding the
    terminal's stderr; and Ctrl-C, which the terminal sends to every process of the group,
    printed each worker's KeyboardInterrupt traceback beside the parent's one line.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL))
    if os.getppid() != parent_pid:  # the parent died before the death signal was armed
        os._exit(1)


def _decode_task(path: str, sampling: str, short_side: int, clip_len: int):
    """Runs in a worker process. Returns (path, DecodedVideo) or (path, error message)."""
    from .video import decode

    try:
        return path, decode(path, sampling, short_side=short_side, clip_len=clip_len)
    except CaptionerError as exc:
        return path, exc.reason
    except Exception as exc:  # a decoder bug must fail one video, not the batch
        return path, f"cannot decode ({type(exc).__name__}: {exc})"


class _Decoder:
    """Decodes videos in worker processes, at most `window` ahead of inference."""

    def __init__(self, paths: list[Path], workers: int, sampling: str, short_side: int, clip_len: int):
        self._todo = collections.deque(str(p) for p in paths)
        self._args = (sampling, short_side, clip_len)
        self._workers = workers
        self._window = max(2, 2 * workers)
        self._pool = self._new_pool() if workers > 0 else None
        self._running: dict[cf.Future, str] = {}

    def _new_pool(self):
        # spawn: the parent holds torch's thread pools, which must not be forked.
        return cf.ProcessPoolExecutor(self._workers, mp_context=multiprocessing.get_context("spawn"),
                                      max_tasks_per_child=VIDEOS_PER_WORKER,
                                      initializer=_decoder_worker_init, initargs=(os.getpid(),))

    def __iter__(self):
        if self._pool is None:
            yield from (self._decode_ahead() if DECODE_AHEAD else
                        (_decode_task(self._todo.popleft(), *self._args) for _ in range(len(self._todo))))
            return
        try:
            while self._todo or self._running:
                while self._todo and len(self._running) < self._window:
                    path = self._todo.popleft()
                    self._running[self._pool.submit(_decode_task, path, *self._args)] = path
                done, _ = cf.wait(self._running, return_when=cf.FIRST_COMPLETED)
                for future in done:
                    path = self._running.pop(future)
                    try:
                        yield future.result()
                    except cf.process.BrokenProcessPool:
                        # A decoder crashed hard (segfault, OOM kill). Every video in flight is
                        # suspect; fail them with a reason and carry on with a fresh pool.
                        yield path, "decoder process crashed on this file"
                        for other in list(self._running):
                            yield self._running.pop(other), "decoder process crashed while this file was in flight"
                        self._pool.shutdown(wait=False, cancel_futures=True)
                        self._pool = self._new_pool()
                        break
        except BaseException:  # Ctrl-C, an error in the caller (GeneratorExit), disk full, ...
            self._stop_workers()
            # With its workers dead this returns at once; waiting lets the pool's manager thread
            # close its wakeup pipe before the interpreter's exit hook writes to it (Python 3.11
            # races the two and prints an "Exception ignored ... Bad file descriptor" traceback).
            self._pool.shutdown(wait=True, cancel_futures=True)
            raise
        finally:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def _decode_ahead(self):
        """Inline decoding, one video ahead in a thread: at most two decoded videos in memory.
        Leaving early (an error, Ctrl-C) waits only for the one video being decoded."""
        with cf.ThreadPoolExecutor(1, thread_name_prefix="captioner-decode") as pool:
            pending: collections.deque[cf.Future] = collections.deque()
            try:
                while self._todo or pending:
                    while self._todo and len(pending) < 2:
                        pending.append(pool.submit(_decode_task, self._todo.popleft(), *self._args))
                    yield pending.popleft().result()
            finally:
                for future in pending:
                    future.cancel()

    def _stop_workers(self) -> None:
        # Interrupted runs must end now: a plain shutdown lets each worker finish its video
        # first, and the interpreter's exit waits for that (and a decoder stuck in FFmpeg would
        # hold it forever). Decoded frames live only in memory, so killing loses nothing.
        # ProcessPoolExecutor has no public way to do this before Python 3.14's kill_workers().
        for process in list((getattr(self._pool, "_processes", None) or {}).values()):
            process.kill()


# ----------------------------------------------------------------------------- inference
class _Batcher:
    """Packs the frames of consecutive videos into fixed-size backbone batches.

    Frames are prepared per video (videos differ in size: resized and cropped, on a GPU after
    the compact uint8 frames were moved there), then batched across videos.
    """

    def __init__(self, extractor, batch_size: int):
        self.extractor = extractor  # a captioner.runtime feature extractor
        self.batch_size = batch_size
        self._pending: list[tuple[str, int, object]] = []  # (video id, frames, prepared inputs)
        self._pending_frames = 0
        self._outputs: dict[str, list] = collections.defaultdict(list)
        self._missing: dict[str, int] = {}  # video id -> frames still without features

    def add(self, video_id: str, frames: np.ndarray, still: bool = False) -> list[tuple[str, np.ndarray]]:
        """Queue one video's frames; returns the videos whose features are complete. A still
        image skips the clip members of a combination (their part is zeros), so it is not batched."""
        if still and self.extractor.has_clip_members:
            return [(video_id, self.extractor.features(frames, still=True))]
        inputs = self.extractor.prepare(frames)
        count = len(frames)
        self._missing[video_id] = count
        start, finished = 0, []
        while start < count:
            take = min(self.batch_size - self._pending_frames, count - start)
            self._pending.append((video_id, take, _rows(inputs, start, start + take)))
            self._pending_frames += take
            start += take
            if self._pending_frames == self.batch_size:
                finished += self.flush()
        return finished

    def flush(self) -> list[tuple[str, np.ndarray]]:
        if not self._pending:
            return []
        features = self.extractor.infer(self.extractor.concat([x for _, _, x in self._pending]))
        finished, offset = [], 0
        for video_id, count, _ in self._pending:
            self._outputs[video_id].append(features[offset:offset + count])
            offset += count
            self._missing[video_id] -= count
            if self._missing[video_id] == 0:
                del self._missing[video_id]
                finished.append((video_id, np.concatenate(self._outputs.pop(video_id))))
        self._pending, self._pending_frames = [], 0
        return finished


def _rows(inputs, start: int, stop: int):
    """Rows of prepared inputs: one array, or a tuple of them (one per member of a combination)."""
    if isinstance(inputs, tuple):
        return tuple(x[start:stop] for x in inputs)
    return inputs[start:stop]


def mirrored(frames: np.ndarray) -> np.ndarray:
    """Frames (..., H, W, 3) flipped left-right."""
    return frames[..., ::-1, :]


def _video_meta(decoded, path: Path, spec: FeatureSpec) -> dict:
    info = decoded.info
    return {**spec, "path": str(path), "frame_indices": decoded.indices,
            "timestamps": np.round(decoded.timestamps, 4), "fps": info.fps, "duration": info.duration,
            "num_frames": info.num_frames, "width": info.width, "height": info.height,
            "is_image": info.is_image, "decoder": info.backend, "captioner_version": __version__}


_RAY_BACKBONES: dict[tuple[str, ...], object] = {}  # per Ray worker process: load weights once


def _embed_chunk(paths: list[str], backbone_name: str, sampling: str, device: str, batch_size: int,
                 mirror: bool, runtime: str, precision: str) -> list[tuple]:
    """Runs on a Ray worker: (path, (features, meta)) or (path, reason) for each of `paths`."""
    from .runtime import load_backbone

    key = (backbone_name, device, runtime, precision)
    if key not in _RAY_BACKBONES:
        # Each worker resolves `auto` for its own node: its CPU decides OpenVINO's precision.
        _RAY_BACKBONES[key] = load_backbone(backbone_name, runtime, precision, device)
    backbone = _RAY_BACKBONES[key]
    spec = FeatureSpec.of(backbone, sampling, mirror)
    results = []
    for path in paths:
        path, decoded = _decode_task(path, sampling, backbone.decode_short_side, backbone.clip_len)
        if isinstance(decoded, str):
            results.append((path, decoded))
            continue
        frames = mirrored(decoded.frames) if mirror else decoded.frames
        features = np.concatenate([backbone.features(frames[i:i + batch_size], still=decoded.info.is_image)
                                   for i in range(0, len(frames), batch_size)])
        results.append((path, (features, _video_meta(decoded, Path(path), spec))))
    return results


# ----------------------------------------------------------------------------- entry point
def extract(inputs: list[str | os.PathLike], store_path: str | os.PathLike,
            config: ExtractConfig | None = None, *, failures_path: str | os.PathLike | None = None,
            progress: bool = True, log=None, overwrite: bool = False) -> ExtractSummary:
    """Extract features for every input video into the store at `store_path`.

    Videos already in the store are skipped; videos that fail are reported (one line each on
    `log`, default stderr, and in the failure list) while the rest are still extracted. A store
    holding features of other settings is refused (UsageError) before anything is written,
    unless `overwrite`: then its entries of other settings are deleted or extracted again.
    """
    from .runtime import load_backbone
    from .store import open_features
    from .video import Sampling

    config = config or ExtractConfig()
    log = log or sys.stderr
    started = time.perf_counter()
    config.validate()
    sampling = str(Sampling.parse(config.frames))
    check_output_path(store_path, folder=True, flag="--out")
    paths, missing = find_inputs(inputs)
    if not paths:
        for _, error in missing:
            print(f"captioner: {error}", file=log)
        if missing:
            raise CaptionerError("nothing to extract: every input above is missing or holds no media")
        raise UsageError(f"no video or image files found in {', '.join(map(str, inputs))}")
    ids = video_ids(paths)

    device = resolve_device(config.device)
    backbone = load_backbone(config.backbone, config.runtime, config.precision, device)
    if config.batch_size is None:
        config = dataclasses.replace(config, batch_size=default_batch_size(device, backbone.runtime))
    spec = FeatureSpec.of(backbone, sampling, config.mirror)
    store = open_features(store_path, "a")
    try:
        return _extract_into(store, paths, missing, ids, backbone, spec, config, device,
                             failures_path or Path(store_path) / "failures.jsonl", progress, log, started,
                             overwrite)
    finally:
        store.close()


def _extract_into(store, paths, missing, ids, backbone, spec, config, device, failures_path,
                  progress, log, started, overwrite) -> ExtractSummary:
    from .store import OtherSettings

    store.set_provenance(spec, replace=overwrite)
    summary = ExtractSummary(total=len(paths) + len(missing))
    sources = {path: _source_or_none(path) for path in paths}
    todo = []
    for path in paths:
        status = _stored_status(store, ids[path], sources[path])
        if isinstance(status, OtherSettings):
            # store.json agrees, this entry does not (copied in, or left by an older captioner):
            # finished work is replaced only when asked for.
            raise UsageError(f"{status.reason}; pass --overwrite to extract it again with the settings asked "
                             "for, or use another --out", status.path)
        if status == "current":
            continue
        todo.append(path)
        if status == "changed":
            summary.changed += 1
        elif status != "missing":
            summary.redone += 1
            print(f"captioner: {status}; extracting it again", file=log)
    summary.skipped = len(paths) - len(todo)

    def fail(path, reason: str) -> None:
        summary.failures.append({"path": str(path), "id": ids.get(Path(path), Path(path).stem),
                                 "reason": reason})
        _write_line(log, bar, f"captioner: {printable(str(path))}: {reason}")

    bar = _progress(len(todo), progress)
    for path, error in missing:  # reported, and the batch goes on without them
        reason = error.reason if error.path == str(path) else error.format()  # a list entry: where it was listed
        summary.failures.append({"path": str(path), "id": path.stem, "reason": reason})
        _write_line(log, bar, f"captioner: {error}")
    try:
        if config.ray_address:
            from .distributed import map_chunks_on_ray

            # Ray gives each GPU task one GPU of its own, visible to it as cuda:0; a cuda:N asked
            # for on the driver's machine means nothing on the workers.
            worker_device = "cuda" if is_cuda(device) else device
            results = map_chunks_on_ray(
                _embed_chunk, [str(p) for p in todo], config.ray_videos_per_task,
                (config.backbone, spec.frames, worker_device, config.batch_size, config.mirror, config.runtime,
                 config.precision), config.ray_address, gpu=is_cuda(device))
            for path, outcome in results:
                if isinstance(outcome, str):
                    fail(path, outcome)
                    continue
                features, meta = outcome
                if _refused(features, path, fail):
                    continue
                store.put(ids[Path(path)], features, {**meta, "source": sources[Path(path)]})
                _advance(bar, summary, len(features))
        else:
            _extract_local(todo, ids, sources, backbone, config, device, spec, store,
                           summary, bar, fail)
    finally:
        if bar is not None:
            bar.close()
        summary.seconds = time.perf_counter() - started
        failing = sys.exc_info()[1] is not None
        try:
            _write_failures(failures_path, summary.failures)
        except CaptionerError:
            # A store that could not be written (disk full) cannot take the list either; the
            # error already under way is the one line the user needs, and a re-run rewrites it.
            if not failing:
                raise
    print(summary.line(), file=log)
    return summary


def source_fingerprint(path: str | os.PathLike) -> dict:
    """What identifies the file a video's features came from: size, mtime and a hash of its first
    and last MiB. Cheap enough for every input of a re-run, and unlike size and mtime alone it
    tells apart a file replaced by another one copied with its old mtime (`cp -p`)."""
    with open(path, "rb") as fh:
        stat = os.fstat(fh.fileno())
        digest = hashlib.sha256(fh.read(FINGERPRINT_SPAN))
        if stat.st_size > FINGERPRINT_SPAN:
            fh.seek(max(FINGERPRINT_SPAN, stat.st_size - FINGERPRINT_SPAN))
            digest.update(fh.read(FINGERPRINT_SPAN))
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "head_tail_sha256": digest.hexdigest()}


def _source_or_none(path: Path) -> dict | None:
    try:
        return source_fingerprint(path)
    except OSError:
        return None  # decoding will fail on it with a reason


def _stored_status(store, video_id: str, source: dict | None):
    """"missing", "current" (keep it), "changed" (the input is another file now), OtherSettings
    for an entry of other settings or, for a corrupt entry, the one-line reason why."""
    from .store import MissingFeatures, OtherSettings

    try:
        meta = store.verified_meta(video_id)
    except MissingFeatures:
        return "missing"
    except OtherSettings as exc:
        return exc
    except CaptionerError as exc:
        return str(exc)
    if source is None:
        return "current"  # unreadable now: decoding would fail; keep what was extracted
    recorded = meta.get("source")
    if recorded is None:  # written before entries recorded their input: it must be no newer
        return "current" if source["mtime_ns"] <= (store.written_ns(video_id) or 0) else "changed"
    return "current" if recorded == source else "changed"


def _extract_local(todo, ids, sources, backbone, config, device, spec, store, summary, bar,
                   fail):
    workers = default_workers(device) if config.workers is None else config.workers
    decoder = _Decoder(todo, workers, spec.frames, backbone.decode_short_side, backbone.clip_len)
    batcher = _Batcher(backbone, config.batch_size)
    in_flight: dict[str, tuple[Path, dict]] = {}

    def store_finished(finished) -> None:
        for video_id, features in finished:
            path, meta = in_flight.pop(video_id)
            if _refused(features, path, fail):
                continue
            store.put(video_id, features, meta)
            _advance(bar, summary, len(features))

    for path, outcome in decoder:
        if isinstance(outcome, str):
            fail(path, outcome)
            continue
        video_id = ids[Path(path)]
        meta = {**_video_meta(outcome, Path(path), spec), "source": sources[Path(path)]}
        in_flight[video_id] = (Path(path), meta)
        frames = mirrored(outcome.frames) if config.mirror else outcome.frames
        store_finished(batcher.add(video_id, frames, still=outcome.info.is_image))
    store_finished(batcher.flush())


def _refused(features: np.ndarray, path, fail) -> bool:
    """Fail one video whose features are not finite (a backbone overflowing in low precision)."""
    from .store import non_finite_reason

    reason = non_finite_reason(features)
    if reason:
        fail(path, reason)
    return reason is not None


def _progress(total: int, enabled: bool):
    if not enabled or total == 0:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="video", dynamic_ncols=True, file=sys.stderr, desc="extract")


def _advance(bar, summary: ExtractSummary, frames: int) -> None:
    summary.done += 1
    summary.frames += frames
    if bar is not None:
        elapsed = max(bar.format_dict["elapsed"], 1e-9)
        bar.set_postfix_str(f"{summary.done / elapsed:.2f} videos/s, {summary.frames / elapsed:.1f} frames/s",
                            refresh=False)
        bar.update(1)


def _write_line(log, bar, line: str) -> None:
    if bar is not None:
        bar.write(line, file=log)
    else:
        print(line, file=log)


def _write_failures(path: str | os.PathLike, failures: list[dict]) -> None:
    try:
        atomic_write(path, "".join(json.dumps(f, ensure_ascii=False) + "\n" for f in failures))
    except OSError as exc:
        raise CaptionerError(f"cannot write the failure list: {exc.strerror or exc}", path) from None
