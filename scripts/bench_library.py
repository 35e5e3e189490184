"""Benchmark the searchable library: retrieval quality, search latency, database size, index cost.

    python3 scripts/bench_library.py --db runs/library/msvd61.db          # all parts (indexes the clips if missing)
    python3 scripts/bench_library.py --db runs/library/msvd61.db --parts retrieval,size

Parts:
- retrieval: text -> video, the field's measure. Every human reference of a clip is a query; the
  rank of that clip among all indexed clips gives R@1, R@5 and the median rank. Queries come only
  from clips whose captions the default model never learned from: the 12 dev clips and the 9
  test-split clips (configs/lists/); the 40 training clips' references would leak (the model
  learned to say exactly them). Galleries: all 61 clips, and the 12 dev clips alone. Baselines
  side by side: which text fields BM25 reads (caption, n-best alternatives, window captions,
  concept names, synonyms). Field weights are chosen on the dev clips only.
- latency: search time on a synthetic library of 10,000 videos (real MSVD captions as their
  captions, random concepts), median and 95th percentile over real reference queries.
- size: the real library's bytes per indexed hour of video, with and without keyframes and features.
- cost: index time against `caption --segments` of the same clips, one model, clip by clip
  alternately (so the shared machine's load drifts over both alike): the ratio.

Measured on a shared machine: the figures are under load; the ratio is the one to compare.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from captioner.library import FIELD_WEIGHTS, Library  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
CLIPS = DATA / "msvd" / "clips"
ZERO = {name: 0.0 for name in FIELD_WEIGHTS}
# name -> (BM25 weights (fields at 0 are not read), weight of the sentence-embedding cosine,
# whether the caption model rereads the top hits). Reranking is the default; the others show
# what each part adds.
# name: (BM25 field weights, embedding weight, model rerank, visual score)
VARIANTS = {
    "caption": ({**ZERO, "caption": 1.0}, 0.0, False, False),
    "caption+alternatives": ({**ZERO, "caption": 1.0, "alternatives": 0.5}, 0.0, False, False),
    "concepts": ({**ZERO, "concepts": 1.0}, 0.0, False, False),
    "caption+concepts": ({**ZERO, "caption": 1.0, "concepts": 0.5}, 0.0, False, False),
    "windows": ({**ZERO, "windows": 1.0}, 0.0, False, False),
    "caption+alternatives+concepts": ({**ZERO, "caption": 1.0, "alternatives": 0.5, "concepts": 0.5}, 0.0, False, False),
    "caption+alternatives+windows+concepts": ({**FIELD_WEIGHTS, "related": 0.0}, 0.0, False, False),
    "all fields + synonyms (BM25 alone: the default without the extra)": (dict(FIELD_WEIGHTS), 0.0, False, False),
    "embeddings alone": (dict(FIELD_WEIGHTS), 1.0, False, False),
    "all fields + synonyms + embeddings 0.3": (dict(FIELD_WEIGHTS), 0.3, False, False),
    "all fields + synonyms + embeddings 0.5": (dict(FIELD_WEIGHTS), 0.5, False, False),
    "all fields + synonyms + embeddings 0.7": (dict(FIELD_WEIGHTS), 0.7, False, False),
    "all fields + synonyms + model rerank (default without the extra)": (dict(FIELD_WEIGHTS), 0.0, True, False),
    "all fields + synonyms + embeddings 0.7 + model rerank": (dict(FIELD_WEIGHTS), 0.7, True, False),
    "all fields + synonyms + embeddings 0.7 + visual score": (dict(FIELD_WEIGHTS), 0.7, False, True),
    "all fields + synonyms + embeddings 0.7 + visual score + model rerank (default)": (dict(FIELD_WEIGHTS), 0.7, True, True),
}


def clip_list(name: str) -> list[str]:
    return [Path(line.strip()).stem for line in (ROOT / "configs" / "lists" / name).read_text().splitlines()
            if line.strip()]


def references() -> dict[str, list[str]]:
    refs = {}
    for split in ("train", "val", "test"):
        for line in (DATA / "msvd" / "captions" / f"MSVD_{split}.tsv").read_text(encoding="utf-8").splitlines():
            text, _, clip = line.rpartition("\t")
            refs[clip.strip()] = [c.strip() for c in text.split(", ") if c.strip()]
    return refs


def ranks(library: Library, queries: list[tuple[str, str]], weights: dict, mix: float, gallery: int,
          rerank: bool = False, visual: bool = False) -> list[float]:
    """The rank of each query's clip; a clip the query does not match at all shares the places
    after the matched ones (its expected rank among them)."""
    found = []
    for clip, query in queries:
        hits = library.search(query, limit=gallery, weights=weights, embedding_weight=mix, rerank=rerank,
                              visual=visual)
        # Reranked scores are z-scores; the matched ones are the hits the text search returned.
        hits = [h.id for h in hits if h.score > 0 or mix > 0 or rerank]
        if clip in hits:
            found.append(float(hits.index(clip) + 1))
        else:
            found.append(len(hits) + (gallery - len(hits) + 1) / 2)
    return found


def summary(found: list[float]) -> dict:
    return {"R@1": round(sum(r <= 1 for r in found) / len(found), 3),
            "R@5": round(sum(r <= 5 for r in found) / len(found), 3),
            "median rank": statistics.median(found), "queries": len(found)}


def subset_library(source: Path, keep: set[str], folder: Path) -> Path:
    path = folder / f"subset_{len(keep)}.db"
    shutil.copy(source, path)
    with Library.open(path, create=False) as library:
        for video_id in set(library.ids()) - keep:
            key = library._query("SELECT key FROM videos WHERE id = ?", (video_id,))[0][0]
            library._db.execute("BEGIN")
            library._delete(key)
            library._db.execute("COMMIT")
    return path


def retrieval(db: Path, out: dict) -> None:
    refs = references()
    dev, test = clip_list("msvd_dev_clips.txt"), clip_list("msvd_test_clips.txt")
    with tempfile.TemporaryDirectory() as tmp, Library.open(db, create=False) as library:
        gallery = library.ids()
        held_out = [c for c in dev + test if c in gallery]
        setups = {
            f"{len(gallery)}-clip gallery, references of the {len(held_out)} held-out clips (dev + test)":
                (library, [(c, q) for c in held_out for q in refs[c]], len(gallery)),
        }
        dev_db = Library.open(subset_library(db, set(dev), Path(tmp)), create=False)
        setups[f"{len(dev)}-clip dev gallery, their references"] = \
            (dev_db, [(c, q) for c in dev for q in refs[c]], len(dev))
        setups[f"{len(gallery)}-clip gallery, dev-clip references only (weights chosen here)"] = \
            (library, [(c, q) for c in dev if c in gallery for q in refs[c]], len(gallery))
        results = {}
        for setup, (lib, queries, size) in setups.items():
            results[setup] = {}
            for variant, (weights, mix, rerank, visual) in VARIANTS.items():
                if mix > 0 and lib._embedding_matrix() is None:
                    continue  # no embeddings in this library (the optional packages are not installed)
                results[setup][variant] = summary(ranks(lib, queries, weights, mix, size, rerank, visual))
                print(f"{setup} | {variant}: {results[setup][variant]}", flush=True)
        dev_db.close()
    out["retrieval"] = results


def synthetic_library(path: Path, count: int, seed: int = 0, embeddings: bool = False) -> None:
    """`count` videos with real MSVD training captions, random concepts and the pooled features
    and model of a real indexed clip (so the visual score and the model rerank run as on a real
    library), written through the library's own write path (no video is decoded)."""
    from captioner.caption import Caption, Segment
    from captioner.library import Library

    rng = random.Random(seed)
    refs = references()
    captions = [c for clip, cs in refs.items() for c in cs[:5]]
    with Library.open(DEFAULT_DB, create=False) as real:
        vocabulary = real.vocabulary
        indexed = [(settings, np.frombuffer(blob, dtype="<f4")) for settings, blob in real._query(
            "SELECT settings, features FROM videos WHERE features IS NOT NULL")]
    with Library.open(path) as library:
        library._db.execute("INSERT OR REPLACE INTO library (key, value) VALUES ('vocabulary', ?)",
                            (json.dumps(vocabulary),))
        library.vocabulary = vocabulary
        for k in range(count):
            windows = [Segment(5.0 * w, 5.0 * (w + 1), rng.choice(captions), -0.5) for w in range(3)]
            concepts = {head["kind"]: [{"name": rng.choice(head["classes"]).split(",")[0],
                                        "p": round(rng.random() / 2, 4)} for _ in range(5)] for head in vocabulary}
            caption = rng.choice(captions)
            result = Caption(path=f"/videos/v{k}.mp4", id=f"v{k}", caption=caption, score=-0.5,
                             alternatives=[{"caption": caption, "score": -0.5},
                                           {"caption": rng.choice(captions), "score": -0.7}],
                             model="synthetic", segments=windows, concepts=concepts)
            settings, features = rng.choice(indexed)
            library._write_video(f"v{k}", Path(f"/videos/v{k}.mp4"), {"size": k}, settings, result,
                                 {"duration": 15.0, "windows": {}, "features": features})
        if embeddings:
            # Search time depends on how many vectors there are, not on what they say.
            rows = []
            for key in range(1, count + 1):
                vectors = np.random.default_rng(key).standard_normal((6, 384)).astype("<f4")
                vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
                rows += [(key, None if n < 3 else n - 3, vectors[n].tobytes()) for n in range(6)]
            library._db.execute("BEGIN")
            library._db.executemany("INSERT INTO embeddings (video, window, vector) VALUES (?, ?, ?)", rows)
            library._db.execute("COMMIT")


# name -> Library.search options: what each way of searching costs on the synthetic library.
LATENCY_MODES = {
    "bm25 alone": dict(embedding_weight=0.0, visual=False, rerank=False),
    "bm25 + model rerank (the default without the embeddings extra)": dict(embedding_weight=0.0, visual=False),
    "bm25 + embeddings + visual score, no rerank": dict(rerank=False),
    "default: bm25 + embeddings + visual score + model rerank": dict(),
}


def latency(db: Path, out: dict, count: int) -> None:
    from captioner import embeddings
    from captioner.library import _query_vector

    refs = references()
    queries = [q for clip in clip_list("msvd_test_clips.txt") + clip_list("msvd_dev_clips.txt") for q in refs[clip]]
    random.Random(1).shuffle(queries)
    queries = queries[:200] + ["a" * 10_000, "someone slicing vegetables", "a dog on a beach", "motorbike"]
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "synthetic.db"
        started = time.perf_counter()
        synthetic_library(path, count, embeddings=embeddings.available())
        result["build_seconds"] = round(time.perf_counter() - started, 1)
        result["db_mb"] = round(path.stat().st_size / 1e6, 1)
        # The first search after opening reads the embeddings and features and loads the models:
        # what `captioner search` pays once per command.
        started, cpu_started = time.perf_counter(), time.process_time()
        with Library.open(path, create=False) as library:
            library.search("a man is slicing a tomato", 10)
        result["first_search_after_open"] = {"ms": round(1000 * (time.perf_counter() - started), 1),
                                             "cpu_ms": round(1000 * (time.process_time() - cpu_started), 1)}
        with Library.open(path, create=False) as library:
            library.search("warm up the page cache and the encoder", 10)
            modes = {name: options for name, options in LATENCY_MODES.items()
                     if embeddings.available() or options.get("embedding_weight") == 0.0}
            for mode, options in modes.items():
                times, cpu = [], []
                for query in queries:
                    _query_vector.cache_clear()  # every query is new to the encoder, as a user's would be
                    t0, c0 = time.perf_counter(), time.process_time()
                    library.search(query, 10, **options)
                    times.append(1000 * (time.perf_counter() - t0))
                    cpu.append(1000 * (time.process_time() - c0))
                times.sort()
                cpu.sort()
                # Wall time on a shared machine is mostly waiting for a core; CPU time is the work.
                result[mode] = {"videos": count, "queries": len(times),
                                "median_ms": round(statistics.median(times), 2),
                                "p95_ms": round(times[int(0.95 * len(times))], 2),
                                "cpu_median_ms": round(statistics.median(cpu), 2),
                                "cpu_p95_ms": round(cpu[int(0.95 * len(cpu))], 2)}
                t0 = time.perf_counter()
                library.search("a man", 10, concept=library.concept_names()[0], **options)
                result[mode]["with_concept_filter_ms"] = round(1000 * (time.perf_counter() - t0), 2)
                print(f"latency, {mode}: {result[mode]}", flush=True)
    out["latency"] = result
    print("latency:", result, flush=True)


def size(db: Path, out: dict) -> None:
    with Library.open(db, create=False) as library:
        hours = sum(r["duration"] for r in library.records(features=False)) / 3600
        videos = len(library)
    result = {"videos": videos, "hours": round(hours, 4)}
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "copy.db"
        with sqlite3.connect(db) as source, sqlite3.connect(copy) as target:
            source.backup(target)  # with what the write-ahead log holds
        steps = [("everything", []),
                 ("without keyframes", ["UPDATE videos SET thumbnail = NULL", "UPDATE windows SET thumbnail = NULL"]),
                 ("without keyframes and features", ["UPDATE videos SET features = NULL"]),
                 ("without keyframes, features and embeddings", ["DELETE FROM embeddings"])]
        with sqlite3.connect(copy) as connection:
            for name, statements in steps:
                for statement in statements:
                    connection.execute(statement)
                connection.commit()
                connection.execute("VACUUM")
                connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # VACUUM's pages into the file
                bytes_ = copy.stat().st_size
                result[name] = {"MB": round(bytes_ / 1e6, 2), "MB per hour": round(bytes_ / 1e6 / hours, 1),
                                "KB per video": round(bytes_ / 1e3 / videos, 1)}
    out["size"] = result
    print("size:", result, flush=True)


def cost(out: dict, count: int, segments: float) -> None:
    from captioner.caption import Captioner

    clips = sorted(CLIPS.glob("*.avi"))[:count]
    captioner = Captioner.load()
    captioner.caption(clips[0], segments=segments)  # warm: compiled models, page cache
    caption_s, index_s = [], []
    with tempfile.TemporaryDirectory() as tmp, Library.open(Path(tmp) / "cost.db") as library:
        for k, clip in enumerate(clips):
            runs = [("caption", lambda: list(captioner.caption_many([clip], segments=segments))),
                    ("index", lambda: library.add([clip], segments=segments, captioner=captioner))]
            if k % 2:  # alternate which goes first
                runs.reverse()
            for name, run in runs:
                t0 = time.perf_counter()
                run()
                (caption_s if name == "caption" else index_s).append(time.perf_counter() - t0)
            print(f"cost: {clip.name}: caption {caption_s[-1]:.2f} s, index {index_s[-1]:.2f} s", flush=True)
    out["cost"] = {"clips": len(clips), "segments": segments, "caption_seconds": round(sum(caption_s), 2),
                   "index_seconds": round(sum(index_s), 2), "ratio": round(sum(index_s) / sum(caption_s), 3)}
    print("cost:", out["cost"], flush=True)


DEFAULT_DB = ROOT / "runs" / "library" / "msvd61.db"


def main() -> None:
    global DEFAULT_DB
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default=str(DEFAULT_DB), help="library of the 61 MSVD clips (built if missing)")
    parser.add_argument("--parts", default="retrieval,latency,size,cost")
    parser.add_argument("--synthetic", type=int, default=10_000, help="videos in the latency benchmark's library")
    parser.add_argument("--cost-clips", type=int, default=20)
    parser.add_argument("--segments", type=float, default=5.0)
    parser.add_argument("--out", default=None, help="write the figures as JSON here too")
    args = parser.parse_args()
    db = DEFAULT_DB = Path(args.db)
    if not db.exists():
        with Library.open(db) as library:
            print(library.add(sorted(CLIPS.glob("*.avi")), segments=args.segments, progress=True).line())
    parts = args.parts.split(",")
    out: dict = {}
    if "retrieval" in parts:
        retrieval(db, out)
    if "latency" in parts:
        latency(db, out, args.synthetic)
    if "size" in parts:
        size(db, out)
    if "cost" in parts:
        cost(out, args.cost_clips, args.segments)
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
