"""Caption video files end to end: decode → backbone → mean-pool → LSTM decoder.

    from captioner import Captioner
    captioner = Captioner.load()              # the default model shipped in the package
    captioner.caption("clip.mp4").caption     # 'a man is playing a guitar'

The backbone and the frame sampling come from the checkpoint's feature provenance, so a
model is always fed features made exactly like the ones it was trained on.
"""

from __future__ import annotations

import math
import os
import sys
import time
import zipfile
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .catalog import DEFAULT_MODEL
from .concepts import appearance_mask, heads, top_concepts
from .errors import CaptionerError, UsageError
from .grounding import RERANK_WEIGHT, head_support, rerank
from .inputs import video_id, video_ids
from .numpy_decoder import InferenceExport, export_path, read_export, source_name
from .predict import Decoding, Hypothesis, checkpoint_decoding, predict_captions
from .segments import merge_same_meaning, shot_starts, smooth_windows
from .store import pool_over_time
from .version import __version__


@dataclass
class Segment:
    start: float
    end: float
    caption: str
    score: float


@dataclass
class Caption:
    path: str
    id: str
    caption: str
    score: float  # log-probability of the caption / (words + 1) ** length_penalty
    alternatives: list[dict]  # the n-best list, best first: {"caption", "score"}
    model: str
    timing: dict = field(default_factory=dict)  # seconds: decode, backbone, caption
    segments: list[Segment] | None = None
    # What the backbones' classifier heads recognise (concept models): {"actions": [{"name", "p"}],
    # "objects": [...]}, most probable first; why the model said what it said.
    concepts: dict | None = None
    # How it was made, so a report can say (captioner report's "Run" table).
    checkpoint: str | None = None
    beam: int | None = None
    length_penalty: float | None = None
    max_len: int | None = None
    captioner_version: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def run_timing(timing: dict, startup: float, model_load: float, total: float) -> dict:
    """A caption's `timing` as it is reported (`captioner caption --json`, the server): the run's
    startup and model load around the input's own decode, backbone and caption seconds, then
    the total, in seconds rounded to 0.1 ms."""
    return {"startup": round(startup, 4), "model_load": round(model_load, 4), **timing, "total": round(total, 4)}


@dataclass
class _Encoded:
    """An input on its way to a caption: its features are computed, its words not yet."""

    path: str | os.PathLike
    id: str
    info: object  # video.VideoInfo
    pooled: np.ndarray
    timing: dict


class Captioner:
    """A caption model together with the backbone and frame sampling it was trained with.

    The decoder is the torch-free one (captioner.numpy_decoder), read from the inference export
    beside the checkpoint; with the OpenVINO runtime nothing here imports torch. Every caption
    goes through captioner.predict, with the checkpoint's own decoding settings (`self.decoding`)
    unless a call says otherwise.
    """

    def __init__(self, model: InferenceExport, backbone, device: str, model_id: str, load_seconds: float = 0.0,
                 decoding: Decoding | None = None):
        self.model = model
        self.decoding = decoding or checkpoint_decoding(model.meta)
        self._backbone = backbone
        self._backbone_loader: Callable[[], object] | None = None
        self.device = device
        self.model_id = model_id
        self.load_seconds = load_seconds
        provenance = model.provenance or {}
        self.sampling = provenance.get("frames", "uniform:16")
        self.concept_heads = heads(provenance)
        self.checkpoint_path = model.path  # load() names the checkpoint the export came from
        # on_pooled(path, window, decoded, pooled): called for every input (window None) and every
        # segment window ((start, end)) as soon as its frames are pooled, so a caller can keep
        # keyframes and features from the same pass that captions (captioner.library does).
        self.on_pooled: Callable[[str, tuple | None, object, np.ndarray], None] | None = None
        # --segments windows of one shot are smoothed towards their shot and neighbours that say
        # the same share one caption (captioner/segments.py); False captions each window alone.
        self.steady_segments = True
        # The beam's n-best list is ordered by score + this x the captions' agreement with what
        # the heads recognise (captioner/grounding.py); 0 keeps the beam's order.
        self.rerank_weight = RERANK_WEIGHT

    @property
    def _reranks(self) -> bool:
        return bool(self.rerank_weight) and bool(self.concept_heads)

    def _reranked(self, pooled: np.ndarray, nbest: list[Hypothesis]) -> list[Hypothesis]:
        if not self._reranks:
            return nbest
        return rerank(nbest, head_support(pooled, self.concept_heads), self.rerank_weight)

    def _searched(self, decoding: Decoding) -> Decoding:
        """What the beam is asked for: its whole n-best list when reranking will reorder it."""
        return decoding.but(n_best=max(decoding.count, decoding.beam)) if self._reranks else decoding

    @property
    def backbone(self):
        """The backbone; with load(load_backbone=False), loaded here the first time it is needed."""
        if self._backbone is None and self._backbone_loader is not None:
            self._backbone = self._backbone_loader()
        return self._backbone

    @classmethod
    def load(cls, model: str | os.PathLike = "default", device: str = "auto", runtime: str = "auto",
             precision: str = "auto", load_backbone: bool = True) -> "Captioner":
        """Load a checkpoint ("default" is the model inside the package) and its backbone.

        `runtime` and `precision` choose how the backbone runs (captioner.runtime): "auto" is
        OpenVINO on a CPU, where a warm compiled-model cache makes loading torch-free. The
        precision "auto" is the one the checkpoint's training features were computed in.
        `load_backbone=False` defers the backbone to the first video: captioning from a feature
        store (`caption_store`) never needs one.
        """
        from .device import resolve_device
        from .hashing import file_sha256
        from .precision import captioning_precision, check

        started = time.perf_counter()
        check(runtime, precision)  # a mistyped flag is reported before any model is read
        device = resolve_device(device)
        path = check_model(model)
        digest = file_sha256(path)
        inference = _inference_model(path, digest)
        if not _all_finite(vars(inference.decoder)):
            raise CaptionerError("checkpoint holds NaN or infinite weights (its training diverged); use another "
                                 "checkpoint", path)
        provenance = inference.provenance or {}
        if "backbone" not in provenance:
            raise CaptionerError("checkpoint does not record which backbone made its training features", path)

        def backbone():
            from .runtime import load_backbone

            chosen = captioning_precision(provenance, runtime, device) if precision == "auto" else precision
            loaded = load_backbone(provenance, runtime=runtime, precision=chosen, device=device)
            inference.check_features({**loaded.provenance(), "frames": provenance.get("frames")}, path)
            return loaded

        name = "default" if str(model) == "default" else path.stem
        model_id = f"{name}:{provenance['backbone']}:{digest[:12]}"
        captioner = cls(inference, backbone() if load_backbone else None, device, model_id)
        captioner._backbone_loader = backbone
        captioner.checkpoint_path = path
        captioner.load_seconds = time.perf_counter() - started
        return captioner

    # ------------------------------------------------------------------ features
    def _decoded(self, path, start: float | None = None, end: float | None = None):
        """(the sampled frames of `path` or of its window start..end, seconds spent decoding)."""
        from .video import Sampling, decode

        t0 = time.perf_counter()
        sampling = Sampling.parse(self.sampling, start=start, end=end)
        decoded = decode(path, sampling, short_side=self.backbone.decode_short_side,
                         clip_len=self.backbone.clip_len)
        return decoded, time.perf_counter() - t0

    def _pooled(self, decoded, decode_seconds: float, timing: dict):
        """The time-mean of the backbone's features of decoded frames; adds to `timing`."""
        t0 = time.perf_counter()
        features = np.asarray(self.backbone.features(decoded.frames, still=decoded.info.is_image), dtype=np.float32)
        if not np.isfinite(features).all():  # a backbone overflowing in low precision: no caption means anything
            raise CaptionerError("the backbone gave NaN or infinite features for this input", decoded.info.path)
        timing["decode"] = timing.get("decode", 0.0) + decode_seconds
        timing["backbone"] = timing.get("backbone", 0.0) + time.perf_counter() - t0
        return pool_over_time(features)

    def _describe(self, pooled: np.ndarray, sources: list[str], decoding: Decoding,
                  timings: list[dict]) -> list[list[Hypothesis]]:
        """Captions of pooled rows; each row's dict in `timings` gets its share of the time."""
        t0 = time.perf_counter()
        hyps = predict_captions(self.model.decoder, self.model.vocab, pooled, sources, self._searched(decoding))
        hyps = [self._reranked(row, nbest)[:decoding.count] for row, nbest in zip(pooled, hyps)]
        share = (time.perf_counter() - t0) / max(1, len(timings))
        for timing in timings:
            timing["caption"] = timing.get("caption", 0.0) + share
        return hyps

    def _result(self, path: str, video_id: str, nbest: list[Hypothesis], pooled: np.ndarray | None,
                decoding: Decoding, timing: dict | None = None, segments: list[Segment] | None = None) -> Caption:
        caption, score = nbest[0]
        concepts = top_concepts(pooled, self.concept_heads) if self.concept_heads and pooled is not None else None
        return Caption(path=str(path), id=video_id, caption=caption, score=score,
                       alternatives=[{"caption": c, "score": s} for c, s in nbest], model=self.model_id,
                       timing={k: round(v, 4) for k, v in (timing or {}).items()}, segments=segments,
                       concepts=concepts, checkpoint=str(self.checkpoint_path) if self.checkpoint_path else None,
                       beam=decoding.beam, length_penalty=decoding.length_penalty, max_len=decoding.max_len,
                       captioner_version=__version__)

    # ------------------------------------------------------------------ public
    def caption(self, path: str | os.PathLike, beam: int | None = None, n_best: int | None = None,
                max_len: int | None = None, segments: float | None = None,
                progress: Callable[[int, int], None] | None = None, length_penalty: float | None = None) -> Caption:
        """Caption one video or image; with `segments`, also each window of that many seconds.

        `beam`, `max_len` and `length_penalty` default to the checkpoint's (`self.decoding`);
        `n_best` (captions in `alternatives`) to 3, or the beam if smaller: more than the beam is
        refused (a UsageError), as everywhere (captioner.search.check_settings).
        progress(windows done, windows in all) is called before the first segment window and after
        each; an exception raised from it stops the work there.
        """
        decoding = self.decoding.but(beam, length_penalty, max_len, n_best)
        encoded = self._encode(path, video_id(Path(path)), self._decoded(path))
        if isinstance(encoded, CaptionerError):
            raise encoded
        return self._caption_encoded([encoded], decoding, segments, {path: progress} if progress else None)[0]

    def caption_many(self, paths, beam: int | None = None, n_best: int | None = None, max_len: int | None = None,
                     segments: float | None = None,
                     progress: Callable[[str, int, int], None] | None = None, length_penalty: float | None = None,
                     batch_size: int = 1) -> Iterator[tuple[str, Caption | CaptionerError]]:
        """Caption inputs in order: (path, its Caption, or the CaptionerError it failed with).

        Each Caption's id follows `captioner extract`'s rule (the file stem, or more of the path
        where two inputs share a stem), so ids stay unique. `batch_size` inputs are captioned
        together by one batched beam search (their frames go through the backbone one input at
        a time; a video's frames are a batch already). `progress(path, windows done, windows in
        all)` follows each input's segment windows.

        Each input's frames are decoded while the one before runs through the backbone and the
        decoder (`one_ahead`), so on 2 cores decoding and inference overlap.
        """
        decoding = self.decoding.but(beam, length_penalty, max_len, n_best)
        if batch_size < 1:
            raise CaptionerError(f"batch size must be at least 1, got {batch_size}")
        paths = list(paths)
        ids = video_ids([Path(p) for p in paths])  # same-stem inputs get ids of their own, as in a store
        follow = None if progress is None else {p: (lambda done, total, p=p: progress(p, done, total)) for p in paths}
        with closing(one_ahead(self._decoded, [(path,) for path in paths])) as decoded:
            batch: list = []
            for k, (path, frames) in enumerate(zip(paths, decoded)):
                # Pooled at once, so only the vectors of a batch wait for it, never its frames.
                batch.append(self._encode(path, ids[Path(path)], frames))
                if len(batch) == batch_size or k + 1 == len(paths):
                    yield from zip(paths[k + 1 - len(batch):k + 1],
                                   self._caption_encoded(batch, decoding, segments, follow))
                    batch = []

    def caption_frames(self, frames, fps: float | None = None, beam: int | None = None, n_best: int | None = None,
                       max_len: int | None = None, length_penalty: float | None = None,
                       name: str = "frames") -> Caption:
        """Caption frames already in memory: uint8 RGB, (T, H, W, 3) for a video or (H, W, 3) for a still.

        The model's frame sampling picks from them as from a file; `fps` (their rate) is needed
        only when that sampling is by time (fps:F). `name` becomes the Caption's path and id.
        """
        decoding = self.decoding.but(beam, length_penalty, max_len, n_best)
        t0 = time.perf_counter()
        decoded = _frames_as_video(frames, fps, self.sampling, self.backbone.clip_len, name)
        return self._caption_encoded([self._encode(name, name, (decoded, time.perf_counter() - t0))], decoding,
                                    None, None)[0]

    def caption_store(self, store, ids=None, beam: int | None = None, n_best: int | None = None,
                      max_len: int | None = None, length_penalty: float | None = None,
                      batch_size: int = 64) -> Iterator[tuple[str, Caption | CaptionerError]]:
        """Caption videos from a feature store `captioner extract` built, without decoding or a backbone.

        `store` is a path or an open FeatureStore; `ids` the videos to caption (default all, in
        store order). Yields (id, its Caption or the CaptionerError it failed with); a Caption's
        path is the file the store recorded for it. A store made with another backbone than the
        model's training features is refused (CaptionerError), as is a mirrored one.
        """
        from .predict import predict_store
        from .store import open_features

        decoding = self.decoding.but(beam, length_penalty, max_len, n_best)
        if batch_size < 1:
            raise CaptionerError(f"batch size must be at least 1, got {batch_size}")
        store = open_features(store) if isinstance(store, (str, os.PathLike)) else store
        self.model.check_features(store.provenance, store.path)
        # Other frames give other pooled vectors, so other captions than `captioner caption`'s.
        sampled = (store.provenance or {}).get("frames")
        if sampled is not None and str(sampled) != str(self.sampling):
            raise CaptionerError(f"the store's features sample frames {sampled}, the model's were {self.sampling}; "
                                 f"re-extract with --frames {self.sampling}", store.path)
        for item in predict_store(self.model.decoder, self.model.vocab, store, ids, self._searched(decoding),
                                  batch_size=batch_size):
            if item.error is not None:
                yield item.id, item.error
            elif not np.isfinite(item.pooled).all():  # stores written before extraction refused them
                yield item.id, CaptionerError(f"video {item.id!r}: features hold NaN or infinite values", store.path)
            else:
                yield item.id, self._result(item.meta.get("path") or item.id, item.id,
                                            self._reranked(item.pooled, item.hypotheses)[:decoding.count], item.pooled,
                                            decoding)

    def store_predictions(self, store, beam: int | None = None, length_penalty: float | None = None,
                          max_len: int | None = None) -> dict[str, str]:
        """Every video of a feature store captioned, id -> caption, as `evaluate` reads them; the
        first video that fails raises its CaptionerError (a pipeline's predictions are all or none)."""
        predictions = {}
        for video_id, result in self.caption_store(store, beam=beam, n_best=1, max_len=max_len,
                                                   length_penalty=length_penalty):
            if isinstance(result, CaptionerError):
                raise result
            predictions[video_id] = result.caption
        return predictions

    def _encode(self, path, video_id: str, decoded_and_seconds) -> "_Encoded | CaptionerError":
        """An input's pooled features (from a (decoded, seconds) pair or a future of one), or its error."""
        timing: dict = {}
        try:
            decoded, seconds = decoded_and_seconds.result() if hasattr(decoded_and_seconds, "result") \
                else decoded_and_seconds
            pooled = self._pooled(decoded, seconds, timing)
            if self.on_pooled is not None:
                self.on_pooled(path, None, decoded, pooled)
            return _Encoded(path, video_id, decoded.info, pooled, timing)
        except CaptionerError as error:
            return error

    def _caption_encoded(self, batch: list, decoding: Decoding, segments: float | None,
                         progress: dict | None) -> list[Caption | CaptionerError]:
        """Captions of pooled inputs (errors stay in place), decoded in one batched search."""
        results = list(batch)
        ready = [(k, item) for k, item in enumerate(batch) if isinstance(item, _Encoded)]
        if not ready:
            return results
        nbests = self._describe(np.stack([item.pooled for _, item in ready]),
                                [source_name(item.info.is_image) for _, item in ready], decoding,
                                [item.timing for _, item in ready])
        for (k, item), nbest in zip(ready, nbests):
            try:
                windows = None if segments is None else self._segments(
                    item.path, item.info, segments, decoding, item.timing, whole=nbest[0],
                    progress=None if progress is None else progress.get(item.path))
            except CaptionerError as error:
                results[k] = error
                continue
            results[k] = self._result(item.path, item.id, nbest, item.pooled, decoding, item.timing, windows)
        return results

    def _segments(self, path, info, seconds: float, decoding: Decoding, timing: dict, whole: Hypothesis,
                  progress: Callable[[int, int], None] | None = None) -> list[Segment]:
        windows = segment_windows(info.duration, seconds)
        if info.is_image or info.duration <= 0:  # one segment: the caption of the whole input
            return [Segment(0.0, max(info.duration, 0.0), *whole)]
        pooled = []
        if progress is not None:
            progress(0, len(windows))
        with closing(one_ahead(self._decoded, [(path, *window) for window in windows])) as decoded:
            for window, frames in zip(windows, decoded):
                frames = frames.result()
                pooled.append(self._pooled(*frames, timing))
                if self.on_pooled is not None:
                    self.on_pooled(path, window, frames[0], pooled[-1])
                if progress is not None:
                    progress(len(pooled), len(windows))
        vectors = np.stack(pooled)
        starts = [0]
        if self.steady_segments:
            appearance = vectors[:, appearance_mask(vectors.shape[1], self.concept_heads)]
            starts = shot_starts(appearance)
            vectors = smooth_windows(vectors, starts)
        captions = [tuple(best[0]) for best in self._describe(vectors, ["video"] * len(windows),
                                                                decoding.but(n_best=1), [timing])]
        if self.steady_segments:
            captions = merge_same_meaning(captions, starts)
        return [Segment(start, end, caption, score) for (start, end), (caption, score) in zip(windows, captions)]


def one_ahead(function: Callable, calls: list[tuple]) -> Iterator[Future]:
    """function(*args) for each of `calls`, in order, each started in a thread while the caller
    works on the one before: decoding (frames of videos or of segment windows) overlaps the
    backbone and the decoder, which release the GIL, on 2 cores. One ahead only, so at most
    two decoded inputs are in memory. Close the generator to cancel what has not started."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="captioner-decode")
    try:
        upcoming = pool.submit(function, *calls[0]) if calls else None
        for k in range(len(calls)):
            current = upcoming
            if k + 1 < len(calls):
                upcoming = pool.submit(function, *calls[k + 1])
            yield current
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def check_model(model: str | os.PathLike) -> Path:
    """The checkpoint file `model` names ("default": the one inside the package), or why there is none.

    A name that is not a path (no folder, no extension) is taken for a model name: there is one,
    "default", so anything else is a usage error (exit 2); a path to a missing file is exit 1.
    """
    if str(model) == "default":
        if not DEFAULT_MODEL.is_file():
            raise CaptionerError("the default model is missing from the installed package; "
                                 "reinstall video-captioner", DEFAULT_MODEL)
        return DEFAULT_MODEL
    path = Path(model)
    if not path.is_file():
        if not path.exists() and len(path.parts) == 1 and not path.suffix:
            raise UsageError(f"unknown model {str(model)!r}: give 'default' or a checkpoint file (.pt); "
                             "`captioner models` lists them")
        raise CaptionerError("checkpoint not found" if not path.exists() else "is a folder, not a checkpoint file",
                             path)
    return path


def _frames_as_video(frames, fps: float | None, sampling: str, clip_len: int, name: str):
    """In-memory frames as what `video.decode` returns: the model's sampling applied to them."""
    from .video import DecodedVideo, Sampling, VideoInfo, check_frame_size, clip_windows, sample_indices

    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim not in (3, 4) or frames.shape[-1] != 3 or 0 in frames.shape:
        raise CaptionerError(f"frames must be uint8 RGB, (T, H, W, 3) or (H, W, 3) for a still image; got "
                             f"{frames.dtype} {frames.shape}", name)
    still = frames.ndim == 3
    frames = frames[None] if still else frames
    check_frame_size(frames.shape[2], frames.shape[1], name)
    plan = Sampling.parse(sampling)
    if plan.mode == "fps" and fps is None and not still:
        raise CaptionerError(f"this model samples frames by time ({sampling}): give the frames' fps", name)
    if fps is not None and not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
        raise CaptionerError(f"fps must be a positive number, got {fps!r}", name)
    # Without a rate, uniform sampling only needs the frames evenly spaced: any rate will do.
    rate = 0.0 if still else float(fps or 25.0)
    count = len(frames)
    info = VideoInfo(path=name, duration=0.0 if still else count / rate, fps=rate, num_frames=count,
                     width=frames.shape[2], height=frames.shape[1], is_image=still, backend="memory")
    indices = np.zeros(1, np.int64) if still else sample_indices(info, plan)
    timestamps = indices / rate if rate else np.zeros(len(indices))
    picked = frames[clip_windows(indices, count, clip_len)] if clip_len > 1 else frames[indices]
    return DecodedVideo(frames=np.ascontiguousarray(picked), indices=indices, timestamps=timestamps, info=info)


def _all_finite(value) -> bool:
    """Whether every array in `value` (a decoder's attributes: arrays, lists and tuples of them) is finite."""
    if isinstance(value, np.ndarray):
        return value.dtype.kind != "f" or bool(np.isfinite(value).all())
    if isinstance(value, dict):
        return all(_all_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(_all_finite(v) for v in value)
    return True


def _inference_model(path: Path, digest: str) -> InferenceExport:
    """The checkpoint's decoder from its inference export; a missing, outdated or damaged export
    is made again from the checkpoint (with torch, once) and saved beside it for the next start."""
    beside = export_path(path)
    try:
        export = read_export(beside)
        if export.checkpoint_sha256 == digest:
            return export
    except CaptionerError:
        pass
    if not zipfile.is_zipfile(path):  # what torch.save writes; anything else fails without importing torch
        raise CaptionerError("not a readable checkpoint (not a PyTorch zip archive)", path)
    from .console import notice
    from .extras import require

    require(f"{path}: a checkpoint without a current inference export beside it (reading it once)", "torch")
    notice(f"{path.name}: writing its inference export beside it, once (loads torch)")
    from .model import export_inference, inference_export

    try:
        return read_export(export_inference(path, beside))
    except OSError:  # a read-only folder: decode from memory this time
        return inference_export(path)


# ---------------------------------------------------------------------- segments
# A last window shorter than this fraction of a segment joins the one before it: container
# durations run a few milliseconds past whole seconds, and a 6-ms subtitle helps nobody.
MIN_LAST_WINDOW = 0.25


def segment_windows(duration: float, seconds: float) -> list[tuple[float, float]]:
    """(start, end) of consecutive `seconds`-long windows covering `duration` seconds."""
    if not seconds > 0:
        raise CaptionerError(f"segment length must be positive, got {seconds}")
    count = max(1, math.ceil(duration / seconds - MIN_LAST_WINDOW))
    return [(round(k * seconds, 3), round(duration if k == count - 1 else (k + 1) * seconds, 3))
            for k in range(count)]


# ---------------------------------------------------------------------- progress
class CaptionProgress:
    """`extract`'s bar for `caption`, on stderr: inputs done, with the current input's segment
    windows beside it. Lines printed through `write` appear above the bar, never inside it."""

    def __init__(self, total: int, enabled: bool = True):
        self.bar = None
        if enabled and total > 0:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="video", dynamic_ncols=True, file=sys.stderr, desc="caption")

    def segments(self, path, done: int, total: int) -> None:
        """A caption_many progress callback: windows of the input being captioned."""
        if self.bar is not None:
            self.bar.set_postfix_str(f"{Path(path).name}: segment {done}/{total}")

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str("")
            self.bar.update(1)

    def write(self, line: str, file=None) -> None:
        file = file or sys.stdout
        if self.bar is None:
            print(line, file=file, flush=True)
            return
        self.bar.clear()
        print(line, file=file, flush=True)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
