"""The web API: same answer as the CLI, limits on size, type and queue, uploads that never escape or stay."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anyio
import httpx
import pytest
import srt
from fastapi.testclient import TestClient
from captioner.caption import Segment
from captioner.writers import merge_repeats
from media import audio_only, blank_png, header_only_clip, synthetic_video
from PIL import Image
from serve_helpers import files_under, running_server, shared_captioner

import captioner.serve as serve_module
from captioner.cli import build_parser, main
from captioner.serve import ServeLimits, create_app, sniff_media

ROOT = Path(__file__).resolve().parent.parent
SHORT_CLIP = "Kqb-mmkEWqU_1_5.avi"  # 4 s, the shortest of the real clips


@pytest.fixture(scope="module")
def model(request, data_dir, tmp_path_factory):
    return shared_captioner(request, data_dir, tmp_path_factory)


@pytest.fixture
def make_app(model, tmp_path):
    """Apps on a private upload folder; after the test every upload must be gone."""
    made = []

    def make(loopback_only: bool = False, **limits):
        upload_dir = tmp_path / "deep" / "er" / f"uploads{len(made)}"
        executor = ThreadPoolExecutor(max_workers=1)
        app = create_app(model[0], ServeLimits(**limits), upload_dir=upload_dir, executor=executor,
                         loopback_only=loopback_only)
        made.append((app, executor))
        return app

    yield make
    for app, executor in made:
        executor.shutdown(wait=True)
        assert files_under(app.state.upload_dir) == [], "an upload outlived its request"
        assert app.state.slots.active == 0 and app.state.upload_slots.active == 0


@pytest.fixture
def client(make_app):
    with TestClient(make_app(max_upload_mb=2, queue=4)) as test_client:
        yield test_client


@pytest.fixture
def short_clip(msvd_clips) -> Path:
    return next(clip for clip in msvd_clips if clip.name == SHORT_CLIP)


@pytest.fixture(scope="module")
def tiny_video(tmp_path_factory) -> bytes:
    """A real two-frame H.264 MP4: the model sees two frames, so a request costs little."""
    return synthetic_video(tmp_path_factory.mktemp("tiny") / "tiny.mp4", frames=2, width=64, height=48).read_bytes()


def post_video(client, name: str, content: bytes, **fields):
    return client.post("/api/caption", files={"file": (name, content, "application/octet-stream")},
                       data={k: str(v) for k, v in fields.items()})


# ----------------------------------------------------------------------------- the answer
def test_caption_has_the_fields_of_the_cli_json(client, model, short_clip, capsys):
    response = post_video(client, short_clip.name, short_clip.read_bytes(), beam=3, segments=2, keyframes=3)
    assert response.status_code == 200, response.text
    api = response.json()

    # With segments the whole caption comes from the windows' features: the CLI is asked the same.
    assert main(["caption", str(short_clip), "--json", "--model", model[1], "--device", "cpu", "--beam", "3",
                 "--segments", "2"]) == 0
    cli = json.loads(capsys.readouterr().out)
    assert set(cli) <= set(api) and set(api) - set(cli) == {"keyframes", "subtitles"}
    assert api["segments"] == cli["segments"]
    assert list(api["timing"]) == list(cli["timing"]) == ["startup", "model_load", "decode", "backbone", "caption",
                                                          "total"]
    for key in ("id", "caption", "model"):
        assert api[key] == cli[key], key
    assert api["score"] == pytest.approx(cli["score"], abs=1e-4)
    assert [a["caption"] for a in api["alternatives"]] == [a["caption"] for a in cli["alternatives"]]
    assert [a["score"] for a in api["alternatives"]] == pytest.approx([a["score"] for a in cli["alternatives"]],
                                                                      abs=1e-4)
    assert api["path"] == short_clip.name  # the client's name, not where the server kept the file
    assert api["timing"]["total"] >= api["timing"]["backbone"] > 0

    # Segments: consecutive 2-second windows over the whole clip, also as SRT and WebVTT.
    segments = api["segments"]
    assert segments[0]["start"] == 0 and all(a["end"] == b["start"] for a, b in zip(segments, segments[1:]))
    # 4.04 s: two windows, the last one taking the 0.04 s that would otherwise be a segment of its own
    assert len(segments) == 2 and all(s["caption"] for s in segments)
    assert segments[-1]["end"] == pytest.approx(4.04, abs=0.01)
    subtitles = list(srt.parse(api["subtitles"]["srt"]))
    # Windows that say the same are one cue (the writers merge repeats; steadied windows of one shot often do).
    assert [s.content for s in subtitles] == [s.caption for s in merge_repeats(
        [Segment(s["start"], s["end"], s["caption"], s["score"]) for s in segments])]
    assert subtitles[-1].end.total_seconds() == pytest.approx(segments[-1]["end"])
    assert api["subtitles"]["vtt"].startswith("WEBVTT")

    keyframes = api["keyframes"]
    assert len(keyframes) == 3 and [k["time"] for k in keyframes] == sorted(k["time"] for k in keyframes)
    header, data = keyframes[0]["image"].split(",", 1)
    assert header == "data:image/jpeg;base64"
    image = Image.open(io.BytesIO(base64.b64decode(data)))
    assert image.format == "JPEG" and min(image.size) == 128


def test_subtitles_are_the_writers_text_made_in_memory(client, short_clip, monkeypatch):
    """No file is written to build a response; a beam of 1 gives one caption (n-best follows the beam)."""
    import captioner.writers
    from captioner.caption import Segment
    from captioner.writers import subtitles

    def no_files(*_args, **_kwargs):
        raise AssertionError("a response was built through a file")

    monkeypatch.setattr(captioner.writers, "atomic_write", no_files)
    response = post_video(client, short_clip.name, short_clip.read_bytes(), beam=1, segments=2)
    assert response.status_code == 200, response.text
    api = response.json()
    segments = [Segment(**s) for s in api["segments"]]
    assert api["subtitles"] == {fmt: subtitles(segments, fmt) for fmt in ("srt", "vtt")}
    assert len(api["alternatives"]) == 1


def test_health_openapi_and_page(client, model):
    health = client.get("/api/health").json()
    assert health == {"status": "ok", "model": model[0].model_id, "device": "cpu",
                      "runtime": model[0].backbone.runtime, "precision": model[0].backbone.precision,
                      "jobs": 0, "queue": 4, "uploads": 0, "max_uploads": 16, "max_upload_mb": 2,
                      "library": False}
    schema = client.get("/openapi.json").json()
    upload = schema["paths"]["/api/caption"]["post"]
    assert set(upload["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]) == {
        "file", "beam", "segments", "keyframes"}
    assert {"403", "408", "413", "415", "422", "503"} <= set(upload["responses"])
    assert "/api/health" in schema["paths"]

    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    html = page.text
    assert '<input type="file" id="file"' in html and '<label for="file">' in html and 'aria-live="polite"' in html
    assert "http://" not in html and "https://" not in html  # self-contained: no CDN, no web font


# ----------------------------------------------------------------------------- size
def _multipart_stream(file_bytes: int, head: bytes, chunk: int = 64 * 1024):
    """A multipart body whose file part is `file_bytes` long, as an async generator, and its consumption."""
    boundary = "test-boundary-7d1"
    prefix = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.avi\"\r\n"
              f"Content-Type: video/x-msvideo\r\n\r\n").encode()
    consumed = {"bytes": 0, "done": False}

    async def body():
        yield prefix
        consumed["bytes"] += len(prefix)
        sent = 0
        while sent < file_bytes:
            piece = (head if sent == 0 else b"\0" * chunk)[: file_bytes - sent]
            sent += len(piece)
            consumed["bytes"] += len(piece)
            yield piece
        yield f"\r\n--{boundary}--\r\n".encode()
        consumed["done"] = True

    return body(), f"multipart/form-data; boundary={boundary}", consumed


@contextlib.contextmanager
def _raw_upload(url: str, declared_bytes: int, sent: bytes):
    """A socket to the running server that has sent an upload's headers, promising
    `declared_bytes`, and then `sent` of its body (a client that may never send the rest)."""
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(b"POST /api/caption HTTP/1.1\r\nHost: localhost\r\n"
                           b"Content-Type: multipart/form-data; boundary=x\r\n"
                           + f"Content-Length: {declared_bytes}\r\n\r\n".encode() + sent)
        yield connection


def _post_stream(app, body, content_type: str, headers: dict | None = None) -> httpx.Response:
    async def go():
        transport = httpx.ASGITransport(app=app)  # hands the body over chunk by chunk, as a server does
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as async_client:
            return await async_client.post("/api/caption", content=body,
                                           headers={"Content-Type": content_type, **(headers or {})})

    return anyio.run(go)


def test_oversize_upload_is_refused_while_streaming(make_app, short_clip):
    app = make_app(max_upload_mb=1)
    total = 50 * 2**20  # no Content-Length: only counting the bytes can stop this one
    body, content_type, consumed = _multipart_stream(total, short_clip.read_bytes()[: 64 * 1024])
    response = _post_stream(app, body, content_type)
    assert response.status_code == 413
    assert "larger than the 1 MB" in response.json()["detail"]
    assert not consumed["done"] and consumed["bytes"] < 2**20 + 2 * 64 * 1024  # stopped at the limit


def test_declared_oversize_is_refused_before_reading(make_app, short_clip):
    app = make_app(max_upload_mb=1)
    body, content_type, consumed = _multipart_stream(3 * 2**20, short_clip.read_bytes()[: 64 * 1024])
    response = _post_stream(app, body, content_type, headers={"Content-Length": str(3 * 2**20 + 200)})
    assert response.status_code == 413
    assert consumed["bytes"] == 0


def test_real_server_answers_declared_oversize_without_the_body(make_app):
    app = make_app(max_upload_mb=1)
    with running_server(app) as url, _raw_upload(url, 10**10, b"") as connection:  # 10 GB promised, none sent
        reply = connection.recv(65536)
    assert reply.startswith(b"HTTP/1.1 413 ")


def test_file_just_under_the_limit_is_read(make_app, tiny_video):
    app = make_app(max_upload_mb=0.01)
    limit = int(0.01 * 2**20)
    with TestClient(app) as test_client:
        padded = tiny_video + b"\0" * (limit - len(tiny_video))  # FFmpeg ignores bytes after the last atom
        assert post_video(test_client, "tiny.mp4", padded).status_code == 200
        assert post_video(test_client, "tiny.mp4", padded + b"\0").status_code == 413


# ----------------------------------------------------------------------------- type, names, bad input
def test_type_comes_from_content_not_name(client, tiny_video, tmp_path):
    response = post_video(client, "clip.mp4", b"<html><body>404 Not Found</body></html>\n" * 30)
    assert response.status_code == 415
    assert response.json()["detail"].startswith("clip.mp4: not a video")
    assert post_video(client, "notes.txt", tiny_video).status_code == 200
    assert post_video(client, "empty.mp4", b"").status_code == 422
    not_form = client.post("/api/caption", content=tiny_video, headers={"Content-Type": "video/mp4"})
    assert not_form.status_code == 415 and "multipart/form-data" in not_form.json()["detail"]


def test_sniffing_recognises_real_containers(tmp_path, short_clip, data_dir):
    assert sniff_media(short_clip.read_bytes()[:512]) == ".avi"
    for extension in (".mp4", ".mkv", ".mov", ".avi"):
        video = synthetic_video(tmp_path / f"v{extension}", frames=2)
        assert sniff_media(video.read_bytes()[:512]) == extension
    photo = next((data_dir / "flickr8k" / "images").glob("*.jpg"))
    assert sniff_media(photo.read_bytes()[:512]) == ".jpg"
    for not_media in (b"", b"RIFF\0\0\0\0WAVEfmt ", b"#EXTM3U\n#EXT-X-VERSION:3\n", b"BM is also how text starts",
                      b"PK\x03\x04 a zip file"):
        assert sniff_media(not_media) is None, not_media


def test_client_file_name_never_becomes_a_path(make_app, tiny_video, tmp_path, monkeypatch):
    app = make_app()
    stored = []
    real_job = serve_module.caption_upload

    def recording_job(captioner, upload, *rest):
        stored.append(upload.path)
        return real_job(captioner, upload, *rest)

    monkeypatch.setattr(serve_module, "caption_upload", recording_job)
    with TestClient(app) as test_client:
        for name, shown in [("../../etc/passwd.mp4", "passwd.mp4"), ("..\\..\\evil.mp4", "evil.mp4"),
                            ("/abs/olute.mp4", "olute.mp4"), ("..", "upload")]:
            response = post_video(test_client, name, tiny_video)
            assert response.status_code == 200, response.text
            assert response.json()["path"] == shown
    upload_dir = app.state.upload_dir.resolve()
    assert all(path.parent.parent.resolve() == upload_dir and path.name == "upload.mp4" for path in stored)
    written = [p for p in files_under(tmp_path) if p.is_file()]
    assert written == [], written  # nothing under ../../etc of the upload folder, nothing left in it


def test_corrupt_video_is_422_with_the_one_line_message(client, short_clip, tmp_path):
    broken = header_only_clip(tmp_path, short_clip)
    response = post_video(client, "holiday.avi", broken.read_bytes())
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert detail.startswith("holiday.avi: cannot decode") and "\n" not in detail
    assert str(tmp_path) not in detail and "upload" not in detail  # no server paths in messages


def test_audio_without_video_is_422(client, tmp_path):
    response = post_video(client, "song.mp4", audio_only(tmp_path).read_bytes())
    assert response.status_code == 422
    assert response.json()["detail"] == "song.mp4: not a video (no video stream)"


@pytest.mark.parametrize("fields, message", [
    ({"beam": 0}, "beam must be between 1 and 10"),
    ({"beam": "three"}, "beam must be a number"),
    ({"segments": 0.1}, "segments must be between 0.5"),
    ({"keyframes": 99}, "keyframes must be between 0 and 12"),
])
def test_bad_parameters_are_422(client, tiny_video, fields, message):
    response = post_video(client, "tiny.mp4", tiny_video, **fields)
    assert response.status_code == 422 and message in response.json()["detail"]


def test_too_many_segments_are_refused_before_any_work(client, tmp_path):
    # 101 s in half-second windows: 202 windows, over the limit of 200 per request.
    long_video = synthetic_video(tmp_path / "long.mp4", frames=101, fps=1)
    response = post_video(client, "long.mp4", long_video.read_bytes(), segments=0.5)
    assert response.status_code == 422
    assert "into more than 200 windows; choose longer segments" in response.json()["detail"]


def test_elongated_image_is_422_before_decoding(client, tmp_path):
    wide = blank_png(tmp_path / "wide.png", 4000, 1)  # 84 bytes that took 1 GB in the backbone's resize
    response = post_video(client, "strip.png", wide.read_bytes())
    assert response.status_code == 422
    assert response.json()["detail"] == ("strip.png: 4000x1 pixels: an aspect ratio of 4000:1 is more than the 20:1 "
                                         "decoded here (set CAPTIONER_MAX_ASPECT_RATIO to change)")


def test_request_without_a_file_is_400(client):
    response = client.post("/api/caption", data={"beam": "2"}, files={"other": ("x.bin", b"1")})
    assert response.status_code == 400 and "field 'file'" in response.json()["detail"]


# ----------------------------------------------------------------------------- concurrency
@pytest.mark.timeout(300)
def test_twenty_concurrent_requests_all_answered(make_app, tiny_video):
    app = make_app(queue=20, uploads=20)

    def post(i: int) -> httpx.Response:
        return httpx.post(f"{url}/api/caption", files={"file": (f"clip{i}.mp4", tiny_video)}, timeout=240)

    with running_server(app) as url, ThreadPoolExecutor(max_workers=20) as pool:
        started = time.perf_counter()
        responses = list(pool.map(post, range(20)))
        wall = time.perf_counter() - started
        assert httpx.get(f"{url}/api/health").json()["jobs"] == 0
    print(f"20 concurrent requests answered in {wall:.1f} s")
    assert [r.status_code for r in responses] == [200] * 20
    assert len({r.json()["caption"] for r in responses}) == 1  # one model, same input, same answer
    assert [r.json()["path"] for r in responses] == [f"clip{i}.mp4" for i in range(20)]


def test_client_leaving_mid_upload_frees_its_slot_and_file(make_app, short_clip):
    app = make_app(queue=1)
    with running_server(app) as url:
        with _raw_upload(url, 1_000_000, b"--x\r\nContent-Disposition: form-data; name=\"file\"; "
                         b"filename=\"a.avi\"\r\n\r\n" + short_clip.read_bytes()[:100_000]):
            deadline = time.monotonic() + 10
            while not (stored := [p for p in files_under(app.state.upload_dir) if p.is_file()]) \
                    and time.monotonic() < deadline:
                time.sleep(0.02)
            assert [p.name for p in stored] == ["upload.avi"]  # the partial upload, under its generated name
        deadline = time.monotonic() + 10
        while app.state.slots.active and time.monotonic() < deadline:
            time.sleep(0.02)
        assert httpx.get(f"{url}/api/health").json()["jobs"] == 0  # the one slot is free again
    # (make_app checks that the half-written upload is gone)


@pytest.mark.timeout(300)
def test_full_queue_answers_503_at_once(make_app, tiny_video, monkeypatch):
    app = make_app(queue=2)
    release, admitted = threading.Event(), []
    real_job = serve_module.caption_upload

    def held_job(*args):  # keep the admitted jobs busy until every other request is answered
        admitted.append(app.state.slots.active)
        assert release.wait(timeout=120)
        return real_job(*args)

    monkeypatch.setattr(serve_module, "caption_upload", held_job)
    with TestClient(app) as test_client, ThreadPoolExecutor(max_workers=20) as pool:
        futures = [pool.submit(post_video, test_client, f"clip{i}.mp4", tiny_video) for i in range(20)]
        deadline = time.monotonic() + 120
        while sum(f.done() for f in futures) < 18 and time.monotonic() < deadline:
            time.sleep(0.05)
        rejected = [f.result() for f in futures if f.done()]
        release.set()
        responses = [f.result(timeout=120) for f in futures]
    assert len(rejected) == 18 and all(r.status_code == 503 for r in rejected)
    assert rejected[0].headers["retry-after"] == "5" and "queue full" in rejected[0].json()["detail"]
    assert sorted(r.status_code for r in responses) == [200] * 2 + [503] * 18
    assert max(admitted) <= 2


# ----------------------------------------------------------------------------- hostile clients
def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _start_upload(port: int, declared: int = 1_000_000, boundary: str = "x") -> socket.socket:
    """A connection that has sent the headers of a multipart upload and the start of its file part."""
    connection = socket.create_connection(("127.0.0.1", port), timeout=10)
    connection.sendall(f"POST /api/caption HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                       f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                       f"Content-Length: {declared}\r\n\r\n--{boundary}\r\n"
                       'Content-Disposition: form-data; name="file"; filename="a.avi"\r\n\r\n'.encode())
    return connection


def _reply(connection: socket.socket) -> bytes:
    connection.settimeout(10)
    reply = b""
    while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
        piece = connection.recv(65536)
        if not piece:
            break
        reply += piece
    return reply


def _wait_until(condition, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _trickle(connections: list[socket.socket], answered: dict, seconds: float = 120.0) -> None:
    """Send each connection one byte every 0.2 s until the server answers it; count the bytes sent
    before it did (gives up after `seconds`, a bound for a hung server, not a measurement)."""
    sent = dict.fromkeys(connections, 0)
    deadline = time.monotonic() + seconds
    while len(answered) < len(connections) and time.monotonic() < deadline:
        waiting = [c for c in connections if c not in answered]
        readable, _, _ = select.select(waiting, [], [], 0)
        answered.update((c, sent[c]) for c in readable)
        for connection in set(waiting) - set(readable):
            connection.sendall(b"\0")
            sent[connection] += 1
        time.sleep(0.2)


@pytest.mark.timeout(120)
def test_slow_uploads_time_out_and_never_hold_the_queue(make_app, tiny_video):
    app = make_app(queue=1, uploads=8, upload_timeout=3, idle_timeout=1)
    with running_server(app) as url:
        port = _port(url)
        tricklers = [_start_upload(port) for _ in range(4)]  # 1 byte every 0.2 s: never idle, never done
        stalled = _start_upload(port)  # sends the start of its body, then nothing
        stalled.sendall(b"RIFF")
        answered = {}
        trickling = threading.Thread(target=_trickle, args=(tricklers, answered))
        trickling.start()
        assert _wait_until(lambda: app.state.upload_slots.active == 5)

        # The slow uploads fill nothing but upload slots: a whole upload is captioned meanwhile.
        response = httpx.post(f"{url}/api/caption", files={"file": ("tiny.mp4", tiny_video)}, timeout=60)
        assert response.status_code == 200, response.text

        trickling.join()
        replies = [_reply(connection) for connection in tricklers]
        stalled_reply = _reply(stalled)
        for connection in tricklers + [stalled]:
            connection.close()
        assert all(reply.startswith(b"HTTP/1.1 408 ") for reply in replies), replies
        # Each was cut off by the 3-s upload limit while it was still sending (never idle for the
        # 1-s idle limit), not by the end of its body: its declared 1,000,000 bytes never all came.
        assert all(b"the upload took longer than 3 s" in reply for reply in replies), replies
        assert len(answered) == len(tricklers) and all(0 < sent < 1_000_000 for sent in answered.values())
        assert stalled_reply.startswith(b"HTTP/1.1 408 ") and b"nothing arrived for 1 s" in stalled_reply
        assert _wait_until(lambda: app.state.upload_slots.active == 0)
        health = httpx.get(f"{url}/api/health").json()
        assert (health["jobs"], health["uploads"]) == (0, 0)


def test_full_upload_slots_answer_503_at_once(make_app):
    app = make_app(uploads=1)
    with running_server(app) as url:
        holder = _start_upload(_port(url))
        assert _wait_until(lambda: app.state.upload_slots.active == 1)
        refused = httpx.post(f"{url}/api/caption", files={"file": ("a.mp4", b"\0" * 600)}, timeout=10)
        holder.close()
    assert refused.status_code == 503 and refused.headers["retry-after"] == "5"


def test_overlong_multipart_boundary_is_400(make_app, tiny_video):
    app = make_app()
    with running_server(app) as url:
        def post(boundary: str) -> httpx.Response:
            body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"tiny.mp4\"\r\n\r\n"
                    .encode() + tiny_video + f"\r\n--{boundary}--\r\n".encode())
            return httpx.post(f"{url}/api/caption", content=body, timeout=60,
                              headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})

        too_long = post("b" * 2000)
        assert too_long.status_code == 400
        assert too_long.json()["detail"] == ("malformed multipart body (a boundary of 2000 characters; at most 70 "
                                             "are allowed)")
        assert post("b" * 71).status_code == 400
        assert post("b" * 70).status_code == 200  # the longest RFC 2046 allows


def _multipart(boundary: str, content: bytes, closing: bool = True) -> bytes:
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"tiny.mp4\"\r\n\r\n"
            .encode() + content)
    return body + (f"\r\n--{boundary}--\r\n".encode() if closing else b"")


def test_multipart_body_without_its_closing_boundary_is_400(make_app, tiny_video):
    app = make_app()
    with running_server(app) as url:
        def post(body: bytes) -> httpx.Response:
            return httpx.post(f"{url}/api/caption", content=body, timeout=60,
                              headers={"Content-Type": "multipart/form-data; boundary=b"})

        whole = _multipart("b", tiny_video)
        # Without the closing boundary the parser holds back the file's last bytes as a possible
        # boundary: the file would be captioned cut short.
        for cut in (_multipart("b", tiny_video, closing=False), whole[:-4], whole[:-20], whole[:40]):
            response = post(cut)
            assert response.status_code == 400, (len(cut), response.text)
            assert response.json()["detail"] == ("malformed multipart body (it ends before its closing boundary, "
                                                 "so the file may be cut short)")
        assert post(whole).status_code == 200
        assert post(whole + b"an epilogue, which RFC 2046 allows").status_code == 200


def test_loopback_server_answers_no_route_for_another_host_name(make_app, model):
    """DNS rebinding: a page on evil.example, its name now resolving to 127.0.0.1, reads nothing."""
    app = make_app(loopback_only=True)
    with running_server(app) as url:
        port = _port(url)
        for method, path in [("GET", "/api/health"), ("GET", "/"), ("GET", "/openapi.json"), ("GET", "/nowhere"),
                             ("POST", "/api/caption"), ("OPTIONS", "/api/caption")]:
            for host in (f"evil.example:{port}", "evil.example", "127.0.0.1.evil.example", "", "[::1"):
                response = httpx.request(method, f"{url}{path}", headers={"Host": host}, timeout=10)
                assert response.status_code == 403, (method, path, host, response.text)
                assert response.json() == {"detail": "this server answers requests to 127.0.0.1, localhost, ::1 "
                                                     f"only, not to {host!r}"}
                assert model[0].model_id not in response.text
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "LOCALHOST", "127.0.0.2"):
            health = httpx.get(f"{url}/api/health", headers={"Host": host}, timeout=10)
            assert health.status_code == 200 and health.json()["model"] == model[0].model_id, host
        assert httpx.get(f"{url}/openapi.json", timeout=10).status_code == 200


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.0.0.2", True), ("::1", True),
                                            ("localhost", True), ("LocalHost", True), ("0.0.0.0", False),
                                            ("::", False), ("192.168.1.5", False), ("localhost.example", False),
                                            ("", False)])
def test_a_server_on_any_loopback_address_applies_the_host_rule(model, monkeypatch, host, loopback):
    """`serve --host 127.0.0.2` is as reachable by a rebound name as 127.0.0.1 is."""
    import uvicorn

    served = []
    monkeypatch.setattr(serve_module.Captioner, "load", classmethod(lambda cls, *args, **kwargs: model[0]))
    monkeypatch.setattr(uvicorn.Server, "run", lambda self: served.append(self.config.app))
    serve_module.serve(host=host, port=1)
    with TestClient(served[0], base_url="http://evil.example") as test_client:
        assert test_client.get("/api/health").status_code == (403 if loopback else 200)


def test_posts_from_other_web_origins_are_refused(make_app, tiny_video):
    app = make_app(allow_origins=("http://app.example",), loopback_only=True)
    with running_server(app) as url:
        def post(headers: dict) -> httpx.Response:
            return httpx.post(f"{url}/api/caption", files={"file": ("tiny.mp4", tiny_video)}, headers=headers,
                              timeout=60)

        foreign = post({"Origin": "http://evil.example"})
        assert foreign.status_code == 403
        assert foreign.json()["detail"] == ("posting from the web page of http://evil.example is refused; start the "
                                            "server with --allow-origin http://evil.example to allow it")
        assert post({"Origin": "null"}).status_code == 403  # sandboxed frames and local files
        # DNS rebinding: evil.example now resolves to 127.0.0.1, so the page's origin is the server's own
        rebound = post({"Origin": f"http://evil.example:{_port(url)}", "Host": f"evil.example:{_port(url)}"})
        assert rebound.status_code == 403 and "requests to 127.0.0.1, localhost, ::1 only" in rebound.text

        assert post({"Origin": url}).status_code == 200  # the server's own page
        assert post({}).status_code == 200  # not from a web page: curl, scripts
        allowed = post({"Origin": "http://app.example"})
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "http://app.example"  # its page may read it


@pytest.mark.timeout(600)
def test_client_leaving_cancels_its_waiting_and_running_jobs(make_app, model, tmp_path, monkeypatch):
    # 60 s in half-second segments: 121 backbone passes per job, the whole video's and 120 windows'.
    video = synthetic_video(tmp_path / "long.mp4", frames=60, fps=1).read_bytes()
    app = make_app(queue=3)
    outcomes, passes = [], []
    real_job, real_pass = serve_module.caption_upload, model[0]._pooled

    def watched_job(*args):
        try:
            real_job(*args)
            outcomes.append("finished")
        except serve_module.JobCancelled:
            outcomes.append("cancelled")
            raise

    def counted_pass(*args, **kwargs):
        passes.append(time.monotonic())
        return real_pass(*args, **kwargs)

    monkeypatch.setattr(serve_module, "caption_upload", watched_job)
    monkeypatch.setattr(model[0], "_pooled", counted_pass)
    boundary = "leaving"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"segments\"\r\n\r\n0.5\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"long.mp4\"\r\n\r\n"
            ).encode() + video + f"\r\n--{boundary}--\r\n".encode()
    with running_server(app) as url:
        connections = []
        for _ in range(3):
            connection = socket.create_connection(("127.0.0.1", _port(url)), timeout=10)
            connection.sendall(f"POST /api/caption HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
                               f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n".encode() + body)
            connections.append(connection)
        # The first job is into its segments; two wait behind it.
        assert _wait_until(lambda: app.state.slots.active == 3 and len(passes) >= 3, seconds=120)
        for connection in connections:
            connection.close()
        left = time.monotonic()
        assert _wait_until(lambda: app.state.slots.active == 0, seconds=120)
        freed_after = time.monotonic() - left
        assert httpx.get(f"{url}/api/health").json()["jobs"] == 0
    after_leaving = sum(moment > left for moment in passes)
    print(f"slots free {freed_after:.2f} s after the clients left; {after_leaving} backbone passes began meanwhile")
    assert outcomes == ["cancelled"], outcomes  # the two waiting jobs never ran
    assert after_leaving <= 2  # the running one stopped at its next window, not after 120 of them


def _long_job_body(video: bytes, boundary: str = "long") -> bytes:
    return (f"--{boundary}\r\nContent-Disposition: form-data; name=\"segments\"\r\n\r\n0.5\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"long.mp4\"\r\n\r\n"
            ).encode() + video + f"\r\n--{boundary}--\r\n".encode()


@pytest.mark.timeout(600)
def test_stopping_cancels_running_and_queued_jobs_and_answers_503(make_app, model, tmp_path, monkeypatch):
    # 60 s in half-second segments: 121 backbone passes per job.
    body = _long_job_body(synthetic_video(tmp_path / "long.mp4", frames=60, fps=1).read_bytes())
    app = make_app(queue=3)
    outcomes, passes = [], []
    real_job, real_pass = serve_module.caption_upload, model[0]._pooled

    def watched_job(*args):
        try:
            result = real_job(*args)
            outcomes.append("finished")
            return result
        except serve_module.JobCancelled:
            outcomes.append("cancelled")
            raise

    def counted_pass(*args, **kwargs):
        passes.append(stopped_at[0] is not None)
        return real_pass(*args, **kwargs)

    stopped_at: list = [None]
    monkeypatch.setattr(serve_module, "caption_upload", watched_job)
    monkeypatch.setattr(model[0], "_pooled", counted_pass)
    with running_server(app) as url, ThreadPoolExecutor(max_workers=2) as pool:
        def post() -> httpx.Response:
            return httpx.post(f"{url}/api/caption", content=body, timeout=300,
                              headers={"Content-Type": "multipart/form-data; boundary=long"})

        futures = [pool.submit(post) for _ in range(2)]
        # The first job is into its segments; the second waits behind it; a third client is mid-upload.
        assert _wait_until(lambda: app.state.slots.active == 2 and len(passes) >= 3, seconds=240)
        uploading = _start_upload(_port(url))
        assert _wait_until(lambda: app.state.upload_slots.active == 1)
        stopped_at[0] = len(passes)
        app.state.stop()
        responses = [future.result(timeout=240) for future in futures]
        upload_reply = _reply(uploading)
        uploading.close()
        assert _wait_until(lambda: app.state.slots.active == 0, seconds=240)
        late = httpx.post(f"{url}/api/caption", content=body, timeout=60,
                          headers={"Content-Type": "multipart/form-data; boundary=long"})
    assert [r.status_code for r in responses] == [503, 503], [r.text for r in responses]
    assert all(r.json()["detail"] == "the server is stopping; try again when it is back" for r in responses)
    assert responses[0].headers["retry-after"] == "30"
    assert late.status_code == 503  # nothing new is admitted once stopping
    assert upload_reply.startswith(b"HTTP/1.1 503 ") and b"the server is stopping" in upload_reply
    assert outcomes == ["cancelled"], outcomes  # the queued job never ran; the running one stopped
    assert sum(passes) <= 2  # at its next segment window, not after the other ~118
    # (make_app checks that both uploads are gone)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_stopping_the_server_cancels_its_job_and_removes_the_upload_folder(model, tmp_path, stop):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "captioner.cli", "serve", "--port", str(port), "--model",
                               model[1], "--device", "cpu"], cwd=ROOT, env={**os.environ, "TMPDIR": str(tmp_path)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        def serving() -> bool:
            assert server.poll() is None, server.stderr.read().decode()
            try:
                return httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        assert _wait_until(serving, seconds=500)  # start-up takes minutes on a loaded machine
        assert len(list(tmp_path.glob("captioner-serve-*"))) == 1
        # A job of 121 backbone passes (a 60-s video in half-second windows) is running when the signal comes.
        body = _long_job_body(synthetic_video(tmp_path / "long.mp4", frames=60, fps=1).read_bytes())
        with ThreadPoolExecutor(max_workers=1) as pool:
            answer = pool.submit(httpx.post, f"http://127.0.0.1:{port}/api/caption", content=body, timeout=600,
                                 headers={"Content-Type": "multipart/form-data; boundary=long"})
            assert _wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/api/health").json()["jobs"] == 1,
                               seconds=120)
            assert len(list(tmp_path.glob("captioner-serve-*/job-*/upload.mp4"))) == 1
            server.send_signal(stop)
            response = answer.result(timeout=300)
        server.wait(timeout=300)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    stderr = server.stderr.read().decode()
    assert "Traceback" not in stderr, stderr
    assert response.status_code == 503 and "the server is stopping" in response.json()["detail"], response.text
    assert "long.mp4: the server is stopping; its job is cancelled" in stderr
    assert list(tmp_path.glob("captioner-serve-*")) == []


# ----------------------------------------------------------------------------- command line
def test_serve_command_defaults_to_loopback():
    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port, args.model, args.max_upload_mb, args.queue) == ("127.0.0.1", 8000, "default",
                                                                                  100.0, 4)
    assert (args.uploads, args.upload_timeout, args.idle_timeout, args.allow_origin) == (16, 120.0, 15.0, [])
    defaults = ServeLimits()
    assert (defaults.uploads, defaults.upload_timeout, defaults.idle_timeout) == (16, 120.0, 15.0)


@pytest.mark.parametrize("flags", [["--port", "70000"], ["--queue", "0"], ["--max-upload-mb", "0"],
                                   ["--uploads", "0"], ["--upload-timeout", "0"], ["--idle-timeout", "nan"],
                                   ["--allow-origin", "example.org"], ["--allow-origin", "https://example.org/page"]])
def test_serve_command_rejects_bad_flags(flags, capsys):
    assert main(["serve", *flags]) == 2
    assert capsys.readouterr().err.startswith("captioner: error: --")
