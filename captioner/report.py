"""The evaluation report: what the model says about each video, not only five numbers.

    report_files("preds.jsonl", "corpus_test.csv", "report/", videos="clips/",
                 train_references="MSVD_train.tsv", train_features="features/", run="runs/msvd")
    write_report(evaluation, "report/", ...)    # from an `Evaluation` already computed

writes OUT/report.html (one self-contained file: no external scripts, fonts or styles; images
are data URIs), OUT/report.md (plots as OUT/plots/*.png beside it) and OUT/report.json.
The page holds the metric table (model, baselines, published numbers) with bootstrap intervals of
each corpus score, the reference file and how many references each video has, caveats about
baselines that cannot mean much, the best and worst videos (or, for a small set, every video
ranked once), plots (per-video scores, caption lengths, vocabulary and copying from the training
set, training curves) and one row per video with a strip of frames, the captions, the
references and the per-video scores. It reads on a phone as on a laptop.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import logging
import math
import os
import shlex
import sys
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping, Sequence

from .errors import CaptionerError
from .evaluate import MODEL, Evaluation, evaluate, read_predictions, read_references
from .inputs import find_media
from .metrics import DEFAULT_METRICS, Scorer, parse_metrics
from .text import tokenize
from .version import __version__

log = logging.getLogger("captioner")

# The MSVD test split the published rows were scored on (Venugopalan et al. use the 670-video test split).
PUBLISHED_MSVD_VIDEOS = 670
# Published MSVD (YouTube2Text) test-set scores of the model this project reproduces. Only the
# numbers we could check against the authors' own statements are listed; both papers report
# METEOR (coco-caption's METEOR 1.5) in percent, here on our 0-1 scale.
PUBLISHED_MSVD = [
    {"name": "Mean pool, VGG (Venugopalan et al., NAACL 2015)", "scores": {"METEOR": 0.277},
     "source": "Venugopalan et al., Sequence to Sequence - Video to Text, ICCV 2015, Table 2 "
               "(improved NAACL-HLT 2015 mean-pool model; the authors' model page "
               "https://gist.github.com/vsubhashini/3761b9ad43f60db9ac3d gives 27.7% METEOR)"},
    {"name": "S2VT, RGB VGG (Venugopalan et al., ICCV 2015)", "scores": {"METEOR": 0.292},
     "source": "Venugopalan et al., Sequence to Sequence - Video to Text, ICCV 2015, Table 2 "
               "(the authors' model page https://gist.github.com/vsubhashini/38d087e140854fee4b14 "
               "gives 29.2% METEOR)"},
]
# The metric that ranks videos from best to worst, in order of preference. Not CIDEr: its per-video
# score weights n-grams by rarity across the references, so one rare word shared with a single
# reference lifts a wrong caption to the top; METEOR, with stems, synonyms and a fragmentation
# penalty, is the one that agrees best with people on single sentences.
_RANKING = ("METEOR", "CIDEr", "BLEU-4", "ROUGE-L", "BLEU-3", "BLEU-2", "BLEU-1", "SPICE")
_EXAMPLES = 5
# Up to this many videos, the report lists every video once, ranked (best and worst examples would
# repeat the list), and plots one dot per video.
SMALL_SAMPLE = 20
# Bootstrap over videos for the intervals beside each score: seeded, so a report is reproducible.
# Each resample is scored like a whole set, and METEOR's scoring runs in Java once per resample, so
# the cost is bounded by the videos scored in all: up to MAX_RESAMPLES resamples, fewer (but at
# least MIN_RESAMPLES) for large sets; the report says how many.
MAX_RESAMPLES = 1000
MIN_RESAMPLES = 200
RESAMPLED_VIDEOS = 100_000
BOOTSTRAP_SEED = 0
# A retrieval baseline drawing from fewer training videos than this rarely finds a similar one:
# over the 40 MSVD clips with video it said "an elephant is painting" for 7 of 9 test clips.
MIN_RETRIEVAL_POOL = 200
# Fields of `captioner caption --json` lines that say what made the captions.
_PROVENANCE_FIELDS = ("model", "checkpoint", "beam", "length_penalty", "max_len")


# ----------------------------------------------------------------------------- facts
@dataclass
class CaptionStats:
    """Length, vocabulary and novelty of one system's captions (PTB-like tokens)."""

    mean_length: float
    vocabulary: int
    distinct_captions: float  # share of videos whose caption no other video got
    copied_from_training: float | None  # share of captions that appear verbatim in the training set


def caption_stats(captions: Sequence[str], training_captions: set[str] | None) -> CaptionStats:
    tokens = [tokenize(c) for c in captions]
    joined = Counter(" ".join(t) for t in tokens)
    copied = None
    if training_captions is not None:
        copied = sum(" ".join(t) in training_captions for t in tokens) / max(len(tokens), 1)
    return CaptionStats(mean_length=sum(map(len, tokens)) / max(len(tokens), 1),
                        vocabulary=len({w for t in tokens for w in t}),
                        distinct_captions=sum(1 for t in tokens if joined[" ".join(t)] == 1) / max(len(tokens), 1),
                        copied_from_training=copied)


def ranking_metric(evaluation: Evaluation) -> str:
    return next(m for m in _RANKING if m in evaluation.metrics)


def read_training_curves(run_dir: str | os.PathLike) -> dict[str, list[float]]:
    """Columns of RUN/metrics.csv (epoch, train_loss, val_loss, val_<METRIC>...) as float lists."""
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        raise CaptionerError("no metrics.csv in the run directory", Path(run_dir))
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or "epoch" not in rows[0]:
        raise CaptionerError("expected a CSV with an 'epoch' column and one row per epoch", path)
    columns: dict[str, list[float]] = {}
    for name in rows[0]:
        try:
            columns[name] = [float(r[name]) if r[name] not in ("", None) else float("nan") for r in rows]
        except ValueError:
            continue  # a text column (e.g. a timestamp) is not a curve
    return columns


def _caption_records(predictions: str | os.PathLike):
    """The objects of a `captioner caption --json` file, one per line (nothing for other formats)."""
    path = Path(predictions)
    if path.suffix.lower() != ".jsonl":
        return
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # read_predictions has already said what is wrong with the file
        if isinstance(record, dict):
            yield record


def prediction_provenance(predictions: str | os.PathLike) -> dict[str, str]:
    """What made the predictions, from the `captioner caption --json` lines that record it: each
    field's distinct values joined (several models in one file show as several values)."""
    seen: dict[str, list[str]] = {}
    for record in _caption_records(predictions):
        for name in _PROVENANCE_FIELDS:
            value = record.get(name)
            if value is not None and str(value) not in seen.setdefault(name, []):
                seen[name].append(str(value))
    return {name: ", ".join(values) for name, values in seen.items() if values}


def run_provenance(predictions: str | os.PathLike, references: str | os.PathLike, split: str | None = None,
                   command: Sequence[str] | None = None) -> dict[str, str]:
    """The facts a reader needs to reproduce a report: model, decoding, inputs, version, date, command."""
    found = prediction_provenance(predictions)
    unrecorded = "not recorded in the predictions"
    return {"model": found.get("model", unrecorded), "checkpoint": found.get("checkpoint", unrecorded),
            "decoding": ", ".join(f"{k.replace('_', ' ')} {found[k]}" for k in ("beam", "length_penalty", "max_len")
                                  if k in found) or unrecorded,
            "predictions": str(predictions),
            "references": str(references) + (f" (split {split})" if split else ""),
            "captioner version": __version__,
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": shlex.join(["captioner", *(sys.argv[1:] if command is None else command)])}


def bootstrap_resamples(videos: int) -> int:
    """How many bootstrap resamples a set of this many videos gets (see RESAMPLED_VIDEOS)."""
    return min(MAX_RESAMPLES, max(MIN_RESAMPLES, RESAMPLED_VIDEOS // max(videos, 1)))


def interval_method(resamples: int, seed: int = BOOTSTRAP_SEED) -> str:
    return (f"95% bootstrap interval of the corpus score itself (percentile method, {resamples} resamples of the "
            f"videos drawn with replacement, seed {seed}); each resample is scored as coco-caption scores a set: "
            "BLEU and METEOR from the pooled statistics, CIDEr-D with document frequencies of the resample's "
            "references, ROUGE-L as the mean.")


def _human_case(references: Mapping[str, Sequence[str]]):
    """(first references, the other references) per video, or None when some video has only one."""
    ids = [i for i in references if len(references[i]) > 1]
    if not ids or len(ids) < len(references):
        return None
    return {i: references[i][0] for i in ids}, {i: list(references[i][1:]) for i in ids}


def human_agreement(references: Mapping[str, Sequence[str]], scorer) -> dict[str, float] | None:
    """One human against the others: each video's first reference scored (with the report's
    scorer) against its remaining references. None when some video has a single reference."""
    case = _human_case(references)
    return None if case is None else scorer.score_per_video(*case).corpus


def bootstrap_intervals(evaluation: Evaluation, scorer, resamples: int | None = None, seed: int = BOOTSTRAP_SEED,
                        level: float = 0.95, human: bool = False,
                        progress=None) -> dict[str, dict[str, tuple[float, float]]]:
    """Per system (and the human-agreement row with `human`) and metric, a percentile interval of
    the corpus score over resamples of the videos, each re-scored as a set (`Scorer.bootstrap`).
    Every system is scored on the same resamples. `progress(what, done, total)` before each row."""
    import numpy as np

    resamples = resamples or bootstrap_resamples(len(evaluation.ids))
    rows = [(s.name, s.captions, evaluation.references) for s in evaluation.systems]
    case = _human_case(evaluation.references) if human else None
    if case is not None:
        rows.append((HUMAN, *case))
    tail = (1 - level) / 2 * 100
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for done, (name, captions, references) in enumerate(rows):
        if progress is not None:
            progress(f"intervals of {name} ({resamples} resamples)", done, len(rows))
        samples = scorer.bootstrap(captions, references, resamples=resamples, seed=seed)
        out[name] = {metric: tuple(float(x) for x in np.percentile(values, [tail, 100 - tail]))
                     for metric, values in samples.items()}
    return out


def reference_counts(evaluation: Evaluation) -> dict[str, float]:
    """How many references the scored videos have: in all, and the fewest, mean and most per video."""
    counts = [len(evaluation.references[i]) for i in evaluation.ids]
    return {"total": sum(counts), "min": min(counts), "mean": sum(counts) / len(counts), "max": max(counts)}


def references_sentence(evaluation: Evaluation) -> str:
    counts = reference_counts(evaluation)
    source = f"the references in {evaluation.references_file}" if evaluation.references_file else "the references"
    spread = (f"{counts['min']} per video" if counts["min"] == counts["max"]
              else f"{counts['min']}–{counts['max']} per video, mean {counts['mean']:.1f}")
    return f"Scored against {source}: {counts['total']} references for {len(evaluation.ids)} videos ({spread})."


def baseline_caveats(evaluation: Evaluation) -> list[str]:
    """What a reader must know before taking a baseline's scores at face value."""
    from .evaluate import CONSTANT

    caveats = []
    for system in evaluation.systems[1:]:
        pool = evaluation.baseline_pools.get(system.name)
        if pool is not None and pool < MIN_RETRIEVAL_POOL:
            caveats.append(f"The {system.name} baseline retrieves from only {pool} training videos (those with "
                           f"both features and captions), fewer than the {MIN_RETRIEVAL_POOL} retrieval needs to "
                           "find a similar video: its scores say little about retrieval.")
        if system.name != CONSTANT and len(evaluation.ids) > 2:
            caption, count = Counter(system.captions[i] for i in evaluation.ids).most_common(1)[0]
            if count > len(evaluation.ids) / 2:
                caveats.append(f"The {system.name} baseline gives one caption, \u201c{caption}\u201d, to {count} of "
                               f"{len(evaluation.ids)} videos.")
    return caveats


# ----------------------------------------------------------------------------- images
def _png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _plots(evaluation: Evaluation, training_captions: set[str] | None,
           curves: dict[str, list[float]] | None) -> dict[str, bytes]:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots: dict[str, bytes] = {}
    metrics = [m for m in ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE") if m in evaluation.metrics] \
        or list(evaluation.metrics)
    plots["scores"] = _score_plot(plt, evaluation, metrics)

    fig, ax = plt.subplots(figsize=(6, 3))
    reference_lengths = [len(tokenize(r)) for i in evaluation.ids for r in evaluation.references[i]]
    longest = max([*reference_lengths, *(len(tokenize(c)) for s in evaluation.systems for c in s.captions.values())])
    bins = [x - 0.5 for x in range(0, longest + 2)]
    ax.hist(reference_lengths, bins=bins, density=True, alpha=0.35, label="references")
    for system in evaluation.systems:
        ax.hist([len(tokenize(system.captions[i])) for i in evaluation.ids], bins=bins, density=True,
                histtype="step", linewidth=1.5, label=system.name)
    ax.set_xlabel("caption length (words)")
    ax.set_ylabel("share of captions")
    ax.legend(fontsize=7)
    plots["lengths"] = _png_bytes(fig)
    plt.close(fig)

    model_words = Counter(w for i in evaluation.ids for w in tokenize(evaluation.model.captions[i]))
    reference_words = Counter(w for i in evaluation.ids for r in evaluation.references[i] for w in tokenize(r))
    stats = {s.name: caption_stats([s.captions[i] for i in evaluation.ids], training_captions)
             for s in evaluation.systems}
    panels = 3 if training_captions is not None else 2
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.2))
    top = [w for w, _ in model_words.most_common(15)]
    total_model, total_refs = max(sum(model_words.values()), 1), max(sum(reference_words.values()), 1)
    positions = range(len(top))
    axes[0].barh([p + 0.2 for p in positions], [model_words[w] / total_model for w in top], 0.4, label=MODEL)
    axes[0].barh([p - 0.2 for p in positions], [reference_words[w] / total_refs for w in top], 0.4,
                 label="references")
    axes[0].set_yticks(list(positions), top, fontsize=7)
    axes[0].invert_yaxis()
    axes[0].set_title("model's most used words", fontsize=9)
    axes[0].set_xlabel("share of words")
    axes[0].legend(fontsize=7)
    names = [*stats, "references"]
    axes[1].bar(range(len(names)), [*(s.vocabulary for s in stats.values()), len(reference_words)])
    axes[1].set_xticks(range(len(names)), names, rotation=20, fontsize=7)
    axes[1].set_title("distinct words used", fontsize=9)
    if training_captions is not None:
        axes[2].bar(range(len(stats)), [100 * s.copied_from_training for s in stats.values()])
        axes[2].set_xticks(range(len(stats)), list(stats), rotation=20, fontsize=7)
        axes[2].set_ylim(0, 100)
        axes[2].set_title("% captions copied verbatim from training", fontsize=9)
    fig.tight_layout()
    plots["vocabulary"] = _png_bytes(fig)
    plt.close(fig)

    if curves:
        loss_columns = [c for c in curves if c.endswith("loss")]
        val_columns = [c for c in curves if c.startswith("val_") and not c.endswith("loss")]
        fig, axes = plt.subplots(1, 1 + bool(val_columns), figsize=(5 * (1 + bool(val_columns)), 3), squeeze=False)
        for column in loss_columns:
            axes[0][0].plot(curves["epoch"], curves[column], marker=".", label=column)
        for ax in axes[0]:
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        axes[0][0].set_xlabel("epoch")
        axes[0][0].set_title("loss", fontsize=9)
        axes[0][0].legend(fontsize=7)
        for column in val_columns:
            axes[0][1].plot(curves["epoch"], curves[column], marker=".", label=column[4:])
        if val_columns:
            axes[0][1].set_xlabel("epoch")
            axes[0][1].set_title("validation scores", fontsize=9)
            axes[0][1].legend(fontsize=7)
        fig.tight_layout()
        plots["training"] = _png_bytes(fig)
        plt.close(fig)
    return plots


def _score_plot(plt, evaluation: Evaluation, metrics: Sequence[str]) -> bytes:
    """Per-video scores, one panel per metric, stacked (one column stays readable on a phone).

    Up to a few hundred videos: one dot per video and system, systems on their own rows, the
    corpus score as a bar; more: a histogram per system, systems in a legend of their own."""
    import numpy as np

    systems = evaluation.systems
    dots = len(evaluation.ids) <= 300
    height = (0.4 * len(systems) + 0.9) if dots else 2.2
    fig, axes = plt.subplots(len(metrics), 1, figsize=(4.4, height * len(metrics)), squeeze=False)
    rng = np.random.default_rng(0)  # a little vertical jitter, so equal scores stay visible
    for ax, metric in zip(axes.flat, metrics):
        for row, system in enumerate(systems):
            values = np.array([system.per_video[i][metric] for i in evaluation.ids])
            if dots:
                ax.scatter(values, row + rng.uniform(-0.18, 0.18, len(values)), s=14, alpha=0.7,
                           color=f"C{row}", linewidths=0)
                ax.plot([system.corpus[metric]] * 2, [row - 0.32, row + 0.32], color="black", linewidth=1.5)
            else:
                ax.hist(values, bins=20, histtype="step", linewidth=1.5, color=f"C{row}", label=system.name)
        ax.set_title(metric, fontsize=10)
        ax.tick_params(labelsize=8)
        if dots:
            ax.set_yticks(range(len(systems)), [s.name for s in systems])
            ax.set_ylim(len(systems) - 0.5, -0.5)
        else:
            ax.set_ylabel("videos", fontsize=8)
    if dots:
        fig.supxlabel(f"per-video score: one dot per video ({len(evaluation.ids)}); bar: the corpus score", fontsize=8)
    else:
        fig.supxlabel("per-video score", fontsize=8)
        fig.legend(*axes.flat[0].get_legend_handles_labels(), loc="lower center", ncol=min(len(systems), 3),
                   fontsize=7, bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout()
    png = _png_bytes(fig)
    plt.close(fig)
    return png


def _find_videos(videos_dir: str | os.PathLike, ids: Sequence[str]) -> dict[str, Path]:
    root = Path(videos_dir)
    if not root.is_dir():
        raise CaptionerError("videos folder not found", root)
    return find_media(root, ids)


def thumbnail_strips(videos: Mapping[str, Path], progress: bool = True) -> dict[str, str | CaptionerError]:
    """A JPEG data URI of 4 frames side by side per video (or the error that stopped it)."""
    import numpy as np
    from PIL import Image
    from tqdm import tqdm

    from .video import decode

    strips: dict[str, str | CaptionerError] = {}
    for video_id, path in tqdm(videos.items(), desc="thumbnails", unit="video", disable=not progress):
        try:
            frames = decode(path, "uniform:4", short_side=96).frames
        except CaptionerError as exc:
            strips[video_id] = exc
            continue
        gap = np.full((frames.shape[1], 3, 3), 255, np.uint8)
        strip = np.concatenate([part for f in frames for part in (f, gap)][:-1], axis=1)
        buf = io.BytesIO()
        Image.fromarray(strip).save(buf, format="JPEG", quality=80)
        strips[video_id] = _data_uri(buf.getvalue(), "image/jpeg")
    return strips


# ----------------------------------------------------------------------------- writing
_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2em auto;
       max-width: 1200px; color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5em 0; max-width: 100%; }
th, td { border: 1px solid #ddd; padding: 4px 8px; vertical-align: top; text-align: left; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.published td { color: #555; }
td.captions { min-width: 16em; } td.video img { display: block; width: 100%; max-width: 24em; } td.video { width: 24em; }
td.video code { overflow-wrap: anywhere; } .ci { display: block; color: #777; font-size: 0.8em; white-space: nowrap; } .caption { font-weight: 600; } .concepts { color: #2a5d8f; font-size: 0.85em; } .baseline { color: #555; font-size: 0.9em; }
.note { color: #666; font-size: 0.9em; } .caveat { color: #8a4b00; font-size: 0.9em; } img.plot { max-width: 100%; }
.wide { overflow-x: auto; max-width: 100%; } .run code, p { overflow-wrap: anywhere; }
details summary { cursor: pointer; color: #0366d6; } ol.refs { margin: 0.3em 0; padding-left: 1.5em; }
/* A phone: the per-video table becomes one card per video, its scores labelled inline. */
@media (max-width: 700px) {
  body { margin: 1em auto; padding: 0 0.6em; } h1 { font-size: 1.3em; }
  th, td { padding: 3px 5px; }
  table.videos, table.videos tbody, table.videos tr, table.videos td { display: block; width: auto; }
  table.videos tr.head { display: none; }
  table.videos tr { border: 1px solid #ddd; margin: 0 0 0.8em; }
  table.videos td { border: none; min-width: 0; }
  table.videos td.num { display: inline-block; text-align: left; }
  table.videos td.num::before { content: attr(data-label) " "; color: #666; font-size: 0.85em; }
}
"""


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


HUMAN = "human agreement (first reference vs the others)"


def _interval(intervals: Mapping | None, name: str, metric: str) -> tuple[float, float] | None:
    return (intervals or {}).get(name, {}).get(metric)


def _scope_notes(evaluation: Evaluation) -> list[str]:
    notes = [f"{len(evaluation.ids)} videos scored: every score in this report is over these videos only."]
    unpredicted = evaluation.excluded.get("references", 0)
    if unpredicted:
        notes.append(f"The reference file has {unpredicted} more videos that have no prediction; they are not "
                     "scored (expected when a subset of the split was captioned).")
    unreferenced = evaluation.excluded.get("predictions", 0)
    if unreferenced:
        notes.append(f"{unreferenced} predicted videos have no references and are not scored.")
    return notes


def _ranked(evaluation: Evaluation) -> list[str]:
    metric = ranking_metric(evaluation)
    return sorted(evaluation.ids, key=lambda i: evaluation.model.per_video[i][metric], reverse=True)


def _examples(evaluation: Evaluation) -> tuple[list[str], list[str]]:
    ranked = _ranked(evaluation)
    n = min(_EXAMPLES, len(ranked) // 2) or 1
    return ranked[:n], ranked[::-1][:n]


def video_sections(evaluation: Evaluation) -> list[tuple[str, str, list[str]]]:
    """(heading, level, ids) of the per-video tables: best, worst and all videos, or for a small set
    (where the three would repeat each other) every video once, best first."""
    metric = ranking_metric(evaluation)
    n = len(evaluation.ids)
    if n <= SMALL_SAMPLE:
        return [(f"All {n} videos, best to worst (by {metric})", "h2", _ranked(evaluation))]
    best, worst = _examples(evaluation)
    return [(f"Best videos (by {metric})", "h3", best), (f"Worst videos (by {metric})", "h3", worst),
            (f"All videos ({n})", "h2", evaluation.ids)]


def _html(evaluation: Evaluation, title: str, plots: dict[str, bytes], strips: dict, stats: dict,
          notes: list[str], concepts: Mapping | None = None, provenance: Mapping[str, str] | None = None,
          intervals: Mapping | None = None, human: Mapping[str, float] | None = None, method: str = "",
          caveats: Sequence[str] = ()) -> str:
    e = html.escape
    metrics = evaluation.metrics
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>{e(title)}</title><style>{_STYLE}</style></head><body>", f"<h1>{e(title)}</h1>"]
    out += [f'<p class="note">{e(n)}</p>' for n in notes]

    if provenance:
        out.append('<h2>Run</h2><table class="run">' + "".join(
            f"<tr><th>{e(k)}</th><td><code>{e(v)}</code></td></tr>" for k, v in provenance.items()) + "</table>")

    n = len(evaluation.ids)
    out.append(f"<h2>Scores on this run's {n} videos</h2><p>{e(references_sentence(evaluation))}</p>"
               '<div class="wide"><table><tr><th>system</th><th>videos</th>'
               + "".join(f"<th>{e(m)}</th>" for m in metrics) + "</tr>")
    rows = [(s.name, s.corpus) for s in evaluation.systems] + ([(HUMAN, human)] if human else [])
    for name, scores in rows:
        cells = []
        for m in metrics:
            ci = _interval(intervals, name, m)
            ci_html = f'<span class="ci">{_fmt(ci[0])}–{_fmt(ci[1])}</span>' if ci else ""
            cells.append(f'<td class="num">{_fmt(scores.get(m))}{ci_html}</td>')
        out.append(f'<tr><td>{e(name)}</td><td class="num">{n}</td>' + "".join(cells) + "</tr>")
    out.append("</table></div>" + "".join(f'<p class="caveat">{e(c)}</p>' for c in caveats)
               + "<p class=\"note\">Scores on coco-caption's scale (0-1; CIDEr is CIDEr-D and can exceed 1), "
               f"computed with pycocoevalcap. Below each score: {e(method)} With {n} videos the intervals are wide: "
               "differences inside them are not evidence of a better system. The human-agreement row scores each "
               "video's first reference against its other references with the same scorer: a rough ceiling.</p>")
    out.append(f"<h2>Published results (MSVD test split, {PUBLISHED_MSVD_VIDEOS} videos)</h2>"
               "<p class=\"note\">Other papers' numbers on other videos, for scale only: comparable with the table "
               f"above only when this run covers the same {PUBLISHED_MSVD_VIDEOS} videos.</p>"
               '<div class="wide"><table class="published"><tr><th>system</th><th>videos</th>'
               + "".join(f"<th>{e(m)}</th>" for m in metrics) + "<th>source</th></tr>")
    for p in PUBLISHED_MSVD:
        out.append(f'<tr><td>{e(p["name"])}</td><td class="num">{PUBLISHED_MSVD_VIDEOS}</td>'
                   + "".join(f'<td class="num">{_fmt(p["scores"].get(m))}</td>' for m in metrics)
                   + f'<td class="note">{e(p["source"])}</td></tr>')
    out.append("</table></div>")

    out.append('<h2>Captions</h2><div class="wide"><table><tr><th>system</th><th>mean length</th>'
               "<th>distinct words</th><th>unique captions</th><th>copied from training</th></tr>")
    for name, s in stats.items():
        copied = "–" if s.copied_from_training is None else f"{100 * s.copied_from_training:.1f}%"
        out.append(f'<tr><td>{e(name)}</td><td class="num">{s.mean_length:.2f}</td><td class="num">{s.vocabulary}</td>'
                   f'<td class="num">{100 * s.distinct_captions:.1f}%</td><td class="num">{copied}</td></tr>')
    out.append("</table></div>")

    sections = video_sections(evaluation)
    if len(sections) > 1:
        out.append(f"<h2>Best and worst videos (by {e(ranking_metric(evaluation))})</h2>")
    for heading, level, ids in sections[:-1]:
        out += [f"<{level}>{e(heading)}</{level}>", _video_table(evaluation, ids, strips, concepts)]

    captions = {"scores": "Per-video scores", "lengths": "Caption length: predictions vs references",
                "vocabulary": "Vocabulary and copying", "training": "Training curves"}
    out.append("<h2>Plots</h2>")
    for key, png in plots.items():
        out.append(f'<h3>{e(captions[key])}</h3><img class="plot" alt="{e(captions[key])}" '
                   f'src="{_data_uri(png, "image/png")}">')

    heading, level, ids = sections[-1]
    out += [f"<{level}>{e(heading)}</{level}>", _video_table(evaluation, ids, strips, concepts), "</body></html>"]
    return "\n".join(out)


def _concepts_html(concepts: Mapping | None) -> str:
    """What the heads recognised in one video, most probable first: why the model said what it said."""
    if not concepts:
        return ""
    e = html.escape
    parts = [f"{e(kind)}: " + ", ".join(f"{e(c['name'])} {c['p']:.2f}" for c in found[:3])
             for kind, found in concepts.items() if found]
    return f'<div class="concepts">{"; ".join(parts)}</div>' if parts else ""


def prediction_concepts(predictions: str | os.PathLike, test_features=None) -> dict[str, dict]:
    """Per video, the top concepts: from `captioner caption --json` lines that carry them, else
    from the test features where they come from a concept backbone."""
    found = {str(record["id"]): record["concepts"] for record in _caption_records(predictions)
             if isinstance(record.get("concepts"), dict) and record.get("id") is not None}
    if not found and test_features is not None:
        from .concepts import heads, top_concepts
        from .store import open_features

        store = open_features(test_features) if isinstance(test_features, (str, os.PathLike)) else test_features
        concept_heads = heads(store.provenance)
        if concept_heads:
            ids = store.ids()
            found = {vid: top_concepts(vector, concept_heads) for vid, vector in zip(ids, store.pooled_matrix(ids)[1])}
    return found


def _video_table(evaluation: Evaluation, ids: Sequence[str], strips: dict, concepts: Mapping | None = None) -> str:
    e = html.escape
    metrics = evaluation.metrics
    rows = ['<table class="videos"><tr class="head"><th>video</th><th>captions</th>'
            + "".join(f"<th>{e(m)}</th>" for m in metrics) + "</tr>"]
    for video_id in ids:
        strip = strips.get(video_id)
        if isinstance(strip, str):
            frames = f'<img alt="frames of {e(video_id)}" src="{strip}">'
        elif isinstance(strip, CaptionerError):
            frames = f'<span class="note">no frames: {e(strip.reason)}</span>'
        else:
            frames = ""
        model = evaluation.model
        baselines = "".join(f'<div class="baseline">{e(s.name)}: {e(s.captions[video_id])}</div>'
                            for s in evaluation.systems[1:])
        references = evaluation.references[video_id]
        refs = "".join(f"<li>{e(r)}</li>" for r in references)
        rows.append(f'<tr><td class="video"><code>{e(video_id)}</code><br>{frames}</td>'
                    f'<td class="captions"><div class="caption">{e(model.captions[video_id])}</div>'
                    f"{_concepts_html((concepts or {}).get(video_id))}{baselines}"
                    f"<details><summary>{len(references)} references</summary><ol class=\"refs\">{refs}</ol>"
                    "</details></td>"
                    + "".join(f'<td class="num" data-label="{e(m)}">{_fmt(model.per_video[video_id][m])}</td>'
                              for m in metrics)
                    + "</tr>")
    rows.append("</table>")
    return "\n".join(rows)


def _markdown(evaluation: Evaluation, title: str, plot_files: dict[str, str], stats: dict, notes: list[str],
              provenance: Mapping[str, str] | None = None, intervals: Mapping | None = None,
              human: Mapping[str, float] | None = None, method: str = "", caveats: Sequence[str] = ()) -> str:
    def cell(text: str) -> str:
        return " ".join(str(text).split()).replace("|", "\\|")

    metrics = evaluation.metrics
    n = len(evaluation.ids)
    lines = [f"# {cell(title)}", "", *(f"_{cell(note)}_\n" for note in notes)]
    if provenance:
        lines += ["## Run", "", "| | |", "|---|---|", *(f"| {cell(k)} | `{cell(v)}` |" for k, v in provenance.items()),
                  ""]
    lines += [f"## Scores on this run's {n} videos", "", cell(references_sentence(evaluation)), "",
              "| system | videos | " + " | ".join(metrics) + " |", "|---|---:|" + "---:|" * len(metrics)]
    for name, scores in [(s.name, s.corpus) for s in evaluation.systems] + ([(HUMAN, human)] if human else []):
        def shown(m):
            ci = _interval(intervals, name, m)
            return _fmt(scores.get(m)) + (f" ({_fmt(ci[0])}–{_fmt(ci[1])})" if ci else "")
        lines.append(f"| {cell(name)} | {n} | " + " | ".join(shown(m) for m in metrics) + " |")
    lines += ["", *(f"**Caveat:** {cell(c)}\n" for c in caveats), f"_In brackets: {cell(method)}_", "",
              f"## Published results (MSVD test split, {PUBLISHED_MSVD_VIDEOS} videos)", "",
              f"_Other papers' numbers on other videos, for scale only: comparable only when this run covers the "
              f"same {PUBLISHED_MSVD_VIDEOS} videos._", "",
              "| system | videos | " + " | ".join(metrics) + " | source |", "|---|---:|" + "---:|" * len(metrics) + "---|"]
    for p in PUBLISHED_MSVD:
        lines.append(f"| {cell(p['name'])} | {PUBLISHED_MSVD_VIDEOS} | "
                     + " | ".join(_fmt(p["scores"].get(m)) for m in metrics) + f" | {cell(p['source'])} |")
    lines += ["", "## Captions", "", "| system | mean length | distinct words | unique captions | copied from training |",
              "|---|---:|---:|---:|---:|"]
    for name, s in stats.items():
        copied = "–" if s.copied_from_training is None else f"{100 * s.copied_from_training:.1f}%"
        lines.append(f"| {cell(name)} | {s.mean_length:.2f} | {s.vocabulary} | {100 * s.distinct_captions:.1f}% "
                     f"| {copied} |")
    for heading, _, ids in video_sections(evaluation):
        lines += ["", f"## {heading}", "", "| video | prediction | first reference | " + " | ".join(metrics) + " |",
                  "|---|---|---|" + "---:|" * len(metrics)]
        for i in ids:
            lines.append(f"| {cell(i)} | {cell(evaluation.model.captions[i])} | {cell(evaluation.references[i][0])} | "
                         + " | ".join(_fmt(evaluation.model.per_video[i][m]) for m in metrics) + " |")
    lines += ["", "## Plots", ""] + [f"![{key}]({path})" for key, path in plot_files.items()]
    return "\n".join(lines) + "\n"


class ReportProgress:
    """Progress of `report` on stderr, as `caption` draws its bar: one line naming the step (starting
    the scorers, each system scored, each row's intervals, thumbnails, plots) and the time so far."""

    def __init__(self, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(file=sys.stderr, dynamic_ncols=True, bar_format="report: {desc} [{elapsed}]")

    def __call__(self, what: str, done: int = 0, total: int = 0) -> None:
        if self.bar is not None:
            self.bar.set_description_str(f"{what} ({done + 1}/{total})" if total else what)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def write_report(evaluation: Evaluation, out_dir: str | os.PathLike, *, videos: str | os.PathLike | None = None,
                 run: str | os.PathLike | None = None, train_references: Mapping[str, Sequence[str]] | None = None,
                 title: str | None = None, progress: bool | ReportProgress = True,
                 concepts: Mapping[str, dict] | None = None, provenance: Mapping[str, str] | None = None,
                 human: Mapping[str, float] | None = None, scorer=None) -> dict[str, Path]:
    """Write report.html, report.md (+ plots/) and report.json for an evaluation; returns their paths.

    `concepts`: per video, what the backbones' heads recognised (`prediction_concepts`);
    `provenance`: what produced the predictions (`run_provenance`); `human`: the human-agreement
    scores (`human_agreement`); `scorer`: a `Scorer` to compute the intervals with (else one is
    started for them)."""
    out = Path(out_dir)
    title = title or "Video captioning evaluation"
    shown = progress if isinstance(progress, ReportProgress) else ReportProgress(progress)
    notes = _scope_notes(evaluation)
    curves = read_training_curves(run) if run is not None else None  # a wrong --run fails before the intervals
    found = _find_videos(videos, evaluation.ids) if videos is not None else None
    resamples = bootstrap_resamples(len(evaluation.ids))
    try:
        if scorer is None:
            from .metrics import Scorer

            shown("starting the scorers (Java) for the intervals")
            with Scorer(evaluation.metrics) as own_scorer:
                intervals = bootstrap_intervals(evaluation, own_scorer, resamples, human=human is not None,
                                                progress=shown)
        else:
            intervals = bootstrap_intervals(evaluation, scorer, resamples, human=human is not None, progress=shown)
        training_captions = None
        if train_references is not None:
            training_captions = {" ".join(tokenize(c)) for caps in train_references.values() for c in caps}
        strips: dict = {}
        if found is not None:
            if len(found) < len(evaluation.ids):
                notes.append(f"{len(evaluation.ids) - len(found)} of {len(evaluation.ids)} videos not found in "
                             f"{videos}: shown without frames")
            shown("thumbnails")
            strips = thumbnail_strips(found, progress=shown.bar is not None)
        stats = {s.name: caption_stats([s.captions[i] for i in evaluation.ids], training_captions)
                 for s in evaluation.systems}
        stats["references"] = caption_stats([r for i in evaluation.ids for r in evaluation.references[i]],
                                            training_captions)
        shown("plots")
        plots = _plots(evaluation, training_captions, curves)
    finally:
        if shown is not progress:
            shown.close()
    method, caveats = interval_method(resamples), baseline_caveats(evaluation)

    out.mkdir(parents=True, exist_ok=True)
    (out / "plots").mkdir(exist_ok=True)
    plot_files = {}
    for key, png in plots.items():
        (out / "plots" / f"{key}.png").write_bytes(png)
        plot_files[key] = f"plots/{key}.png"
    paths = {"html": out / "report.html", "markdown": out / "report.md", "json": out / "report.json"}
    paths["html"].write_text(_html(evaluation, title, plots, strips, stats, notes, concepts, provenance, intervals,
                                   human, method, caveats), encoding="utf-8")
    paths["markdown"].write_text(_markdown(evaluation, title, plot_files, stats, notes, provenance, intervals, human,
                                           method, caveats), encoding="utf-8")
    if curves is not None:  # JSON has no NaN: an epoch without validation is null
        curves = {k: [None if math.isnan(v) else v for v in values] for k, values in curves.items()}
    report = {"title": title, "provenance": dict(provenance) if provenance else None, **evaluation.to_dict(),
              "references_per_video": reference_counts(evaluation),
              "intervals": {name: {m: list(ci) for m, ci in by_metric.items()} for name, by_metric in intervals.items()},
              "interval_method": method, "bootstrap_resamples": resamples, "caveats": caveats,
              "human_agreement": dict(human) if human else None,
              "published_videos": PUBLISHED_MSVD_VIDEOS,
              "caption_stats": {name: vars(s) for name, s in stats.items()},
              "published": PUBLISHED_MSVD, "training_curves": curves,
              "concepts": {i: concepts[i] for i in evaluation.ids if i in concepts} if concepts else None}
    paths["json"].write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return paths


def report_files(predictions: str | os.PathLike, references: str | os.PathLike, out_dir: str | os.PathLike, *,
                 split: str | None = None, metrics=DEFAULT_METRICS, train_references: str | os.PathLike | None = None,
                 train_split: str | None = None, train_features=None, test_features=None, k: int = 10,
                 videos=None, run=None, title: str | None = None, progress: bool = True) -> dict[str, Path]:
    """Evaluate files (as `captioner evaluate`) and write the report: what `captioner report` runs.

    `progress`: name each step on stderr as it starts (`ReportProgress`)."""
    metrics = parse_metrics(metrics)
    if run is not None:
        read_training_curves(run)  # a wrong --run fails before minutes of scoring
    if videos is not None:
        _find_videos(videos, [])  # so does a missing --videos folder
    predicted = read_predictions(predictions)
    refs = read_references(references, split)
    train_refs = read_references(train_references, train_split) if train_references is not None else None
    shown = ReportProgress(progress)
    try:
        shown("starting the scorers (Java)")
        with Scorer(metrics) as scorer:
            evaluation = evaluate(predicted, refs, metrics=metrics, train_references=train_refs,
                                  train_features=train_features, test_features=test_features, k=k, scorer=scorer,
                                  predictions_name=str(predictions), references_name=str(references), progress=shown)
            shown("human agreement")
            human = human_agreement(evaluation.references, scorer)
            return write_report(evaluation, out_dir, videos=videos, run=run, train_references=train_refs,
                                title=title, progress=shown,
                                concepts=prediction_concepts(predictions, test_features or train_features),
                                provenance=run_provenance(predictions, references, split), human=human, scorer=scorer)
    finally:
        shown.close()
