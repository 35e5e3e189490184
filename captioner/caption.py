"""Caption video files end to end: decode → backbone → mean-pool → LSTM decoder.

    from captioner import Captioner
    captioner = Captioner.load()              # the default model shipped in the package
    captioner.caption("clip.mp4").caption     # 'a man is playing a guitar'

The backbone and the frame sampling come from the checkpoint's feature provenance, so a
model is always fed features made exactly like the ones it was trained on.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from .atomic import atomic_write
from .errors import CaptionerError

ASSETS = Path(__file__).resolve().parent / "assets"
DEFAULT_MODEL = ASSETS / "default" / "model.pt"
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

    def to_dict(self) -> dict:
        return asdict(self)


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Captioner:
    """A caption model together with the backbone and frame sampling it was trained with."""

    def __init__(self, checkpoint, backbone, device: str, model_id: str, load_seconds: float = 0.0,
                 length_penalty: float = DEFAULT_LENGTH_PENALTY):
        self.checkpoint = checkpoint
        self.length_penalty = length_penalty
        self.backbone = backbone
        self.device = device
        self.model_id = model_id
        self.load_seconds = load_seconds
        provenance = checkpoint.provenance or {}
        self.sampling = provenance.get("frames", "uniform:16")

    @classmethod
    def load(cls, model: str | os.PathLike = "default", device: str = "auto") -> "Captioner":
        """Load a checkpoint ("default" is the model inside the package) and its backbone."""
        from . import backbones
        from .extract import resolve_device
        from .model import load_checkpoint

        started = time.perf_counter()
        device = resolve_device(device)
        path = DEFAULT_MODEL if str(model) == "default" else Path(model)
        if str(model) == "default" and not path.is_file():
            raise CaptionerError("the default model is missing from the installed package; "
                                 "reinstall video-captioner", path)
        checkpoint = load_checkpoint(path, device=device)
        provenance = checkpoint.provenance or {}
        if "backbone" not in provenance:
            raise CaptionerError("checkpoint does not record which backbone made its training features", path)
        backbone = backbones.create(provenance["backbone"], device=device)
        checkpoint.check_features({**backbone.provenance(), "frames": provenance.get("frames")}, path)
        name = "default" if str(model) == "default" else path.stem
        model_id = f"{name}:{provenance['backbone']}:{_file_digest(path)[:12]}"
        return cls(checkpoint, backbone, device, model_id, time.perf_counter() - started)

    # ------------------------------------------------------------------ features
    def _pooled(self, path, start: float | None = None, end: float | None = None, timing: dict | None = None):
        import torch

        from .video import Sampling, decode

        timing = {} if timing is None else timing
        t0 = time.perf_counter()
        sampling = Sampling.parse(self.sampling, start=start, end=end)
        decoded = decode(path, sampling, short_side=self.backbone.decode_short_side,
                         clip_len=self.backbone.clip_len)
        t1 = time.perf_counter()
        frames = torch.from_numpy(decoded.frames).to(self.device)
        features = self.backbone.features(frames, still=decoded.info.is_image).float().mean(0)
        if self.device == "cuda":
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        timing["decode"] = timing.get("decode", 0.0) + t1 - t0
        timing["backbone"] = timing.get("backbone", 0.0) + t2 - t1
        return features, decoded.info

    def _describe(self, pooled, source: str, beam: int, n_best: int, max_len: int,
                  timing: dict) -> list[tuple[str, float]]:
        from .model import source_ids

        t0 = time.perf_counter()
        model = self.checkpoint.model
        device = next(model.parameters()).device
        hyps = model.generate(pooled[None].to(device), beam_size=beam, max_len=max_len, n_best=n_best,
                              length_penalty=self.length_penalty, sources=source_ids([source], device))[0]
        timing["caption"] = timing.get("caption", 0.0) + time.perf_counter() - t0
        return [(self.checkpoint.decode(tokens), float(score)) for tokens, score in hyps]

    # ------------------------------------------------------------------ public
    def caption(self, path: str | os.PathLike, beam: int = 3, n_best: int = 3, max_len: int = 20,
                segments: float | None = None, progress: Callable[[int, int], None] | None = None) -> Caption:
        """Caption one video or image; with `segments`, also each window of that many seconds.

        progress(windows done, windows in all) is called before the first segment window and after
        each; an exception raised from it stops the work there.
        """
        import torch

        from .model import source_name

        if beam < 1:
            raise CaptionerError(f"beam size must be at least 1, got {beam}")
        timing: dict = {}
        with torch.inference_mode():
            pooled, info = self._pooled(path, timing=timing)
            nbest = self._describe(pooled, source_name(info.is_image), beam, max(1, min(n_best, beam)), max_len,
                                   timing)
            windows = None
            if segments is not None:
                windows = self._segments(path, info, segments, beam, max_len, timing, whole=nbest[0],
                                         progress=progress)
        caption, score = nbest[0]
        return Caption(path=str(path), id=Path(path).stem, caption=caption, score=score,
                       alternatives=[{"caption": c, "score": s} for c, s in nbest], model=self.model_id,
                       timing={k: round(v, 4) for k, v in timing.items()}, segments=windows)

    def _segments(self, path, info, seconds: float, beam: int, max_len: int, timing: dict,
                  whole: tuple[str, float], progress: Callable[[int, int], None] | None = None) -> list[Segment]:
        windows = segment_windows(info.duration, seconds)
        if info.is_image or info.duration <= 0:  # one segment: the caption of the whole input
            return [Segment(0.0, max(info.duration, 0.0), *whole)]
        result = []
        if progress is not None:
            progress(0, len(windows))
        for start, end in windows:
            pooled, _ = self._pooled(path, start=start, end=end, timing=timing)
            caption, score = self._describe(pooled, "video", beam, 1, max_len, timing)[0]
            result.append(Segment(start, end, caption, score))
            if progress is not None:
                progress(len(result), len(windows))
        return result


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

