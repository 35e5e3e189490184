"""The library's gallery (`captioner serve --db`) against the real server: its routes' rules over
HTTP, then Debian's Chromium searching, filtering by concept and playing a hit at its window."""

from __future__ import annotations

import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from serve_helpers import running_server, shared_captioner
from test_serve_browser import CHROMIUM_ARGS

from captioner.library import Library
from captioner.serve import ServeLimits, create_app

CLIP = "Kqb-mmkEWqU_1_5.avi"  # 4 s: a boy kicks a ball
OTHER = "778mkceE0UQ_40_46.avi"  # 6 s: a car drives down a road (AVI: browsers cannot play it)
SCREENSHOTS = Path(tempfile.gettempdir()) / "captioner-gallery-screenshots"
SCREENSHOTS.mkdir(exist_ok=True)


def webm_copy(source: Path, target: Path) -> Path:
    """The clip re-encoded as VP8 WebM, which Chromium plays (the MSVD clips are AVI)."""
    import av

    with av.open(str(source)) as inp, av.open(str(target), "w") as out:
        stream_in = inp.streams.video[0]
        stream = out.add_stream("libvpx", rate=int(round(stream_in.average_rate or 25)))
        stream.width, stream.height, stream.pix_fmt = stream_in.width, stream_in.height, "yuv420p"
        stream.options = {"deadline": "realtime", "cpu-used": "8"}
        for frame in inp.decode(stream_in):
            for packet in stream.encode(frame.reformat(format="yuv420p")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return target


def wait_for(page, condition: str, seconds: float = 60) -> None:
    """Poll a JavaScript condition from outside the page (the page's CSP forbids the eval that
    Playwright's wait_for_function needs)."""
    deadline = time.monotonic() + seconds
    while not page.evaluate(f"() => Boolean({condition})"):
        assert time.monotonic() < deadline, f"timed out waiting for {condition}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def model(request, data_dir, tmp_path_factory):
    return shared_captioner(request, data_dir, tmp_path_factory)


@pytest.fixture(scope="module")
def gallery(model, data_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("gallery")
    clips = data_dir / "msvd" / "clips"
    videos = [webm_copy(clips / CLIP, folder / "kick.webm"), clips / OTHER]
    db = folder / "library.db"
    with Library.open(db) as library:
        summary = library.add(videos, segments=1.5, captioner=model[0])
        assert summary.failed == 0, summary.failures
    library = Library.open(db, create=False)
    executor = ThreadPoolExecutor(max_workers=1)
    app = create_app(model[0], ServeLimits(), upload_dir=folder / "uploads", executor=executor, loopback_only=True,
                     library=library)
    with running_server(app) as url:
        yield url, library
    executor.shutdown(wait=True)
    library.close()


def test_gallery_routes_serve_only_indexed_files_to_loopback_hosts(gallery):
    url, library = gallery
    info = httpx.get(f"{url}/api/library").json()
    assert info["videos"] == 2 and info["concepts"]
    hits = httpx.get(f"{url}/api/library/search", params={"q": "kick a ball", "limit": 5}).json()["hits"]
    assert hits and "path" not in hits[0] and hits[0]["name"] in ("kick.webm", OTHER)
    key = hits[0]["key"]
    video = httpx.get(f"{url}/api/library/videos/{key}/file", headers={"Range": "bytes=0-99"})
    assert video.status_code == 206 and len(video.content) == 100  # players seek with ranges
    assert httpx.get(f"{url}/api/library/videos/{key}/captions.vtt").text.startswith("WEBVTT")
    assert httpx.get(f"{url}{hits[0]['thumbnail']}").headers["content-type"] == "image/jpeg"
    # Only numbers name files: anything else is no video.
    for bad in ("999", "..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "1%20OR%201"):
        assert httpx.get(f"{url}/api/library/videos/{bad}/file").status_code in (404, 422)
    # DNS rebinding: a loopback server answers loopback names only; other sites' pages are refused.
    assert httpx.get(f"{url}/api/library/search", params={"q": "ball"},
                     headers={"Host": "attacker.example"}).status_code == 403
    assert httpx.get(f"{url}/api/library/videos/{key}/file", headers={"Origin": "https://attacker.example"}) \
        .status_code == 403
    too_long = httpx.get(f"{url}/api/library/search", params={"q": "a" * 10_001})
    assert too_long.status_code == 422
    assert httpx.get(f"{url}/api/library/search", params={"q": '"NEAR(* ^ball', "limit": 3}).status_code == 200


@pytest.mark.timeout(600)
def test_search_filter_and_play_a_hit_at_its_window(gallery):
    from playwright.sync_api import expect, sync_playwright

    url, library = gallery
    record = next(r for r in library.records(features=False) if r["id"] == "kick")
    errors = []
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            for width, height in ((1280, 900), (390, 844)):
                page = chromium.new_page(viewport={"width": width, "height": height})
                page.on("pageerror", lambda error: errors.append(str(error)))
                page.on("console", lambda message: message.type == "error" and errors.append(message.text))
                page.goto(url)
                expect(page.locator("#library")).to_be_visible()
                expect(page.locator("#library-size")).to_contain_text("2 indexed videos")
                page.fill("#query", record["caption"])
                page.click("#search-button")
                cards = page.locator("#hits .card")
                expect(cards.first).to_be_visible()
                expect(cards.first).to_contain_text("kick.webm")
                expect(cards.first.locator("img")).to_have_js_property("complete", True)
                assert page.evaluate("document.querySelector('#hits .card img').naturalWidth") > 0
                page.screenshot(path=str(SCREENSHOTS / f"gallery-{width}.png"), full_page=True)
                # Readable on a phone: nothing wider than the screen.
                assert page.evaluate("document.documentElement.scrollWidth") <= width

                hit = httpx.get(f"{url}/api/library/search", params={"q": record["caption"], "limit": 1}).json()
                start = hit["hits"][0]["start"]
                cards.first.click()
                player = page.locator("#player")
                expect(player).to_be_visible()
                wait_for(page, f"document.querySelector('#player').readyState >= 1 && "
                               f"document.querySelector('#player').currentTime >= {start}")
                expect(page.locator("#player-segments li")).to_have_count(len(record["segments"]))
                expect(page.locator("#player track")).to_have_attribute("src", "/api/library/videos/"
                                                                        f"{hit['hits'][0]['key']}/captions.vtt")
                # A window of the timed captions plays from its start.
                last = record["segments"][-1]
                page.locator("#player-segments button").last.click()
                wait_for(page, f"document.querySelector('#player').currentTime >= {last['start']}")
                expect(page.locator("#player-segments li").last).to_have_class("current")
                page.screenshot(path=str(SCREENSHOTS / f"gallery-player-{width}.png"), full_page=True)

                # The concept filter narrows the hits to videos where that class was recognised.
                concept = next(c["name"] for found in record["concepts"].values() for c in found if c["p"] >= 0.05)
                page.select_option("#concept", concept)
                expect(page.locator("#search-status")).to_contain_text("found")
                names = page.locator("#hits .card .hit-meta").all_text_contents()
                expected = {Path(h.path).name for h in library.search(record["caption"], 24, concept=concept)}
                assert {n.split(" · ")[0] for n in names} == expected
                page.close()
        finally:
            chromium.close()
    assert errors == []
