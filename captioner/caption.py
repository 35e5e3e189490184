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
import queue
import sys
import threading
import time
import zipfile
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .catalog import DEFAULT_MODEL
from .concepts import appearance_mask, heads, top_concepts
from .errors import CaptionerError, UsageError
from .feature_spec import FeatureSpec
from .grounding import RERANK_WEIGHT, head_support, rerank
from .inputs import video_ids
from .numpy_decoder import InferenceExport, export_path, read_export, source_name
from .predict import Decoding, Hypothesis, checkpoint_decoding, predict_captions
from .segments import merge_same_meaning, shot_starts, smooth_windows
from .store import pool_over_time
from .version import __version__


# Rows one beam search takes at a time. Its memory grows with its rows (about 1 MB each with the
# default model: a 10-minute video's 120 windows at once added 110 MB to the peak), so the
# windows of a long video are described this many at a time and its peak does not grow with it.
SEARCH_ROWS = 32


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
class _Decoded:
    """Frames of one input, or of one of its --segments windows, decoded ahead of the backbone
    (or why that input cannot be decoded)."""

    input: int  # position among the inputs being captioned
    path: str | os.PathLike
    windows: list[tuple[float, float]] | None  # the input's windows; None: it is captioned whole
    window: int | None  # which of them these frames are; None: the whole input
    video: object  # video.DecodedVideo, or None with an error
    seconds: float
    error: CaptionerError | None = None

    @property
    def last(self) -> bool:
        """Whether this is the input's last piece: its caption can be made after it."""
        return self.error is not None or self.window is None or self.window == len(self.windows) - 1


@dataclass
class _Encoded:
    """An input on its way to a caption: its features are computed, its words not yet."""

    path: str | os.PathLike
    id: str
    info: object  # video.VideoInfo
    pooled: np.ndarray
    timing: dict
    windows: list[tuple[float, float]] | None = None  # with --segments: each window's (start, end)
    window_vectors: np.ndarray | None = None  # and its pooled features, one row per window


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
        self.sampling = model.provenance.frames if model.provenance and model.provenance.frames else "uniform:16"
        self.concept_heads = heads(model.provenance)
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
        trained_on = inference.provenance
        if trained_on is None or trained_on.backbone is None:
            raise CaptionerError("checkpoint does not record which backbone made its training features", path)

        def backbone():
            from .runtime import load_backbone

            chosen = captioning_precision(trained_on, runtime, device) if precision == "auto" else precision
            loaded = load_backbone(trained_on.backbone, runtime=runtime, precision=chosen, device=device)
            inference.check_features(FeatureSpec.of(loaded, trained_on.frames), path)
            return loaded

        name = "default" if str(model) == "default" else path.stem
        model_id = f"{name}:{trained_on.backbone}:{digest[:12]}"
        captioner = cls(inference, backbone() if load_backbone else None, device, model_id)
        captioner._backbone_loader = backbone
        captioner.checkpoint_path = path
        captioner.load_seconds = time.perf_counter() - started
        return captioner

    # ------------------------------------------------------------------ features
    def pooled_features(self, path: str | os.PathLike, start: float | None = None, end: float | None = None,
                        timing: dict | None = None) -> np.ndarray:
        """The pooled features the model captions `path` from, or its window start..end seconds
        from; `timing` (if given) gets the decode and backbone seconds."""
        from .video import Sampling, decode

        t0 = time.perf_counter()
        decoded = decode(path, Sampling.parse(self.sampling, start=start, end=end),
                         short_side=self.backbone.decode_short_side, clip_len=self.backbone.clip_len)
        return self._pooled(decoded, time.perf_counter() - t0, {} if timing is None else timing)

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
        hyps = predict_captions(self.model.decoder, self.model.vocab, pooled, sources, self._searched(decoding),
                                batch_size=SEARCH_ROWS)
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
        follow = None if progress is None else (lambda _path, done, total: progress(done, total))
        ((_, result),) = self.caption_many([path], beam=beam, n_best=n_best, max_len=max_len, segments=segments,
                                           progress=follow, length_penalty=length_penalty)
        if isinstance(result, CaptionerError):
            raise result
        return result

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

        With `segments`, every file is opened once and its windows decoded in order, and the
        whole input's caption is made from its windows' features (their mean, by duration):
        each frame and I3D clip is computed once, for its window and for the whole. Decoding runs
        one piece ahead in a thread (`prefetched`), so on 2 cores it overlaps the backbone and
        the decoder, which release the GIL, from one input to the next as well.
        """
        decoding = self.decoding.but(beam, length_penalty, max_len, n_best)
        if batch_size < 1:
            raise CaptionerError(f"batch size must be at least 1, got {batch_size}")
        if segments is not None:
            check_segment_length(segments)  # once here, not as every input's error in the decoding thread
        paths = list(paths)
        ids = video_ids([Path(p) for p in paths])  # same-stem inputs get ids of their own, as in a store
        encoded = self._encoded_inputs(paths, [ids[Path(p)] for p in paths], segments, progress)
        with closing(encoded):
            batch: list = []
            for k, item in enumerate(encoded):
                batch.append(item)  # only pooled vectors wait for a batch, never frames
                if len(batch) == batch_size or k + 1 == len(paths):
                    yield from zip(paths[k + 1 - len(batch):k + 1], self._caption_encoded(batch, decoding, segments))
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
        pooling = _InputPooling(self, name, None)
        pooling.add(_Decoded(0, name, None, None, decoded, time.perf_counter() - t0))
        return self._caption_encoded([pooling.result()], decoding, None)[0]

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
        sampled = store.provenance.frames if store.provenance is not None else None
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

    def _decode_inputs(self, paths: list, segments: float | None) -> Iterator[_Decoded]:
        """Each input's frames, whole or window by window, in the order the backbone takes them;
        an input that cannot be read is one piece with its error."""
        from .video import OpenVideo, Sampling

        short_side, clip_len = self.backbone.decode_short_side, self.backbone.clip_len
        for k, path in enumerate(paths):
            started, windows = time.perf_counter(), None
            try:
                with OpenVideo(path, short_side=short_side) as video:
                    if segments is not None and not video.info.is_image and video.info.duration > 0:
                        windows = segment_windows(video.info.duration, segments)
                    for n, window in enumerate(windows or [None]):
                        frames = video.decode(Sampling.parse(self.sampling, *(window or (None, None))), clip_len)
                        yield _Decoded(k, path, windows, None if windows is None else n, frames,
                                       time.perf_counter() - started)
                        started = time.perf_counter()
            except CaptionerError as error:
                yield _Decoded(k, path, windows, None, None, time.perf_counter() - started, error)

    def _encoded_inputs(self, paths: list, ids: list[str], segments: float | None,
                        progress: Callable[[str, int, int], None] | None) -> Iterator["_Encoded | CaptionerError"]:
        """Each input's pooled features (and its windows'), in input order, or its CaptionerError."""
        self.backbone  # noqa: B018  loaded here, not in the decoding thread that asks for its frame size
        with closing(prefetched(self._decode_inputs(paths, segments))) as pieces:
            pooling = None
            for piece in pieces:
                if pooling is None:
                    follow = None if progress is None else (lambda done, total, p=piece.path: progress(p, done, total))
                    pooling = _InputPooling(self, ids[piece.input], follow)
                pooling.add(piece)
                if piece.last:
                    yield pooling.result()
                    pooling = None

    def _caption_encoded(self, batch: list, decoding: Decoding,
                         segments: float | None) -> list[Caption | CaptionerError]:
        """Captions of pooled inputs (errors stay in place), decoded in one batched search."""
        results = list(batch)
        ready = [(k, item) for k, item in enumerate(batch) if isinstance(item, _Encoded)]
        if not ready:
            return results
        nbests = self._describe(np.stack([item.pooled for _, item in ready]),
                                [source_name(item.info.is_image) for _, item in ready], decoding,
                                [item.timing for _, item in ready])
        for (k, item), nbest in zip(ready, nbests):
            windows = None if segments is None else self._segments(item, decoding, whole=nbest[0])
            results[k] = self._result(item.path, item.id, nbest, item.pooled, decoding, item.timing, windows)
        return results

    def _segments(self, item: _Encoded, decoding: Decoding, whole: Hypothesis) -> list[Segment]:
        if item.windows is None:  # a still image or an input without duration: one segment, the whole
            return [Segment(0.0, max(item.info.duration, 0.0), *whole)]
        vectors, starts = item.window_vectors, [0]
        if self.steady_segments:
            appearance = vectors[:, appearance_mask(vectors.shape[1], self.concept_heads)]
            starts = shot_starts(appearance)
            vectors = smooth_windows(vectors, starts)
        captions = [tuple(best[0]) for best in self._describe(vectors, ["video"] * len(vectors),
                                                                decoding.but(n_best=1), [item.timing])]
        if self.steady_segments:
            captions = merge_same_meaning(captions, starts)
        return [Segment(start, end, caption, score) for (start, end), (caption, score) in zip(item.windows, captions)]


class _InputPooling:
    """One input's decoded pieces through the backbone as they arrive, each piece's frames let go
    once pooled: its windows' vectors and the whole input's, or the error it failed with."""

    def __init__(self, captioner: Captioner, video_id: str, progress: Callable[[int, int], None] | None):
        self.captioner, self.video_id, self.progress = captioner, video_id, progress
        self.timing: dict = {}
        self.vectors: list[np.ndarray] = []
        self.path, self.windows, self.info = None, None, None  # of the input, from its first piece
        self.keyframe = None  # the middle window's middle sample, for on_pooled's whole-input call
        self.error: CaptionerError | None = None

    def add(self, piece: _Decoded) -> None:
        if self.error is not None:  # the rest of a failed input's windows
            return
        if piece.error is not None:
            self.error = piece.error
            return
        self.path, self.windows, self.info = piece.path, piece.windows, piece.video.info
        captioner, windows = self.captioner, piece.windows
        if piece.window == 0 and self.progress is not None:
            self.progress(0, len(windows))
        try:
            pooled = captioner._pooled(piece.video, piece.seconds, self.timing)
        except CaptionerError as error:
            self.error = error
            return
        self.vectors.append(pooled)
        if captioner.on_pooled is not None:
            captioner.on_pooled(piece.path, None if windows is None else windows[piece.window], piece.video, pooled)
            if windows is not None and piece.window == len(windows) // 2:
                self.keyframe = middle_sample(piece.video)
        if windows is not None and self.progress is not None:
            self.progress(len(self.vectors), len(windows))

    def result(self) -> _Encoded | CaptionerError:
        if self.error is not None:
            return self.error
        if self.windows is None:
            return _Encoded(self.path, self.video_id, self.info, self.vectors[0], self.timing)
        vectors = np.stack(self.vectors)
        # The whole input is the time-mean of its windows: the same estimate as its own frames
        # would give, from more of them, and nothing computed twice.
        whole = np.average(vectors, axis=0, weights=[end - start for start, end in self.windows]).astype(np.float32)
        if self.captioner.on_pooled is not None:
            self.captioner.on_pooled(self.path, None, self.keyframe, whole)
        return _Encoded(self.path, self.video_id, self.info, whole, self.timing, self.windows, vectors)


def middle_sample(decoded):
    """A DecodedVideo of the middle sample (frame, or clip of frames) of `decoded` alone."""
    from .video import DecodedVideo

    middle = slice(len(decoded.frames) // 2, len(decoded.frames) // 2 + 1)
    return DecodedVideo(frames=decoded.frames[middle].copy(), indices=decoded.indices[middle],
                        timestamps=decoded.timestamps[middle], info=decoded.info)


_END = object()


def prefetched(items: Iterator, ahead: int = 1) -> Iterator:
    """The items of the generator `items`, each made in a thread while the caller works on the
    one before: decoding the next window or video overlaps the backbone and the decoder, which
    release the GIL, on 2 cores. At most `ahead` items are made before the caller asks for them,
    so no more than ahead + 1 decoded pieces are ever in memory. An exception the generator
    raises is raised here in its place. Closing this stops the thread and closes `items` after
    the item being made, so frames no one will use are not decoded."""
    made: queue.SimpleQueue = queue.SimpleQueue()
    slots = threading.Semaphore(ahead)  # one is given back each time the caller takes an item
    stop = threading.Event()

    def produce() -> None:
        try:
            while True:
                while not slots.acquire(timeout=0.05):
                    if stop.is_set():
                        return
                if stop.is_set():
                    return
                item = next(items, _END)
                made.put((item, None))
                if item is _END:
                    return
        except BaseException as error:  # noqa: BLE001  handed to the caller, which raises it
            made.put((None, error))
        finally:
            items.close()

    thread = threading.Thread(target=produce, name="captioner-decode", daemon=True)
    thread.start()
    try:
        while True:
            item, error = made.get()
            slots.release()  # the caller is done with the item before this one
            if error is not None:
                raise error
            if item is _END:
                return
            yield item
    finally:
        stop.set()
        thread.join()


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


def check_segment_length(seconds: float) -> None:
    if not seconds > 0:
        raise CaptionerError(f"segment length must be positive, got {seconds}")


def segment_windows(duration: float, seconds: float) -> list[tuple[float, float]]:
    """(start, end) of consecutive `seconds`-long windows covering `duration` seconds."""
    check_segment_length(seconds)
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
