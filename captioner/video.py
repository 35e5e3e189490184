"""Video and image decoding: metadata, frame sampling and frames as uint8 RGB arrays.

A first pass with PyAV (FFmpeg) indexes the video stream: frame count, timestamps, keyframes.
decord then decodes where its own index agrees with that one; PyAV decodes everything else:
files decord cannot open or decode, files where decord would seek to the wrong frames (AVI,
MPEG-4 with B-frames) and rotated phone videos. Images are one-frame videos, decoded with PIL.
Every problem with an input file becomes a one-line `CaptionerError` naming the file.

Frame sizes are bounded before any frame is decoded (`check_frame_size`, from the image header
or the container's stream header): the backbone resizes every frame to a fixed short side, so a
tiny file of 24000x1 pixels would otherwise grow into gigabytes.

Frame indices count frames in presentation order from 0; timestamps are seconds from the
first frame. Both backends agree on both, so sampling does not depend on the backend.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import CaptionerError, UsageError
from .inputs import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, is_media, not_regular

CORRUPT = "cannot decode: truncated or corrupt"

# The largest frames decoded: 100 megapixels holds 108-MP phone photos and 8K video (33 MP), and
# 20:1 holds phone panoramas. Memory grows with the long side over the short one, because the
# backbone scales the short side up or down to its input size; at 20:1 that is a few MB a frame.
MAX_MEGAPIXELS = 100.0
MAX_ASPECT_RATIO = 20.0
MEGAPIXELS_VARIABLE = "CAPTIONER_MAX_MEGAPIXELS"
ASPECT_RATIO_VARIABLE = "CAPTIONER_MAX_ASPECT_RATIO"


def frame_size_limits() -> tuple[float, float]:
    """(megapixels, aspect ratio) decoding accepts: the defaults, or the environment's overrides."""
    return (_limit_from_environment(MEGAPIXELS_VARIABLE, MAX_MEGAPIXELS, lowest=0.0, inclusive=False),
            _limit_from_environment(ASPECT_RATIO_VARIABLE, MAX_ASPECT_RATIO, lowest=1.0, inclusive=True))


def _limit_from_environment(variable: str, default: float, lowest: float, inclusive: bool) -> float:
    text = os.environ.get(variable, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < lowest or (value == lowest and not inclusive):
        raise UsageError(f"{variable} must be a number {'>=' if inclusive else '>'} {lowest:g}, got {text!r}")
    return value


def check_frame_size(width: int, height: int, path: str | os.PathLike) -> None:
    """Refuse frames too large or too elongated to decode, before any is decoded."""
    megapixels, aspect_ratio = frame_size_limits()
    if width * height > megapixels * 1e6:
        raise CaptionerError(f"{width}x{height} pixels: {width * height / 1e6:.3g} megapixels is more than the "
                             f"{megapixels:g} decoded here (set {MEGAPIXELS_VARIABLE} to change)", path)
    ratio = max(width, height) / min(width, height)
    if ratio > aspect_ratio:
        shown = f"{ratio:.1f}".removesuffix(".0")
        raise CaptionerError(f"{width}x{height} pixels: an aspect ratio of {shown}:1 is more than the "
                             f"{aspect_ratio:g}:1 decoded here (set {ASPECT_RATIO_VARIABLE} to change)", path)


# ----------------------------------------------------------------------------- metadata
@dataclass(frozen=True)
class VideoInfo:
    """What a file holds. Images: one frame, duration 0, fps 0.

    width/height are the displayed size (after any rotation the file asks for) at native
    resolution; `duration` runs from the first frame's start to the last frame's end.
    """

    path: str
    duration: float
    fps: float
    num_frames: int
    width: int
    height: int
    is_image: bool
    backend: str  # "decord" | "pyav" | "image"


def probe(path: str | os.PathLike) -> VideoInfo:
    with _open(path) as reader:
        return reader.info


# ----------------------------------------------------------------------------- sampling
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)(?:e[-+]?\d+)?"
_SPEC = re.compile(rf"^(?P<mode>uniform|fps|all)(?::(?P<value>[^@]+))?"
                   rf"(?:@(?P<start>{_NUMBER})?-(?P<end>{_NUMBER})?)?$")


@dataclass(frozen=True)
class Sampling:
    """Which frames to take: `uniform:N`, `fps:F` or `all`, optionally inside [start, end) seconds.

    uniform:N  the centres of N equal segments of the window's frames (fewer when it has fewer)
    fps:F      the frame on screen at the centre of each 1/F-second step, by real timestamps
    all        every frame in the window
    The string form is `MODE[:VALUE][@START-END]`, e.g. `uniform:16@2.5-7.5` (either bound
    may be left empty).
    """

    mode: str
    value: float | None
    start: float | None = None
    end: float | None = None

    def __post_init__(self):
        if self.mode == "uniform":
            if not (isinstance(self.value, (int, np.integer)) or (isinstance(self.value, float)
                                                                  and self.value.is_integer())) \
                    or self.value < 1:
                raise UsageError(f"uniform:N needs a whole number of frames N >= 1, got {self.value!r}")
            object.__setattr__(self, "value", int(self.value))
        elif self.mode == "fps":
            if not isinstance(self.value, (int, float)) or not math.isfinite(self.value) or self.value <= 0:
                raise UsageError(f"fps:F needs a frame rate F > 0, got {self.value!r}")
            object.__setattr__(self, "value", float(self.value))
        elif self.mode == "all":
            if self.value is not None:
                raise UsageError("'all' takes no value")
        else:
            raise UsageError(f"unknown frame sampling {self.mode!r}: use uniform:N, fps:F or all")
        for name in ("start", "end"):
            bound = getattr(self, name)
            if bound is not None:
                if not isinstance(bound, (int, float)) or not math.isfinite(bound) or bound < 0:
                    raise UsageError(f"time window {name} must be a number of seconds >= 0, got {bound!r}")
                object.__setattr__(self, name, float(bound))
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise UsageError(f"time window is empty: end {self.end:g} s <= start {self.start:g} s")

    @classmethod
    def parse(cls, spec: str, start: float | None = None, end: float | None = None) -> Sampling:
        match = _SPEC.match(str(spec).strip().lower())
        if match is None:
            raise UsageError(f"bad frame sampling {spec!r}: use uniform:N (e.g. uniform:16), fps:F (e.g. fps:2) "
                             "or all, optionally followed by @START-END seconds")
        mode, value = match["mode"], match["value"]
        if mode == "uniform":
            value = 16 if value is None else _number(value, spec, int)
        elif mode == "fps":
            if value is None:
                raise UsageError(f"bad frame sampling {spec!r}: fps needs a rate, e.g. fps:2")
            value = _number(value, spec, float)
        elif value is not None:
            raise UsageError(f"bad frame sampling {spec!r}: 'all' takes no value")
        if match["start"] is not None or match["end"] is not None:
            if start is not None or end is not None:
                raise UsageError(f"frame sampling {spec!r} has a time window already; do not give another")
            start = _number(match["start"], spec, float) if match["start"] else None
            end = _number(match["end"], spec, float) if match["end"] else None
        return cls(mode, value, start, end)

    def __str__(self) -> str:
        spec = "all" if self.mode == "all" else f"{self.mode}:{_exact(self.value)}"
        if self.start is None and self.end is None:
            return spec
        return f"{spec}@{_exact(self.start)}-{_exact(self.end)}"


def _exact(number: float | None) -> str:
    """The shortest text that parses back to exactly `number` ('' for None)."""
    if number is None:
        return ""
    return str(int(number)) if float(number).is_integer() and abs(number) < 1e15 else repr(float(number))


def _number(text: str, spec: str, kind: type):
    try:
        value = float(text)
        if kind is int and value.is_integer():
            return int(value)
        return value
    except ValueError:
        raise UsageError(f"bad frame sampling {spec!r}: {text!r} is not a number") from None


def sample_indices(info: VideoInfo, sampling: Sampling, timestamps: np.ndarray | None = None) -> np.ndarray:
    """Sorted, distinct frame indices (at least one) that `sampling` picks from the video.

    `timestamps` are the frames' start times in seconds (from the first frame); without them
    the frames are taken as evenly spaced at `info.fps`, which is wrong for variable-frame-rate
    videos, so pass the decoder's timestamps where you have them.
    """
    if timestamps is None:
        timestamps = np.arange(info.num_frames) / info.fps if info.fps > 0 else np.zeros(info.num_frames)
    timestamps = np.asarray(timestamps, dtype=np.float64)
    if len(timestamps) != info.num_frames or info.num_frames < 1:
        raise ValueError(f"{len(timestamps)} timestamps for {info.num_frames} frames")
    start = sampling.start or 0.0
    end = info.duration if sampling.end is None else min(sampling.end, info.duration)
    if start > 0 and start >= info.duration:
        raise CaptionerError(f"time window starts at {start:g} s, after the end of the video "
                             f"({info.duration:.3f} s)", info.path)

    def on_screen(t):  # the frame shown at time t: the last one to start at or before it
        return np.clip(np.searchsorted(timestamps, t, side="right") - 1, 0, len(timestamps) - 1)

    window = np.flatnonzero((timestamps >= start) & (timestamps < end))
    if len(window) == 0:  # a window inside one frame's display time (a variable-frame-rate gap)
        window = np.array([on_screen(start)])

    if sampling.mode == "all":
        return window.astype(np.int64)
    if sampling.mode == "uniform":
        n = int(sampling.value)
        if len(window) <= n:
            return window.astype(np.int64)
        return window[((np.arange(n) + 0.5) * len(window) / n).astype(np.int64)].astype(np.int64)
    step = 1.0 / sampling.value
    times = start + (np.arange(math.ceil((end - start) / step)) + 0.5) * step
    times = times[times < end]
    if len(times) == 0:  # window shorter than half a step: its middle stands for it
        times = np.array([(start + end) / 2])
    return np.unique(on_screen(times)).astype(np.int64)


def clip_windows(indices: np.ndarray, num_frames: int, clip_len: int) -> np.ndarray:
    """(T, clip_len) frame indices: `clip_len` consecutive frames centred on each index.

    A window that would run past either end of the video is shifted inside it, so every clip
    holds real consecutive frames; only a video shorter than `clip_len` repeats its last frame.
    """
    first = np.clip(np.asarray(indices) - clip_len // 2, 0, max(num_frames - clip_len, 0))
    return np.minimum(first[:, None] + np.arange(clip_len)[None, :], num_frames - 1).astype(np.int64)


# ----------------------------------------------------------------------------- decoding
@dataclass
class DecodedVideo:
    frames: np.ndarray  # uint8 RGB, (T, H, W, 3), or (T, L, H, W, 3) when clip_len > 1
    indices: np.ndarray  # (T,) frame index of each sample (the centre frame of each clip)
    timestamps: np.ndarray  # (T,) seconds from the first frame
    info: VideoInfo


def decode(path: str | os.PathLike, sampling: Sampling | str = "uniform:16", *, short_side: int | None = None,
           clip_len: int = 1, threads: int = 0) -> DecodedVideo:
    """Decode the frames `sampling` picks from a video or image file.

    short_side: decode at a size whose shorter side is this many pixels, keeping the aspect
        ratio (the decoder scales while decoding, which is much cheaper than resizing after).
        Frames already smaller are returned at their native size, never upscaled: the backbone's
        own preprocessing resizes them. None decodes at native size.
    clip_len: for clip (3D) backbones, return `clip_len` consecutive frames around each sampled
        frame (see `clip_windows`), shape (T, clip_len, H, W, 3).
    threads: decoder threads; 0 lets the decoder choose (all cores). Worker processes that
        decode in parallel should pass 1.
    """
    with OpenVideo(path, short_side=short_side, threads=threads) as video:
        return video.decode(sampling, clip_len=clip_len)


class OpenVideo(AbstractContextManager):
    """A video or image file opened once, to decode several samplings of it in turn.

    The time windows of `caption --segments` are decoded through one of these: the file is
    indexed once, not once per window, and windows asked for in order continue the decoder
    where the last one stopped instead of seeking (or, for AVI, decoding from the first frame)
    again, so a long video costs time in proportion to its length. Not thread-safe: one
    thread decodes at a time. `short_side` and `threads` are as in `decode`.
    """

    def __init__(self, path: str | os.PathLike, *, short_side: int | None = None, threads: int = 0):
        if short_side is not None and (not isinstance(short_side, (int, np.integer)) or short_side < 1):
            raise UsageError(f"short_side must be a positive number of pixels, got {short_side!r}")
        self._short_side, self._threads = short_side, threads
        self._reader = _open(path, short_side, threads)
        self.info: VideoInfo = self._reader.info

    def decode(self, sampling: Sampling | str = "uniform:16", clip_len: int = 1) -> DecodedVideo:
        """The frames `sampling` picks (its time window, if any, inside this file), as `decode`."""
        if isinstance(sampling, str):
            sampling = Sampling.parse(sampling)
        if not isinstance(clip_len, (int, np.integer)) or clip_len < 1:
            raise UsageError(f"clip_len must be a whole number >= 1, got {clip_len!r}")
        try:
            return _decode(self._reader, sampling, clip_len)
        except _DecordFailed:  # it opened the file but failed on the frames: FFmpeg proper may not
            self._reader.close()
            self._reader = _PyAVReader(self._reader.index, self._short_side, self._threads)
            return _decode(self._reader, sampling, clip_len)

    def close(self) -> None:
        self._reader.close()

    def __exit__(self, *exc) -> None:  # `with` closes it (AbstractContextManager's __enter__ gives self)
        self.close()


def _decode(reader: _Reader, sampling: Sampling, clip_len: int) -> DecodedVideo:
    indices = sample_indices(reader.info, sampling, reader.timestamps)
    if clip_len == 1:
        frames = reader.read(indices)
    else:
        windows = clip_windows(indices, reader.info.num_frames, clip_len)
        needed, where = np.unique(windows, return_inverse=True)
        frames = reader.read(needed)[where.reshape(windows.shape)]
    return DecodedVideo(frames=frames, indices=indices, timestamps=reader.timestamps[indices], info=reader.info)


def scaled_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """(width, height) with the shorter side at `short_side`, aspect ratio kept, never upscaled."""
    if short_side is None or min(width, height) <= short_side:
        return width, height
    scale = short_side / min(width, height)
    if width <= height:
        return short_side, max(1, round(height * scale))
    return max(1, round(width * scale)), short_side


class _DecordFailed(Exception):
    """decord cannot be trusted with this file, or failed while decoding it."""


class _Reader:
    """An open file: its info, every frame's timestamp, and `read(sorted distinct indices)`."""

    info: VideoInfo
    timestamps: np.ndarray

    def read(self, indices: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _open(path: str | os.PathLike, short_side: int | None = None, threads: int = 0,
          use_decord: bool = True) -> _Reader:
    path = _check_file(path)
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return _ImageReader(path, short_side)
    index = _StreamIndex(path)
    if use_decord:
        try:
            return _DecordReader(index, short_side, threads)
        except _DecordFailed:
            pass
    return _PyAVReader(index, short_side, threads)


def _check_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise CaptionerError("file not found", path)
    if path.is_dir():
        raise CaptionerError("is a folder, not a video or image file", path)
    if not_regular(path):
        raise CaptionerError(not_regular(path), path)
    if not is_media(path):
        raise CaptionerError(f"unsupported file type {path.suffix or '(no extension)'!r}: expected a video "
                             f"({', '.join(sorted(VIDEO_EXTENSIONS))}) or an image "
                             f"({', '.join(sorted(IMAGE_EXTENSIONS))})", path)
    if not os.access(path, os.R_OK):
        raise CaptionerError("permission denied", path)
    if path.stat().st_size == 0:
        raise CaptionerError("empty file", path)
    return path


class _StreamIndex:
    """FFmpeg's (PyAV's) index of the video stream, read before any backend decodes.

    One pass over the packets, without decoding them, gives the true frame count, every
    frame's timestamp and the keyframes, whatever the header claims. Both backends use it, so
    they agree on frame indices and timestamps, and it is what decord is checked against.
    Decoding the first frame tells the rotation (it lives in frame side data) and catches
    files whose header opens but whose data does not decode.

    AVI stores no presentation timestamps: FFmpeg numbers its packets in decoding order, so
    with B-frames the numbers are not in display order. There frames are known only by their
    position in the decoder's output (`by_position`), at the nominal constant frame rate,
    which is what AVI means by definition.
    """

    def __init__(self, path: Path):
        import av

        self.path = path
        first = None
        packets = []  # (pts, duration, is_keyframe)
        try:
            with av.open(str(path)) as container:
                if not container.streams.video:
                    raise CaptionerError("not a video (no video stream)", path)
                stream = container.streams.video[0]
                declared = stream.codec_context.width, stream.codec_context.height
                if min(declared) > 0:  # 0 when the header does not say; the first frame is checked below
                    check_frame_size(*declared, path)
                for packet in container.demux(stream):
                    if packet.size == 0:  # the demuxer's end-of-stream marker
                        continue
                    pts = packet.pts if packet.pts is not None else packet.dts
                    packets.append((pts, packet.duration or 0, packet.is_keyframe))
                    if first is None:
                        first = next(iter(packet.decode()), None)
                if first is None and packets:  # decoders that hold frames back until flushed
                    first = next(iter(stream.decode(None)), None)
                promised = stream.frames  # from the header; 0 when the container does not say
                self.by_position = "avi" in container.format.name.split(",")
                rate = stream.average_rate or stream.guessed_rate
                time_base = stream.time_base
        except av.FFmpegError as error:
            raise CaptionerError(f"{CORRUPT} ({_ffmpeg_reason(error)})", path) from None
        if not packets or first is None:
            raise CaptionerError(f"{CORRUPT} (no frame decodes)", path)
        # An interrupted download keeps its header, which still counts the missing frames.
        if promised > 0 and len(packets) < 0.98 * promised - 1:
            raise CaptionerError(f"{CORRUPT} (the header promises {promised} frames, only {len(packets)} "
                                 "are there)", path)
        if self.by_position:
            if not rate:
                raise CaptionerError(f"{CORRUPT} (AVI without a frame rate)", path)
            packets = [(i, 1, key) for i, (_, _, key) in enumerate(packets)]
            time_base = 1 / rate
        if any(pts is None for pts, _, _ in packets):
            raise CaptionerError(f"{CORRUPT} (video packets without timestamps)", path)
        packets.sort()  # decoding order -> presentation order
        self.pts = np.array([pts for pts, _, _ in packets], dtype=np.int64)
        if (np.diff(self.pts) <= 0).any():
            raise CaptionerError(f"{CORRUPT} (frames with the same timestamp)", path)
        self.keyframes = np.flatnonzero([key for _, _, key in packets])
        if len(self.keyframes) == 0 or self.keyframes[0] != 0:
            self.keyframes = np.concatenate([[0], self.keyframes])
        self.timestamps = (self.pts - self.pts[0]) * float(time_base)
        span = self.timestamps[-1]
        self.fps = float(rate) if rate else (len(packets) - 1) / span if span > 0 else 0.0
        last_duration = packets[-1][1] * float(time_base) or (1 / self.fps if self.fps > 0 else 0.0)
        self.duration = span + last_duration

        self.rotation = int(first.rotation) % 360
        if self.rotation % 90:
            raise CaptionerError(f"unsupported rotation of {self.rotation} degrees", path)
        check_frame_size(first.width, first.height, path)  # the stream header may have lied
        self.coded_width, self.coded_height = first.width, first.height
        self.width, self.height = self.coded_width, self.coded_height
        if self.rotation in (90, 270):
            self.width, self.height = self.height, self.width

    def coded_size(self, short_side: int | None) -> tuple[int, int]:
        """Size to decode at so that the displayed frame has `short_side`."""
        width, height = scaled_size(self.width, self.height, short_side)
        return (height, width) if self.rotation in (90, 270) else (width, height)

    def info(self, backend: str) -> VideoInfo:
        return VideoInfo(path=str(self.path), duration=float(self.duration), fps=self.fps,
                         num_frames=len(self.pts), width=self.width, height=self.height, is_image=False,
                         backend=backend)


def _ffmpeg_reason(error: Exception) -> str:
    return getattr(error, "strerror", None) or str(error)


def _decord():
    import decord

    # Its bundled FFmpeg would log every broken packet to stderr; failures reach us as exceptions.
    decord.logging.set_level(decord.logging.QUIET)
    return decord


class _DecordReader(_Reader):
    """decord, where it agrees with FFmpeg's index.

    decord seeks by its own frame timestamps and keyframe list. Where those are wrong it
    silently returns the wrong frames: AVI has no timestamps at all (every MSVD clip), and
    MPEG-4 Part 2 with B-frames shifts its keyframe list. decord can also spin forever when it
    counts more frames than exist. So it is used only when its count, timestamps and keyframes
    match the index; otherwise PyAV decodes. Rotated videos go to PyAV too: decord ignores the
    display matrix and returns garbage for them.
    """

    def __init__(self, index: _StreamIndex, short_side: int | None, threads: int):
        decord = _decord()

        self.index = index
        if index.rotation or index.by_position:
            raise _DecordFailed("rotated video or no timestamps")
        width, height = index.coded_size(short_side)
        self._shape = (height, width, 3)
        try:
            # Scaling inside decord's filter graph avoids converting full-size frames to RGB.
            self._vr = decord.VideoReader(str(index.path), ctx=decord.cpu(0), num_threads=threads,
                                          **({} if short_side is None else {"width": width, "height": height}))
            agrees = len(self._vr) == len(index.pts)
            if agrees:
                starts = self._vr.get_frame_timestamp(np.arange(len(self._vr)))[:, 0].astype(np.float64)
                tolerance = 0.5 / index.fps if index.fps > 0 else 1e-3
                agrees = bool(np.isfinite(starts).all()
                              and np.abs(starts - starts[0] - index.timestamps).max() <= tolerance
                              and np.array_equal(self._vr.get_key_indices(), index.keyframes))
        except (decord.DECORDError, RuntimeError, AssertionError, IndexError) as error:
            self.close()
            raise _DecordFailed(str(error)) from None
        if not agrees:
            self.close()
            raise _DecordFailed("decord's frame index disagrees with FFmpeg's")
        self.timestamps = index.timestamps
        self.info = index.info("decord")

    def read(self, indices: np.ndarray) -> np.ndarray:
        decord = _decord()
        try:
            batch = self._vr.get_batch(np.asarray(indices, dtype=np.int64))
            frames = batch.asnumpy()
            del batch  # decord's own array: free it now, not when the caller's frame ends
        except (decord.DECORDError, RuntimeError, IndexError) as error:
            raise _DecordFailed(str(error)) from None
        if frames.shape != (len(indices), *self._shape):
            raise _DecordFailed(f"decord returned frames of shape {frames.shape}")
        return frames

    def close(self) -> None:
        # decord frees the native reader (and its decoded-frame buffers) only when the Python
        # object dies; drop the only reference now rather than whenever the caller lets go.
        self.__dict__.pop("_vr", None)


class _PyAVReader(_Reader):
    """FFmpeg through PyAV: seeks to the keyframe before each wanted frame and decodes forward.

    Without timestamps (AVI) it decodes from the start and counts frames instead: after a seek
    there is no telling which frame comes out first.
    """

    def __init__(self, index: _StreamIndex, short_side: int | None, threads: int):
        from av.video.reformatter import VideoReformatter

        self.index, self.path = index, index.path
        self._size = index.coded_size(short_side)
        self._scale = self._size != (index.coded_width, index.coded_height)
        # One scaler for every frame: a frame's own reformat() sets up FFmpeg's scaler anew each time.
        self._reformatter = VideoReformatter()
        self._threads = threads
        self._reopen()
        self.timestamps = index.timestamps
        self.info = index.info("pyav")

    def _reopen(self) -> None:
        import av

        self.close()
        try:
            self._container = av.open(str(self.path))
            self._stream = self._container.streams.video[0]
            self._stream.thread_type = "AUTO"
            self._stream.thread_count = self._threads
        except av.FFmpegError as error:
            self.close()
            raise CaptionerError(f"{CORRUPT} ({_ffmpeg_reason(error)})", self.path) from None
        # The running decoder and the position (AVI) or pts of the frame it gave last: a read
        # after the last one continues from there rather than seeking back.
        self._frames, self._position = None, None

    def read(self, indices: np.ndarray) -> np.ndarray:
        import av

        try:
            out = self._read_by_position(indices) if self.index.by_position else self._read_by_pts(indices)
        except av.FFmpegError as error:
            raise CaptionerError(f"{CORRUPT} ({_ffmpeg_reason(error)})", self.path) from None
        missing = [int(i) for i, frame in zip(indices, out) if frame is None]
        if missing:
            raise CaptionerError(f"{CORRUPT} (frame {missing[0]} does not decode)", self.path)
        return np.stack(out)

    def _read_by_position(self, indices: np.ndarray) -> list[np.ndarray | None]:
        wanted = {int(i): n for n, i in enumerate(indices)}
        out: list[np.ndarray | None] = [None] * len(indices)
        if self._frames is None or min(wanted) <= self._position:
            # Frames are known only by their count from the first one: going back means
            # decoding from the start again, in a container opened afresh.
            if self._frames is not None:
                self._reopen()
            self._frames, self._position = self._container.decode(self._stream), -1
        last = max(wanted)
        for frame in self._frames:
            self._position += 1
            if self._position in wanted:
                out[wanted[self._position]] = self._to_rgb(frame)
            if self._position >= last:
                break
        return out

    def _read_by_pts(self, indices: np.ndarray) -> list[np.ndarray | None]:
        pts, keyframe_pts = self.index.pts, self.index.pts[self.index.keyframes]
        wanted = {int(pts[i]): n for n, i in enumerate(indices)}
        out: list[np.ndarray | None] = [None] * len(indices)
        for target in sorted(wanted):
            if out[wanted[target]] is not None:
                continue
            keyframe = keyframe_pts[np.searchsorted(keyframe_pts, target, side="right") - 1]
            if self._frames is None or self._position is None or self._position < keyframe \
                    or self._position >= target:
                # Seeking flushes the decoder; only worth it when it skips frames.
                self._container.seek(int(keyframe), stream=self._stream, backward=True)
                self._frames, self._position = self._container.decode(self._stream), None
            for frame in self._frames:  # resumes where the previous target left off
                self._position = frame.pts
                if self._position in wanted and out[wanted[self._position]] is None:
                    out[wanted[self._position]] = self._to_rgb(frame)
                if self._position is not None and self._position >= target:
                    break
        return out

    def _to_rgb(self, frame) -> np.ndarray:
        from av.video.reformatter import Interpolation

        if self._scale:  # bicubic, as decord's scale filter; then RGB, in two steps as before
            frame = self._reformatter.reformat(frame, width=self._size[0], height=self._size[1],
                                               interpolation=Interpolation.BICUBIC)
        rgb = self._reformatter.reformat(frame, format="rgb24").to_ndarray()
        # The display matrix turns the frame counter-clockwise; so does np.rot90.
        rotation = self.index.rotation
        return np.ascontiguousarray(np.rot90(rgb, rotation // 90)) if rotation else rgb

    def close(self) -> None:
        container = self.__dict__.pop("_container", None)
        if container is not None:
            container.close()


# Full-scale values of PIL's integer and float modes: a 16-bit PNG or TIFF spans 0..65535, and
# PIL's own convert("RGB") clips those to 255 (a mid-grey 16-bit image came out white).
_WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I;16S", "I", "F")


def to_rgb(image):
    """A PIL image of any mode as 8-bit RGB, as an image viewer shows it: 16-bit and 32-bit
    values scaled to 8 bits, float images of 0..1 (or 0..255) scaled, CIELAB converted by colour
    management, and transparency composited over white (the pixels under a transparent area are
    arbitrary: often black, which would be captioned as black)."""
    from PIL import Image

    mode = image.mode
    if mode in _WIDE_MODES:
        values = np.asarray(image).astype(np.float64)
        finite = values[np.isfinite(values)]
        top = float(finite.max()) if finite.size else 0.0
        if mode.startswith("I;16"):
            full = 65535.0
        elif mode == "F" and top <= 1.0:
            full = 1.0
        else:  # 32-bit integers or floats: whichever common range holds the values
            full = next((f for f in (255.0, 65535.0) if top <= f), max(top, 1.0))
        gray = np.clip(np.nan_to_num(values / full * 255.0) + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if mode == "LAB":
        from PIL import ImageCms

        to_srgb = ImageCms.buildTransform(ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB")
        return ImageCms.applyTransform(image, to_srgb)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


class _ImageReader(_Reader):
    """A still image as a one-frame video."""

    def __init__(self, path: Path, short_side: int | None):
        from PIL import Image, ImageOps, UnidentifiedImageError

        megapixels, _ = frame_size_limits()
        if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < megapixels * 1e6:
            Image.MAX_IMAGE_PIXELS = int(megapixels * 1e6)  # a limit raised on purpose applies to PIL too
        try:
            with warnings.catch_warnings():
                # PIL warns on stderr about images over its own bound; check_frame_size is the bound here.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                opened = Image.open(path)  # reads the header only
            with opened as image:
                check_frame_size(*image.size, path)
                image = ImageOps.exif_transpose(image)  # photos store their orientation in EXIF
                size = scaled_size(*image.size, short_side)
                self._native = image.size
                image = to_rgb(image)
                if size != image.size:
                    image = image.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
                self._frame = np.asarray(image)[None]
        except UnidentifiedImageError:
            raise CaptionerError("cannot decode: not an image or an unsupported image format", path) from None
        except Image.DecompressionBombError:
            raise CaptionerError(f"the image is more than the {megapixels:g} megapixels decoded here "
                                 f"(set {MEGAPIXELS_VARIABLE} to change)", path) from None
        except (OSError, SyntaxError, ValueError) as error:
            raise CaptionerError(f"{CORRUPT} ({error})", path) from None
        self.timestamps = np.zeros(1)
        self.info = VideoInfo(path=str(path), duration=0.0, fps=0.0, num_frames=1, width=self._native[0],
                              height=self._native[1], is_image=True, backend="image")

    def read(self, indices: np.ndarray) -> np.ndarray:
        return self._frame[np.asarray(indices)]
