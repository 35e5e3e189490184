"""The evaluation stage: read predictions and references, match ids, score the model and baselines.

    evaluation = evaluate_files("preds.jsonl", "MSVD_test.tsv",
                                train_references="MSVD_train.tsv", train_features="features/")
    evaluation.systems[0].corpus      # {"BLEU-1": ..., "CIDEr": ...} of the model

Predictions come as JSON `{id: caption}`, a coco-style results list
`[{"image_id"|"video_id"|"id": ..., "caption": ...}]`, or the JSONL that
`captioner caption --json` writes (one object per line with `caption` and `path`, maybe `id`;
the id is `id` if present, else the file stem of `path`). References are any caption file
`captioner.datasets` reads, `{id: [captions]}` JSON included.

Every system (the model and each baseline) is scored on the same ids with the same scorer, so
CIDEr's document frequencies, which come from the scored references, are the same for all.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Callable, Iterable, Mapping, Sequence

from .atomic import atomic_write
from .datasets import jsonl_records, parse_json
from .errors import CaptionerError, UsageError
from .inputs import video_ids
from .metrics import DEFAULT_METRICS, Scorer, parse_metrics

log = logging.getLogger("captioner")

MODEL = "model"
CONSTANT = "constant caption"
NEAREST = "nearest neighbour"
CONCEPT_RETRIEVAL = "concept retrieval"
_ID_KEYS = ("video_id", "image_id", "id")
# `captioner evaluate` refuses to score predictions covering fewer reference ids than this
# (unless --allow-partial): scores of a subset do not compare with scores of the whole set,
# while a few undecodable videos out of hundreds should not block an evaluation.
MIN_COVERAGE = 0.95
_UNNAMED = "references"  # references given in memory, not read from a file


# ----------------------------------------------------------------------------- reading
def _read_text(path: Path, what: str) -> str:
    if not path.is_file():
        raise CaptionerError(f"{what} file not found", path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CaptionerError(f"not UTF-8 text (byte {exc.start})", path) from None
    if not text.strip():
        raise CaptionerError(f"empty {what} file", path)
    return text


def _caption(value, path: Path, where: str, line: int | None = None) -> str:
    if not isinstance(value, str):
        hint = " (one caption per id; is this a references file?)" if isinstance(value, list) else ""
        raise CaptionerError(f"{where}: caption must be a string, got {type(value).__name__}{hint}", path, line)
    return value


def _looks_like_jsonl(path: Path, text: str) -> bool:
    if path.suffix.lower() == ".jsonl":
        return True
    first = next(line for line in text.splitlines() if line.strip())
    try:
        record = json.loads(first)
    except ValueError:
        return False
    # A one-line JSONL file is also valid JSON; its keys tell it from {id: caption}.
    return isinstance(record, dict) and "caption" in record and ("path" in record or "id" in record)


def _read_caption_jsonl(path: Path, text: str) -> dict[str, str]:
    records = []
    failed = 0
    for line, record in jsonl_records(path, text):
        if not isinstance(record, dict):
            raise CaptionerError('expected an object like {"path": ..., "caption": ...}', path, line)
        if "caption" not in record and "error" in record:  # a video `captioner caption` could not read
            failed += 1
            continue
        if "caption" not in record or not ("id" in record or "path" in record):
            raise CaptionerError("each line needs 'caption' and 'id' or 'path'", path, line)
        records.append((line, record))
    # Lines without an id are named by their paths as `captioner caption` names its inputs.
    ids_from_paths = video_ids(PurePath(str(r["path"])) for _, r in records if r.get("id") is None)
    predictions: dict[str, str] = {}
    for line, record in records:
        if record.get("id") is not None:
            video_id = str(record["id"])
        else:
            video_id = ids_from_paths[PurePath(str(record["path"]))]
        if video_id in predictions:
            raise CaptionerError(f"duplicate prediction for id {video_id!r}", path, line)
        predictions[video_id] = _caption(record["caption"], path, "'caption'", line)
    if failed:
        log.warning(f"warning: {failed} lines of {path} record videos that failed to caption; they are skipped")
    return predictions


def _read_coco_results(path: Path, items: list) -> dict[str, str]:
    predictions: dict[str, str] = {}
    for n, item in enumerate(items):
        key = next((k for k in _ID_KEYS if isinstance(item, dict) and k in item), None)
        if key is None or "caption" not in item:
            raise CaptionerError(f'item {n}: expected {{"video_id"|"image_id"|"id": ..., "caption": ...}}', path)
        video_id = str(item[key])
        if video_id in predictions:
            raise CaptionerError(f"item {n}: duplicate prediction for id {video_id!r}", path)
        predictions[video_id] = _caption(item["caption"], path, f"item {n}")
    return predictions


def read_predictions(path: str | os.PathLike) -> dict[str, str]:
    """One caption per video id, from any of the prediction formats above."""
    path = Path(path)
    text = _read_text(path, "predictions")
    if _looks_like_jsonl(path, text):
        predictions = _read_caption_jsonl(path, text)
    else:
        data = parse_json(text, path)  # an id twice is refused, as in JSONL
        if isinstance(data, dict):
            predictions = {str(k): _caption(v, path, f"id {k!r}") for k, v in data.items()}
        elif isinstance(data, list):
            predictions = _read_coco_results(path, data)
        else:
            raise CaptionerError("expected {id: caption}, a list of {id, caption} objects, or JSONL", path)
    if not predictions:
        raise CaptionerError("no predictions found", path)
    return predictions


def read_references(path: str | os.PathLike, split: str | None = None) -> dict[str, list[str]]:
    """Reference captions per id from any caption file `captioner.datasets` understands."""
    from .datasets import load_references

    return load_references(path, split)


def match_ids(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]],
              predictions_name: str = "predictions", references_name: str = "references",
              min_coverage: float = 0.0) -> list[str]:
    """Ids with both a prediction and references, in reference order; say what is left out.

    Refuses when fewer than `min_coverage` of the reference ids have a prediction.
    """
    common = [i for i in references if i in predictions]
    only_predicted = [i for i in predictions if i not in references]
    unpredicted = [i for i in references if i not in predictions]
    for ids, message in ((only_predicted, f"predicted ids have no references in {references_name}"),
                         (unpredicted, f"reference ids have no prediction in {predictions_name}")):
        if ids:
            shown = ", ".join(ids[:3]) + (", ..." if len(ids) > 3 else "")
            log.warning(f"warning: {len(ids)} {message}; excluded ({shown})")
    if not common:
        raise CaptionerError(f"no video id is in both {predictions_name} and {references_name} "
                             f"(predictions look like {next(iter(predictions))!r}, references like "
                             f"{next(iter(references))!r})")
    if len(common) < min_coverage * len(references):
        raise CaptionerError(f"predictions cover {len(common)} of {len(references)} reference ids "
                             f"({len(common) / len(references):.0%}), below the {min_coverage:.0%} that makes "
                             "scores comparable; pass --allow-partial to score these ids anyway", predictions_name)
    return common


# ----------------------------------------------------------------------------- evaluating
@dataclass
class SystemScores:
    """One captioning system's captions and scores on the evaluated ids."""

    name: str
    captions: dict[str, str]
    corpus: dict[str, float]
    per_video: dict[str, dict[str, float]]


@dataclass
class Evaluation:
    ids: list[str]
    references: dict[str, list[str]]
    metrics: tuple[str, ...]
    systems: list[SystemScores] = field(default_factory=list)
    excluded: dict[str, int] = field(default_factory=dict)
    references_file: str | None = None  # where the references came from, for the report to say
    # Per retrieval baseline, how many training videos it drew its captions from.
    baseline_pools: dict[str, int] = field(default_factory=dict)

    @property
    def model(self) -> SystemScores:
        return self.systems[0]

    @property
    def counts(self) -> dict[str, int]:
        """How many ids were scored, and how many reference ids had no prediction."""
        return {"scored": len(self.ids), "missing": self.excluded.get("references", 0)}

    def to_dict(self, per_video: bool = True) -> dict:
        out = {"videos": len(self.ids), "excluded": self.excluded, "metrics": list(self.metrics),
               "systems": {s.name: s.corpus for s in self.systems}, "references_file": self.references_file,
               "baseline_pools": self.baseline_pools}
        if per_video:
            out["per_video"] = {
                i: {"references": self.references[i],
                    **{s.name: {"caption": s.captions[i], **s.per_video[i]} for s in self.systems}}
                for i in self.ids}
        return out


def baseline_captions(ids: Sequence[str], train_references: Mapping[str, Sequence[str]] | None = None,
                      train_features=None, test_features=None, k: int = 10,
                      pools: dict[str, int] | None = None) -> dict[str, dict[str, str]]:
    """Captions of each baseline whose inputs are given: {baseline name: {id: caption}}.

    `pools`, when given, receives how many training videos each retrieval baseline drew from."""
    from .baselines import (caption_pool, concept_retrieval_captions, constant_caption, nearest_neighbour_captions,
                            retrieval_pool)
    from .concepts import heads

    baselines: dict[str, dict[str, str]] = {}
    if train_references is None:
        if train_features is not None or test_features is not None:
            raise CaptionerError("the retrieval baselines need the training references too")
        return baselines
    constant = constant_caption(train_references)
    baselines[CONSTANT] = {i: constant for i in ids}
    from .store import open_features

    def opened(store):
        return open_features(store) if isinstance(store, (str, os.PathLike)) else store

    train_store = None if train_features is None else opened(train_features)
    test_store = train_store if test_features is None else opened(test_features)
    if train_store is not None:
        baselines[NEAREST] = nearest_neighbour_captions(train_store, train_references, test_store, ids, k=k)
        if pools is not None:
            pools[NEAREST] = len(retrieval_pool(train_store, train_references))
    if test_store is not None and heads(test_store.provenance):
        baselines[CONCEPT_RETRIEVAL] = concept_retrieval_captions(train_references, test_store, ids)
        if pools is not None:
            pools[CONCEPT_RETRIEVAL] = len(caption_pool(train_references))
    return baselines


def evaluate(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]], *,
             metrics: str | Iterable[str] = DEFAULT_METRICS,
             train_references: Mapping[str, Sequence[str]] | None = None, train_features=None,
             test_features=None, k: int = 10, scorer: Scorer | None = None,
             predictions_name: str = "predictions", references_name: str = _UNNAMED,
             min_coverage: float = 0.0, progress: Callable[[str, int, int], None] | None = None) -> Evaluation:
    """Score the model's predictions and the baselines on the ids both files share.

    train_references enables the constant-caption baseline; with train_features (a store or its
    path; test_features defaults to the same store) also the nearest-neighbour baseline; with
    test features of a concept backbone, the concept-retrieval baseline (no training features needed).
    Pass a `Scorer` to reuse its METEOR process across calls. With `min_coverage` (a fraction,
    e.g. MIN_COVERAGE) predictions covering fewer reference ids are refused before scoring.
    `progress(what, done, total)` is called before each step (finding the baselines' captions,
    scoring each system).
    """
    ids = match_ids(predictions, references, predictions_name, references_name, min_coverage)
    refs = {i: list(references[i]) for i in ids}
    if progress is not None:
        progress("baselines", 0, 0)
    pools: dict[str, int] = {}
    systems = {MODEL: {i: predictions[i] for i in ids},
               **baseline_captions(ids, train_references, train_features, test_features, k, pools)}
    own_scorer = scorer is None
    scorer = Scorer(metrics) if own_scorer else scorer
    try:
        evaluation = Evaluation(ids, refs, scorer.metrics,
                                excluded={"predictions": len(predictions) - len(ids),
                                          "references": len(references) - len(ids)},
                                references_file=None if references_name == _UNNAMED else references_name,
                                baseline_pools=pools)
        for done, (name, captions) in enumerate(systems.items()):
            if progress is not None:
                progress(f"scoring {name}", done, len(systems))
            scores = scorer.score_per_video(captions, refs)
            evaluation.systems.append(SystemScores(name, captions, scores.corpus, scores.per_video))
    finally:
        if own_scorer:
            scorer.close()
    return evaluation


def evaluate_files(predictions: str | os.PathLike, references: str | os.PathLike, *, split: str | None = None,
                   metrics: str | Iterable[str] = DEFAULT_METRICS, train_references: str | os.PathLike | None = None,
                   train_split: str | None = None, train_features: str | os.PathLike | None = None,
                   test_features: str | os.PathLike | None = None, k: int = 10,
                   scorer: Scorer | None = None, min_coverage: float = 0.0) -> Evaluation:
    """`evaluate` on files: what `captioner evaluate` runs."""
    metrics = parse_metrics(metrics)  # a typo fails before any file is read or Java started
    if k < 1:
        raise UsageError(f"--k must be at least 1, got {k}")
    predicted = read_predictions(predictions)
    refs = read_references(references, split)
    train_refs = read_references(train_references, train_split) if train_references is not None else None
    return evaluate(predicted, refs, metrics=metrics, train_references=train_refs, train_features=train_features,
                    test_features=test_features, k=k, scorer=scorer, predictions_name=str(predictions),
                    references_name=str(references), min_coverage=min_coverage)


def format_table(evaluation: Evaluation) -> str:
    """The corpus scores of every system as an aligned text table."""
    width = max(len("system"), *(len(s.name) for s in evaluation.systems))
    header = "system".ljust(width) + "".join(f"{m:>9}" for m in evaluation.metrics)
    rows = [s.name.ljust(width) + "".join(f"{s.corpus[m]:>9.4f}" for m in evaluation.metrics)
            for s in evaluation.systems]
    missing = evaluation.counts["missing"]
    scored = f"{len(evaluation.ids)} videos" + (f" ({missing} reference ids without a prediction not scored)"
                                                if missing else "")
    return "\n".join([scored, header, *rows])


def write_results(evaluation: Evaluation, path: str | os.PathLike) -> Path:
    path = Path(path)
    atomic_write(path, json.dumps(evaluation.to_dict(), indent=1, ensure_ascii=False) + "\n")
    return path


def read_results(path: str | os.PathLike) -> Evaluation:
    """The `Evaluation` that `write_results` wrote (for a report made later from saved scores)."""
    path = Path(path)
    try:
        data = json.loads(_read_text(path, "results"))
        per_video, metrics = data["per_video"], data["metrics"]
        evaluation = Evaluation(list(per_video), {i: v["references"] for i, v in per_video.items()},
                                tuple(metrics), excluded=data["excluded"],
                                references_file=data.get("references_file"),  # absent from older files
                                baseline_pools=data.get("baseline_pools") or {})
        for name, corpus in data["systems"].items():
            evaluation.systems.append(SystemScores(
                name, {i: v[name]["caption"] for i, v in per_video.items()}, corpus,
                {i: {m: v[name][m] for m in metrics} for i, v in per_video.items()}))
    except (ValueError, KeyError, TypeError) as exc:
        raise CaptionerError(f"not a results file written by `captioner evaluate --out` ({exc!r})", path) from None
    return evaluation
