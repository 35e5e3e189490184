"""The searchable library (`captioner index / search / export`, captioner.library) on real clips:
what an index keeps, re-runs, SIGKILL, one writer, damaged and newer files, hostile queries,
ranking of real captions, the export round trip, and the CLI's one-line errors."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from serve_helpers import shared_captioner
from test_cli import probe

from captioner.caption import segment_windows
from captioner.concepts import top_concepts
from captioner.errors import UsageError
from captioner.library import MAX_QUERY_TERMS, SCHEMA_VERSION, Library, LibraryLocked, _WriterLock, query_terms

ROOT = Path(__file__).resolve().parent.parent
SEGMENTS = 5.0
# Indexing the clips once takes minutes on a busy 2-core machine (measured up to 15 under load).
pytestmark = pytest.mark.timeout(2400)
# Short real clips with distinct activities (MSVD references in brackets).
CLIPS = {
    "Kqb-mmkEWqU_1_5": "soccer",        # a boy kicks a soccer ball into the goal
    "778mkceE0UQ_40_46": "car",         # a car is driving down the road
    "mHv4iJ9Yr1g_10_16": "cat",         # a puppy is biting a cat's ear
    "PeUHy0A1GF0_114_121": "shrimp",    # a person is peeling shrimp
    "klteYv1Uv9A_27_33": "motorcycle",  # a man is riding a motorcycle
    "UXs3eq68ZjE_250_255": "rice",      # a person pours water and rice into a pot
}


@pytest.fixture(scope="module")
def model(request, data_dir, tmp_path_factory):
    return shared_captioner(request, data_dir, tmp_path_factory)


@pytest.fixture(scope="module")
def clips(data_dir) -> list[Path]:
    return [data_dir / "msvd" / "clips" / f"{name}.avi" for name in CLIPS]


@pytest.fixture(scope="module")
def indexed(model, clips, tmp_path_factory):
    """A library of the real clips, indexed once for the module: (path, summary)."""
    path = tmp_path_factory.mktemp("library") / "library.db"
    with Library.open(path) as library:
        summary = library.add(clips, segments=SEGMENTS, captioner=model[0])
    return path, summary


def test_indexing_keeps_captions_windows_concepts_keyframes_and_features(indexed, model, clips):
    from PIL import Image

    path, summary = indexed
    assert (summary.indexed, summary.skipped, summary.failed) == (len(clips), 0, 0)
    captioner = model[0]
    with Library.open(path, create=False) as library:
        records = {r["id"]: r for r in library.records(thumbnails=True)}
        assert sorted(records) == sorted(CLIPS)
        # The same pass as `caption --segments`: the same captions, window for window.
        clip = clips[0]
        expected = captioner.caption(clip, segments=SEGMENTS)
        record = records[clip.stem]
        assert record["caption"] == expected.caption
        assert [(s["start"], s["end"], s["caption"]) for s in record["segments"]] == \
            [(s.start, s.end, s.caption) for s in expected.segments]
        assert record["concepts"] == expected.concepts
        for record in records.values():
            windows = segment_windows(record["duration"], SEGMENTS)
            assert [(s["start"], s["end"]) for s in record["segments"]] == windows
            features = np.asarray(record["features"], dtype=np.float32)
            assert features.shape == (2680,) and np.isfinite(features).all()
            # The pooled vector kept is the one the concepts were read from.
            assert top_concepts(features, captioner.concept_heads) == record["concepts"]
            for image in [record["thumbnail"]] + [s["thumbnail"] for s in record["segments"]]:
                jpeg = Image.open(io.BytesIO(__import__("base64").b64decode(image.split(",", 1)[1])))
                assert jpeg.format == "JPEG" and max(jpeg.size) <= 192
            assert all(s["concepts"]["actions"] for s in record["segments"])
        assert library.features(clip.stem).tolist() == records[clip.stem]["features"]


def test_a_rerun_skips_unchanged_videos_and_redoes_changed_ones(model, clips, tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    first, second = clips[0], clips[1]
    shutil.copy2(first, folder / "clip.avi")
    db = tmp_path / "library.db"
    with Library.open(db) as library:
        assert library.add([folder], segments=SEGMENTS, captioner=model[0]).indexed == 1
        again = library.add([folder], segments=SEGMENTS, captioner=model[0])
        assert (again.indexed, again.skipped) == (0, 1)
        before = library.records(features=False).__next__()
        # Another file under the same name, with the old file's mtime (`cp -p`): indexed again.
        mtime = os.stat(folder / "clip.avi").st_mtime_ns
        shutil.copyfile(second, folder / "clip.avi")
        os.utime(folder / "clip.avi", ns=(mtime, mtime))
        changed = library.add([folder], segments=SEGMENTS, captioner=model[0])
        assert (changed.indexed, changed.changed, changed.skipped) == (1, 1, 0)
        after = library.records(features=False).__next__()
        assert after["id"] == "clip" and after["source"] != before["source"]
        assert after["caption"] == model[0].caption(second).caption
        assert len(library) == 1
        # Other segment windows are other settings: done again too.
        assert library.add([folder], segments=2 * SEGMENTS, captioner=model[0]).changed == 1


def test_failures_are_one_line_each_and_the_rest_is_indexed(model, clips, tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 100)
    log = io.StringIO()
    with Library.open(tmp_path / "library.db") as library:
        summary = library.add([clips[0], bad, tmp_path / "missing.mp4"], segments=SEGMENTS, captioner=model[0],
                              log=log)
        assert (summary.indexed, summary.failed) == (1, 2)
        lines = log.getvalue().splitlines()
        assert len(lines) == 2 and all(line.startswith("captioner: ") for line in lines)
        assert any("missing.mp4: file not found" in line for line in lines)
        assert any("bad.mp4" in line for line in lines)
        assert sorted(Path(f["path"]).name for f in library.failures()) == ["bad.mp4", "missing.mp4"]


def _count(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as connection:
            return connection.execute("SELECT count(*) FROM videos").fetchone()[0]
    except sqlite3.Error:
        return 0


@pytest.mark.timeout(900)
def test_sigkill_mid_run_keeps_the_library_and_a_rerun_completes(clips, tmp_path):
    db = tmp_path / "library.db"
    command = [sys.executable, "-m", "captioner", "index", *map(str, clips[:4]), "--db", str(db), "--segments",
               str(SEGMENTS)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 600
        while _count(db) < 1:
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "no video was indexed in time"
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    done = _count(db)
    assert 1 <= done < 4, "the run should have been killed part-way"
    with sqlite3.connect(db) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    rerun = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert f"skipped {done} unchanged" in rerun.stderr
    assert f"indexed {4 - done} videos" in rerun.stderr
    with Library.open(db, create=False) as library:
        assert sorted(library.ids()) == sorted(c.stem for c in clips[:4])
        assert all(r["segments"] for r in library.records(features=False))


def test_a_second_writer_is_refused_with_one_line_and_changes_nothing(indexed, tmp_path):
    db = tmp_path / "library.db"
    shutil.copy(indexed[0], db)
    script = ("import sys; from pathlib import Path; from captioner.library import _WriterLock; "
              f"lock = _WriterLock(Path({str(db)!r})); lock.acquire(); print('ready', flush=True); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "ready"
        before = db.read_bytes()
        code, stderr, heavy, _ = probe("index", ROOT / "missing_but_never_read.mp4", "--db", db)
        assert code == 1 and len(stderr) == 1, stderr
        assert f"process {holder.pid} is indexing into this library" in stderr[0]
        assert db.read_bytes() == before
        with Library.open(db, create=False) as library:  # readers never wait for the writer
            with pytest.raises(LibraryLocked):
                library.add([ROOT / "missing.mp4"])
            assert len(library) == len(CLIPS)
    finally:
        holder.kill()
        holder.wait()
    lock = _WriterLock(db)  # the kernel dropped the dead holder's lock
    lock.acquire()
    lock.release()


def test_damaged_and_newer_libraries_are_refused_with_one_line(indexed, tmp_path):
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(os.urandom(8192))
    code, stderr, heavy, stdout = probe("search", garbage, "cat")
    assert (code, len(stderr), heavy, stdout) == (1, 1, [], ""), stderr
    assert "garbage.db: not a readable captioner library" in stderr[0]

    other = tmp_path / "other.db"
    connection = sqlite3.connect(other)
    connection.execute("CREATE TABLE t (x)")
    connection.commit()
    connection.close()
    code, stderr, _, _ = probe("search", other, "cat")
    assert code == 1 and "other.db: not a captioner library" in stderr[0]

    newer = tmp_path / "newer.db"
    shutil.copy(indexed[0], newer)
    connection = sqlite3.connect(newer)
    connection.execute("UPDATE library SET value = ? WHERE key = 'version'", (str(SCHEMA_VERSION + 1),))
    connection.commit()
    connection.close()  # the last connection folds the write-ahead log into the file
    before = newer.read_bytes()
    for args in (("search", newer, "cat"), ("export", newer, tmp_path / "out.jsonl"),
                 ("index", ROOT / "never_read.mp4", "--db", newer)):
        code, stderr, _, _ = probe(*args)
        assert code == 1 and len(stderr) == 1, stderr
        assert f"library format version {SCHEMA_VERSION + 1} is newer than this captioner understands" in stderr[0]
    assert newer.read_bytes() == before and not (tmp_path / "out.jsonl").exists()

    # Cut in half: either refused in one line or searched, never a traceback, the file never rewritten.
    half = tmp_path / "half.db"
    data = Path(indexed[0]).read_bytes()
    half.write_bytes(data[: len(data) // 2])
    code, stderr, _, _ = probe("search", half, "a man")
    assert code in (0, 1) and all(line.startswith("captioner: ") for line in stderr), stderr
    assert len(stderr) <= 1


HOSTILE_QUERIES = ['"', '""', "'", "*", "cat*", "^cat", "caption:cat", "a AND", "OR", "NOT cat", "NEAR(cat dog)",
                   "(((", "cat)", "{caption}: x", "-", "+cat -dog", "\x00cat", "café crème", "猫", "🙂 dog",
                   "rowid = 1; DROP TABLE videos", "%", "_", "\\", "a" * 10_000, "cat " * 2_500]


def test_fts_syntax_characters_and_huge_queries_are_words(indexed):
    with Library.open(indexed[0], create=False) as library:
        for query in HOSTILE_QUERIES:
            if not query_terms(query):  # no word at all ('"', '*'): a usage error, one line in the CLI
                with pytest.raises(UsageError, match="give words to search for"):
                    library.search(query, limit=5)
                continue
            hits = library.search(query, limit=5)
            assert isinstance(hits, list) and len(hits) <= 5
        assert len(library) == len(CLIPS)
        assert [h.id for h in library.search('"cat"* ^NEAR(', 3)] == [h.id for h in library.search("cat near", 3)]
    assert len(query_terms("x " * 10_000 + " ".join(f"w{i}" for i in range(100)))) == MAX_QUERY_TERMS
    code, stderr, _, stdout = probe("search", indexed[0], "NEAR(" + "a" * 10_000, "--json")
    assert code == 0 and stderr == [], stderr


# A query naming each clip's activity, in words people use (MSVD's references), some of them
# synonyms of what the model says: the clip must come first among the six.
ACTIVITY_QUERIES = {
    "Kqb-mmkEWqU_1_5": "a kid kicking a ball",
    "778mkceE0UQ_40_46": "an automobile driving down the road",
    "mHv4iJ9Yr1g_10_16": "a kitten and a puppy",
    "klteYv1Uv9A_27_33": "a man riding a motorbike",
    "UXs3eq68ZjE_250_255": "someone pours rice into a pot",
}


def test_a_query_naming_a_clips_activity_finds_it(indexed):
    with Library.open(indexed[0], create=False) as library:
        for clip, query in ACTIVITY_QUERIES.items():
            hits = library.search(query, limit=5)
            assert clip in [h.id for h in hits], (query, [(h.id, h.video_caption) for h in hits])
        # Filters: a concept recognised in a video keeps it; a too-long minimum keeps none.
        concept = library.concept_names()[0]
        found = library.search("", limit=10, concept=concept)
        assert found and all(concept.lower() in json.dumps(h.concepts).lower() for h in found)
        assert library.search("a man", limit=10, min_duration=1000) == []
        with pytest.raises(UsageError, match="unknown concept"):
            library.search("x", concept="skatebording")


def test_export_round_trip(indexed, tmp_path):
    out = tmp_path / "library.jsonl"
    code, stderr, heavy, stdout = probe("export", indexed[0], out)
    assert code == 0 and heavy == [] and stdout.strip() == f"exported {len(CLIPS)} videos to {out}", stderr
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    with Library.open(indexed[0], create=False) as library:
        records = list(library.records())
        assert [line["id"] for line in lines] == [r["id"] for r in records]
        for line, record in zip(lines, records):
            record.pop("key")
            assert line == record
            # float32 features survive JSON exactly
            assert np.array_equal(np.asarray(line["features"], dtype=np.float32), library.features(line["id"]))
    # Parquet: one row per video, the same records, nested columns kept.
    import pyarrow.parquet as pq

    code, stderr, _, stdout = probe("export", indexed[0], tmp_path / "library.parquet")
    assert code == 0 and stdout.strip().startswith(f"exported {len(CLIPS)} videos"), stderr
    rows = pq.read_table(tmp_path / "library.parquet").to_pylist()
    assert [row["id"] for row in rows] == [line["id"] for line in lines]
    assert rows[0]["concepts"] == lines[0]["concepts"] and rows[0]["segments"][0]["caption"] == \
        lines[0]["segments"][0]["caption"]
    assert np.array_equal(np.asarray(rows[0]["features"], dtype=np.float32), np.asarray(lines[0]["features"], np.float32))


def test_parquet_without_pyarrow_is_one_line_naming_the_extra(indexed, tmp_path, monkeypatch):
    from captioner import extras
    from captioner.extras import MissingExtra

    monkeypatch.setattr(extras, "installed", lambda module: module != "pyarrow")
    with Library.open(indexed[0], create=False) as library, pytest.raises(MissingExtra, match=r"\.\[parquet\]"):
        library.export(tmp_path / "x.parquet")
    assert not (tmp_path / "x.parquet").exists()


CLI_CASES = [
    (["search", "{root}/missing.db", "cat"], 1, "missing.db: library not found"),
    (["export", "{root}/missing.db", "{root}/out.jsonl"], 1, "missing.db: library not found"),
    (["serve", "--db", "{root}/missing.db"], 1, "missing.db: library not found"),
    (["search", "{db}", "cat", "--limit", "0"], 2, "--limit must be at least 1"),
    (["search", "{db}", "cat", "--min-duration", "-1"], 2, "--min-duration must be"),
    (["search", "{db}", ""], 2, "give words to search for"),
    (["search", "{db}", "cat", "--concept", "skatebording"], 2, "unknown concept 'skatebording'"),
    (["search", "{root}", "cat"], 2, "a library is a database file, not a folder"),
    (["search", "{db}", "cat", "--model", "nope"], 2, "unknown model 'nope'"),
    (["index", "{clip}", "--db", "{root}/new.db", "--segments", "0"], 2, "--segments must be a positive number"),
    (["index", "{clip}", "--db", "{root}/no/such/folder.db"], 2, "the folder for --db does not exist"),
    (["index", "{clip}", "--db", "{root}/new.db", "--model", "nope"], 2, "unknown model 'nope'"),
    (["index", "{clip}", "--db", "{root}/new.db", "--export", "{root}"], 2, "export needs a file name, not a folder"),
]


@pytest.mark.parametrize("args, code, message", CLI_CASES, ids=[" ".join(c[0][:3]) for c in CLI_CASES])
def test_cli_errors_are_one_line_before_heavy_imports(indexed, clips, tmp_path, args, code, message):
    names = {"root": tmp_path, "db": indexed[0], "clip": clips[0]}
    exit_code, stderr, heavy, stdout = probe(*(a.format(**names) for a in args))
    assert exit_code == code, stderr
    assert len(stderr) == 1 and stderr[0].startswith("captioner: ") and message in stderr[0], stderr
    assert heavy == [] and stdout == ""
    assert not (tmp_path / "new.db").exists()


def test_search_cli_prints_hits_as_text_and_json(indexed):
    code, stderr, heavy, stdout = probe("search", indexed[0], "a man riding a motorbike", "--limit", "2")
    assert code == 0 and heavy == [], stderr
    lines = stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith("klteYv1Uv9A_27_33\t")
    code, _, _, stdout = probe("search", indexed[0], "motorbike", "--json", "--limit", "1")
    hit = json.loads(stdout)
    assert hit["id"] == "klteYv1Uv9A_27_33" and hit["end"] > hit["start"] >= 0 and hit["score"] > 0
    assert set(hit) >= {"id", "path", "start", "end", "caption", "concepts", "score"}


def test_sentence_embeddings_are_all_minilm_l6_v2_without_torch():
    from captioner import embeddings

    if not embeddings.available():
        pytest.skip("the optional embeddings extra is not installed (scripts/setup.sh installs it)")
    code = ("import sys, json; from captioner.embeddings import encoder; "
            "v = encoder().encode(['The weather is lovely today.', \"It's so sunny outside!\", "
            "'He drove to the stadium.']); "
            "print(json.dumps({'sim': (v @ v.T).round(4).tolist(), 'torch': 'torch' in sys.modules}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    result = json.loads(out.stdout)
    # sentence-transformers' documented similarities for this model and these sentences.
    assert np.allclose(result["sim"], [[1, 0.6660, 0.1046], [0.6660, 1, 0.1411], [0.1046, 0.1411, 1]], atol=2e-4)
    assert result["torch"] is False


def test_bm25_alone_still_ranks_and_embeddings_pick_windows(indexed):
    with Library.open(indexed[0], create=False) as library:
        lexical = library.search("a man riding a motorbike", 3, embedding_weight=0)
        assert lexical[0].id == "klteYv1Uv9A_27_33"
        for hit in library.search("a car driving on a road", 3):
            assert 0 <= hit.start < hit.end <= hit.duration + 1e-3  # windows are in milliseconds


def test_indexing_is_the_captioning_pass_not_a_second_one(model, clips, tmp_path, monkeypatch):
    """As many decodes and backbone passes as `caption --segments` of the same clip: the keyframes,
    concepts and features come from the captioning pass itself (Captioner.on_pooled)."""
    captioner = model[0]
    from captioner.video import OpenVideo

    decodes, passes = [], []
    decode, features = OpenVideo.decode, captioner.backbone.features
    monkeypatch.setattr(OpenVideo, "decode", lambda *a, **k: (decodes.append(a), decode(*a, **k))[1])
    monkeypatch.setattr(captioner.backbone, "features", lambda *a, **k: (passes.append(1), features(*a, **k))[1])
    list(captioner.caption_many(clips[1:2], segments=SEGMENTS))
    captioning = (len(decodes), len(passes))
    assert captioning[0] >= 1 and captioning[0] == captioning[1]  # a decode and a pass per window, no more
    decodes.clear()
    passes.clear()
    with Library.open(tmp_path / "library.db") as library:
        assert library.add(clips[1:2], segments=SEGMENTS, captioner=captioner).indexed == 1
    assert (len(decodes), len(passes)) == captioning
    assert captioner.on_pooled is None  # the hook is the library's only while it indexes


def test_the_caption_model_rereads_the_top_hits(indexed, tmp_path):
    with Library.open(indexed[0], create=False) as library:
        records = list(library.records(features=True))
        digest = records[0]["model"].rsplit(":", 1)[-1]
        scorer = library._rerank_model(digest, None)
        assert scorer is not None  # the shipped default model indexed these clips
        feats = np.array([r["features"] for r in records], dtype=np.float32)
        # Each video's own caption (beam search's choice for exactly these features) is the one
        # the model finds most likely of it.
        own = [int(np.argmax(scorer.sentence_log_likelihood(r["caption"], feats))) for r in records]
        assert sum(k == i for i, k in enumerate(own)) >= len(records) - 1, own
        query = "a man is riding a motorbike"
        plain, reranked = library.search(query, len(records), rerank=False), library.search(query, len(records))
        assert sorted(h.id for h in plain) == sorted(h.id for h in reranked)  # reordered, nothing lost
    # Without features (indexed with --no-features) the text order stands.
    bare = tmp_path / "bare.db"
    shutil.copy(indexed[0], bare)
    with sqlite3.connect(bare) as connection:
        connection.execute("UPDATE videos SET features = NULL")
    with Library.open(bare, create=False) as library:
        assert [h.id for h in library.search(query, 10)] == [h.id for h in library.search(query, 10, rerank=False)]


def test_what_a_video_looks_like_counts_beside_what_its_captions_say(indexed, tmp_path):
    """captioner.visual_search: each video's class probabilities in the query's embedding space."""
    from captioner.concepts import display_name
    from captioner.visual_search import shipped_map

    visual_map = shipped_map()
    with Library.open(indexed[0], create=False) as library:
        records = list(library.records(features=True))
        assert all(visual_map.reads(r["model"].split(":", 1)[1].rsplit(":", 1)[0], len(r["features"]))
                   for r in records)  # the default model's features: the ones the map was trained on
        vectors = visual_map.video_vectors(np.array([r["features"] for r in records], dtype=np.float32))
        assert vectors.shape == (len(records), 2, 384)
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=2), 1.0, atol=1e-3)
        # A clip's own top action, asked in words, looks most like that clip to the map.
        from captioner.embeddings import encoder

        for k, record in enumerate(records):
            action = record["concepts"]["actions"][0]["name"]
            looks = visual_map.scores(encoder().encode([display_name(action)])[0], vectors)
            assert np.argsort(-looks)[:2].tolist().count(k) == 1, (record["id"], action, looks)
        # It changes the order, never the set; off, the ranking is the text's alone.
        query = "a person is cooking"
        with_visual, without = library.search(query, len(records)), library.search(query, len(records), visual=False)
        assert sorted(h.id for h in with_visual) == sorted(h.id for h in without)
    # A library whose features the map does not read (here: none kept) ranks by text alone.
    bare = tmp_path / "bare.db"
    shutil.copy(indexed[0], bare)
    with sqlite3.connect(bare) as connection:
        connection.execute("UPDATE videos SET features = NULL")
    with Library.open(bare, create=False) as library:
        assert library._visual_scores(np.ones(384, np.float32) / np.sqrt(384)) == {}
        assert [h.id for h in library.search(query, 10)] == [h.id for h in library.search(query, 10, visual=False)]


def test_without_the_sentence_encoder_the_default_search_reranks_by_text_and_model(indexed, monkeypatch):
    # A library with features searched where the embeddings extra is missing: the rerank once
    # asked the encoder for the visual score and the search failed; now it ranks as BM25 + rerank.
    from captioner import embeddings

    monkeypatch.setattr(embeddings, "available", lambda: False)
    embeddings.encoder.cache_clear()
    with Library.open(indexed[0], create=False) as library:
        query = "a person is cooking"
        hits = library.search(query, 10)
        assert hits and [h.id for h in hits] == [h.id for h in library.search(query, 10, visual=False)]
    embeddings.encoder.cache_clear()


def test_indexing_on_a_local_ray_cluster_writes_what_a_local_run_does(indexed, clips, tmp_path, ray_head):
    # In a subprocess, as a user runs it: a Ray driver dies with its cluster, which the fixture stops.
    address, _ = ray_head
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video")
    db = tmp_path / "ray.db"
    result = subprocess.run([sys.executable, "-m", "captioner", "index", *map(str, clips[:2]), str(bad), "--db",
                             str(db), "--segments", str(SEGMENTS), "--ray-address", address, "--no-progress"],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 1, result.stderr  # one input failed, the others are indexed
    failures = [line for line in result.stderr.splitlines() if "broken.mp4" in line]
    assert len(failures) == 1 and failures[0].count("broken.mp4") == 1, result.stderr
    with Library.open(db, create=False) as library:
        remote = {r["id"]: r for r in library.records()}
    with Library.open(indexed[0], create=False) as library:
        local = {r["id"]: r for r in library.records() if r["id"] in remote}
    assert set(local) == set(remote) == {c.stem for c in clips[:2]}
    for video_id, record in remote.items():
        assert record["caption"] == local[video_id]["caption"]
        assert [w["caption"] for w in record["segments"]] == [w["caption"] for w in local[video_id]["segments"]]
        np.testing.assert_allclose(record["features"], local[video_id]["features"], rtol=1e-4, atol=1e-5)
