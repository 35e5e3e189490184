"""Caption videos from a browser: a FastAPI app around one loaded Captioner.

    captioner serve [--host 127.0.0.1] [--port 8000] [--model default|CKPT]   # open http://127.0.0.1:8000

    GET  /               the page (captioner/web/index.html): upload, progress, caption, keyframes, timeline
    POST /api/caption    multipart/form-data: file, optional beam, segments (seconds), keyframes (count)
                         → the fields of `captioner caption --json` (+ keyframes, subtitles)
    GET  /api/health     model id and how busy the server is
    GET  /openapi.json   the API schema (FastAPI; /docs renders it)

Uploads are untrusted, so the body is read by hand rather than by a form parser that spools it
first: the size limit holds whatever Content-Length says (413 as soon as it is passed), the
type comes from the file's first bytes (415), and the file lives under a generated name in a
private folder that is removed when the request ends, however it ends. A body must arrive
within a time limit and without long pauses (408), so slow senders cannot hold the server.

Uploads in progress and jobs (waiting for or using the one model thread) are bounded apart:
an upload takes an upload slot, and only a finished upload takes a job slot, so clients that
upload slowly never keep finished uploads from being captioned. Requests over either bound get
503 at once, so a burst costs neither memory nor disk beyond them. A job whose client has gone
is dropped from the queue, or stopped at its next segment if it is running.

Browsers send any page's form posts to any server, this one included; so a POST whose Origin is
not this server's own, or one of --allow-origin, is refused (403), and a server on a loopback
address answers no request, on any route, that is not addressed to a loopback name: a page whose
domain was rebound to 127.0.0.1 sends its own name, so it can neither post nor read anything.

When the server is told to stop (SIGTERM, Ctrl-C), running and queued jobs are cancelled at
their next step and their clients answered 503, so stopping takes seconds, not the length of the
longest job; the upload folder goes before the process exits.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import io
import ipaddress
import logging
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath, PureWindowsPath
from urllib.parse import urlsplit

import anyio
from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect

from .caption import Captioner, run_timing, segment_windows
from .errors import CaptionerError
from .inputs import video_id
from .version import __version__
from .writers import SUBTITLE_FORMATS, get_writer

log = logging.getLogger("captioner.serve")

FORM_SLACK = 64 * 1024  # multipart boundaries, part headers and the small form fields around the file
SNIFF_BYTES = 512  # enough for every signature in `sniff_media`
MAX_BOUNDARY = 70  # multipart boundary length, by RFC 2046; python-multipart fails on longer ones its own way
MAX_SEGMENTS = 200  # windows per request: each one is a full backbone pass
MAX_KEYFRAMES = 12
MAX_BEAM = 10


@dataclass
class ServeLimits:
    max_upload_mb: float = 100.0
    queue: int = 4  # finished uploads waiting for or being captioned; more get 503
    uploads: int = 16  # uploads in progress at once, which bounds the disk they take; more get 503
    # Seconds a client may take to send its whole body: 100 MB in 120 s needs 7 Mbit/s.
    upload_timeout: float = 120.0
    idle_timeout: float = 15.0  # seconds a client may send nothing in the middle of its body
    allow_origins: tuple[str, ...] = ()  # web origins besides the server's own that may post jobs

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


# ----------------------------------------------------------------------------- file type
# Containers recognised by their first bytes: (extension, [(offset, signature), ...]). Only these reach
# FFmpeg, so formats that make it open further files or URLs (HLS or concat playlists, ...) never
# do. The extension is what `captioner.video` expects for such a file.
_SIGNATURES = [
    (".mov", [(4, b"ftypqt  ")]),
    (".mp4", [(4, b"ftyp")]),  # MP4, M4V, 3GP and friends
    (".mov", [(4, b"moov")]), (".mov", [(4, b"mdat")]), (".mov", [(4, b"wide")]), (".mov", [(4, b"free")]),
    (".mkv", [(0, b"\x1a\x45\xdf\xa3")]),  # Matroska and WebM
    (".avi", [(0, b"RIFF"), (8, b"AVI ")]),
    (".webp", [(0, b"RIFF"), (8, b"WEBP")]),
    (".mpg", [(0, b"\x00\x00\x01\xba")]),
    (".flv", [(0, b"FLV\x01")]),
    (".wmv", [(0, b"\x30\x26\xb2\x75\x8e\x66\xcf\x11")]),  # ASF
    (".ogv", [(0, b"OggS")]),
    (".gif", [(0, b"GIF87a")]), (".gif", [(0, b"GIF89a")]),
    (".jpg", [(0, b"\xff\xd8\xff")]),
    (".png", [(0, b"\x89PNG\r\n\x1a\n")]),
]
_ACCEPTED = "MP4/MOV, Matroska/WebM, AVI, MPEG-PS/TS, FLV, WMV, Ogg, GIF, JPEG, PNG, BMP or WebP"


def sniff_media(head: bytes) -> str | None:
    """The file extension of the video or image container these first bytes start, else None."""
    for extension, signatures in _SIGNATURES:
        if all(head[offset: offset + len(signature)] == signature for offset, signature in signatures):
            return extension
    if len(head) > 376 and head[0] == head[188] == head[376] == 0x47:  # MPEG-TS: a sync byte every 188
        return ".ts"
    if head.startswith(b"BM") and len(head) >= 18 and int.from_bytes(head[14:18], "little") in (12, 40, 52, 56,
                                                                                               108, 124):
        return ".bmp"  # "BM" alone starts too much text; the DIB header size makes it a bitmap
    return None


def client_file_name(raw: str | None) -> str:
    """The last component of the name the client sent, for display only (never a path here)."""
    name = PureWindowsPath(PurePosixPath(raw or "").name).name
    name = "".join(ch for ch in name if ch.isprintable()).strip()[:200]
    return name if name.strip(".") else "upload"


# ----------------------------------------------------------------------------- the request body
@dataclass
class Upload:
    path: Path  # the file in the job folder, named by its sniffed type
    name: str  # the client's file name, for display
    fields: dict[str, str]


class _MultipartUpload:
    """Streams one multipart body: the `file` part to disk, small fields to memory, limits enforced."""

    def __init__(self, boundary: bytes, folder: Path, max_file_bytes: int):
        self.folder = folder
        self.max_file_bytes = max_file_bytes
        self.fields: dict[str, str] = {}
        self.file_name: str | None = None
        self.file_path: Path | None = None
        self.file_size = 0
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._headers: dict[str, bytes] = {}
        self._part: str | None = None  # "file", a field name, or None for a part we skip
        self._value = bytearray()
        self._head = bytearray()  # the file's first bytes, until its type is known
        self._out = None
        self.complete = False  # the closing boundary arrived: without it the file's last bytes are unknown
        self.parser = MultipartParser(boundary, {
            "on_part_begin": self._part_begin, "on_header_field": self._header_field_data,
            "on_header_value": self._header_value_data, "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished, "on_part_data": self._part_data,
            "on_part_end": self._part_end, "on_end": self._end})

    def write(self, chunk: bytes) -> None:
        self.parser.write(chunk)

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None

    # -- parser callbacks
    def _part_begin(self) -> None:
        self._headers, self._part, self._value = {}, None, bytearray()

    def _header_field_data(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._headers[bytes(self._header_field).decode("latin-1").lower()] = bytes(self._header_value)
        self._header_field, self._header_value = bytearray(), bytearray()

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get("content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if name == "file" and b"filename" in options:
            if self.file_name is not None:
                raise HTTPException(400, "send one file per request")
            self.file_name = client_file_name(options[b"filename"].decode("utf-8", "replace"))
            self._part = "file"
        elif name and b"filename" not in options:
            self._part = name

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._part == "file":
            self._file_data(data[start:end])
        elif self._part is not None:
            self._value += data[start:end]
            if len(self._value) > 1024:
                raise HTTPException(400, f"form field {self._part!r} is too long")

    def _part_end(self) -> None:
        if self._part == "file":
            if self._out is None:  # a file shorter than SNIFF_BYTES
                self._start_file()
            self.close()
        elif self._part is not None:
            self.fields[self._part] = self._value.decode("utf-8", "replace").strip()

    def _end(self) -> None:
        self.complete = True

    def _file_data(self, data: bytes) -> None:
        self.file_size += len(data)
        if self.file_size > self.max_file_bytes:
            raise HTTPException(413, f"{self.file_name}: file is larger than the "
                                     f"{self.max_file_bytes / 2**20:g} MB this server accepts")
        if self._out is not None:
            self._out.write(data)
            return
        self._head += data
        if len(self._head) >= SNIFF_BYTES:
            self._start_file()

    def _start_file(self) -> None:
        """Decide the type from the first bytes; only a recognised file is ever written to disk."""
        if not self._head:
            raise HTTPException(422, f"{self.file_name}: empty file")
        extension = sniff_media(bytes(self._head))
        if extension is None:
            raise HTTPException(415, f"{self.file_name}: not a video or image file this server can read "
                                     f"(by its content; accepted: {_ACCEPTED})")
        self.file_path = self.folder / f"upload{extension}"
        self._out = open(self.file_path, "xb")
        self._out.write(self._head)
        self._head = bytearray()


def _busy() -> HTTPException:
    return HTTPException(503, "the server is busy (queue full); try again shortly", headers={"Retry-After": "5"})


def _stopping() -> HTTPException:
    return HTTPException(503, "the server is stopping; try again when it is back", headers={"Retry-After": "30"})


async def _disconnected(request: Request) -> None:
    """Returns when the client closes the connection (call once the body has been read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _body_too_large(limits: ServeLimits) -> HTTPException:
    return HTTPException(413, f"request body is larger than the {limits.max_upload_mb:g} MB this server accepts")


async def receive_upload(request: Request, folder: Path, limits: ServeLimits) -> Upload:
    """Read the multipart body into `folder`, enforcing the size and time limits while reading."""
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or not options.get(b"boundary"):
        raise HTTPException(415, "send the video as multipart/form-data with the field 'file'")
    boundary = options[b"boundary"]
    if len(boundary) > MAX_BOUNDARY:
        raise HTTPException(400, f"malformed multipart body (a boundary of {len(boundary)} characters; "
                                 f"at most {MAX_BOUNDARY} are allowed)")
    reader = _MultipartUpload(boundary, folder, limits.max_upload_bytes)
    body_limit = limits.max_upload_bytes + FORM_SLACK
    received = 0
    deadline = time.monotonic() + limits.upload_timeout
    chunks = request.stream().__aiter__()
    try:
        while True:
            wait = min(limits.idle_timeout, deadline - time.monotonic())
            try:
                with anyio.fail_after(max(wait, 0.0)):
                    chunk = await chunks.__anext__()
            except StopAsyncIteration:
                break
            except TimeoutError:
                if wait < limits.idle_timeout:
                    raise HTTPException(408, f"the upload took longer than {limits.upload_timeout:g} s") from None
                raise HTTPException(408, f"the upload stalled: nothing arrived for {limits.idle_timeout:g} s") \
                    from None
            received += len(chunk)
            # The file part's own count gives the exact message; this bounds a lying sender
            # that wraps the bytes in a part we skip.
            if received > body_limit:
                raise _body_too_large(limits)
            reader.write(chunk)
        if not reader.complete:  # python-multipart's finalize() does not check this
            raise HTTPException(400, "malformed multipart body (it ends before its closing boundary, so the "
                                     "file may be cut short)")
    except ClientDisconnect:
        raise HTTPException(400, "the client went away during the upload") from None
    except ValueError as error:  # python-multipart's malformed-body errors derive from ValueError
        raise HTTPException(400, f"malformed multipart body ({error})") from None
    finally:
        reader.close()
    if reader.file_path is None:
        raise HTTPException(400, "no file: send the video in the multipart field 'file'")
    return Upload(reader.file_path, reader.file_name or "upload", reader.fields)


# ----------------------------------------------------------------------------- parameters
@dataclass
class JobParams:
    beam: int | None = None  # None: the model's own (its checkpoint's decoding settings)
    segments: float | None = None
    keyframes: int = 0

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> "JobParams":
        def number(name, kind, low, high, default):
            text = fields.get(name, "")
            if text == "":
                return default
            try:
                value = kind(text)
            except ValueError:
                raise HTTPException(422, f"{name} must be a number, got {text!r}") from None
            if not low <= value <= high:
                raise HTTPException(422, f"{name} must be between {low:g} and {high:g}, got {text}")
            return value

        return cls(beam=number("beam", int, 1, MAX_BEAM, None),
                   segments=number("segments", float, 0.5, 3600.0, None),
                   keyframes=number("keyframes", int, 0, MAX_KEYFRAMES, 0))


# ----------------------------------------------------------------------------- the job
def keyframe_images(path: Path, count: int, short_side: int = 128) -> list[dict]:
    """`count` frames spread over the video as data-URI JPEGs, with their times in seconds."""
    from PIL import Image

    from .video import decode

    decoded = decode(path, f"uniform:{count}", short_side=short_side)
    images = []
    for frame, seconds in zip(decoded.frames, decoded.timestamps):
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, "JPEG", quality=80)
        images.append({"time": round(float(seconds), 3),
                       "image": "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()})
    return images


class JobCancelled(Exception):
    """The client went away, so nobody wants this job's answer."""


def caption_upload(captioner: Captioner, upload: Upload, params: JobParams,
                   cancelled: threading.Event | None = None) -> dict:
    """Caption one stored upload: what `captioner caption --json` prints, plus keyframes and subtitles.

    Raises JobCancelled at the next step (segment window) after `cancelled` is set.
    """
    from .video import probe

    def check(_done: int = 0, _total: int = 0) -> None:
        if cancelled is not None and cancelled.is_set():
            raise JobCancelled

    check()
    if params.segments is not None:
        duration = probe(upload.path).duration
        if len(segment_windows(duration, params.segments)) > MAX_SEGMENTS:
            raise CaptionerError(f"{params.segments:g}-second segments would cut this {duration:.0f}-second video "
                                 f"into more than {MAX_SEGMENTS} windows; choose longer segments")
    result = captioner.caption(upload.path, beam=params.beam, segments=params.segments, progress=check)
    response = result.to_dict()
    response.update(path=upload.name, id=video_id(PurePosixPath(upload.name)))
    check()
    if params.keyframes:
        response["keyframes"] = keyframe_images(upload.path, params.keyframes)
    if result.segments is not None:  # the writers of `captioner caption --srt/--vtt`, in memory
        response["subtitles"] = {fmt: get_writer(fmt).text(result) for fmt in SUBTITLE_FORMATS}
    return response


class JobSlots:
    """A counter of admitted requests; threads (TestClient) and the event loop may both touch it."""

    def __init__(self, limit: int):
        self.limit = limit
        self.active = 0
        self._lock = threading.Lock()

    def full(self) -> bool:
        return self.active >= self.limit

    def try_acquire(self) -> bool:
        with self._lock:
            if self.active >= self.limit:
                return False
            self.active += 1
            return True

    def release(self) -> None:
        with self._lock:
            self.active -= 1


# ----------------------------------------------------------------------------- the app
_ERRORS = {
    400: {"description": "malformed request"},
    403: {"description": "posted from a web page of another origin (see --allow-origin), or to a host name "
                         "that is not this loopback server's"},
    408: {"description": "the upload took too long, or stalled"},
    413: {"description": "the file is larger than --max-upload-mb"},
    415: {"description": "not a video or image by its content, or not multipart/form-data"},
    422: {"description": "bad parameters, or a file that cannot be decoded (the captioner's one-line message)"},
    503: {"description": "too many uploads or jobs at once; retry later"},
}
_UPLOAD_SCHEMA = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary", "description": "a video (or image) file"},
        "beam": {"type": "integer", "minimum": 1, "maximum": MAX_BEAM,
                 "description": "beam size (default: the model's own, 3 for the default model)"},
        "segments": {"type": "number", "minimum": 0.5, "description": "also caption windows of this many seconds"},
        "keyframes": {"type": "integer", "minimum": 0, "maximum": MAX_KEYFRAMES, "default": 0,
                      "description": "return this many frames as data-URI JPEGs"}}}}}}}
# The page is one file with inline CSS and JS; nothing else may load or run.
# 'self' images and media: the library gallery's keyframes and indexed videos (captioner.gallery).
_PAGE_POLICY = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                "img-src data: blob: 'self'; media-src blob: 'self'; connect-src 'self'; base-uri 'none'; "
                "form-action 'self'; frame-ancestors 'none'")


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def is_loopback(host: str) -> bool:
    """Whether a host name or address (as --host takes it, or a Host header's name) is this machine's
    loopback: `localhost`, or any loopback address (127.0.0.0/8, ::1)."""
    host = host.strip().lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_name(host_header: str) -> str:
    """The name in a Host header ("[::1]:8000" -> "::1"); "" when it has none or is malformed."""
    try:
        return urlsplit(f"//{host_header}").hostname or ""
    except ValueError:
        return ""


class LoopbackHostOnly:
    """ASGI middleware: 403 for every request not addressed to a loopback name, on every route.

    A DNS-rebinding page (its own domain now resolving to 127.0.0.1) sends its domain as Host;
    refusing it everywhere, GET included, keeps it from reading the model, device or queue too.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket"):
            host = Headers(scope=scope).get("host", "")
            if not is_loopback(_host_name(host)):
                refusal = f"this server answers requests to {', '.join(LOOPBACK_HOSTS)} only, not to {host!r}"
                await JSONResponse({"detail": refusal}, status_code=403)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _origin_refusal(request: Request, allowed: tuple[str, ...]) -> str | None:
    """Why a browser on another site may not post this request, or None when it may."""
    host = request.headers.get("host", "")
    origin = request.headers.get("origin")
    if origin is None or origin in allowed:  # no Origin: not sent by a web page (curl, scripts)
        return None
    if origin.lower() == f"{request.url.scheme}://{host}".lower():
        return None
    return (f"posting from the web page of {origin} is refused; start the server with --allow-origin {origin} "
            "to allow it")


def create_app(captioner: Captioner, limits: ServeLimits | None = None, upload_dir: str | Path | None = None,
               executor: ThreadPoolExecutor | None = None, loopback_only: bool = False, library=None) -> FastAPI:
    """The web app around a loaded captioner; uploads go to private job folders under `upload_dir`.

    `library`: an open captioner.library.Library whose gallery the page then shows (captioner.gallery).
    Without `upload_dir` the app makes a temporary one and removes it when it shuts down.
    `loopback_only`: answer requests addressed to loopback names only (for a server on 127.0.0.1).
    `app.state.stop()` cancels every job and answers its client 503 (the server's signal handler
    calls it); the app's shutdown does it too, and waits for the running job to reach its next step.
    """
    limits = limits or ServeLimits()
    owns_upload_dir = upload_dir is None
    upload_dir = Path(upload_dir) if upload_dir is not None else Path(tempfile.mkdtemp(prefix="captioner-serve-"))
    upload_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="captioner")  # one model, one job
    slots, upload_slots = JobSlots(limits.queue), JobSlots(limits.uploads)
    page = resources.files("captioner").joinpath("web/index.html").read_text(encoding="utf-8")
    # Stopping: a flag, and a future per request in flight that stop() resolves in the request's own
    # loop (a test client may run each request in a loop of its own).
    stopping = threading.Event()
    waiting: set[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = set()
    jobs: set[concurrent.futures.Future] = set()  # submitted and not yet done

    def stop() -> None:
        """Cancel every request in flight (503) and with it its job; callable from a signal handler."""
        stopping.set()  # first: a request that registers after the loop below sees the flag
        for loop, stopped in list(waiting):
            loop.call_soon_threadsafe(lambda stopped=stopped: stopped.done() or stopped.set_result(None))

    @asynccontextmanager
    async def lifespan(_app):
        try:
            yield
        finally:
            stop()
            # The running job stops at its next step (one backbone pass); its folder goes when it does.
            pending = list(jobs)
            if pending:
                await asyncio.to_thread(concurrent.futures.wait, pending, 60)
            # Here, not only after uvicorn.run returns: on SIGTERM uvicorn shuts the app down, then
            # re-raises the signal, which ends the process before any code after it runs.
            if owns_upload_dir:
                shutil.rmtree(upload_dir, ignore_errors=True)

    # No /docs or /redoc: FastAPI loads Swagger UI from a CDN, which an offline page cannot reach.
    app = FastAPI(title="video-captioner", version=__version__, docs_url=None, redoc_url=None, lifespan=lifespan,
                  description="Caption a video: one English sentence, its n-best alternatives and timed captions.")
    app.state.upload_dir, app.state.slots, app.state.upload_slots = upload_dir, slots, upload_slots
    app.state.executor, app.state.stop = executor, stop
    if limits.allow_origins:  # lets those pages read the answers too
        app.add_middleware(CORSMiddleware, allow_origins=list(limits.allow_origins), allow_methods=["GET", "POST"])
    if loopback_only:  # added last, so it runs first: a refused request reaches nothing else
        app.add_middleware(LoopbackHostOnly)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": _PAGE_POLICY,
                                           "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"})

    @app.get("/api/health")
    def health() -> dict:
        """Which model answers, and how many jobs are admitted out of how many."""
        return {"status": "ok", "model": captioner.model_id, "device": captioner.device,
                "runtime": captioner.backbone.runtime, "precision": captioner.backbone.precision,
                "jobs": slots.active, "queue": slots.limit, "uploads": upload_slots.active,
                "max_uploads": upload_slots.limit, "max_upload_mb": limits.max_upload_mb,
                "library": library is not None}

    @app.post("/api/caption", responses=_ERRORS, openapi_extra=_UPLOAD_SCHEMA)
    async def caption(request: Request) -> dict:
        """Caption one uploaded video; the response has the fields of `captioner caption --json`.

        `timing` counts seconds: startup and model_load are 0 (paid once, when the server
        started); total runs from the request's arrival through upload, queue and captioning.
        """
        loop = asyncio.get_running_loop()
        stopped = loop.create_future()
        waiting.add((loop, stopped))
        work = None
        try:
            if stopping.is_set():
                raise _stopping()
            work = asyncio.ensure_future(handle(request))
            await asyncio.wait({work, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiting.discard((loop, stopped))
            if work is not None and not work.done():  # the server is stopping, or this request was cancelled
                work.cancel()  # its upload is dropped, its job cancelled (see `handle`)
                await asyncio.wait({work})
        if work.cancelled():
            raise _stopping()
        return work.result()

    async def handle(request: Request):
        arrived = time.perf_counter()
        refusal = _origin_refusal(request, limits.allow_origins)
        if refusal is not None:
            raise HTTPException(403, refusal)
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limits.max_upload_bytes + FORM_SLACK:
            raise _body_too_large(limits)
        if slots.full() or not upload_slots.try_acquire():  # full now: spare the client the upload
            raise _busy()
        job_dir = Path(tempfile.mkdtemp(prefix="job-", dir=upload_dir))

        def finish(_future=None) -> None:
            shutil.rmtree(job_dir, ignore_errors=True)
            slots.release()

        try:
            upload = await receive_upload(request, job_dir, limits)
            params = JobParams.from_fields(upload.fields)
            if not slots.try_acquire():
                raise _busy()
        except BaseException:
            shutil.rmtree(job_dir, ignore_errors=True)
            raise
        finally:
            upload_slots.release()

        cancelled = threading.Event()
        try:
            future = executor.submit(caption_upload, captioner, upload, params, cancelled)
        except BaseException:
            finish()
            raise
        # The job owns its folder and slot until it ends, even if this request ends first; this
        # callback runs before the awaiting request is woken.
        jobs.add(future)
        future.add_done_callback(jobs.discard)
        future.add_done_callback(finish)
        job = asyncio.wrap_future(future)
        client_gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({job, client_gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not job.done():  # the client left, or the server is stopping: nobody will read the answer
                cancelled.set()
                job.cancel()  # drops it from the queue; a running job stops at its next step
                if stopping.is_set():  # work lost, so said where the operator looks
                    log.warning("%s: the server is stopping; its job is cancelled", upload.name)
                else:
                    log.info("%s: the client went away; its job is cancelled", upload.name)
            client_gone.cancel()
        if job.cancelled():
            return Response(status_code=499)  # nginx's "client closed request"; nobody reads it
        try:
            response = job.result()
        except CaptionerError as error:
            raise HTTPException(422, f"{upload.name}: {error.reason}") from None
        # startup and model_load were paid once, when the server started.
        response["timing"] = run_timing(response["timing"], 0.0, 0.0, time.perf_counter() - arrived)
        return response

    if library is not None:
        from .gallery import add_gallery_routes

        # Host names are checked for every route already (the loopback rule above).
        add_gallery_routes(app, library, lambda request: _origin_refusal(request, limits.allow_origins))
    return app


def serve(model: str = "default", host: str = "127.0.0.1", port: int = 8000, limits: ServeLimits | None = None,
          device: str = "auto", runtime: str = "auto", precision: str = "auto", db: str | None = None) -> None:
    """Load the model, then serve the page and the API until interrupted; with `db`, that library's gallery too."""
    import uvicorn

    library = None
    if db is not None:
        from .library import Library

        library = Library.open(db, create=False)
    captioner = Captioner.load(model, device=device, runtime=runtime, precision=precision)
    loopback = is_loopback(host)
    if not loopback:
        log.warning("listening on %s: anyone who can reach this machine can upload videos", host)
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="captioner")
    app = create_app(captioner, limits, executor=executor, loopback_only=loopback, library=library)
    print(f"captioner: serving {captioner.model_id} on http://{host}:{port}", flush=True)

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            app.state.stop()  # before uvicorn waits for the open requests: they are the jobs
            super().handle_exit(sig, frame)

    try:
        Server(uvicorn.Config(app, host=host, port=port, log_level="info")).run()
    except KeyboardInterrupt:  # Ctrl-C, re-raised by uvicorn once it has shut down (as uvicorn.run does)
        pass
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(app.state.upload_dir, ignore_errors=True)
