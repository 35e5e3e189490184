"""Odd and broken media files for tests, written on demand into a given folder.

Every function writes one small file (made in well under a second) and returns its path, so
tests in any area can check how their code meets bad or unusual input:

    from media import truncated_clip, vfr_video  # tests/ is on sys.path under pytest
    path = truncated_clip(tmp_path, msvd_clips[0])

Videos are encoded with PyAV (H.264 through libx264 where the build has it, MPEG-4 Part 2
otherwise) as yuv420p, so they need even sizes.
"""

from __future__ import annotations

import shutil
import struct
import zlib
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

_CODEC = "libx264" if "libx264" in av.codecs_available else "mpeg4"


def pattern_frame(index: int, width: int, height: int) -> np.ndarray:
    """An RGB frame that differs from frame to frame: a moving gradient and a frame-number bar.

    Smooth content keeps files small and survives lossy encoding well enough for tests to tell
    frames apart by their mean brightness.
    """
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    frame = np.empty((height, width, 3), np.uint8)
    frame[..., 0] = (x + 8 * index) % 256
    frame[..., 1] = y
    frame[..., 2] = (40 + 10 * index) % 256
    return frame


def synthetic_video(path: str | Path, frames: int = 8, width: int = 64, height: int = 48,
                    fps: float = 10, pts: list[int] | None = None, time_base: Fraction | None = None,
                    rotation: int = 0, gop: int | None = None, b_frames: int | None = None,
                    codec: str = _CODEC) -> Path:
    """Encode `frames` test-pattern frames (`pattern_frame(i, width, height)`).

    `pts` (in `time_base` units) gives irregular timing; `rotation` (degrees counter-clockwise)
    goes into the display matrix, as phones write it; `gop` (frames between keyframes) and
    `b_frames` shape the stream for seeking tests. The container is chosen by the file
    extension (.mp4, .mkv, .avi, ...).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if codec == "libx264":
            params = [f"keyint={gop}", f"min-keyint={gop}", "scenecut=0"] if gop else []
            params += [f"bframes={b_frames}"] if b_frames is not None else []
            options = {"preset": "ultrafast", "crf": "28"}
            if params:
                options["x264-params"] = ":".join(params)
            stream.options = options
        else:
            if gop:
                stream.codec_context.gop_size = gop
            if b_frames is not None:
                stream.codec_context.max_b_frames = b_frames
        if time_base is not None:
            stream.codec_context.time_base = time_base
            stream.time_base = time_base
        if rotation:
            stream.set_display_rotation(rotation)
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(pattern_frame(i, width, height), format="rgb24")
            if pts is not None:
                frame.pts = pts[i]
                frame.time_base = time_base
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


# ----------------------------------------------------------------------------- bad input
def empty_file(directory: str | Path, name: str = "empty.mp4") -> Path:
    path = Path(directory) / name
    path.write_bytes(b"")
    return path


def random_bytes_mp4(directory: str | Path, size: int = 50_000, seed: int = 0) -> Path:
    """Noise with a video extension: no container format recognises it."""
    path = Path(directory) / "random_bytes.mp4"
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes())
    return path


def truncated_clip(directory: str | Path, real_clip: str | Path, keep: float = 0.3) -> Path:
    """The first `keep` fraction of a real clip, as left behind by an interrupted download.

    The header still promises the whole clip; most of the frames are gone.
    """
    real_clip = Path(real_clip)
    data = real_clip.read_bytes()
    path = Path(directory) / f"truncated_{keep:.2f}_{real_clip.name}"
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def header_only_clip(directory: str | Path, real_clip: str | Path, size: int = 4096) -> Path:
    """A real clip cut right after its header: the container opens, no frame can be decoded."""
    return truncated_clip(directory, real_clip, keep=size / Path(real_clip).stat().st_size)


def audio_only(directory: str | Path, seconds: float = 1.0, name: str = "audio_only.mp4") -> Path:
    """A real AAC audio track (a 440 Hz tone) in an MP4 container, with no video stream."""
    path = Path(directory) / name
    rate = 16_000
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=rate)
        stream.layout = "mono"
        samples = 0
        total = int(seconds * rate)
        while samples < total:
            n = min(1024, total - samples)
            t = (samples + np.arange(n)) / rate
            tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :]
            frame = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
            frame.sample_rate, frame.pts = rate, samples
            for packet in stream.encode(frame):
                container.mux(packet)
            samples += n
        for packet in stream.encode():
            container.mux(packet)
    return path


def text_file_as_video(directory: str | Path) -> Path:
    """A plain-text file with a video extension (e.g. an HTML error page saved as .mp4)."""
    path = Path(directory) / "not_really.mp4"
    path.write_text("<html><body>404 Not Found</body></html>\n")
    return path


def corrupt_image(directory: str | Path, real_image: str | Path) -> Path:
    """The first half of a real JPEG."""
    data = Path(real_image).read_bytes()
    path = Path(directory) / f"half_{Path(real_image).name}"
    path.write_bytes(data[: len(data) // 2])
    return path


def unsupported_extension(directory: str | Path) -> Path:
    path = Path(directory) / "notes.docx"
    path.write_bytes(b"PK\x03\x04 not a video")
    return path


# ----------------------------------------------------------------------------- odd but valid
def one_frame_video(directory: str | Path) -> Path:
    return synthetic_video(Path(directory) / "one_frame.mp4", frames=1, width=64, height=48, fps=25)


def video_4k(directory: str | Path, frames: int = 3) -> Path:
    return synthetic_video(Path(directory) / "video_4k.mp4", frames=frames, width=3840, height=2160, fps=30)


def portrait_video(directory: str | Path, frames: int = 10) -> Path:
    """360x640, as phones record; a decoder that swaps width and height shows up here."""
    return synthetic_video(Path(directory) / "portrait.mp4", frames=frames, width=360, height=640, fps=30)


def rotated_video(directory: str | Path, rotation: int = 90, frames: int = 6) -> Path:
    """Stored as 64x48 with a display matrix that turns it `rotation` degrees counter-clockwise."""
    return synthetic_video(Path(directory) / f"rotated_{rotation}.mp4", frames=frames, width=64, height=48,
                           fps=10, rotation=rotation)


# Frame times in milliseconds for `vfr_video`: bursts of 100 fps between 5 fps stretches, so a
# sampler that assumes constant frame rate picks visibly wrong frames.
VFR_PTS_MS = [0, 10, 20, 30, 40, 240, 440, 640, 840, 850, 860, 870, 880, 1080, 1280, 1480, 1680, 1690, 1700,
              1900]


def vfr_video(directory: str | Path) -> Path:
    """Variable frame rate: frames at the irregular times `VFR_PTS_MS` (milliseconds)."""
    return synthetic_video(Path(directory) / "vfr.mp4", frames=len(VFR_PTS_MS), width=64, height=48,
                           fps=25, pts=VFR_PTS_MS, time_base=Fraction(1, 1000))


def path_with_spaces_and_unicode(directory: str | Path, real_clip: str | Path) -> Path:
    path = Path(directory) / "my clips" / f"vidéo 日本 #1{Path(real_clip).suffix}"
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(real_clip, path)
    return path


def uppercase_extension(directory: str | Path, real_clip: str | Path) -> Path:
    path = Path(directory) / f"{Path(real_clip).stem}.AVI"
    shutil.copyfile(real_clip, path)
    return path


def blank_png(path: str | Path, width: int, height: int) -> Path:
    """A black greyscale PNG of any size in a few bytes (zero rows compress to almost nothing)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor = zlib.compressobj(9)
    row = b"\0" * (1 + width)  # a filter byte, then the pixels
    pixels = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    path = Path(path)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))
    return path
