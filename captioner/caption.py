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
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .atomic import atomic_write
from .catalog import DEFAULT_MODEL
from .concepts import heads, top_concepts
from .errors import CaptionerError, UsageError
from .inputs import video_id, video_ids
from .numpy_decoder import InferenceExport, export_path, read_export, source_name
from .version import __version__

# Beam search ranks by log-probability / (words + 1) ** this: 0 favours short, generic captions.
DEFAULT_LENGTH_PENALTY = 0.5


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


class Captioner:
    """A caption model together with the backbone and frame sampling it was trained with.

    The decoder is the torch-free one (captioner.numpy_decoder), read from the inference export
    beside the checkpoint; with the OpenVINO runtime nothing here imports torch.
    """

    def __init__(self, model: InferenceExport, backbone, device: str, model_id: str, load_seconds: float = 0.0,
                 length_penalty: float = DEFAULT_LENGTH_PENALTY):
        self.model = model
        self.length_penalty = length_penalty
        self.backbone = backbone
        self.device = device
        self.model_id = model_id
        self.load_seconds = load_seconds
        provenance = model.provenance or {}
        self.sampling = provenance.get("frames", "uniform:16")
        self.concept_heads = heads(provenance)
        self.checkpoint_path = model.path  # load() names the checkpoint the export came from

    @classmethod
    def load(cls, model: str | os.PathLike = "default", device: str = "auto", runtime: str = "auto",
             precision: str = "auto") -> "Captioner":
        """Load a checkpoint ("default" is the model inside the package) and its backbone.

        `runtime` and `precision` choose how the backbone runs (captioner.runtime): "auto" is
        OpenVINO on a CPU, where a warm compiled-model cache makes loading torch-free. The
        precision "auto" is the one the checkpoint's training features were computed in.
        """
        from .hashing import file_sha256
        from .device import resolve_device
        from .runtime import check_options, load_backbone

        started = time.perf_counter()
        check_options(runtime, precision)  # a mistyped flag is reported before any model is read
        device = resolve_device(device)
        path = check_model(model)
        digest = file_sha256(path)
        inference = _inference_model(path, digest)
        provenance = inference.provenance or {}
        if "backbone" not in provenance:
            raise CaptionerError("checkpoint does not record which backbone made its training features", path)
        if precision == "auto":
            precision = _training_precision(provenance, runtime, device)
        backbone = load_backbone(provenance, runtime=runtime, precision=precision, device=device)
        inference.check_features({**backbone.provenance(), "frames": provenance.get("frames")}, path)
        name = "default" if str(model) == "default" else path.stem
        model_id = f"{name}:{provenance['backbone']}:{digest[:12]}"
        captioner = cls(inference, backbone, device, model_id, time.perf_counter() - started)
        captioner.checkpoint_path = path
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
        timing["decode"] = timing.get("decode", 0.0) + decode_seconds
        timing["backbone"] = timing.get("backbone", 0.0) + time.perf_counter() - t0
        return features.mean(0)

    def _describe(self, pooled, source: str, beam: int, n_best: int, max_len: int,
                  timing: dict) -> list[tuple[str, float]]:
        from threadpoolctl import threadpool_limits

        t0 = time.perf_counter()
        # A few (beam, 512) x (512, 2560) products per word: BLAS threads only add overhead
        # here, and on a busy 2-core machine they made decoding 10-20x slower (measured).
        with threadpool_limits(1, user_api="blas"):
            hyps = self.model.decoder.generate(pooled[None], beam_size=beam, max_len=max_len, n_best=n_best,
                                               length_penalty=self.length_penalty, sources=[source])[0]
        timing["caption"] = timing.get("caption", 0.0) + time.perf_counter() - t0
        return [(self.model.vocab.decode(tokens), float(score)) for tokens, score in hyps]

    # ------------------------------------------------------------------ public
    def caption(self, path: str | os.PathLike, beam: int = 3, n_best: int = 3, max_len: int = 20,
                segments: float | None = None, progress: Callable[[int, int], None] | None = None) -> Caption:
        """Caption one video or image; with `segments`, also each window of that many seconds.

        progress(windows done, windows in all) is called before the first segment window and after
        each; an exception raised from it stops the work there.
        """
        if beam < 1:
            raise CaptionerError(f"beam size must be at least 1, got {beam}")
        return self._caption_decoded(path, self._decoded(path), beam, n_best, max_len, segments, progress,
                                     video_id(Path(path)))

    def caption_many(self, paths, beam: int = 3, n_best: int = 3, max_len: int = 20,
                     segments: float | None = None,
                     progress: Callable[[str, int, int], None] | None = None
                     ) -> Iterator[tuple[str, Caption | CaptionerError]]:
        """Caption inputs in order: (path, its Caption, or the CaptionerError it failed with).

        `progress(path, windows done, windows in all)` follows each input's segment windows.

        Each input's frames are decoded while the one before runs through the backbone and the
        decoder (one ahead), so on 2 cores decoding and inference overlap.
        """
        if beam < 1:
            raise CaptionerError(f"beam size must be at least 1, got {beam}")
        paths = list(paths)
        ids = video_ids([Path(p) for p in paths])  # same-stem inputs get ids of their own, as in a store
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="captioner-decode")
        try:
            upcoming = pool.submit(self._decoded, paths[0]) if paths else None
            for k, path in enumerate(paths):
                current = upcoming
                if k + 1 < len(paths):
                    upcoming = pool.submit(self._decoded, paths[k + 1])
                try:
                    follow = None if progress is None else (lambda done, total, p=path: progress(p, done, total))
                    yield path, self._caption_decoded(path, current.result(), beam, n_best, max_len, segments,
                                                      follow, ids[Path(path)])
                except CaptionerError as error:
                    yield path, error
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _caption_decoded(self, path, decoded_and_seconds, beam: int, n_best: int, max_len: int,
                         segments: float | None, progress: Callable[[int, int], None] | None,
                         vid: str) -> Caption:
        timing: dict = {}
        decoded, seconds = decoded_and_seconds
        info = decoded.info
        pooled = self._pooled(decoded, seconds, timing)
        nbest = self._describe(pooled, source_name(info.is_image), beam, max(1, min(n_best, beam)), max_len, timing)
        windows = None
        if segments is not None:
            windows = self._segments(path, info, segments, beam, max_len, timing, whole=nbest[0],
                                     progress=progress)
        caption, score = nbest[0]
        return Caption(path=str(path), id=vid, caption=caption, score=score,
                       alternatives=[{"caption": c, "score": s} for c, s in nbest], model=self.model_id,
                       timing={k: round(v, 4) for k, v in timing.items()}, segments=windows,
                       concepts=top_concepts(pooled, self.concept_heads) if self.concept_heads else None,
                       checkpoint=str(self.checkpoint_path) if self.checkpoint_path else None, beam=beam,
                       length_penalty=self.length_penalty, max_len=max_len, captioner_version=__version__)

    def _segments(self, path, info, seconds: float, beam: int, max_len: int, timing: dict,
                  whole: tuple[str, float], progress: Callable[[int, int], None] | None = None) -> list[Segment]:
        windows = segment_windows(info.duration, seconds)
        if info.is_image or info.duration <= 0:  # one segment: the caption of the whole input
            return [Segment(0.0, max(info.duration, 0.0), *whole)]
        result = []
        # The next window is decoded while the backbone and the decoder work on this one (both
        # release the GIL, so on 2 cores they overlap); one ahead only, so a long video's
        # windows never pile up in memory.
        if progress is not None:
            progress(0, len(windows))
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="captioner-decode")
        try:
            upcoming = pool.submit(self._decoded, path, *windows[0])
            for k, (start, end) in enumerate(windows):
                decoded = upcoming.result()
                if k + 1 < len(windows):
                    upcoming = pool.submit(self._decoded, path, *windows[k + 1])
                pooled = self._pooled(*decoded, timing)
                caption, score = self._describe(pooled, "video", beam, 1, max_len, timing)[0]
                result.append(Segment(start, end, caption, score))
                if progress is not None:
                    progress(len(result), len(windows))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return result


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


def _training_precision(provenance: dict, runtime: str, device: str) -> str:
    """What precision="auto" means for captioning: the one the training features were computed in.

    A model fed features computed as in training says what it was validated to say; OpenVINO
    bf16 features changed 2 of the 18 test clips' captions of the fp32-trained default model
    (measured). Stores record their precision; older ones were PyTorch fp32.
    """
    from .runtime import cpu_has_bf16, resolve

    if resolve(runtime, "auto", device)[0] != "openvino":
        return "auto"
    if provenance.get("precision") in ("bf16", "mixed") and cpu_has_bf16():
        return provenance["precision"]
    return "fp32"


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
    from .model import export_inference, inference_export

    try:
        return read_export(export_inference(path, beside))
    except OSError:  # a read-only folder: decode from memory this time
        return inference_export(path)


# ---------------------------------------------------------------------- subtitles
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


def write_subtitles(segments: list[Segment], path: str | os.PathLike, fmt: str | None = None) -> Path:
    """Write segment captions as SRT or WebVTT (by `fmt`, else by the file extension)."""
    from datetime import timedelta

    path = Path(path)
    fmt = (fmt or path.suffix.lstrip(".")).lower()
    if fmt not in ("srt", "vtt"):
        raise CaptionerError("subtitle format must be srt or vtt", path)
    if fmt == "srt":
        import srt

        subtitles = [srt.Subtitle(index=i + 1, start=timedelta(seconds=s.start), end=timedelta(seconds=s.end),
                                  content=s.caption) for i, s in enumerate(segments)]
        text = srt.compose(subtitles)
    else:
        import webvtt

        vtt = webvtt.WebVTT()
        for s in segments:
            vtt.captions.append(webvtt.Caption(_vtt_time(s.start), _vtt_time(s.end), s.caption))
        text = vtt.content
    atomic_write(path, text)
    return path


def _vtt_time(seconds: float) -> str:
    millis = int(round(seconds * 1000))
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    return f"{hours:02d}:{minutes:02d}:{rest // 1000:02d}.{rest % 1000:03d}"

