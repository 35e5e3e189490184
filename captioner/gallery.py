"""The library's routes in the web app (`captioner serve --db library.db`): search, keyframes,
the indexed videos themselves and their timed captions.

    GET /api/library                              how many videos, which concepts (for the filter)
    GET /api/library/search?q=&limit=&concept=&min_duration=    ranked hits (as `captioner search --json`)
    GET /api/library/videos/{key}                 one video: caption, concepts, timed windows
    GET /api/library/videos/{key}/file            the video file (Range requests, so players can seek)
    GET /api/library/videos/{key}/captions.vtt    its window captions as WebVTT
    GET /api/library/thumbnails/{key}[/{window}]  a keyframe JPEG

A file is served only by its number in the library, never by a path from the client, so the
server can send nothing but the files that were indexed. Every route follows the app's host and
origin rules (`serve._origin_refusal`): on a loopback server, only requests to a loopback name.
The client sees file names, not the server's folders.
"""

from __future__ import annotations

import mimetypes
import threading
from pathlib import Path

from fastapi import FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse

from .caption import Segment
from .writers import subtitles
from .errors import CaptionerError
from .library import Library

MAX_LIMIT = 100
MAX_QUERY_CHARS = 10_000


def _public(hit: dict) -> dict:
    key, window = hit["key"], hit["window"]
    hit = dict(hit)
    hit["name"] = Path(hit.pop("path")).name
    hit["thumbnail"] = f"/api/library/thumbnails/{key}" + (f"/{window}" if window is not None else "")
    hit["video"] = f"/api/library/videos/{key}/file"
    hit["captions"] = f"/api/library/videos/{key}/captions.vtt"
    return hit


def vtt_text(segments: list[dict]) -> str:
    """WebVTT of a video's stored windows, written as `captioner caption --vtt` writes it."""
    return subtitles([Segment(s["start"], s["end"], s["caption"], s["score"]) for s in segments], "vtt")


def add_gallery_routes(app: FastAPI, library: Library, refusal) -> None:
    """Register the library's routes; `refusal(request)` says why a request is refused, or None."""
    lock = threading.Lock()  # one SQLite connection, used from the server's worker threads

    def check(request: Request) -> None:
        reason = refusal(request)
        if reason is not None:
            raise HTTPException(403, reason)

    def record(key: int) -> dict:
        with lock:
            found = library.video(key)
        if found is None:
            raise HTTPException(404, f"no video {key} in the library")
        return found

    @app.get("/api/library")
    def library_info(request: Request) -> dict:
        """How many videos the library holds and the concepts recognised in them (most videos first)."""
        check(request)
        with lock:
            return {"videos": len(library), "concepts": library.concept_names()}

    @app.get("/api/library/search")
    def library_search(request: Request, q: str = Query("", max_length=MAX_QUERY_CHARS),
                       limit: int = Query(12, ge=1, le=MAX_LIMIT), concept: str | None = None,
                       min_duration: float | None = Query(None, ge=0)) -> dict:
        """Ranked hits for the words in `q` (as `captioner search --json`, with file names, not paths)."""
        check(request)
        try:
            with lock:
                hits = library.search(q, limit, concept=concept or None, min_duration=min_duration)
        except CaptionerError as error:
            raise HTTPException(422, error.reason) from None
        return {"hits": [_public(hit.to_dict()) for hit in hits]}

    @app.get("/api/library/videos/{key}")
    def library_video(request: Request, key: int) -> dict:
        """A video's caption, concepts and timed window captions."""
        check(request)
        found = record(key)
        return {"key": key, "id": found["id"], "name": Path(found["path"]).name, "duration": found["duration"],
                "caption": found["caption"], "concepts": found["concepts"], "segments": found["segments"],
                "video": f"/api/library/videos/{key}/file", "captions": f"/api/library/videos/{key}/captions.vtt"}

    @app.get("/api/library/videos/{key}/file")
    def library_file(request: Request, key: int) -> FileResponse:
        """The indexed file itself, as it was found when indexed."""
        check(request)
        path = Path(record(key)["path"])
        if not path.is_file():
            raise HTTPException(404, f"{path.name} is no longer where it was indexed")
        media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return FileResponse(path, media_type=media_type, headers={"X-Content-Type-Options": "nosniff"})

    @app.get("/api/library/videos/{key}/captions.vtt")
    def library_captions(request: Request, key: int) -> Response:
        check(request)
        return Response(vtt_text(record(key)["segments"]), media_type="text/vtt")

    @app.get("/api/library/thumbnails/{key}")
    @app.get("/api/library/thumbnails/{key}/{window}")
    def library_thumbnail(request: Request, key: int, window: int | None = None) -> Response:
        check(request)
        with lock:
            image = library.thumbnail(key, window)
        if image is None:
            raise HTTPException(404, "no keyframe (indexed with --no-thumbnails, or no such video)")
        return Response(image, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})
