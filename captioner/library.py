"""A video library you can search: caption a collection once, then find moments in it by words.

    from captioner.library import Library
    library = Library.open("library.db")
    library.add(["videos/"], segments=5)            # captions, windows, concepts, keyframes, features
    for hit in library.search("someone slicing vegetables", limit=5):
        print(hit.id, hit.start, hit.end, hit.caption, hit.score)
    library.export("library.jsonl")

One SQLite file (the standard library's, FTS5 for text), in WAL mode. Indexing is a by-product
of captioning: `Captioner.caption_many(..., segments=S)` is the pass, and its `on_pooled` hook
hands over each input's and each window's decoded frames and pooled vector as they are
computed, so keyframes, concepts and features cost no second decode or backbone pass.

Kill-safe and resumable like `captioner extract`: one transaction per video, so a SIGKILL loses
only the video in flight; entries are keyed by the same video ids (captioner.inputs) and input
fingerprints (captioner.extract.source_fingerprint), so a re-run skips what is indexed and
unchanged and redoes what changed. One writer at a time: a second `add` on the same file is
refused with one line (an flock the kernel drops when its holder dies); readers never wait.

Ranking is BM25 (FTS5's) over the video's caption, its n-best alternatives, its window captions,
the names of the concepts its classifier heads recognised and, with a lower weight, the
synonyms of all of those words taken from the concept vocabulary (motorcycle/motorbike,
slicing/cutting), so a query finds what people mean and not only the model's exact words.
"""

from __future__ import annotations

import base64
import dataclasses
import difflib
import functools
import io
import json
import os
import re
import sqlite3
import sys
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from . import locking
from .device import one_blas_thread
from .errors import CaptionerError, UsageError
from .text import word_forms
from .visual_search import VisualMap, shipped_map, zscore

FORMAT = "captioner-library"
SCHEMA_VERSION = 1
DEFAULT_SEGMENTS = 5.0
# A query's first distinct words (stopwords dropped): a 10,000-character query is cut to these,
# so its cost is bounded by what FTS5 does for a short one.
MAX_QUERY_TERMS = 32
# BM25 weight of each text column; the synonym column counts less than the words themselves.
# Chosen on the 61 MSVD clips and the dev clips by scripts/bench_library.py (see docs/library.md).
FIELD_WEIGHTS = {"caption": 1.0, "alternatives": 0.5, "windows": 0.5, "concepts": 0.5, "related": 0.2}
COLUMNS = tuple(FIELD_WEIGHTS)
# With sentence embeddings, a hit's score is (1 - this) * its BM25 score / the best BM25 score of
# the query + this * the best cosine between the query and the video's captions. Chosen on the
# dev clips by scripts/bench_library.py.
EMBEDDING_WEIGHT = 0.7
EMBEDDING_MODEL = "all-MiniLM-L6-v2"
# Concepts count (in the text and for --concept) from this probability up: the heads spread a
# little mass over hundreds of classes, which says nothing.
CONCEPT_MIN_P = 0.05
# The caption model rereads the best RERANK_TOP hits: how likely it is to say the query of each
# video (its mean log-probability per word), z-scored beside the z-scored text score with this
# weight. Chosen on the 12 dev clips' queries (docs/library.md): R@5 0.64 -> 0.76 there. With the
# visual score, the best 10 rank the dev queries as the best 20 did, at half the cost.
RERANK_TOP = 10
RERANK_WEIGHT = 1.0
THUMBNAIL_SIZE = (192, 144)  # the largest box a keyframe is shrunk into, keeping its aspect ratio
THUMBNAIL_QUALITY = 70
# A word in more classes than this ("riding", "dog": 118 breeds) is too general to stand for
# the others: it is neither expanded nor added as a synonym.
SYNONYM_MAX_CLASSES = 3
# What people write for the same thing that the class names alone do not tie together.
CAPTION_SYNONYMS = (
    ("motorcycle", "motorbike", "moped", "scooter"),
    ("slicing", "cutting", "chopping", "dicing"),
    ("slice", "cut", "chop", "dice"),
    ("car", "automobile", "vehicle"),
    ("puppy", "dog"),
    ("kitten", "cat"),
    ("bicycle", "bike", "cycling"),
    ("talking", "speaking"),
    ("running", "jogging"),
    ("vegetable", "vegetables", "veggies"),
    ("kid", "child", "children"),
    ("ocean", "sea", "beach"),
)
_QUERY_STOPWORDS = frozenset("""a an the of or and with on in at to is are was were be being been it its this
    that these those there some someone something somebody person people man men woman women
    by from for into onto as his her their them he she they who what where which""".split())


# ----------------------------------------------------------------------------- records
@dataclass
class Window:
    start: float
    end: float
    caption: str
    score: float
    concepts: dict | None = None


@dataclass
class Hit:
    """One search result: a video, the window that best matches the query, and why."""
    id: str
    path: str
    start: float  # the matching window (the whole video when no window matches on its own)
    end: float
    caption: str  # that window's caption
    video_caption: str
    concepts: dict  # the video's top concepts: {"actions": [{"name", "p"}], "objects": [...]}
    score: float  # higher is better (BM25, with embeddings and reranking mixed in); within one query only
    duration: float
    key: int  # the library's number for the video (what the gallery's URLs name)
    window: int | None  # the window's number within the video, None for the whole video

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class IndexSummary:
    indexed: int = 0  # videos written by this run (new or changed)
    changed: int = 0  # of those, videos whose input or settings changed since they were indexed
    skipped: int = 0  # indexed before and unchanged
    failures: list = field(default_factory=list)  # {"path", "error"}
    seconds: float = 0.0

    @property
    def failed(self) -> int:
        return len(self.failures)

    def line(self) -> str:
        changed = f" ({self.changed} changed since the last run)" if self.changed else ""
        return (f"indexed {self.indexed} videos{changed}, skipped {self.skipped} unchanged, "
                f"{self.failed} failed, in {self.seconds:.1f} s")


# ----------------------------------------------------------------------------- schema
_SCHEMA = f"""
CREATE TABLE library (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE videos (
    key INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    path TEXT NOT NULL,
    source TEXT NOT NULL,          -- the input's fingerprint (JSON), as extract records it
    settings TEXT NOT NULL,        -- model id and segment length (JSON): other settings redo the video
    duration REAL NOT NULL,
    caption TEXT NOT NULL,
    score REAL NOT NULL,
    alternatives TEXT NOT NULL,    -- JSON: [{{"caption", "score"}}]
    concepts TEXT NOT NULL,        -- JSON: {{"actions": [{{"name", "p"}}], "objects": [...]}}
    feature_dim INTEGER,
    features BLOB,                 -- the pooled vector, float32 little-endian
    thumbnail BLOB,                -- JPEG of the middle sampled frame
    indexed_at TEXT NOT NULL
);
CREATE TABLE windows (
    key INTEGER PRIMARY KEY,
    video INTEGER NOT NULL REFERENCES videos(key) ON DELETE CASCADE,
    number INTEGER NOT NULL,
    start REAL NOT NULL,
    end REAL NOT NULL,
    caption TEXT NOT NULL,
    score REAL NOT NULL,
    concepts TEXT,
    thumbnail BLOB,
    UNIQUE (video, number)
);
CREATE TABLE concepts (
    video INTEGER NOT NULL REFERENCES videos(key) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    name TEXT NOT NULL COLLATE NOCASE,
    p REAL NOT NULL
);
CREATE INDEX concepts_by_name ON concepts (name COLLATE NOCASE, p);
CREATE TABLE failures (path TEXT PRIMARY KEY, error TEXT NOT NULL, at TEXT NOT NULL);
CREATE TABLE embeddings (        -- sentence embeddings of a video's captions (captioner.embeddings)
    video INTEGER NOT NULL REFERENCES videos(key) ON DELETE CASCADE,
    window INTEGER,                -- the window's number, NULL for the video's caption or an alternative
    vector BLOB NOT NULL           -- float32, unit length
);
CREATE INDEX embeddings_by_video ON embeddings (video);
CREATE VIRTUAL TABLE video_text USING fts5({", ".join(COLUMNS)}, tokenize='porter unicode61');
CREATE VIRTUAL TABLE window_text USING fts5(caption, concepts, related, tokenize='porter unicode61');
"""


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


# ----------------------------------------------------------------------------- writer lock
class LibraryLocked(CaptionerError):
    """Another process is indexing into the library."""


class _WriterLock:
    """An flock on DB-writer.lock beside the database (captioner/locking.py, as a feature store's
    and a training run's): one `index` at a time, and a killed run never leaves a stale lock."""

    def __init__(self, db: Path):
        self.db = Path(db)
        self.key = None

    def acquire(self) -> None:
        try:
            self.key = locking.acquire(self.db.parent, self.db.name + "-writer.lock", "indexing into this library",
                                       "wait for it to finish or use another --db (one writer at a time)",
                                       error=LibraryLocked)
        except LibraryLocked as exc:
            raise LibraryLocked(exc.reason, self.db) from None  # named by the database, not its folder

    def release(self) -> None:
        if self.key is not None:
            locking.release(self.key)
            self.key = None


# ----------------------------------------------------------------------------- words
def query_terms(query: str) -> list[str]:
    """The words a query is searched by: lower-case, distinct, stopwords dropped (unless nothing
    else is left), at most MAX_QUERY_TERMS. Only letters and digits survive, so FTS5's syntax
    characters (quotes, *, ^, :, parentheses, AND/OR/NEAR as words are quoted) can never reach it."""
    words = list(dict.fromkeys(re.findall(r"[^\W_]+", str(query).lower())))
    content = [w for w in words if w not in _QUERY_STOPWORDS]
    return (content or words)[:MAX_QUERY_TERMS]


def _fts_query(terms: list[str]) -> str:
    return " OR ".join('"' + term.replace('"', '""') + '"' for term in terms)


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


class Synonyms:
    """Which words stand for one another, from the concept vocabulary's class names (a class's
    words: "motorcycling" -> riding motorcycle motorbike bike; ImageNet's own synonyms) and a
    short list of caption words the class names do not tie together (CAPTION_SYNONYMS)."""

    def __init__(self, vocabulary: list[dict]):
        from .concepts import class_words

        groups: list[list[str]] = []
        for head in vocabulary:
            for index, name in enumerate(head["classes"]):
                groups.append(class_words(name, head["kind"], index))
        classes_of: dict[str, int] = {}
        for words in groups:
            for word in set(words):
                classes_of[word] = classes_of.get(word, 0) + 1
        specific = {w for w, n in classes_of.items() if n <= SYNONYM_MAX_CLASSES}
        self.related: dict[str, set[str]] = {}
        for words in [[w for w in g if w in specific] for g in groups] + [list(g) for g in CAPTION_SYNONYMS]:
            for word in words:
                self.related.setdefault(word, set()).update(w for w in words if w != word)

    def of(self, words: Iterable[str]) -> list[str]:
        """The synonyms of `words` that are not among them, sorted."""
        words = set(words)
        found = set()
        for word in words:
            for form in word_forms(word):
                found |= self.related.get(form, set())
        return sorted(found - words)


def concept_text(concepts: dict | None) -> str:
    """The words a video's (or window's) recognised concepts stand for, from CONCEPT_MIN_P up."""
    from .concepts import class_words

    parts = []
    for kind, found in (concepts or {}).items():
        for concept in found:
            if concept["p"] >= CONCEPT_MIN_P:
                # No class index: family words ("dog" for a breed) are left out, the name's own kept.
                parts += [*_words(concept["name"]), *class_words(concept["name"], kind, -1)]
    return " ".join(dict.fromkeys(parts))


# ----------------------------------------------------------------------------- keyframes
def thumbnail_jpeg(frames: np.ndarray) -> bytes:
    """The middle sampled frame of decoded frames ((T, H, W, 3) or (T, L, H, W, 3)) as a small JPEG."""
    from PIL import Image

    frame = frames[len(frames) // 2]
    if frame.ndim == 4:  # a clip backbone's window of consecutive frames: its centre
        frame = frame[len(frame) // 2]
    image = Image.fromarray(np.ascontiguousarray(frame))
    image.thumbnail(THUMBNAIL_SIZE)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=THUMBNAIL_QUALITY)
    return buffer.getvalue()


class _Collector:
    """Captioner.on_pooled: keeps what the library needs of each input and window as it passes."""

    def __init__(self, concept_heads, thumbnails: bool, features: bool):
        self.concept_heads = concept_heads
        self.thumbnails = thumbnails
        self.features = features
        self.seen: dict[str, dict] = {}

    def __call__(self, path, window, decoded, pooled) -> None:
        from .concepts import top_concepts

        entry = self.seen.setdefault(str(path), {"windows": {}})
        thumbnail = thumbnail_jpeg(decoded.frames) if self.thumbnails else None
        if window is None:
            entry.update(duration=float(decoded.info.duration), thumbnail=thumbnail,
                         features=np.asarray(pooled, dtype="<f4") if self.features else None)
        else:
            concepts = top_concepts(pooled, self.concept_heads, k=3) if self.concept_heads else None
            entry["windows"][tuple(window)] = (thumbnail, concepts)

    def pop(self, path) -> dict:
        return self.seen.pop(str(path), {"windows": {}})


# ----------------------------------------------------------------------------- the library
class Library(AbstractContextManager):
    """An indexed collection of videos in one SQLite file. Open with `Library.open(path)`."""

    def __init__(self, path: Path, connection: sqlite3.Connection):
        self.path = path
        self._db = connection
        self._synonyms: Synonyms | None = None
        info = dict(self._db.execute("SELECT key, value FROM library"))
        self.vocabulary: list[dict] = json.loads(info.get("vocabulary", "[]"))
        self._encoder = None  # set while `add` embeds captions
        self._vectors = None  # (video keys, window numbers or -1, unit vectors), read once per data version
        self._vectors_version = None
        self._rerank_models: dict[tuple, object] = {}  # (digest, model asked) -> its InferenceExport or None
        self._visual = None  # (video keys, their visual_search vectors) or (), read once per data version
        self._visual_version = None
        self._visual_scored = (None, {})  # (query vector's bytes, data version), its scores: the rerank asks again

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: str | os.PathLike, create: bool = True) -> "Library":
        """Open a library file, creating it when missing (unless `create=False`).

        A file that is not a library, is damaged, or was written by a newer captioner is refused
        with a CaptionerError naming it; nothing is changed in it.
        """
        path = Path(path)
        if path.is_dir():
            raise CaptionerError("is a folder; give the library's database file (e.g. library.db)", path)
        exists = path.exists()
        if not exists and not create:
            raise CaptionerError("library not found (create it with `captioner index VIDEOS --db FILE`)", path)
        if not exists and not path.parent.is_dir():
            raise CaptionerError("the folder for the library does not exist", path)
        try:
            connection = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise CaptionerError(f"cannot open the library: {exc}", path) from None
        try:
            if not exists or _is_empty(connection):
                _create(connection)
            else:
                _check_format(connection, path)
                connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA foreign_keys=ON")
            connection.execute("PRAGMA synchronous=NORMAL")  # WAL: durable at checkpoints, never corrupt
            return cls(path, connection)
        except sqlite3.DatabaseError as exc:
            connection.close()
            raise CaptionerError(f"not a readable captioner library ({exc})", path) from None
        except BaseException:
            connection.close()
            raise

    def close(self) -> None:
        self._db.close()

    def __exit__(self, *exc) -> None:  # `with` closes it (AbstractContextManager's __enter__ gives self)
        self.close()

    def __len__(self) -> int:
        return self._query("SELECT count(*) FROM videos")[0][0]

    def _query(self, sql: str, params=()) -> list:
        try:
            return self._db.execute(sql, params).fetchall()
        except sqlite3.DatabaseError as exc:
            raise CaptionerError(f"cannot read the library ({exc})", self.path) from None

    @property
    def synonyms(self) -> Synonyms:
        if self._synonyms is None:
            self._synonyms = Synonyms(self.vocabulary)
        return self._synonyms

    # ------------------------------------------------------------------ indexing
    def add(self, paths: Iterable[str | os.PathLike], segments: float | None = DEFAULT_SEGMENTS, captioner=None,
            model: str = "default", thumbnails: bool = True, features: bool = True, progress: bool = False,
            log=None, embeddings: bool | None = None, ray_address: str | None = None, ray_videos_per_task: int = 4,
            **load_options) -> IndexSummary:
        """Caption and index videos (files, folders, globs, .txt lists, as `captioner caption` takes).

        `segments`: seconds per timed window (None: the whole video only). `captioner`: a loaded
        Captioner (default: `Captioner.load(model, **load_options)`, only when something needs
        indexing). Videos indexed before from the same file (fingerprint) with the same model and
        segments are skipped; changed ones are done again; failures are reported one line each
        on `log` (stderr) and returned. Another process indexing into this file: LibraryLocked.
        `embeddings`: keep sentence embeddings of the captions (default: when the optional
        packages are installed, see captioner.embeddings); videos indexed without them get them.
        `ray_address`: caption on that Ray cluster, `ray_videos_per_task` videos a task (as
        `extract` does: the workers must see the files and the model's checkpoint); this process
        stays the library's one writer.
        """
        from . import embeddings as sentence_embeddings

        from .caption import CaptionProgress
        from .extract import source_fingerprint
        from .inputs import expand_globs, find_inputs, video_ids

        if segments is not None and not segments > 0:
            raise UsageError(f"segments must be a positive number of seconds, got {segments}")
        if ray_videos_per_task < 1:
            raise UsageError(f"ray_videos_per_task must be at least 1, got {ray_videos_per_task}")
        if ray_address:
            from .extras import require

            require("indexing on Ray", "ray")
        log = log or sys.stderr
        started = time.perf_counter()
        summary = IndexSummary()
        lock = _WriterLock(self.path)
        lock.acquire()
        bar = None
        try:
            candidates, unmatched = expand_globs([os.fspath(p) for p in paths])
            found, missing = find_inputs(candidates)
            problems = [(Path(p), CaptionerError("no file matches this pattern", p)) for p in unmatched] + missing
            ids = video_ids(found)
            todo, changed = [], set()
            model_digest = captioner.model_id.rsplit(":", 1)[-1] if captioner is not None else _model_digest(model)
            recorded = {row[0]: (row[1], row[2], row[3])
                        for row in self._query("SELECT id, source, settings, path FROM videos")}
            for path in found:
                try:
                    source = source_fingerprint(path)
                except OSError as exc:
                    problems.append((path, CaptionerError(f"cannot read: {exc.strerror or exc}", path)))
                    continue
                before = recorded.get(ids[path])
                if before is not None and json.loads(before[0]) == source and \
                        json.loads(before[1]).get("segments") == segments and \
                        str(json.loads(before[1]).get("model")).endswith(":" + model_digest):
                    summary.skipped += 1
                    if before[2] != os.path.abspath(path):  # the same file, found elsewhere: serve it from there
                        self._db.execute("UPDATE videos SET path = ? WHERE id = ?", (os.path.abspath(path), ids[path]))
                    continue
                if before is not None:
                    changed.add(path)
                todo.append((path, source))
            for path, error in problems:
                summary.failures.append({"path": str(path), "error": str(error)})
                print(f"captioner: {error}", file=log, flush=True)
            if todo and captioner is None:
                from .caption import Captioner

                # On Ray the workers run the backbones; here the model only names the vocabulary.
                captioner = Captioner.load(model, **({**load_options, "load_backbone": False} if ray_address
                                                     else load_options))
            if todo:
                self._set_vocabulary(captioner.concept_heads)
            if embeddings or (embeddings is None and sentence_embeddings.available()):
                unembedded = self._query("SELECT count(*) FROM videos WHERE key NOT IN (SELECT video FROM embeddings)")
                if todo or unembedded[0][0]:
                    self._encoder = sentence_embeddings.encoder()
                    self._embed_missing()
            bar = CaptionProgress(len(todo), progress)
            remote = (ray_address, ray_videos_per_task, load_options) if ray_address else None
            summary_failures = self._index(todo, ids, captioner, segments, thumbnails, features, bar, summary,
                                           changed, log, remote)
            summary.failures.extend(summary_failures)
            self._record_failures(summary.failures)
        finally:
            self._encoder = None
            if bar is not None:
                bar.close()
            lock.release()
            summary.seconds = time.perf_counter() - started
        return summary

    def _index(self, todo, ids, captioner, segments, thumbnails, features, bar, summary, changed, log,
               remote=None) -> list:
        failures = []
        if not todo:
            return failures
        sources = {str(path): source for path, source in todo}
        settings = json.dumps({"model": captioner.model_id, "segments": segments})
        paths = [str(path) for path, _ in todo]
        if remote is None:
            captioned = _captioned(captioner, paths, segments, thumbnails, features, bar.segments)
        else:
            from .distributed import map_chunks_on_ray

            address, per_task, load_options = remote
            # The shipped model by name: a worker's package may live at another path.
            checkpoint = "default" if captioner.model_id.startswith("default:") else str(captioner.checkpoint_path)
            captioned = map_chunks_on_ray(_index_chunk, paths, per_task, (
                checkpoint, segments, thumbnails, features, load_options), address)
        for path, outcome in captioned:
            bar.advance()
            if not isinstance(outcome, tuple):  # a CaptionerError, or the reason a Ray task failed
                error = outcome if isinstance(outcome, CaptionerError) else CaptionerError(outcome, path)
                error = error if error.path else CaptionerError(str(error), path)
                failures.append({"path": str(path), "error": str(error)})
                bar.write(f"captioner: {error}", log)
                continue
            result, kept = outcome
            self._write_video(ids[Path(path)], Path(path), sources[str(path)], settings, result, kept)
            summary.indexed += 1
            summary.changed += Path(path) in changed
        return failures

    def _write_video(self, video_id: str, path: Path, source: dict, settings: str, result, kept: dict) -> None:
        """One video, its windows, concepts and text, in one transaction: all of it or none."""
        windows = result.segments or [Window(0.0, kept.get("duration", 0.0), result.caption, result.score)]
        pooled = kept.get("features")
        concepts = result.concepts or {}
        window_rows = []
        for number, window in enumerate(windows):
            thumbnail, window_concepts = kept["windows"].get((window.start, window.end), (None, None))
            if thumbnail is None and len(windows) == 1:
                thumbnail = kept.get("thumbnail")
            window_rows.append((number, window.start, window.end, window.caption, window.score,
                                window_concepts if window_concepts is not None else concepts, thumbnail))
        alternatives = [a for a in result.alternatives if a["caption"] != result.caption]
        caption_words = _words(result.caption)
        window_text = " ".join(dict.fromkeys(w.caption for w in windows))
        concepts_words = concept_text(concepts)
        related = self.synonyms.of(caption_words + _words(window_text) + _words(concepts_words))
        embedded = self._embed([result.caption] + [a["caption"] for a in alternatives],
                               [w[3] for w in window_rows])
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            old = db.execute("SELECT key FROM videos WHERE id = ?", (video_id,)).fetchone()
            if old is not None:
                self._delete(old[0])
            cursor = db.execute(
                "INSERT INTO videos (id, path, source, settings, duration, caption, score, alternatives, concepts, "
                "feature_dim, features, thumbnail, indexed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (video_id, os.path.abspath(path), json.dumps(source), settings, float(kept.get("duration", 0.0)),
                 result.caption, float(result.score), json.dumps(result.alternatives), json.dumps(concepts),
                 None if pooled is None else int(pooled.size), None if pooled is None else pooled.tobytes(),
                 kept.get("thumbnail"), _now()))
            key = cursor.lastrowid
            db.execute(f"INSERT INTO video_text (rowid, {', '.join(COLUMNS)}) VALUES (?, ?, ?, ?, ?, ?)",
                       (key, result.caption, " ".join(a["caption"] for a in alternatives), window_text,
                        concepts_words, " ".join(related)))
            for kind, found in concepts.items():
                db.executemany("INSERT INTO concepts (video, kind, name, p) VALUES (?, ?, ?, ?)",
                               [(key, kind, c["name"], c["p"]) for c in found if c["p"] >= CONCEPT_MIN_P])
            for number, start, end, caption, score, window_concepts, thumbnail in window_rows:
                cursor = db.execute("INSERT INTO windows (video, number, start, end, caption, score, concepts, "
                                    "thumbnail) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                    (key, number, start, end, caption, score, json.dumps(window_concepts),
                                     thumbnail))
                words = concept_text(window_concepts)
                db.execute("INSERT INTO window_text (rowid, caption, concepts, related) VALUES (?, ?, ?, ?)",
                           (cursor.lastrowid, caption, words,
                            " ".join(self.synonyms.of(_words(caption) + _words(words)))))
            if embedded is not None:
                db.executemany("INSERT INTO embeddings (video, window, vector) VALUES (?, ?, ?)",
                               [(key, number, vector.tobytes()) for number, vector in embedded])
            db.execute("COMMIT")
            self._vectors = None
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise CaptionerError(f"cannot write to the library ({exc}); everything indexed before is intact",
                                 self.path) from None

    def _embed(self, video_texts: list[str], window_texts: list[str]) -> list | None:
        """[(window number or None, unit float32 vector)] of a video's texts, None without an encoder."""
        if self._encoder is None:
            return None
        with one_blas_thread():
            vectors = self._encoder.encode(video_texts + window_texts)
        numbers = [None] * len(video_texts) + list(range(len(window_texts)))
        return [(n, v.astype("<f4")) for n, v in zip(numbers, vectors)]

    def _embed_missing(self) -> None:
        """Embeddings for the videos indexed without them (before the optional packages were installed)."""
        missing = self._query("SELECT key, caption, alternatives FROM videos WHERE key NOT IN "
                              "(SELECT video FROM embeddings)")
        for key, caption, alternatives in missing:
            windows = [row[0] for row in self._query("SELECT caption FROM windows WHERE video = ? ORDER BY number",
                                                     (key,))]
            alternatives = [a["caption"] for a in json.loads(alternatives) if a["caption"] != caption]
            embedded = self._embed([caption] + alternatives, windows)
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            db.executemany("INSERT INTO embeddings (video, window, vector) VALUES (?, ?, ?)",
                           [(key, number, vector.tobytes()) for number, vector in embedded])
            db.execute("COMMIT")
        if missing:
            self._db.execute("INSERT OR REPLACE INTO library (key, value) VALUES ('embeddings', ?)",
                             (EMBEDDING_MODEL,))
            self._vectors = None

    def _delete(self, key: int) -> None:
        db = self._db
        db.execute("DELETE FROM window_text WHERE rowid IN (SELECT key FROM windows WHERE video = ?)", (key,))
        db.execute("DELETE FROM video_text WHERE rowid = ?", (key,))
        db.execute("DELETE FROM videos WHERE key = ?", (key,))  # windows and concepts cascade

    def _set_vocabulary(self, concept_heads) -> None:
        vocabulary = [{"kind": h.kind, "classes": list(h.classes)} for h in concept_heads]
        if vocabulary and vocabulary != self.vocabulary:
            self._db.execute("INSERT OR REPLACE INTO library (key, value) VALUES ('vocabulary', ?)",
                             (json.dumps(vocabulary),))
            self.vocabulary, self._synonyms = vocabulary, None

    def _record_failures(self, failures: list[dict]) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        db.execute("DELETE FROM failures")
        db.executemany("INSERT OR REPLACE INTO failures (path, error, at) VALUES (?, ?, ?)",
                       [(f["path"], f["error"], _now()) for f in failures])
        db.execute("COMMIT")

    # ------------------------------------------------------------------ searching
    def concept_names(self) -> list[str]:
        """Concepts recognised in some video of the library (from CONCEPT_MIN_P up), most videos first."""
        return [row[0] for row in self._query(
            "SELECT name FROM concepts GROUP BY name COLLATE NOCASE ORDER BY count(*) DESC, name")]

    def check_concept(self, concept: str) -> str:
        """`concept` as the vocabulary spells it; an unknown name is a UsageError with suggestions."""
        from .concepts import display_name

        names = {display_name(n).lower(): display_name(n) for h in self.vocabulary for n in h["classes"]}
        names.update({n.lower(): n for n in self.concept_names()})
        if concept.lower() in names:
            return names[concept.lower()]
        close = difflib.get_close_matches(concept.lower(), list(names), n=3)
        hint = f"; did you mean {', '.join(names[c] for c in close)}?" if close else ""
        raise UsageError(f"unknown concept {concept!r}: not a class of the library's concept heads{hint}")

    def search(self, query: str, limit: int = 10, concept: str | None = None, min_duration: float | None = None,
               weights: dict | None = None, embedding_weight: float | None = None, rerank: bool = True,
               model: str | os.PathLike | None = None, visual: bool = True) -> list[Hit]:
        """The `limit` videos that best match `query` (see `_search`); with `rerank`, the best
        RERANK_TOP of them reordered by how likely the caption model that indexed them is to say
        the query of each (the shipped default model, or the checkpoint `model` names; videos
        indexed without features, or by a model not at hand, keep their order). With `visual`,
        what the videos look like counts too (captioner.visual_search; needs the embeddings)."""
        terms = query_terms(query)
        if not (rerank and terms):
            return self._search(query, limit, concept, min_duration, weights, embedding_weight, visual)
        hits = self._search(query, max(limit, RERANK_TOP), concept, min_duration, weights, embedding_weight, visual)
        if len(hits) > 1:
            hits = self._reranked(query, hits[:RERANK_TOP], model, visual) + hits[RERANK_TOP:]
        return hits[:limit]

    def _reranked(self, query: str, hits: list[Hit], model, visual: bool) -> list[Hit]:
        rows = {key: (settings, dim, blob) for key, settings, dim, blob in self._query(
            f"SELECT key, settings, feature_dim, features FROM videos WHERE key IN ({','.join('?' * len(hits))})",
            [h.key for h in hits])}
        digests = {json.loads(rows[h.key][0] or "{}").get("model", "").rsplit(":", 1)[-1] for h in hits}
        scorer = self._rerank_model(digests.pop(), model) if len(digests) == 1 else None
        if scorer is None or any(rows[h.key][2] is None for h in hits):
            return hits
        feats = np.stack([np.frombuffer(rows[h.key][2], dtype="<f4") for h in hits])
        if feats.shape[1] != scorer.decoder.feature_dim:
            return hits
        with one_blas_thread():
            # The query's words as a caption has them (no FTS syntax), at most as many as the encoder reads.
            likelihood = scorer.sentence_log_likelihood(" ".join(_words(query)[:MAX_QUERY_TERMS * 4]), feats)
        text = np.array([h.score for h in hits])
        combined = zscore(text) + RERANK_WEIGHT * zscore(likelihood)
        # The visual score reads the query's sentence embedding: without the encoder (or a library
        # indexed before it), the text search had none, and neither has the rerank.
        uses_embeddings = visual and self._embedding_matrix() is not None
        looks = self._visual_scores(_query_vector(_embedding_text(query))) if uses_embeddings else {}
        if looks:
            combined += shipped_map().rerank_weight * zscore(np.array([looks[h.key] for h in hits]))
        order = np.argsort(-combined, kind="stable")
        return [dataclasses.replace(hits[i], score=round(float(combined[i]), 4)) for i in order]

    def _rerank_model(self, digest: str, model):
        """The InferenceExport of the checkpoint with this digest (the default model's, or `model`'s),
        loaded once; None when neither is it."""
        # Keyed by the model asked for too: a search naming the checkpoint must not get the None
        # an earlier search without it found.
        key = (digest, None if model is None else os.fspath(model))
        if key not in self._rerank_models:
            from .caption import Captioner

            found = None
            for candidate in ([model] if model is not None else []) + ["default"]:
                try:
                    if _model_digest(candidate) == digest:
                        found = Captioner.load(candidate, load_backbone=False).model
                        break
                except CaptionerError:
                    continue
            self._rerank_models[key] = found
        return self._rerank_models[key]

    def _search(self, query: str, limit: int, concept: str | None, min_duration: float | None,
                weights: dict | None, embedding_weight: float | None, visual: bool = True) -> list[Hit]:
        """The `limit` videos that best match `query`, best first, each at its best-matching window.

        `concept` keeps videos in which a classifier head recognised that class (from
        CONCEPT_MIN_P up); `min_duration` videos at least that many seconds long. An empty query
        with a filter lists the filtered videos (by the concept's probability, else by id).
        `weights` overrides FIELD_WEIGHTS (benchmarks compare fields with it).

        With sentence embeddings (every video has them and captioner.embeddings is installed),
        the cosine between the query and the captions counts too (`embedding_weight`, default
        EMBEDDING_WEIGHT; 0: BM25 alone, 1: embeddings alone) and picks the matching window.
        """
        if limit < 1:
            raise UsageError(f"limit must be at least 1, got {limit}")
        weights = {**FIELD_WEIGHTS, **(weights or {})}
        terms = query_terms(query)
        where, params = [], []
        if concept is not None:
            where.append("v.key IN (SELECT video FROM concepts WHERE name = ? COLLATE NOCASE)")
            params.append(self.check_concept(concept))
        if min_duration is not None:
            where.append("v.duration >= ?")
            params.append(float(min_duration))
        mix = EMBEDDING_WEIGHT if embedding_weight is None else float(embedding_weight)
        vectors = self._embedding_matrix() if terms and mix > 0 else None
        if terms and vectors is not None:
            return self._search_mixed(query, terms, limit, where, params, weights, mix, vectors, visual)
        if terms:
            bm25 = f"bm25(video_text, {', '.join(repr(float(weights[c])) for c in COLUMNS)})"
            rows = self._query(
                f"SELECT v.key, -{bm25} FROM video_text JOIN videos v ON v.key = video_text.rowid "
                f"WHERE video_text MATCH ? {''.join(' AND ' + w for w in where)} ORDER BY {bm25} LIMIT ?",
                [_fts_query(terms), *params, limit])
        elif where:
            order = "(SELECT max(p) FROM concepts c WHERE c.video = v.key AND c.name = ? COLLATE NOCASE) DESC, " \
                if concept is not None else ""
            rows = self._query(f"SELECT v.key, 0.0 FROM videos v WHERE {' AND '.join(where)} ORDER BY {order}v.id "
                               "LIMIT ?", [*params, *([params[0]] if concept is not None else []), limit])
        else:
            raise UsageError("give words to search for, or a filter (--concept, --min-duration)")
        return [self._hit(key, score, terms) for key, score in rows]

    def _search_mixed(self, query: str, terms: list[str], limit: int, where: list, params: list, weights: dict,
                      mix: float, vectors, visual: bool) -> list[Hit]:
        """BM25 and sentence-embedding cosine together: each side's best candidates, scored by both."""
        keys, numbers, matrix, starts = vectors
        pool = max(limit, 200)
        bm25 = f"bm25(video_text, {', '.join(repr(float(weights[c])) for c in COLUMNS)})"
        lexical = dict(self._query(
            f"SELECT v.key, -{bm25} FROM video_text JOIN videos v ON v.key = video_text.rowid "
            f"WHERE video_text MATCH ? {''.join(' AND ' + w for w in where)} ORDER BY {bm25} LIMIT ?",
            [_fts_query(terms), *params, pool]))
        query_vector = _query_vector(_embedding_text(query))
        cosine = matrix @ query_vector
        video_keys = keys[starts]
        best = np.maximum.reduceat(cosine, starts)  # each video's best caption (rows are grouped by video)
        if where:
            allowed = np.array([row[0] for row in self._query(
                f"SELECT v.key FROM videos v WHERE {' AND '.join(where)}", params)], dtype=np.int64)
            keep = np.isin(video_keys, allowed)
            video_keys, best_kept = video_keys[keep], best[keep]
        else:
            best_kept = best
        order = np.argsort(-best_kept, kind="stable")[:pool]
        semantic = dict(zip(video_keys[order].tolist(), best_kept[order].tolist()))
        cosine_of = dict(zip(keys[starts].tolist(), best.tolist()))
        top = max(lexical.values(), default=0.0)
        candidates = set(lexical) | set(semantic)
        looks = self._visual_scores(query_vector) if visual else {}
        if looks:  # what the videos look like: its best candidates (the filters' own) join, and it counts for all
            looked = np.fromiter(looks, np.int64, len(looks))
            values = np.fromiter(looks.values(), float, len(looks))
            if where:
                keep = np.isin(looked, allowed)
                looked, values = looked[keep], values[keep]
            candidates |= set(looked[np.argsort(-values, kind="stable")[:pool]].tolist())
        scores = {key: (1 - mix) * (lexical.get(key, 0.0) / top if top > 0 else 0.0) + mix * cosine_of.get(key, 0.0)
                  for key in candidates}
        if looks:
            keys_in = sorted(scores)
            fused = zscore(np.array([scores[k] for k in keys_in])) + shipped_map().pre_weight * zscore(
                np.array([looks[k] for k in keys_in]))
            scores = dict(zip(keys_in, fused.tolist()))
        ranked = sorted(scores, key=lambda k: (-scores[k], k))[:limit]
        position = {key: k for k, key in enumerate(keys[starts].tolist())}
        ends = np.append(starts[1:], len(keys))
        hits = []
        for key in ranked:
            rows = slice(starts[position[key]], ends[position[key]])
            windowed = numbers[rows] >= 0  # the window whose caption is closest to the query
            window = int(numbers[rows][windowed][np.argmax(cosine[rows][windowed])]) if windowed.any() else None
            hits.append(self._hit(key, scores[key], terms, window))
        return hits

    def _embedding_matrix(self):
        """(video keys, window numbers (-1: the video's own captions), (n, 384) unit vectors, where each
        video's rows start), or None
        when the encoder is not installed or some video has no embeddings."""
        from . import embeddings as sentence_embeddings

        version = self._query("PRAGMA data_version")[0][0]
        if self._vectors is not None and version == self._vectors_version:
            return self._vectors or None
        vectors = ()
        unembedded = self._query("SELECT count(*) FROM videos WHERE key NOT IN (SELECT video FROM embeddings)")[0][0]
        if sentence_embeddings.available() and unembedded == 0 and len(self):
            rows = self._query("SELECT video, coalesce(window, -1), vector FROM embeddings ORDER BY video")
            keys = np.array([r[0] for r in rows], dtype=np.int64)
            vectors = (keys, np.array([r[1] for r in rows], dtype=np.int64),
                       np.frombuffer(b"".join(r[2] for r in rows), dtype="<f4").reshape(len(rows), -1),
                       np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]))
        self._vectors, self._vectors_version = vectors, version
        return vectors or None

    def _visual_scores(self, query_vector: np.ndarray) -> dict[int, float]:
        """{video key: visual score} of the query (captioner.visual_search), z over the whole library
        (the same scores before and inside the rerank); {} when some video has no features or
        features the shipped map does not read."""
        version = self._query("PRAGMA data_version")[0][0]
        asked = (np.asarray(query_vector).tobytes(), version)
        if self._visual_scored[0] == asked:
            return self._visual_scored[1]
        if self._visual is None or version != self._visual_version:
            self._visual, self._visual_version = self._read_visual_vectors(), version
        scores = {}
        if self._visual:
            keys, vectors = self._visual
            scores = dict(zip(keys.tolist(), VisualMap.scores(query_vector, vectors).tolist()))
        self._visual_scored = (asked, scores)
        return scores

    def _read_visual_vectors(self) -> tuple:
        visual_map = shipped_map()
        rows = self._query("SELECT key, settings, feature_dim, features FROM videos ORDER BY key")
        if visual_map is None or not rows or any(
                blob is None or not visual_map.reads(_model_backbone(settings), dim) for _, settings, dim, blob in rows):
            return ()
        features = np.stack([np.frombuffer(blob, dtype="<f4") for _, _, _, blob in rows])
        return np.array([row[0] for row in rows], dtype=np.int64), visual_map.video_vectors(features)

    def _hit(self, key: int, score: float, terms: list[str], window_number: int | None = None) -> Hit:
        video = self._query("SELECT id, path, caption, concepts, duration FROM videos WHERE key = ?", (key,))[0]
        window = None
        if window_number is not None:
            found = self._query("SELECT number, start, end, caption FROM windows WHERE video = ? AND number = ?",
                                (key, window_number))
            window = found[0] if found else None
        elif terms:
            span = self._query("SELECT min(key), max(key) FROM windows WHERE video = ?", (key,))[0]
            if span[0] is not None:
                found = self._query(
                    "SELECT w.number, w.start, w.end, w.caption FROM window_text JOIN windows w ON "
                    "w.key = window_text.rowid WHERE window_text MATCH ? AND window_text.rowid BETWEEN ? AND ? "
                    "ORDER BY bm25(window_text, 1.0, 0.5, 0.2) LIMIT 1", (_fts_query(terms), span[0], span[1]))
                window = found[0] if found else None
        if window is None:  # the whole video matched (its concepts, the caption of all of it)
            return Hit(video[0], video[1], 0.0, video[4], video[2], video[2], json.loads(video[3]), round(score, 4),
                       video[4], key, None)
        return Hit(video[0], video[1], window[1], window[2], window[3], video[2], json.loads(video[3]),
                   round(score, 4), video[4], key, window[0])

    # ------------------------------------------------------------------ reading
    def ids(self) -> list[str]:
        return [row[0] for row in self._query("SELECT id FROM videos ORDER BY id")]

    def video(self, key: int) -> dict | None:
        """A video's record by its key (see Hit.key), without features and thumbnails."""
        found = list(self._records("WHERE key = ?", (key,), features=False))
        return found[0] if found else None

    def records(self, features: bool = True, thumbnails: bool = False) -> Iterator[dict]:
        """Every video as a plain dict (what `export` writes), in id order."""
        yield from self._records("ORDER BY id", (), features, thumbnails)

    def _records(self, clause: str, params, features: bool = True, thumbnails: bool = False) -> Iterator[dict]:
        rows = self._query("SELECT key, id, path, source, settings, duration, caption, score, alternatives, concepts, "
                           f"feature_dim, features, thumbnail, indexed_at FROM videos {clause}", params)
        for (key, video_id, path, source, settings, duration, caption, score, alternatives, concepts, dim, blob,
             thumbnail, indexed_at) in rows:
            record = {"id": video_id, "key": key, "path": path, "duration": duration, "caption": caption,
                      "score": score, "alternatives": json.loads(alternatives), "concepts": json.loads(concepts),
                      "segments": [], **json.loads(settings), "source": json.loads(source),
                      "indexed_at": indexed_at}
            record["segment_seconds"] = record.pop("segments")
            record["segments"] = []
            for number, start, end, w_caption, w_score, w_concepts, w_thumb in self._query(
                    "SELECT number, start, end, caption, score, concepts, thumbnail FROM windows WHERE video = ? "
                    "ORDER BY number", (key,)):
                window = {"start": start, "end": end, "caption": w_caption, "score": w_score,
                          "concepts": json.loads(w_concepts) if w_concepts else None}
                if thumbnails and w_thumb is not None:
                    window["thumbnail"] = "data:image/jpeg;base64," + base64.b64encode(w_thumb).decode()
                record["segments"].append(window)
            if features and blob is not None:
                record["features"] = np.frombuffer(blob, dtype="<f4").tolist()
            if thumbnails and thumbnail is not None:
                record["thumbnail"] = "data:image/jpeg;base64," + base64.b64encode(thumbnail).decode()
            yield record

    def features(self, video_id: str) -> np.ndarray | None:
        """A video's pooled features as indexed (float32), None when indexed without them."""
        rows = self._query("SELECT features FROM videos WHERE id = ?", (video_id,))
        if not rows:
            raise CaptionerError(f"no video {video_id!r} in this library", self.path)
        return None if rows[0][0] is None else np.frombuffer(rows[0][0], dtype="<f4").copy()

    def thumbnail(self, key: int, window: int | None = None) -> bytes | None:
        """The JPEG keyframe of a video (window None) or of one of its windows."""
        if window is None:
            rows = self._query("SELECT thumbnail FROM videos WHERE key = ?", (key,))
        else:
            rows = self._query("SELECT thumbnail FROM windows WHERE video = ? AND number = ?", (key, window))
        return rows[0][0] if rows else None

    def failures(self) -> list[dict]:
        """The last `add`'s failures: {"path", "error"}."""
        return [{"path": p, "error": e} for p, e in self._query("SELECT path, error FROM failures ORDER BY path")]

    def export(self, path: str | os.PathLike, features: bool = True, thumbnails: bool = False) -> int:
        """Write every video, one record each, to `path`; returns how many. The format follows the
        suffix: `.parquet` (one row per video, nested columns; needs pyarrow, the `parquet`
        extra), anything else JSON Lines (one JSON object per line: pandas' read_json(lines=True),
        DuckDB, Spark). Written to a temporary file and renamed: a failed export leaves no half file."""
        from .atomic import atomic_open

        path = Path(path)
        if path.is_dir():
            raise UsageError(f"export needs a file name, not a folder: {path}")
        parquet = path.suffix.lower() == ".parquet"
        if parquet:
            from .extras import require

            require("Parquet export", "pyarrow")
        records = ({k: v for k, v in record.items() if k != "key"}
                   for record in self.records(features=features, thumbnails=thumbnails))
        count = 0
        try:
            with atomic_open(path, "wb" if parquet else "w", encoding=None if parquet else "utf-8") as out:
                if parquet:  # one table of every record
                    import pyarrow as pa
                    import pyarrow.parquet as pq

                    table = pa.Table.from_pylist(list(records))
                    pq.write_table(table, out)
                    count = table.num_rows
                else:  # streamed: a large library never sits in memory whole
                    for record in records:
                        out.write(json.dumps(record, ensure_ascii=False) + "\n")
                        count += 1
        except OSError as exc:
            raise CaptionerError(f"cannot write the export: {exc.strerror or exc}", path) from None
        return count


# ----------------------------------------------------------------------------- helpers
def _embedding_text(query: str) -> str:
    """The query as the sentence encoder reads it: at most as many words as it takes."""
    return " ".join(str(query).split()[:MAX_QUERY_TERMS * 4])


@functools.lru_cache(maxsize=1024)
def _query_vector(text: str) -> np.ndarray:
    """A query's sentence embedding; the gallery and benchmarks ask the same queries again."""
    from .embeddings import encoder

    with one_blas_thread():
        return encoder().encode([text])[0]


def _captioned(captioner, paths: list[str], segments, thumbnails: bool, features: bool, progress=None):
    """(path, (Caption, what the library keeps of its pass) or the CaptionerError it failed with),
    as `captioner.caption_many` finishes each input."""
    collector = _Collector(captioner.concept_heads, thumbnails, features)
    previous_hook, captioner.on_pooled = captioner.on_pooled, collector
    try:
        for path, result in captioner.caption_many(paths, segments=segments, n_best=3, progress=progress):
            kept = collector.pop(path)
            yield path, result if isinstance(result, CaptionerError) else (result, kept)
    finally:
        captioner.on_pooled = previous_hook


def _index_chunk(paths: list[str], checkpoint: str, segments, thumbnails: bool, features: bool,
                 load_options: dict) -> list[tuple]:
    """A Ray task: caption a few videos as `_captioned` does; failures travel as their message."""
    from .caption import Captioner

    captioner = Captioner.load(checkpoint, **load_options)
    return [(path, outcome if isinstance(outcome, tuple)
             else outcome.reason if outcome.path == path else outcome.format())
            for path, outcome in _captioned(captioner, paths, segments, thumbnails, features)]


def _model_backbone(settings: str | None) -> str | None:
    """The backbone of the model a video was indexed with (its model id: NAME:BACKBONE:DIGEST)."""
    model = json.loads(settings or "{}").get("model", "")
    return model.split(":", 1)[1].rsplit(":", 1)[0] if model.count(":") >= 2 else None


def _model_digest(model: str | os.PathLike) -> str:
    """The checkpoint digest a Captioner's model_id ends with, without loading the model: a video
    indexed by another model is indexed again."""
    from .caption import check_model
    from .hashing import file_sha256

    return file_sha256(check_model(model))[:12]


def _is_empty(connection: sqlite3.Connection) -> bool:
    """A file with no tables at all (created empty, e.g. by `touch`): fine to make a library in."""
    return connection.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0


def _create(connection: sqlite3.Connection) -> None:
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("BEGIN IMMEDIATE")
    try:
        if not _is_empty(connection):  # another process created it first
            connection.execute("ROLLBACK")
            return
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                connection.execute(statement)
        connection.executemany("INSERT INTO library (key, value) VALUES (?, ?)",
                               [("format", FORMAT), ("version", str(SCHEMA_VERSION)), ("created", _now())])
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise


def _check_format(connection: sqlite3.Connection, path: Path) -> None:
    try:
        info = dict(connection.execute("SELECT key, value FROM library"))
    except sqlite3.OperationalError:
        raise CaptionerError("not a captioner library (an SQLite database without its tables)", path) from None
    if info.get("format") != FORMAT:
        raise CaptionerError("not a captioner library", path)
    version = int(info.get("version", "0"))
    if version > SCHEMA_VERSION:
        raise CaptionerError(f"library format version {version} is newer than this captioner understands "
                             f"({SCHEMA_VERSION}); upgrade captioner", path)
