"""The report: a self-contained page that a browser shows without errors, plus Markdown and JSON."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from captioner.errors import CaptionerError
from captioner.evaluate import CONSTANT, MODEL, NEAREST, Evaluation, SystemScores, evaluate
from captioner.report import (HUMAN, MIN_RETRIEVAL_POOL, PUBLISHED_MSVD, PUBLISHED_MSVD_VIDEOS, _examples,
                              baseline_caveats, bootstrap_resamples, ranking_metric, report_files, video_sections,
                              write_report)
from captioner.store import open_features
from eval_helpers import assert_one_line_error, msvd_test_refs, read_msvd_tsv, run_cli, scorer  # noqa: F401

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]


@pytest.fixture(scope="module")
def msvd_case(data_dir, msvd_clips, msvd_test_refs, tmp_path_factory):
    """The real test-split clips, a 'model' that says one of each clip's human captions (one
    clip gets a wrong one), real training captions and toy features for the retrieval baseline."""
    test_ids = [p.stem for p in msvd_clips if p.stem in msvd_test_refs]
    assert len(test_ids) == 9
    predictions = {i: msvd_test_refs[i][n % 4] for n, i in enumerate(test_ids)}
    predictions[test_ids[0]] = "a woman is slicing an onion"
    references = {i: msvd_test_refs[i] for i in test_ids}
    train_refs = dict(list(read_msvd_tsv(data_dir / "msvd" / "captions" / "MSVD_train.tsv").items())[:200])
    store = open_features(tmp_path_factory.mktemp("features") / "toy", "a")
    rng = np.random.default_rng(0)
    for video_id in [*train_refs, *test_ids]:
        store.put(video_id, rng.normal(size=(2, 16)))
    run = tmp_path_factory.mktemp("run")
    (run / "metrics.csv").write_text("epoch,train_loss,val_loss,val_CIDEr,val_METEOR\n1,4.1,3.9,0.21,0.22\n"
                                     "2,3.2,3.4,0.35,0.25\n3,2.8,3.3,,\n", encoding="utf-8")
    return predictions, references, train_refs, open_features(store.path), run


@pytest.fixture(scope="module")
def report(msvd_case, msvd_clips, scorer, tmp_path_factory):
    predictions, references, train_refs, store, run = msvd_case
    evaluation = evaluate(predictions, references, train_references=train_refs, train_features=store, k=5,
                          scorer=scorer)
    out = tmp_path_factory.mktemp("report")
    paths = write_report(evaluation, out, videos=msvd_clips[0].parent, run=run, train_references=train_refs,
                         title="MSVD <clips> & co", progress=False)
    return evaluation, paths


def test_report_files(report):
    evaluation, paths = report
    assert set(paths) == {"html", "markdown", "json"} and all(p.is_file() for p in paths.values())
    data = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert set(data["systems"]) == {MODEL, CONSTANT, NEAREST}
    assert data["systems"][MODEL] == evaluation.model.corpus
    assert data["training_curves"]["val_CIDEr"] == [0.21, 0.35, None]
    assert data["caption_stats"][CONSTANT]["copied_from_training"] == 1.0
    assert data["caption_stats"][NEAREST]["copied_from_training"] == 1.0  # retrieval copies by design
    assert set(data["per_video"]) == set(evaluation.ids)
    markdown = paths["markdown"].read_text(encoding="utf-8")
    for key in ("scores", "lengths", "vocabulary", "training"):
        assert f"(plots/{key}.png)" in markdown and (paths["markdown"].parent / "plots" / f"{key}.png").is_file()
    assert PUBLISHED_MSVD[1]["name"] in markdown and "| system | videos | BLEU-1 | BLEU-2" in markdown

    page = paths["html"].read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//|@import|url\(\s*["']?http""", page)
    assert "MSVD &lt;clips&gt; &amp; co" in page  # user text is escaped
    # this run's scores and the published ones (other videos) are separate tables, each with its sample size
    ours = page[page.index("<h2>Scores on this run"):page.index("<h2>Published results")]
    assert PUBLISHED_MSVD[0]["name"] not in ours and f'<td class="num">{len(evaluation.ids)}</td>' in ours
    published = page[page.index("<h2>Published results"):page.index("<h2>Captions</h2>")]
    assert PUBLISHED_MSVD[0]["name"] in published and f'<td class="num">{PUBLISHED_MSVD_VIDEOS}</td>' in published
    assert "ids left out" not in page
    # Intervals of the corpus score itself: each holds its own point estimate (the constant caption's
    # BLEU-4 read "0.252 (0.000–0.239)" when they were of the mean per-video score).
    assert set(data["intervals"]) == {MODEL, CONSTANT, NEAREST}
    for name, by_metric in data["intervals"].items():
        for metric, (low, high) in by_metric.items():
            assert 0 <= low <= data["systems"][name][metric] <= high, (name, metric, low, high)
    low, high = data["intervals"][MODEL]["CIDEr"]
    assert high - low > 0.01
    assert data["bootstrap_resamples"] == bootstrap_resamples(9) == 1000
    assert "1000 resamples" in data["interval_method"] and "1000 resamples" in page
    # Nine videos: one table of them all, best first, not best, worst and all repeating each other.
    assert "<h3>Best" not in page and "Best videos" not in markdown and "Worst videos" not in markdown
    ranked = page[page.index("<h2>All 9 videos, best to worst (by METEOR)</h2>"):]
    wrong = evaluation.ids[0]
    assert ranked.index(f"<code>{wrong}</code>") > max(ranked.index(f"<code>{i}</code>") for i in evaluation.ids[1:])
    assert "a woman is slicing an onion" in ranked  # the wrong caption ranks last
    assert sum(page.count(f"<code>{i}</code>") for i in evaluation.ids) == 9  # each video shown once
    counts = [len(evaluation.references[i]) for i in evaluation.ids]
    assert data["references_per_video"] == {"total": sum(counts), "min": min(counts), "mean": sum(counts) / 9,
                                            "max": max(counts)}
    assert (f"Scored against the references: {sum(counts)} references for 9 videos ({min(counts)}–{max(counts)} per "
            f"video, mean {sum(counts) / 9:.1f}).") in page


def test_report_renders_in_chromium(report):
    from playwright.sync_api import sync_playwright

    evaluation, paths = report
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors, requests = [], []
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("request", lambda request: requests.append(request.url))
            page.goto(paths["html"].as_uri(), wait_until="load")
            images = page.evaluate("Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth])")
            title = page.title()
            # the per-video tables must fit a laptop window: no column cut off, no sideways scrolling
            page_width = page.evaluate("document.documentElement.scrollWidth")
            widest_table = page.evaluate("Math.max(...Array.from(document.querySelectorAll('table'))"
                                         ".map(t => t.getBoundingClientRect().right))")
            page.screenshot(path=str(paths["html"].parent / "report-1280.png"), full_page=True)
            # A phone: nothing sticks out sideways; wide tables scroll inside their own box.
            phone = browser.new_page(viewport={"width": 390, "height": 900})
            phone.goto(paths["html"].as_uri(), wait_until="load")
            phone_width = phone.evaluate("document.documentElement.scrollWidth")
            card_widths = phone.evaluate("Array.from(document.querySelectorAll('table.videos tr:not(.head)'))"
                                         ".map(r => r.getBoundingClientRect().right)")
            phone.screenshot(path=str(paths["html"].parent / "report-390.png"), full_page=True)
        finally:
            browser.close()
    assert errors == []
    assert requests == [paths["html"].as_uri()]  # nothing fetched from anywhere else
    assert title == "MSVD <clips> & co"
    assert page_width <= 1280 and widest_table <= 1280, (page_width, widest_table)
    assert phone_width <= 390 and card_widths and max(card_widths) <= 390, (phone_width, card_widths)
    assert images and all(complete and width > 0 for _, complete, width in images), images
    frames = [alt for alt, _, _ in images if alt.startswith("frames of ")]
    assert len(frames) == len(evaluation.ids)  # nine videos: each shown once
    assert sum(not alt.startswith("frames of ") for alt, _, _ in images) == 4  # the four plots


def _written(folder, predictions: dict, references: dict):
    """(predictions.json, references.json) written in `folder`, as the commands read them."""
    pred_file, ref_file = folder / "predictions.json", folder / "references.json"
    pred_file.write_text(json.dumps(predictions), encoding="utf-8")
    ref_file.write_text(json.dumps(references), encoding="utf-8")
    return pred_file, ref_file


def test_report_command(tmp_path, msvd_case, msvd_clips):
    predictions, references, train_refs, store, run = msvd_case
    pred_file, ref_file = _written(tmp_path, predictions, references)
    videos = tmp_path / "some videos"
    videos.mkdir()
    linked = [clip for clip in msvd_clips if clip.stem in predictions][:4]  # the others: no frames
    for clip in linked:
        (videos / clip.name).symlink_to(clip)
    out = tmp_path / "report"
    proc, leftovers = run_cli("report", "--predictions", str(pred_file), "--references", str(ref_file),
                              "--metrics", "BLEU,CIDEr", "--videos", str(videos), "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert leftovers == []
    assert proc.stdout.split() == [str(out / "report.html"), str(out / "report.md"), str(out / "report.json")]
    page = (out / "report.html").read_text(encoding="utf-8")
    assert sum(page.count(f'alt="frames of {clip.stem}"') >= 1 for clip in linked) == 4
    assert "5 of 9 videos not found" in page

    proc, _ = run_cli("report", "--predictions", str(pred_file), "--references", str(ref_file), "--metrics", "BLEU",
                      "--out", str(tmp_path / "report2"))
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr  # not a terminal: no progress line
    page = (tmp_path / "report2" / "report.html").read_text(encoding="utf-8")
    assert f"Scored against the references in {ref_file}: " in page

    proc, _ = run_cli("report", "--predictions", str(pred_file), "--references", str(ref_file), "--metrics", "BLEU",
                      "--run", str(tmp_path / "no run"), "--out", str(out))
    assert_one_line_error(proc, "no metrics.csv")
    proc, _ = run_cli("report", "--predictions", str(pred_file), "--references", str(ref_file), "--metrics", "BLEU",
                      "--videos", str(tmp_path / "nowhere"), "--out", str(out))
    assert_one_line_error(proc, "videos folder not found")


def test_write_report_rejects_a_bad_run_directory(report, tmp_path):
    evaluation, _ = report
    (tmp_path / "metrics.csv").write_text("step;loss\n1;2\n", encoding="utf-8")
    with pytest.raises(CaptionerError, match="'epoch' column"):
        write_report(evaluation, tmp_path / "out", run=tmp_path, progress=False)


def test_report_says_what_produced_it(tmp_path, msvd_case, monkeypatch):
    """The report names the model, decoding, inputs, version, date and command; the 661 test videos
    without a prediction read as a subset, and a human-agreement row scores references against each other."""
    predictions, references, *_ = msvd_case
    pred_file = tmp_path / "predictions.jsonl"
    pred_file.write_text("".join(json.dumps({"id": i, "caption": c, "model": "runs/msvd/model.pt", "beam": 3,
                                             "length_penalty": 0.5}) + "\n" for i, c in predictions.items()),
                         encoding="utf-8")
    ref_file = tmp_path / "references.json"
    ref_file.write_text(json.dumps({**references, "not-captioned": ["a man is talking"]}), encoding="utf-8")
    monkeypatch.setattr("sys.argv", ["captioner", "report", "--predictions", str(pred_file)])
    paths = report_files(pred_file, ref_file, tmp_path / "out", metrics="BLEU,CIDEr", progress=False)
    data = json.loads(paths["json"].read_text(encoding="utf-8"))
    run = data["provenance"]
    assert run["model"] == "runs/msvd/model.pt" and run["decoding"] == "beam 3, length penalty 0.5"
    assert run["references"] == str(ref_file) and run["predictions"] == str(pred_file)
    assert run["captioner version"] and re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", run["date"])
    assert run["command"] == f"captioner report --predictions {pred_file}"
    page = paths["html"].read_text(encoding="utf-8")
    assert "<h2>Run</h2>" in page and "runs/msvd/model.pt" in page and "runs/msvd/model.pt" in \
        paths["markdown"].read_text(encoding="utf-8")
    assert "1 more videos that have no prediction" in page and "left out" not in page
    human = data["human_agreement"]
    assert set(human) == set(data["metrics"]) and 0 < human["BLEU-4"] < 1 and human["CIDEr"] > 0.1
    assert "human agreement" in page


def test_best_videos_are_not_ranked_by_one_rare_word():
    """A wrong caption sharing one rare word with one reference gets a high per-video CIDEr; the
    best and worst examples are ranked by METEOR when it was scored, by CIDEr only without it."""
    scores = {"right": {"METEOR": 0.45, "CIDEr": 1.1}, "wrong": {"METEOR": 0.12, "CIDEr": 1.6},
              "middling": {"METEOR": 0.3, "CIDEr": 0.5}}
    model = SystemScores(MODEL, {"right": "a roller coaster is moving", "wrong": "people are sitting on a bench",
                                 "middling": "a car"}, {}, scores)
    evaluation = Evaluation(list(scores), {i: ["x"] for i in scores}, ("METEOR", "CIDEr"), [model])
    assert ranking_metric(evaluation) == "METEOR"
    assert _examples(evaluation) == (["right"], ["wrong"])
    without_meteor = Evaluation(list(scores), {i: ["x"] for i in scores}, ("CIDEr",), [model])
    assert ranking_metric(without_meteor) == "CIDEr"


def test_report_names_each_step_while_it_scores(tmp_path, msvd_case, capsys):
    """`report` spent 85 s silent before its first progress line: now each step is named as it starts."""
    predictions, references, train_refs, store, _ = msvd_case
    pred_file, ref_file = _written(tmp_path, predictions, references)
    train_file = tmp_path / "train.json"
    train_file.write_text(json.dumps(train_refs), encoding="utf-8")
    report_files(pred_file, ref_file, tmp_path / "out", metrics="BLEU,CIDEr", train_references=train_file,
                 progress=True)
    err = capsys.readouterr().err
    steps = ["starting the scorers (Java)", "baselines", "scoring model (1/2)", "scoring constant caption (2/2)",
             "human agreement", "intervals of model (1000 resamples) (1/3)", f"intervals of {HUMAN}", "plots"]
    positions = [err.find(f"report: {step}") for step in steps]
    assert all(p >= 0 for p in positions) and positions == sorted(positions), err


def test_small_sets_list_each_video_once_and_large_ones_best_worst_and_all():
    def evaluation_of(n: int) -> Evaluation:
        ids = [f"v{i}" for i in range(n)]
        scores = {i: {"METEOR": k / n} for k, i in enumerate(ids)}
        model = SystemScores(MODEL, {i: "a caption" for i in ids}, {}, scores)
        return Evaluation(ids, {i: ["x"] for i in ids}, ("METEOR",), [model])

    [(heading, _, ids)] = video_sections(evaluation_of(9))
    assert heading == "All 9 videos, best to worst (by METEOR)" and ids == [f"v{i}" for i in reversed(range(9))]
    sections = video_sections(evaluation_of(60))
    assert [(h, len(ids)) for h, _, ids in sections] == [
        ("Best videos (by METEOR)", 5), ("Worst videos (by METEOR)", 5), ("All videos (60)", 60)]


def test_a_baseline_with_too_small_a_pool_or_one_caption_for_most_videos_is_flagged():
    ids = [f"v{i}" for i in range(9)]
    captions = {i: "an elephant is painting" if n < 7 else f"caption {n}" for n, i in enumerate(ids)}
    scores = {i: {"METEOR": 0.1} for i in ids}
    systems = [SystemScores(MODEL, {i: f"model {i}" for i in ids}, {}, scores),
               SystemScores(CONSTANT, {i: "a man is playing a guitar" for i in ids}, {}, scores),
               SystemScores(NEAREST, captions, {}, scores)]
    evaluation = Evaluation(ids, {i: ["x"] for i in ids}, ("METEOR",), systems, baseline_pools={NEAREST: 40})
    assert baseline_caveats(evaluation) == [
        f"The nearest neighbour baseline retrieves from only 40 training videos (those with both features and "
        f"captions), fewer than the {MIN_RETRIEVAL_POOL} retrieval needs to find a similar video: its scores say "
        "little about retrieval.",
        "The nearest neighbour baseline gives one caption, \u201can elephant is painting\u201d, to 7 of 9 videos."]
    evaluation.baseline_pools = {NEAREST: 1200}
    evaluation.systems[2] = SystemScores(NEAREST, {i: f"caption {i}" for i in ids}, {}, scores)
    assert baseline_caveats(evaluation) == []  # the constant caption is one caption by design
