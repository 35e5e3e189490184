"""captioner.video on the real MSVD clips and Flickr8k images, and on odd and broken files."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from PIL import Image

import media
from captioner import video
from captioner.errors import CaptionerError, UsageError
from captioner.inputs import IMAGE_EXTENSIONS, collect_inputs, find_inputs
from captioner.video import DecodedVideo, Sampling, VideoInfo, clip_windows, decode, probe, sample_indices, scaled_size

ROOT = Path(__file__).resolve().parent.parent


def reference_frames(path, indices=None) -> np.ndarray:
    """Frames decoded front to back by plain PyAV: no seeking, nothing to get wrong.

    All of them, or those at `indices` (then the last row holds the frame count).
    """
    with av.open(str(path)) as container:
        if indices is None:
            return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])
        wanted, frames, count = set(indices), {}, 0
        for count, frame in enumerate(container.decode(video=0), 1):
            if count - 1 in wanted:
                frames[count - 1] = frame.to_ndarray(format="rgb24")
        return np.stack([frames[i] for i in indices]), count


def info(num_frames: int, fps: float = 10.0, duration: float | None = None) -> VideoInfo:
    duration = num_frames / fps if duration is None else duration
    return VideoInfo("x.mp4", duration, fps, num_frames, 64, 48, False, "pyav")


@pytest.fixture(scope="module")
def clip(msvd_clips) -> Path:
    return msvd_clips[0]  # 0lh_UWF9ZP4_62_69.avi: 210 frames, 320x240, 359/12 fps


@pytest.fixture(scope="module")
def image(data_dir) -> Path:
    return sorted((data_dir / "flickr8k" / "images").glob("*.jpg"))[0]


# ----------------------------------------------------------------------------- real clips
def test_probe_real_clips_agrees_with_opencv(msvd_clips):
    for path in msvd_clips:
        got = probe(path)
        capture = cv2.VideoCapture(str(path))
        assert got.num_frames == int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), path.name
        assert got.fps == pytest.approx(capture.get(cv2.CAP_PROP_FPS), rel=1e-6), path.name
        assert (got.width, got.height) == (capture.get(cv2.CAP_PROP_FRAME_WIDTH),
                                           capture.get(cv2.CAP_PROP_FRAME_HEIGHT)), path.name
        capture.release()
        assert 4 <= got.duration <= 15 and got.duration == pytest.approx(got.num_frames / got.fps)
        assert got.path == str(path) and not got.is_image and got.backend in ("decord", "pyav")


@pytest.mark.parametrize("name", ["0lh_UWF9ZP4_62_69", "j2Dhf-xFUxU_13_20"])  # the second has B-frames
def test_decode_real_clip_gives_the_right_frames(msvd_clips, name):
    # decord seeks to the wrong frames in these AVI files; whatever decodes must not.
    path = next(p for p in msvd_clips if p.stem == name)
    decoded = decode(path)
    reference, n = reference_frames(path, decoded.indices)
    assert decoded.frames.shape == (16, *reference.shape[1:]) and decoded.frames.dtype == np.uint8
    np.testing.assert_array_equal(decoded.indices, ((np.arange(16) + 0.5) * n / 16).astype(int))
    np.testing.assert_array_equal(decoded.frames, reference)
    np.testing.assert_allclose(decoded.timestamps, decoded.indices / decoded.info.fps)


@pytest.mark.slow
def test_every_real_clip_decodes_the_right_frames(msvd_clips):
    for path in msvd_clips:
        decoded = decode(path, "uniform:8")
        reference, n = reference_frames(path, decoded.indices)
        assert decoded.info.num_frames == n, path.name
        np.testing.assert_array_equal(decoded.frames, reference, err_msg=path.name)


def test_sampling_modes_on_a_real_clip(clip):
    n, fps = 210, 359 / 12
    uniform = decode(clip, "uniform:5", short_side=64)
    np.testing.assert_array_equal(uniform.indices, [21, 63, 105, 147, 189])  # segment centres

    by_rate = decode(clip, "fps:2", short_side=64)
    assert len(by_rate.indices) == 14  # 7.02 s at 2 frames a second
    assert np.allclose(np.diff(by_rate.timestamps), 0.5, atol=1 / fps)
    assert by_rate.timestamps[0] == pytest.approx(0.25, abs=1 / fps)

    everything = decode(clip, "all", short_side=64)
    assert everything.frames.shape == (n, 64, 85, 3)
    np.testing.assert_array_equal(everything.indices, np.arange(n))
    np.testing.assert_array_equal(everything.frames[uniform.indices], uniform.frames)


def test_time_window_on_a_real_clip(clip):
    fps = 359 / 12
    decoded = decode(clip, Sampling.parse("all", start=2.0, end=3.0), short_side=64)
    assert decoded.timestamps.min() >= 2.0 and decoded.timestamps.max() < 3.0
    assert len(decoded.indices) == pytest.approx(fps, abs=1)
    centred = decode(clip, "uniform:4@2-3", short_side=64)
    assert set(centred.indices) <= set(decoded.indices)
    with pytest.raises(CaptionerError, match=r"after the end of the video") as error:
        decode(clip, Sampling.parse("uniform:4", start=8.0))
    assert clip.name in str(error.value)


def test_short_side_keeps_aspect_ratio_and_never_upscales(clip, tmp_path):
    native = decode(clip, "uniform:2")
    small = decode(clip, "uniform:2", short_side=120)
    assert native.frames.shape[1:] == (240, 320, 3)
    assert small.frames.shape[1:] == (120, 160, 3)
    # The scaled frames show the same picture as the native ones, scaled.
    shrunk = np.stack([np.asarray(Image.fromarray(f).resize((160, 120), Image.Resampling.BICUBIC))
                       for f in native.frames])
    assert np.abs(shrunk.astype(int) - small.frames).mean() < 3
    assert decode(clip, "uniform:2", short_side=1000).frames.shape[1:] == (240, 320, 3)
    assert small.info.width == 320  # info describes the file, not the decoded size

    portrait = decode(media.portrait_video(tmp_path), "uniform:2", short_side=100)
    assert portrait.frames.shape[1:] == (178, 100, 3)
    assert scaled_size(3840, 2160, 224) == (398, 224) and scaled_size(7, 5, 10) == (7, 5)


def test_clip_len_gives_consecutive_frames_centred_on_each_sample(clip):
    everything = decode(clip, "all", short_side=48)
    clips = decode(clip, "uniform:4", short_side=48, clip_len=8)
    assert clips.frames.shape == (4, 8, 48, 64, 3)
    for sample, centre in zip(clips.frames, clips.indices):
        np.testing.assert_array_equal(sample, everything.frames[centre - 4: centre + 4])
    # fps:1 samples frames 14 (0.5 s) ... 194 (6.5 s) of 210: 32-frame clips run into both ends.
    edges = decode(clip, "fps:1", short_side=48, clip_len=32)
    np.testing.assert_array_equal(edges.indices[[0, -1]], [14, 194])
    np.testing.assert_array_equal(edges.frames[0], everything.frames[0:32])
    np.testing.assert_array_equal(edges.frames[-1], everything.frames[178:210])


def test_clip_windows_at_edges_and_for_short_videos():
    np.testing.assert_array_equal(clip_windows(np.array([0, 5, 9]), 10, 4),
                                  [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]])
    np.testing.assert_array_equal(clip_windows(np.array([1]), 3, 5), [[0, 1, 2, 2, 2]])
    np.testing.assert_array_equal(clip_windows(np.array([0]), 1, 3), [[0, 0, 0]])


def test_clip_len_on_a_video_shorter_than_the_clip(tmp_path):
    path = media.synthetic_video(tmp_path / "five.mp4", frames=5)
    decoded = decode(path, "uniform:2", clip_len=8)
    reference = reference_frames(path)
    assert decoded.frames.shape == (2, 8, 48, 64, 3)
    np.testing.assert_array_equal(decoded.frames[0], reference[[0, 1, 2, 3, 4, 4, 4, 4]])


# ----------------------------------------------------------------------------- sampling
def test_sampling_parse_and_str_round_trip():
    for spec, expected in [("uniform:16", Sampling("uniform", 16)), ("uniform", Sampling("uniform", 16)),
                           (" FPS:2.5 ", Sampling("fps", 2.5)), ("all", Sampling("all", None)),
                           ("uniform:8@2.5-7", Sampling("uniform", 8, 2.5, 7.0)),
                           ("fps:1@-3", Sampling("fps", 1.0, None, 3.0)), ("all@1e-05-", Sampling("all", None, 1e-5))]:
        parsed = Sampling.parse(spec)
        assert parsed == expected, spec
        assert Sampling.parse(str(parsed)) == parsed
    assert str(Sampling.parse("fps:29.97002997")) == "fps:29.97002997"
    assert Sampling.parse("uniform:4", start=1, end=2) == Sampling("uniform", 4, 1.0, 2.0)
    assert str(Sampling("uniform", 4, 1.0, 2.5)) == "uniform:4@1-2.5"


@pytest.mark.parametrize("spec", ["uniform:0", "uniform:2.5", "uniform:-3", "fps:0", "fps", "fps:nan", "all:3",
                                  "frames:16", "", "uniform:8@3-2", "uniform:8@x-2"])
def test_bad_sampling_specs_are_usage_errors(spec):
    with pytest.raises(UsageError) as error:
        Sampling.parse(spec)
    assert "\n" not in str(error.value)


def test_bad_windows_are_usage_errors():
    with pytest.raises(UsageError, match="empty"):
        Sampling.parse("all", start=3, end=3)
    with pytest.raises(UsageError, match="start"):
        Sampling.parse("all", start=-1)
    with pytest.raises(UsageError, match="already"):
        Sampling.parse("all@1-2", start=1)


def test_uniform_takes_segment_centres_and_never_repeats():
    np.testing.assert_array_equal(sample_indices(info(100), Sampling("uniform", 4)), [12, 37, 62, 87])
    np.testing.assert_array_equal(sample_indices(info(3), Sampling("uniform", 16)), [0, 1, 2])
    np.testing.assert_array_equal(sample_indices(info(1), Sampling("uniform", 16)), [0])
    # Within a window, the centres of the window's frames: frames 20..39.
    np.testing.assert_array_equal(sample_indices(info(100), Sampling("uniform", 2, 2.0, 4.0)), [25, 35])


def test_fps_follows_real_timestamps():
    times = np.array(media.VFR_PTS_MS) / 1000
    vfr = info(len(times), fps=10, duration=1.95)
    picked = sample_indices(vfr, Sampling("fps", 4), times)  # centres 0.125, 0.375, ..., 1.875 s
    on_screen = [int(np.searchsorted(times, t, side="right") - 1) for t in np.arange(0.125, 1.95, 0.25)]
    np.testing.assert_array_equal(picked, sorted(set(on_screen)))
    assert picked.tolist() != sample_indices(vfr, Sampling("fps", 4)).tolist()  # constant-rate guess differs


def test_window_between_two_frames_gives_the_frame_on_screen():
    times = np.array(media.VFR_PTS_MS) / 1000  # nothing starts between 0.04 and 0.24 s
    np.testing.assert_array_equal(sample_indices(info(20, duration=1.95), Sampling("all", None, 0.1, 0.2), times),
                                  [4])


def test_window_outside_the_video_is_an_error():
    with pytest.raises(CaptionerError, match="x.mp4: time window starts at 12 s, after the end"):
        sample_indices(info(100), Sampling("uniform", 4, 12.0))
    # An end beyond the video is fine: the window is clipped to the video.
    assert len(sample_indices(info(100), Sampling("all", None, 9.0, 50.0))) == 10


# ----------------------------------------------------------------------------- images
def test_image_is_a_one_frame_video(image):
    got = probe(image)
    assert (got.num_frames, got.width, got.height, got.is_image, got.backend) == (1, 224, 224, True, "image")
    decoded = decode(image, "uniform:16", clip_len=4)
    assert decoded.frames.shape == (1, 4, 224, 224, 3)
    np.testing.assert_array_equal(decoded.frames[0, 0], np.asarray(Image.open(image).convert("RGB")))
    assert decode(image, "fps:2", short_side=112).frames.shape == (1, 112, 112, 3)


def test_images_of_every_extension_and_exif_orientation(tmp_path):
    pixels = media.pattern_frame(0, 80, 40)
    for extension in sorted(IMAGE_EXTENSIONS):
        path = tmp_path / f"image{extension}"
        Image.fromarray(pixels).save(path)
        assert decode(path, short_side=20).frames.shape == (1, 20, 40, 3), extension
    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: turn 90 degrees clockwise to display
    Image.fromarray(pixels).save(rotated, exif=exif)
    assert probe(rotated).width == 40 and decode(rotated).frames.shape == (1, 80, 40, 3)



def _mode_image(mode: str) -> tuple[Image.Image, np.ndarray]:
    """An image of `mode` holding a known picture, and that picture as 8-bit RGB."""
    gray = np.tile(np.linspace(0.1, 0.9, 64), (48, 1))
    gray8 = np.round(gray * 255).astype(np.uint8)
    colour = np.stack([gray8, 255 - gray8, np.full_like(gray8, 90)], axis=-1)
    as_gray = np.repeat(gray8[..., None], 3, axis=-1)
    opaque = Image.fromarray(np.full(gray8.shape, 255, np.uint8))
    palette = Image.fromarray(gray8, "L").convert("P")  # a greyscale palette holding every level
    if mode == "1":
        bits = gray8 > 127
        return Image.fromarray(bits), np.repeat((bits * 255).astype(np.uint8)[..., None], 3, axis=-1)
    if mode in ("L", "P"):
        return Image.fromarray(gray8, "L").convert(mode), as_gray
    if mode in ("LA", "PA"):
        image = (Image.fromarray(gray8, "L") if mode == "LA" else palette).convert(mode)
        image.putalpha(opaque)
        return image, as_gray
    if mode in ("RGB", "CMYK", "YCbCr"):
        return Image.fromarray(colour).convert(mode), colour
    if mode == "RGBA":
        return Image.fromarray(colour).convert("RGBA"), colour
    if mode == "LAB":
        from PIL import ImageCms

        to_lab = ImageCms.buildTransform(ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"), "RGB", "LAB")
        return ImageCms.applyTransform(Image.fromarray(colour), to_lab), colour
    if mode in ("I;16", "I;16B"):
        values = np.round(gray * 65535).astype("<u2" if mode == "I;16" else ">u2")
        return Image.frombytes(mode, values.shape[::-1], values.tobytes()), as_gray
    if mode == "I":
        return Image.fromarray(np.round(gray * 65535).astype(np.int32)), as_gray
    if mode == "F":
        return Image.fromarray(gray.astype(np.float32)), as_gray
    raise AssertionError(mode)


# Every mode each format stores (PIL writes them, and reads them back in a mode of their own).
FILE_MODES = [("png", m) for m in ("1", "L", "LA", "P", "RGB", "RGBA", "I;16", "I;16B")] + \
    [("tiff", m) for m in ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "I", "I;16", "I;16B",
                           "F")] + \
    [("jpg", m) for m in ("L", "RGB", "CMYK")] + [("webp", m) for m in ("RGB", "RGBA")] + \
    [("bmp", m) for m in ("1", "L", "P", "RGB")]


@pytest.mark.parametrize("extension, mode", FILE_MODES)
def test_every_image_mode_decodes_to_the_picture_it_holds(tmp_path, extension, mode):
    """issue 23 #5: a 16-bit greyscale PNG (source mean 127) decoded to mean 254.5, nearly all white."""
    image, expected = _mode_image(mode)
    path = tmp_path / f"{mode.replace(';', '_')}.{extension}"
    image.save(path)
    frame = decode(path, "uniform:1").frames[0].astype(np.float64)
    lossy = extension in ("jpg", "webp") or mode in ("YCbCr", "LAB")
    assert abs(frame.mean() - expected.mean()) < (3 if lossy else 0.6), (Image.open(path).mode, frame.mean())
    assert np.abs(frame - expected).mean() < (6 if lossy else 0.6)


def test_transparent_pixels_are_white_as_a_viewer_shows_them(tmp_path):
    hidden = np.zeros((48, 64, 4), np.uint8)  # black under full transparency
    hidden[:, 32:, 3] = 255
    for name, image in (("rgba.png", Image.fromarray(hidden, "RGBA")),
                        ("la.png", Image.fromarray(hidden[..., [0, 3]], "LA"))):
        image.save(tmp_path / name)
        frame = decode(tmp_path / name).frames[0]
        assert (frame[:, :32] == 255).all() and (frame[:, 32:] == 0).all(), name
    keyed = Image.fromarray(np.zeros((48, 64), np.uint8), "P")
    keyed.putpalette([0, 0, 0] * 256)
    keyed.save(tmp_path / "keyed.png", transparency=0)  # a palette entry marked transparent (tRNS)
    assert (decode(tmp_path / "keyed.png").frames[0] == 255).all()

# ----------------------------------------------------------------------------- backends
def test_decord_decodes_where_it_agrees_with_ffmpeg(tmp_path):
    path = media.synthetic_video(tmp_path / "gops.mp4", frames=60, width=96, height=64, gop=10, b_frames=2)
    decoded = decode(path, "uniform:7")
    assert decoded.info.backend == "decord"
    np.testing.assert_array_equal(decoded.frames, reference_frames(path)[decoded.indices])


def test_mpeg4_with_b_frames_goes_to_pyav_and_gets_the_right_frames(tmp_path):
    # decord's keyframe list is shifted for this codec, so it would seek to the wrong frames.
    path = media.synthetic_video(tmp_path / "asp.mp4", frames=60, width=96, height=64, gop=10, b_frames=2,
                                 codec="mpeg4")
    decoded = decode(path, "uniform:7")
    assert decoded.info.backend == "pyav"
    np.testing.assert_array_equal(decoded.frames, reference_frames(path)[decoded.indices])


@pytest.fixture
def decord_broken(monkeypatch):
    import decord

    def refuse(*args, **kwargs):
        raise decord.DECORDError("cannot open (simulated)")

    monkeypatch.setattr(decord, "VideoReader", refuse)


def test_pyav_fallback_when_decord_cannot_open(tmp_path, decord_broken):
    path = media.synthetic_video(tmp_path / "gops.mp4", frames=60, width=96, height=64, gop=10, b_frames=2)
    small = decode(path, "uniform:7", short_side=32)
    assert small.info.backend == "pyav" and probe(path).backend == "pyav"
    assert small.frames.shape == (7, 32, 48, 3)
    np.testing.assert_array_equal(decode(path, "uniform:7").frames, reference_frames(path)[[4, 12, 21, 30, 38,
                                                                                          47, 55]])


def test_pyav_fallback_matches_decord(tmp_path, monkeypatch):
    path = media.synthetic_video(tmp_path / "gops.mkv", frames=40, width=160, height=96, gop=10, b_frames=2)
    by_decord = decode(path, "fps:5", short_side=48)
    assert by_decord.info.backend == "decord"

    def fail(self, indices):
        raise video._DecordFailed("simulated failure while decoding")

    monkeypatch.setattr(video._DecordReader, "read", fail)
    by_pyav = decode(path, "fps:5", short_side=48)
    assert by_pyav.info.backend == "pyav"
    np.testing.assert_array_equal(by_pyav.indices, by_decord.indices)
    np.testing.assert_allclose(by_pyav.timestamps, by_decord.timestamps)
    assert by_pyav.frames.shape == by_decord.frames.shape == (len(by_decord.indices), 48, 80, 3)
    assert np.abs(by_pyav.frames.astype(int) - by_decord.frames).mean() < 2  # both scale bicubic


def test_rotated_video_is_shown_upright(tmp_path):
    path = media.rotated_video(tmp_path, rotation=90)
    got = probe(path)
    assert (got.width, got.height) == (48, 64)
    decoded = decode(path, "all")
    expected = np.stack([np.rot90(media.pattern_frame(i, 64, 48)) for i in range(6)])
    assert decoded.frames.shape == (6, 64, 48, 3)
    assert np.abs(decoded.frames.astype(int) - expected).mean() < 6  # lossy encoding
    assert decode(path, "uniform:2", short_side=24).frames.shape == (2, 32, 24, 3)


# ----------------------------------------------------------------------------- odd and bad files
@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, msvd_clips, image):
    folder = tmp_path_factory.mktemp("bad")
    return {
        media.empty_file(folder): "empty file",
        media.random_bytes_mp4(folder): "cannot decode: truncated or corrupt",
        media.truncated_clip(folder, msvd_clips[0]): "cannot decode: truncated or corrupt",
        media.truncated_clip(folder, msvd_clips[1], keep=0.9): "cannot decode: truncated or corrupt",
        media.header_only_clip(folder, msvd_clips[2]): "cannot decode: truncated or corrupt",
        media.audio_only(folder): "not a video (no video stream)",
        media.text_file_as_video(folder): "cannot decode: truncated or corrupt",
        media.corrupt_image(folder, image): "cannot decode: truncated or corrupt",
        media.unsupported_extension(folder): "unsupported file type '.docx'",
        folder / "missing.mp4": "file not found",
        folder: "is a folder",
    }


def test_bad_files_give_one_line_errors_naming_the_file(bad_files):
    for path, reason in bad_files.items():
        for action in (probe, decode):
            with pytest.raises(CaptionerError) as error:
                action(path)
            message = str(error.value)
            assert message.startswith(f"{path}: {reason}"), message
            assert "\n" not in message and error.value.path == str(path)


def test_odd_but_valid_files_decode(tmp_path, msvd_clips):
    one = decode(media.one_frame_video(tmp_path))
    assert one.frames.shape == (1, 48, 64, 3) and one.info.num_frames == 1

    big = decode(media.video_4k(tmp_path), short_side=224)
    assert big.frames.shape == (3, 224, 398, 3) and (big.info.width, big.info.height) == (3840, 2160)

    portrait = decode(media.portrait_video(tmp_path), "uniform:3")
    assert portrait.frames.shape == (3, 640, 360, 3)
    np.testing.assert_array_equal(portrait.indices, [1, 5, 8])

    vfr = decode(media.vfr_video(tmp_path), "all")
    np.testing.assert_allclose(vfr.timestamps, np.array(media.VFR_PTS_MS) / 1000, atol=1e-6)
    assert vfr.info.duration == pytest.approx(1.9, abs=0.06)

    for odd in (media.path_with_spaces_and_unicode(tmp_path, msvd_clips[3]),
                media.uppercase_extension(tmp_path, msvd_clips[3])):
        decoded = decode(odd, "uniform:4")
        assert decoded.frames.shape[0] == 4 and decoded.info.path == str(odd)
        np.testing.assert_array_equal(decoded.frames, decode(msvd_clips[3], "uniform:4").frames)


def test_bad_arguments_are_usage_errors(clip):
    for kwargs in ({"short_side": 0}, {"short_side": 1.5}, {"clip_len": 0}):
        with pytest.raises(UsageError):
            decode(clip, **kwargs)


# ----------------------------------------------------------------------------- inputs
def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_collect_inputs_from_folders_and_lists(tmp_path):
    b, a = touch(tmp_path / "videos" / "b.mp4"), touch(tmp_path / "videos" / "a.AVI")
    nested = touch(tmp_path / "videos" / "deeper" / "c.jpg")
    touch(tmp_path / "videos" / "notes.md")
    touch(tmp_path / "videos" / ".hidden" / "d.mp4")
    touch(tmp_path / "videos" / "._e.mp4")  # macOS resource fork
    other = touch(tmp_path / "elsewhere" / "z.webm")
    listing = tmp_path / "lists" / "inputs.txt"
    listing.parent.mkdir()
    listing.write_text("# training videos\n\n../elsewhere/z.webm\n  ../videos/b.mp4  \n../videos\n")

    got = collect_inputs([tmp_path / "videos", str(listing), a])
    assert got == [a, b, nested, listing.parent / "../elsewhere/z.webm"]
    assert got[3].resolve() == other.resolve()


def test_collect_inputs_errors_name_the_missing_path(tmp_path):
    with pytest.raises(CaptionerError, match="nope.mp4: file not found"):
        collect_inputs([tmp_path / "nope.mp4"])
    listing = tmp_path / "inputs.txt"
    listing.write_text("# header\nthere.mp4\ngone.mp4\n")
    touch(tmp_path / "there.mp4")
    with pytest.raises(CaptionerError) as error:
        collect_inputs([listing])
    assert str(error.value) == f"{listing}:3: listed file not found: {tmp_path / 'gone.mp4'}"
    (tmp_path / "empty").mkdir()
    with pytest.raises(CaptionerError, match="empty: no video or image files in this folder"):
        collect_inputs([tmp_path / "empty"])


def test_find_inputs_reports_every_missing_entry_and_keeps_the_rest(tmp_path):
    there = touch(tmp_path / "there.mp4")
    (tmp_path / "empty").mkdir()
    listing = tmp_path / "inputs.txt"
    listing.write_text("there.mp4\ngone.mp4\nalso_gone.mp4\n")
    paths, missing = find_inputs([listing, tmp_path / "nope.mp4", tmp_path / "empty"])
    assert paths == [there]
    assert [(path, str(error)) for path, error in missing] == [
        (tmp_path / "gone.mp4", f"{listing}:2: listed file not found: {tmp_path / 'gone.mp4'}"),
        (tmp_path / "also_gone.mp4", f"{listing}:3: listed file not found: {tmp_path / 'also_gone.mp4'}"),
        (tmp_path / "nope.mp4", f"{tmp_path / 'nope.mp4'}: file not found"),
        (tmp_path / "empty", f"{tmp_path / 'empty'}: no video or image files in this folder")]


def test_symlinks_to_one_file_are_inputs_of_their_own(tmp_path):
    """As a glob over them would be: a folder of links is not silently merged into one input."""
    clip = touch(tmp_path / "clip.mp4")
    links = [tmp_path / "links" / f"take{i}.mp4" for i in range(3)]
    links[0].parent.mkdir()
    for link in links:
        link.symlink_to(clip)
    assert collect_inputs([tmp_path / "links", clip]) == [*links, clip]
    assert collect_inputs([clip, tmp_path / "." / "clip.mp4", tmp_path / "links" / ".." / "clip.mp4"]) == [clip]


# ----------------------------------------------------------------------------- memory
@pytest.mark.slow
def test_repeated_decoding_does_not_grow_memory(msvd_clips):
    """decord is known to leak on long runs; this module must at least not add to it."""

    def rss_mb() -> float:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    small = sorted(msvd_clips, key=lambda p: p.stat().st_size)[:6]
    for i in range(20):  # warm up allocators and codec tables
        decode(small[i % 6], short_side=112)
    before = rss_mb()
    for i in range(100):
        decode(small[i % 6], short_side=112)
    assert rss_mb() - before < 30


# ----------------------------------------------------------------------------- frame size bounds
def run_measuring_peak_rss(args: list[str]) -> tuple[int, str, str, float]:
    """(exit code, stdout, stderr, peak resident memory in MB) of one child process."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen(args, stdout=out, stderr=err, cwd=ROOT)
        _, status, usage = os.wait4(process.pid, 0)  # this child's own peak, not the largest of all children
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        return process.returncode, out.read().decode(), err.read().decode(), usage.ru_maxrss / 1024


@pytest.fixture(scope="module")
def model_argument(request) -> str:
    from captioner.caption import DEFAULT_MODEL

    return "default" if DEFAULT_MODEL.is_file() else str(request.getfixturevalue("caption_model"))


@pytest.mark.timeout(600)
def test_huge_or_elongated_inputs_are_refused_before_decoding(tmp_path, model_argument):
    """Tiny files that decode to huge frames: one line each, and no more memory than a normal photo."""
    hostile = [media.blank_png(tmp_path / "wide.png", 12000, 1),  # 84 bytes; took 3 GB before the bound
               media.blank_png(tmp_path / "huge.png", 13000, 13000),  # 164 KB; took 2.8 GB and warned on stderr
               media.synthetic_video(tmp_path / "wide.mp4", frames=2, width=1000, height=2)]  # took 2 GB
    caption = [sys.executable, "-m", "captioner.cli", "caption", "--model", model_argument]
    normal = media.blank_png(tmp_path / "normal.png", 640, 480)
    code, _, err, normal_peak = run_measuring_peak_rss(caption + [str(normal)])
    assert code == 0, err
    code, out, err, hostile_peak = run_measuring_peak_rss(caption + [str(path) for path in hostile])
    print(f"peak RSS: {normal_peak:.0f} MB for a 640x480 photo, {hostile_peak:.0f} MB for the refused inputs")
    assert code == 1 and out == ""
    assert err.splitlines() == [
        f"captioner: {hostile[0]}: 12000x1 pixels: an aspect ratio of 12000:1 is more than the 20:1 decoded here "
        "(set CAPTIONER_MAX_ASPECT_RATIO to change)",
        f"captioner: {hostile[1]}: 13000x13000 pixels: 169 megapixels is more than the 100 decoded here "
        "(set CAPTIONER_MAX_MEGAPIXELS to change)",
        f"captioner: {hostile[2]}: 1000x2 pixels: an aspect ratio of 500:1 is more than the 20:1 decoded here "
        "(set CAPTIONER_MAX_ASPECT_RATIO to change)"]
    assert hostile_peak < normal_peak + 100


def test_frame_size_bounds_hold_at_their_edges_and_can_be_changed(tmp_path, monkeypatch):
    assert decode(media.blank_png(tmp_path / "20to1.png", 400, 20), "uniform:1").frames.shape == (1, 20, 400, 3)
    with pytest.raises(CaptionerError, match="aspect ratio of 20.5:1 is more than the 20:1"):
        decode(media.blank_png(tmp_path / "20.5to1.png", 41, 2))
    video = media.synthetic_video(tmp_path / "tall.mkv", frames=2, width=16, height=320)
    assert probe(video).height == 320
    monkeypatch.setenv("CAPTIONER_MAX_ASPECT_RATIO", "10")
    with pytest.raises(CaptionerError, match="16x320 pixels: an aspect ratio of 20:1 is more than the 10:1"):
        probe(video)
    monkeypatch.setenv("CAPTIONER_MAX_ASPECT_RATIO", "1")
    assert probe(media.blank_png(tmp_path / "square.png", 30, 30)).width == 30
    monkeypatch.setenv("CAPTIONER_MAX_MEGAPIXELS", "0.0005")
    with pytest.raises(CaptionerError, match="30x30 pixels: 0.0009 megapixels is more than the 0.0005"):
        probe(tmp_path / "square.png")
    monkeypatch.delenv("CAPTIONER_MAX_ASPECT_RATIO")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # PIL refuses from twice this
    monkeypatch.setenv("CAPTIONER_MAX_MEGAPIXELS", "0.002")  # a bound raised on purpose is raised for PIL too
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert probe(media.blank_png(tmp_path / "big.png", 40, 40)).width == 40
    for variable, value in [("CAPTIONER_MAX_MEGAPIXELS", "0"), ("CAPTIONER_MAX_ASPECT_RATIO", "0.5"),
                            ("CAPTIONER_MAX_ASPECT_RATIO", "wide")]:
        monkeypatch.setenv(variable, value)
        with pytest.raises(UsageError, match=f"{variable} must be a number"):
            probe(tmp_path / "square.png")
        monkeypatch.delenv(variable)


@pytest.mark.parametrize("kind", ["avi", "pts", "decord"])
def test_an_open_video_decodes_windows_in_any_order_as_fresh_decodes_do(tmp_path, msvd_clips, kind):
    """`caption --segments` reads every window through one OpenVideo: a read continues the decoder
    where the last stopped (AVI counts frames, others seek by pts), and going back starts over."""
    if kind == "avi":
        path = msvd_clips[0]
    else:
        codec = "mpeg4" if kind == "pts" else "h264"  # decord refuses MPEG-4 Part 2 with B-frames
        path = media.synthetic_video(tmp_path / f"{kind}.mp4", frames=90, width=96, height=64, gop=12, b_frames=2,
                                     codec=codec)
    duration = probe(path).duration
    third = duration / 3
    windows = [(0.0, third), (third, 2 * third), (2 * third, duration), (0.0, third), (third / 2, 2 * third)]
    with video.OpenVideo(path, short_side=48) as opened:
        assert opened.info.backend == {"avi": "pyav", "pts": "pyav", "decord": "decord"}[kind]
        for start, end in windows:
            sampling = Sampling("uniform", 3, start, end)
            together = opened.decode(sampling, clip_len=4)
            alone = decode(path, sampling, short_side=48, clip_len=4)
            np.testing.assert_array_equal(together.indices, alone.indices)
            np.testing.assert_array_equal(together.frames, alone.frames)
