"""The page in Debian's Chromium against the real server: upload a real clip, read its caption."""

from __future__ import annotations

import re
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from media import synthetic_video
from serve_helpers import files_under, running_server, shared_captioner

from captioner.serve import ServeLimits, create_app

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]
CLIP = "Kqb-mmkEWqU_1_5.avi"  # 4 s: the shortest real clip
# Screenshots of the page, to look at after a run (the folder is left in place on purpose).
SCREENSHOTS = Path(tempfile.gettempdir()) / "captioner-serve-screenshots"
SCREENSHOTS.mkdir(exist_ok=True)


@pytest.fixture(scope="module")
def model(request, data_dir, tmp_path_factory):
    return shared_captioner(request, data_dir, tmp_path_factory)


@pytest.fixture(scope="module")
def server(model, tmp_path_factory):
    executor = ThreadPoolExecutor(max_workers=1)
    app = create_app(model[0], ServeLimits(max_upload_mb=20, queue=2),
                     upload_dir=tmp_path_factory.mktemp("browser") / "uploads", executor=executor)
    with running_server(app) as url:
        yield url, app
    executor.shutdown(wait=True)


@dataclass
class Browser:
    page: object  # playwright Page
    errors: list = field(default_factory=list)  # console errors and uncaught exceptions
    outside: list = field(default_factory=list)  # requests that left the server (CDNs, fonts, ...)


@pytest.fixture
def browser(server):
    from playwright.sync_api import sync_playwright

    url, app = server
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            seen = Browser(chromium.new_page())
            seen.page.on("console", lambda message: message.type == "error" and seen.errors.append(message.text))
            seen.page.on("pageerror", lambda error: seen.errors.append(str(error)))

            def note_request(request):
                if not request.url.startswith((url, "data:", "blob:")):
                    seen.outside.append(request.url)

            seen.page.on("request", note_request)
            seen.page.goto(url)
            yield seen
        finally:
            chromium.close()
    assert files_under(app.state.upload_dir) == []


@pytest.mark.timeout(600)
def test_upload_a_real_clip_and_read_its_caption(browser, model, msvd_clips):
    from playwright.sync_api import expect

    page = browser.page

    clip = next(c for c in msvd_clips if c.name == CLIP)
    result = model[0].caption(clip, segments=2)  # as the page asks: the whole caption comes from the windows
    expected = result.caption
    expect(page.locator("#model")).to_have_text(model[0].model_id)

    page.get_by_label("Timed captions every (seconds)").fill("2")
    page.get_by_label("Choose a video, or drop one here").set_input_files(str(clip))
    page.get_by_role("button", name="Caption").click()
    expect(page.get_by_role("status")).to_have_text(re.compile("Uploading|Captioning|Caption ready"))
    expect(page.get_by_role("status")).to_have_text(f"Caption ready: {expected}", timeout=300_000)

    assert page.locator("#caption").inner_text() == expected
    # The alternatives are the other captions of the n-best list, not the chosen one again.
    others = [alt["caption"] for alt in result.alternatives if alt["caption"] != expected]
    shown = [re.sub(r" \(score -?\d+\.\d\d\)$", "", text)
             for text in page.locator("#alternatives li").all_inner_texts()]
    assert shown == others
    # Scores are named for what they are: length-penalised totals, not per-word log-probabilities.
    text = page.locator("#result").inner_text()
    assert "per word" not in text
    assert page.locator("#score").inner_text() == (
        f"Caption score {result.score:.2f}, length-penalised: total log-probability / (words + 1)^"
        f"{result.length_penalty:g} (closer to 0 is more likely)")
    # Details leaves out the server's start-up and model load (paid once, 0 per request).
    page.locator("summary", has_text="Details").click()
    details = page.locator("#details").inner_text()
    assert "startup" not in details and "model" + " load" not in details and "0.000 s" not in details
    assert "Time: backbone" in details and "Time: total" in details
    assert page.locator("#keyframes img").count() == 6
    # What the heads recognised, when the model reads concepts (the default model does).
    concepts = result.concepts
    if concepts:
        expect(page.locator("#concepts-box")).to_be_visible()
        top_action = concepts["actions"][0]["name"]
        assert top_action in page.locator("#concepts").inner_text()
    assert page.locator("#keyframes img").first.get_attribute("alt").startswith("Frame at 0:")
    # The 4.04-s clip in 2-s windows: two segments, the last one ending with the clip.
    assert page.locator("#timeline button").count() == page.locator("#segment-list li").count() == 2
    assert page.locator("#segment-list li").first.inner_text().startswith("0:00.0–0:02.0")
    assert page.locator("#segment-list li").last.inner_text().startswith("0:02.0–0:04.0")
    srt_link = page.get_by_role("link", name="Download SRT")
    assert srt_link.get_attribute("download") == "Kqb-mmkEWqU_1_5.srt"
    with page.expect_download() as download_info:
        srt_link.click()
    subtitles = download_info.value.path().read_text(encoding="utf-8")
    assert subtitles.startswith("1\n00:00:00,000 --> 00:00:0")  # one cue, or two where the windows differ
    # Chromium cannot play AVI: no preview, and the page says so rather than showing a broken player.
    expect(page.locator("#preview")).to_be_hidden()
    expect(page.locator("#preview-note")).to_be_visible()
    assert browser.errors == [] and browser.outside == []


def test_a_text_file_is_refused_with_the_servers_message(browser, tmp_path):
    from playwright.sync_api import expect

    page = browser.page

    notes = tmp_path / "notes.mp4"
    notes.write_text("these are my notes, not a video\n" * 40)
    page.get_by_label("Choose a video, or drop one here").set_input_files(str(notes))
    page.get_by_role("button", name="Caption").click()
    expect(page.get_by_role("alert")).to_contain_text("Could not caption notes.mp4 (HTTP 415): notes.mp4: not a video")
    assert page.get_by_role("button", name="Caption").is_enabled()
    # The 415 response is the page's own business: the browser logs the failed request, nothing else.
    assert [e for e in browser.errors if "status of 415" not in e] == [] and browser.outside == []


def test_a_playable_video_gets_a_preview_with_the_timed_captions(browser, tmp_path):
    from playwright.sync_api import expect

    page = browser.page
    video = synthetic_video(tmp_path / "pattern.mp4", frames=40, width=160, height=120, fps=10)  # H.264, 4 s
    page.get_by_label("Choose a video, or drop one here").set_input_files(str(video))
    page.get_by_role("button", name="Caption").click()
    expect(page.get_by_role("status")).to_have_text(re.compile("^Caption ready: "), timeout=300_000)

    preview = page.locator("#preview")
    expect(preview).to_be_visible()
    page.wait_for_function("() => { const t = document.getElementById('preview').textTracks[0];"
                           " return t && t.cues && t.cues.length >= 1; }")
    cues = page.evaluate("() => Array.from(document.getElementById('preview').textTracks[0].cues,"
                         " c => [c.startTime, c.endTime, c.text])")
    # Two 2-s windows; windows that say the same are one cue (steadied windows of one shot often do).
    windows = [page.locator("#timeline button").nth(i).inner_text() for i in range(2)]
    assert page.locator("#segment-list li").count() == 2
    assert [cue[2] for cue in cues] == [w for k, w in enumerate(windows) if k == 0 or w != windows[k - 1]]
    assert cues[0][0] == 0 and cues[-1][1] == 4 and all(a[1] == b[0] for a, b in zip(cues, cues[1:]))

    # A segment on the timeline seeks the preview just inside it, so only its caption shows:
    # on the 2.0-s boundary the cue ending there is still active and two lines stack.
    page.locator("#timeline button").nth(1).click()
    page.wait_for_function("() => { const t = document.getElementById('preview').textTracks[0];"
                           " return t.activeCues && t.activeCues.length === 1 &&"
                           " t.activeCues[0].endTime === 4; }")
    assert 2 < page.evaluate("document.getElementById('preview').currentTime") < 2.1
    page.screenshot(path=str(SCREENSHOTS / "serve_result.png"), full_page=True)

    # A failed upload after a good one leaves the error alone on the page, not the old result under it.
    notes = tmp_path / "notes.mp4"
    notes.write_text("these are my notes, not a video\n" * 40)
    page.get_by_label("Choose a video, or drop one here").set_input_files(str(notes))
    page.get_by_role("button", name="Caption").click()
    expect(page.get_by_role("alert")).to_contain_text("Could not caption notes.mp4 (HTTP 415)")
    expect(page.locator("#result")).to_be_hidden()
    assert page.locator("#caption").inner_text() == "" and page.locator("#alternatives li").count() == 0
    assert page.evaluate("document.getElementById('preview').getAttribute('src')") is None
    page.screenshot(path=str(SCREENSHOTS / "serve_error.png"), full_page=True)
    assert [e for e in browser.errors if "status of 415" not in e] == [] and browser.outside == []
