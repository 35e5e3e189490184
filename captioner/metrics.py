"""Caption metrics, computed exactly as coco-caption computes them (through pycocoevalcap 1.2).

    score(predictions, references)            -> {"BLEU-1": ..., "METEOR": ..., "CIDEr": ...}
    score_per_video(predictions, references)  -> Scores(corpus={...}, per_video={id: {...}})
    with Scorer() as scorer: ...               keeps the Java processes alive between calls
    scorer.bootstrap(predictions, references, resamples=1000)   -> {metric: corpus score per resample}

Papers report these numbers, so the scorers themselves are pycocoevalcap's: the Java
PTBTokenizer (Stanford CoreNLP 3.4.1), BLEU with the closest-reference brevity penalty,
METEOR 1.5, ROUGE-L (beta 1.2) and `Cider`, which despite its name is CIDEr-D (clipped
n-gram counts, Gaussian length penalty, x10) with document frequencies taken from the
evaluated references: the number coco-caption reports as "CIDEr". What this module changes
is only how the Java helpers are run, to fix pycocoevalcap's known failures:

- METEOR finds its paraphrase table through the jar's URL, which percent-encodes spaces and
  non-ASCII characters, so it dies ("Broken pipe", "could not convert string to float")
  whenever the install path holds either; we pass the table's path with `-a`.
- Both Java helpers speak a line protocol: a caption holding '\\r' desynchronises METEOR's
  replies (or hangs it), and the tokenizer also breaks lines at '\\v', '\\f', U+0085 and
  U+2028, shifting every later caption onto the wrong video. Whitespace is collapsed first,
  which changes no token. '|||' (METEOR's field separator) is dropped from references as
  pycocoevalcap drops it from hypotheses.
- The tokenizer writes a temporary file into site-packages (fails when it is read-only);
  we feed it through stdin.
- Java under a non-UTF-8 locale cannot open a jar at a non-ASCII path; the helpers get a
  UTF-8 locale.
- METEOR's process is started once, fed in batches, and closed (`close()` or `with`), so no
  java process outlives the command; a dead process becomes a one-line error, not a
  ValueError from an empty read.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import weakref
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from .errors import CaptionerError, UsageError

BLEU_KEYS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4")
METRIC_KEYS = (*BLEU_KEYS, "METEOR", "ROUGE-L", "CIDEr", "SPICE")
DEFAULT_METRICS = ("BLEU", "METEOR", "ROUGE-L", "CIDEr")
JAVA_INSTALL_HINT = "install a Java runtime, e.g. `apt-get install -y default-jre-headless`"

# Spellings users bring from papers and from coco-caption's own output ("Bleu_4", "ROUGE_L").
_ALIASES = {"BLEU": BLEU_KEYS, "METEOR": ("METEOR",), "ROUGE-L": ("ROUGE-L",), "ROUGE": ("ROUGE-L",),
            "CIDER": ("CIDEr",), "CIDER-D": ("CIDEr",), "SPICE": ("SPICE",),
            **{f"BLEU-{n}": (f"BLEU-{n}",) for n in range(1, 5)}}

_METEOR_BATCH = 128  # SCORE lines in flight: their replies (~100 B each) stay far below a pipe buffer


def parse_metrics(metrics: str | Iterable[str]) -> tuple[str, ...]:
    """Expand metric names ("BLEU" -> BLEU-1..4, case and '_'/'-' insensitive) in METRIC_KEYS order."""
    names = metrics.split(",") if isinstance(metrics, str) else list(metrics)
    wanted: set[str] = set()
    for name in names:
        key = name.strip().upper().replace("_", "-")
        if not key:
            continue
        if key not in _ALIASES:
            raise UsageError(f"unknown metric {name.strip()!r}; choose from BLEU, BLEU-1..BLEU-4, "
                             "METEOR, ROUGE-L, CIDEr, SPICE")
        wanted.update(_ALIASES[key])
    if not wanted:
        raise UsageError("no metrics requested")
    return tuple(k for k in METRIC_KEYS if k in wanted)


def _coco_dir() -> Path:
    import pycocoevalcap

    return Path(next(iter(pycocoevalcap.__path__)))


def spice_available() -> bool:
    """SPICE needs Stanford CoreNLP 3.6.0 models that pycocoevalcap would otherwise download."""
    lib = _coco_dir() / "spice" / "lib"
    return (lib / "stanford-corenlp-3.6.0.jar").exists() and (lib / "stanford-corenlp-3.6.0-models.jar").exists()


def _java() -> str:
    java = shutil.which("java")
    if java is None:
        raise CaptionerError("Java not found: coco-caption's PTB tokenizer and METEOR run on Java; "
                             + JAVA_INSTALL_HINT)
    return java


def _java_env() -> dict[str, str]:
    env = dict(os.environ)
    ctype = env.get("LC_ALL") or env.get("LC_CTYPE") or env.get("LANG") or ""
    if "utf-8" not in ctype.lower() and "utf8" not in ctype.lower():
        env["LC_ALL"] = "C.UTF-8"
    return env


def _one_line(caption: str) -> str:
    return " ".join(str(caption).split())


# ----------------------------------------------------------------------------- tokenizer
class PTBTokenizer:
    """pycocoevalcap's PTBTokenizer (same jar, flags and punctuation filter), fed through stdin.

    Tokenization is line by line, so results are cached per caption: references are
    tokenized once however many prediction sets are scored against them.
    """

    def __init__(self):
        self._cache: dict[str, str] = {}

    def tokenize_captions(self, captions: Iterable[str]) -> list[str]:
        from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS, STANFORD_CORENLP_3_4_1_JAR

        captions = [_one_line(c) for c in captions]
        todo = list(dict.fromkeys(c for c in captions if c not in self._cache))
        if todo:
            jar = _coco_dir() / "tokenizer" / STANFORD_CORENLP_3_4_1_JAR
            cmd = [_java(), "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer",
                   "-preserveLines", "-lowerCase", "-encoding", "utf-8"]
            proc = subprocess.run(cmd, input="\n".join(todo) + "\n", capture_output=True,
                                  encoding="utf-8", env=_java_env())
            lines = proc.stdout.split("\n")
            if proc.returncode != 0 or len(lines) < len(todo):
                detail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                raise CaptionerError(f"PTB tokenizer (Java) failed: {detail}")
            punctuation = set(PUNCTUATIONS)
            for caption, line in zip(todo, lines):
                self._cache[caption] = " ".join(w for w in line.rstrip().split(" ") if w not in punctuation)
        return [self._cache[c] for c in captions]

    def tokenize(self, captions_for_id: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
        ids = list(captions_for_id)
        flat = [c for i in ids for c in captions_for_id[i]]
        tokens = iter(self.tokenize_captions(flat))
        return {i: [next(tokens) for _ in captions_for_id[i]] for i in ids}


# ----------------------------------------------------------------------------- METEOR
def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        try:
            process.stdin.close()  # an idle METEOR exits at end of input; one still loading is killed
            process.wait(timeout=2)
        except (OSError, subprocess.TimeoutExpired):
            process.kill()
            process.wait()
    for stream in (process.stdin, process.stdout):
        try:
            stream.close()
        except OSError:
            pass


def _meteor_class():
    from pycocoevalcap.meteor.meteor import METEOR_JAR, Meteor as CocoMeteor

    class Meteor(CocoMeteor):
        """pycocoevalcap's METEOR 1.5 wrapper with the process started, fed and stopped safely."""

        def __init__(self):  # the parent's would start java with a relative jar and no -a
            meteor_dir = _coco_dir() / "meteor"
            self.meteor_cmd = [_java(), "-Xmx2G", "-jar", str(meteor_dir / METEOR_JAR), "-", "-", "-stdio",
                               "-l", "en", "-norm", "-a", str(meteor_dir / "data" / "paraphrase-en.gz")]
            self.lock = threading.Lock()
            self._stderr = tempfile.TemporaryFile()  # a PIPE nobody reads could fill and stall java
            self.meteor_p = subprocess.Popen(self.meteor_cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                             stderr=self._stderr, env=_java_env())
            self._finalizer = weakref.finalize(self, _stop, self.meteor_p)

        def _fail(self) -> CaptionerError:
            self.meteor_p.kill()
            self.meteor_p.wait()
            self._stderr.seek(0)
            lines = self._stderr.read().decode("utf-8", "replace").strip().splitlines()
            detail = next((ln.strip() for ln in lines if "Exception" in ln or "Error" in ln), None)
            return CaptionerError(f"METEOR (Java) stopped: {detail or (lines or ['no output'])[-1]}")

        def _exchange(self, lines: list[str]) -> list[str]:
            try:
                self.meteor_p.stdin.write("".join(f"{line}\n" for line in lines).encode("utf-8"))
                self.meteor_p.stdin.flush()
            except OSError:
                raise self._fail() from None
            replies = [self.meteor_p.stdout.readline().decode("utf-8").strip() for _ in lines]
            if not all(replies):
                raise self._fail()
            return replies

        def statistics(self, gts, res) -> list[str]:
            """METEOR's sufficient statistics of each video's caption against its references."""
            assert gts.keys() == res.keys()
            score_lines = []
            for i in gts:
                assert len(res[i]) == 1
                # '|||' separates fields and a newline ends the command: neither may appear in a caption.
                refs = [_one_line(r.replace("|||", "")) for r in gts[i]]
                hypothesis = _one_line(res[i][0].replace("|||", ""))
                score_lines.append(" ||| ".join(("SCORE", " ||| ".join(refs), hypothesis)))
            with self.lock:
                stats = []
                for start in range(0, len(score_lines), _METEOR_BATCH):
                    stats += self._exchange(score_lines[start:start + _METEOR_BATCH])
            return stats

        def evaluate_statistics(self, stats: list[str]) -> tuple[float, list[float]]:
            """The corpus score (from the summed statistics, as coco-caption's) and each segment's."""
            [(total, each)] = self.evaluate_many([stats])
            return total, each

        def evaluate_many(self, sets: list[list[str]]) -> list[tuple[float, list[float]]]:
            """`evaluate_statistics` of several sets of statistics, in one exchange."""
            # EVAL answers one line per segment, then the corpus score from the summed statistics.
            # The commands are written from a thread: the replies to the first ones could fill the
            # pipe while later ones are still being written.
            failed = []

            def write() -> None:
                try:
                    for stats in sets:
                        self.meteor_p.stdin.write(("EVAL ||| " + " ||| ".join(stats) + "\n").encode("utf-8"))
                    self.meteor_p.stdin.flush()
                except OSError as error:
                    failed.append(error)

            with self.lock:
                writer = threading.Thread(target=write, daemon=True)
                writer.start()
                results = []
                for stats in sets:
                    replies = [self.meteor_p.stdout.readline().decode("utf-8").strip() for _ in range(len(stats) + 1)]
                    if not all(replies):
                        raise self._fail()
                    results.append((float(replies[-1]), [float(r) for r in replies[:-1]]))
                writer.join()
            if failed:
                raise self._fail()
            return results

        def compute_score(self, gts, res):
            return self.evaluate_statistics(self.statistics(gts, res))

        def close(self) -> None:
            self._finalizer()
            self._stderr.close()

        def __del__(self):  # the parent's __del__ blocks on the lock and fails if __init__ did
            pass

    return Meteor


# ----------------------------------------------------------------------------- scoring
@dataclass
class Scores:
    corpus: dict[str, float]
    per_video: dict[str, dict[str, float]] = field(default_factory=dict)


class Scorer:
    """Scores caption sets; holds the METEOR process, so close it (or use `with`)."""

    def __init__(self, metrics: str | Iterable[str] = DEFAULT_METRICS):
        self.metrics = parse_metrics(metrics)
        if "SPICE" in self.metrics and not spice_available():
            print("captioner: SPICE skipped: its Stanford CoreNLP 3.6.0 models are not installed in "
                  f"{_coco_dir() / 'spice' / 'lib'} (they cannot be downloaded here)", file=sys.stderr)
            self.metrics = tuple(m for m in self.metrics if m != "SPICE")
        if not self.metrics:
            raise CaptionerError("no metric left to compute")
        _java()
        self.tokenizer = PTBTokenizer()
        self._meteor = _meteor_class()() if "METEOR" in self.metrics else None

    def __enter__(self) -> "Scorer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._meteor is not None:
            self._meteor.close()
            self._meteor = None

    def score(self, predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> dict[str, float]:
        return self.score_per_video(predictions, references).corpus

    def _tokenized(self, predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]):
        """(ids, references, predictions) in coco-caption's PTB tokens, keyed by str(id)."""
        ids = [str(i) for i in predictions]
        if not ids:
            raise CaptionerError("no predictions to score")
        missing = [i for i in predictions if not references.get(i)]
        if missing:
            raise CaptionerError(f"{len(missing)} predicted ids have no reference captions "
                                 f"(e.g. {missing[0]!r})")
        res = self.tokenizer.tokenize({str(i): [predictions[i]] for i in predictions})
        gts = self.tokenizer.tokenize({str(i): list(references[i]) for i in predictions})
        return ids, gts, res

    def bootstrap(self, predictions: Mapping[str, str], references: Mapping[str, Sequence[str]],
                  resamples: int = 1000, seed: int = 0) -> dict[str, "np.ndarray"]:
        """Each metric's corpus score on `resamples` bootstrap samples of the videos.

        A sample draws len(predictions) videos with replacement (seeded: the same seed and number
        of videos give the same samples, so systems scored on the same ids are compared on the same
        samples) and is scored as coco-caption scores a set holding those videos, a video drawn
        twice counting twice: BLEU from the summed n-gram statistics with the closest-reference
        brevity penalty, METEOR from the summed statistics (by METEOR itself), CIDEr-D with the
        document frequencies of the sample's references, ROUGE-L and SPICE as the mean of the
        videos'. Per-video statistics are computed once; a sample only re-weights them.
        """
        import numpy as np

        ids, gts, res = self._tokenized(predictions, references)
        picks = np.random.default_rng(seed).integers(0, len(ids), size=(resamples, len(ids)))
        weights = np.zeros((resamples, len(ids)))
        np.add.at(weights, (np.arange(resamples)[:, None], picks), 1.0)
        out: dict[str, np.ndarray] = {}
        if any(k in self.metrics for k in BLEU_KEYS):
            bleu = _bleu_resampled(ids, gts, res, weights)
            out.update({key: bleu[:, n] for n, key in enumerate(BLEU_KEYS) if key in self.metrics})
        if "METEOR" in self.metrics:
            stats = self._meteor.statistics(gts, res)
            out["METEOR"] = np.array([total for total, _ in
                                      self._meteor.evaluate_many([[stats[j] for j in row] for row in picks])])
        if "ROUGE-L" in self.metrics:
            from pycocoevalcap.rouge.rouge import Rouge

            _, each = Rouge().compute_score(gts, res)
            out["ROUGE-L"] = weights @ np.asarray(each, dtype=float) / len(ids)
        if "CIDEr" in self.metrics:
            out["CIDEr"] = _cider_resampled(ids, gts, res, weights)
        if "SPICE" in self.metrics:
            from pycocoevalcap.spice.spice import Spice

            _, each = Spice().compute_score(gts, res)
            out["SPICE"] = weights @ np.array([e["All"]["f"] for e in each], dtype=float) / len(ids)
        return {k: out[k] for k in self.metrics}

    def score_per_video(self, predictions: Mapping[str, str],
                        references: Mapping[str, Sequence[str]]) -> Scores:
        """Corpus and per-video scores of `predictions` (one caption per id) against `references`.

        Every predicted id needs at least one reference; references without a prediction are
        ignored. CIDEr's document frequencies come from the scored ids' references, as in
        coco-caption, so a video's CIDEr depends on which other videos are scored with it.
        """
        ids, gts, res = self._tokenized(predictions, references)
        corpus: dict[str, float] = {}
        per_video: dict[str, dict[str, float]] = {i: {} for i in ids}

        def keep(key: str, total, each) -> None:
            corpus[key] = float(total)
            for i, value in zip(ids, each):
                per_video[i][key] = float(value)

        if any(k in self.metrics for k in BLEU_KEYS):
            from pycocoevalcap.bleu.bleu import Bleu

            totals, each = Bleu(4).compute_score(gts, res, verbose=0)
            for n, key in enumerate(BLEU_KEYS):
                if key in self.metrics:
                    keep(key, totals[n], each[n])
        if "METEOR" in self.metrics:
            keep("METEOR", *self._meteor.compute_score(gts, res))
        if "ROUGE-L" in self.metrics:
            from pycocoevalcap.rouge.rouge import Rouge

            keep("ROUGE-L", *Rouge().compute_score(gts, res))
        if "CIDEr" in self.metrics:
            from pycocoevalcap.cider.cider import Cider

            keep("CIDEr", *Cider().compute_score(gts, res))
        if "SPICE" in self.metrics:
            from pycocoevalcap.spice.spice import Spice

            total, each = Spice().compute_score(gts, res)
            keep("SPICE", total, [e["All"]["f"] for e in each])
        return Scores(corpus, per_video)


def score(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]],
          metrics: str | Iterable[str] = DEFAULT_METRICS) -> dict[str, float]:
    """Corpus scores on coco-caption's scale (0-1; CIDEr as computed, typically 0-2)."""
    with Scorer(metrics) as scorer:
        return scorer.score(predictions, references)


def score_per_video(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]],
                    metrics: str | Iterable[str] = DEFAULT_METRICS) -> Scores:
    with Scorer(metrics) as scorer:
        return scorer.score_per_video(predictions, references)


# ----------------------------------------------------------------------------- bootstrap samples
def _bleu_resampled(ids, gts, res, weights):
    """BLEU-1..4 of each weighted sample (rows of `weights`: how often each video is drawn), from
    the per-video statistics pycocoevalcap's BleuScorer pools, with its constants."""
    import numpy as np
    from pycocoevalcap.bleu.bleu_scorer import cook_refs, cook_test

    n = 4
    stats = np.zeros((len(ids), 2 + 2 * n))  # testlen, closest reflen, guess[n], correct[n]
    for row, i in enumerate(ids):
        comps = cook_test(res[i][0], cook_refs(gts[i]), eff="closest")
        stats[row] = [comps["testlen"], comps["reflen"], *comps["guess"], *comps["correct"]]
    pooled = weights @ stats
    small, tiny = 1e-9, 1e-15
    testlen, reflen = pooled[:, 0], pooled[:, 1]
    guess, correct = pooled[:, 2:2 + n], pooled[:, 2 + n:]
    bleus = np.cumprod((correct + tiny) / (guess + small), axis=1) ** (1.0 / np.arange(1, n + 1))
    ratio = (testlen + tiny) / (reflen + small)
    penalty = np.where(ratio < 1, np.exp(1 - 1 / np.maximum(ratio, tiny)), 1.0)
    return bleus * penalty[:, None]


def _cider_resampled(ids, gts, res, weights, chunk: int = 64):
    """pycocoevalcap's CIDEr-D of each weighted sample, document frequencies recomputed per sample.

    With idf weight w_g = log(videos) - log(max(1, df_g)) >= 0, every term of coco's clipped cosine
    is a count product times w_g squared; so each (video, reference, n-gram order) is three sparse
    rows of counts, and a sample's scores are those rows times its vector of w_g squared.
    """
    import numpy as np
    from pycocoevalcap.cider.cider_scorer import precook
    from scipy.sparse import csr_matrix

    order_n, sigma = 4, 6.0
    index: dict[tuple, int] = {}

    def column(gram) -> int:
        return index.setdefault(gram, len(index))

    in_refs = ([], [])  # (video, n-gram) pairs: the n-gram is in one of the video's references
    numerator, ref_norm, hyp_norm = ([], [], []), ([], [], []), ([], [], [])  # (row, column, value)
    penalty, ref_rows, hyp_rows, owner = [], [], [], []
    row = 0
    for v, i in enumerate(ids):
        hyp = precook(res[i][0], order_n)
        hyp_length = sum(c for g, c in hyp.items() if len(g) == 2)  # coco measures length in bigrams
        for gram, count in hyp.items():
            hyp_norm[0].append(v * order_n + len(gram) - 1)
            hyp_norm[1].append(column(gram))
            hyp_norm[2].append(float(count * count))
        seen = set()
        for ref_text in gts[i]:
            ref = precook(ref_text, order_n)
            seen.update(ref)
            ref_length = sum(c for g, c in ref.items() if len(g) == 2)
            penalty.append(np.exp(-((hyp_length - ref_length) ** 2) / (2 * sigma ** 2)))
            for gram, count in ref.items():
                ref_norm[0].append(row + len(gram) - 1)
                ref_norm[1].append(column(gram))
                ref_norm[2].append(float(count * count))
                if gram in hyp:
                    numerator[0].append(row + len(gram) - 1)
                    numerator[1].append(column(gram))
                    numerator[2].append(float(min(hyp[gram], count) * count))
            ref_rows.append(row)
            hyp_rows.append(v * order_n)
            owner.append(v)
            row += order_n
        in_refs[0].extend([v] * len(seen))
        in_refs[1].extend(column(g) for g in seen)
    grams = len(index)
    presence = csr_matrix((np.ones(len(in_refs[0])), in_refs), shape=(len(ids), grams))
    num = csr_matrix((numerator[2], numerator[:2]), shape=(row, grams))
    rnorm = csr_matrix((ref_norm[2], ref_norm[:2]), shape=(row, grams))
    hnorm = csr_matrix((hyp_norm[2], hyp_norm[:2]), shape=(len(ids) * order_n, grams))
    penalty, owner = np.array(penalty), np.array(owner)
    pair_rows = np.array(ref_rows)[:, None] + np.arange(order_n)  # (pairs, orders) rows of num / rnorm
    hyp_pair_rows = np.array(hyp_rows)[:, None] + np.arange(order_n)
    references_per_video = np.bincount(owner, minlength=len(ids)).astype(float)
    owners = csr_matrix((np.ones(len(owner)), (owner, np.arange(len(owner)))), shape=(len(ids), len(owner)))
    log_videos = np.log(float(len(ids)))
    out = np.empty(len(weights))
    for start in range(0, len(weights), chunk):
        w = weights[start:start + chunk]
        idf_squared = (log_videos - np.log(np.maximum(1.0, (presence.T @ w.T)))) ** 2  # (grams, samples)
        numerators = (num @ idf_squared)[pair_rows]  # (pairs, orders, samples)
        norms = np.sqrt((rnorm @ idf_squared)[pair_rows] * (hnorm @ idf_squared)[hyp_pair_rows])
        cosines = np.divide(numerators, norms, out=np.zeros_like(numerators), where=norms != 0)
        per_pair = cosines.sum(axis=1) * penalty[:, None]  # (pairs, samples)
        per_video = (owners @ per_pair) * (10.0 / (order_n * references_per_video[:, None]))
        out[start:start + chunk] = (w * per_video.T).sum(axis=1) / len(ids)
    return out


# ----------------------------------------------------------------------------- training reward
class CiderReward:
    """CIDEr-D of one caption against its video's references, for self-critical training.

    The formula is coco-caption's (`Cider` above: clipped tf-idf n-gram cosines, n = 1..4,
    Gaussian length penalty with sigma 6, x10), but the document frequencies are fixed once
    over all training videos, as Rennie et al. 2017 do: pycocoevalcap derives them from the
    batch it is given, which for a training batch of a few dozen videos makes rare words look
    common and scores noise. Captions are sequences of hashable tokens (word ids are fine).
    With the whole evaluated set as training set it equals pycocoevalcap's CIDEr (tested).
    """

    def __init__(self, references: Mapping[object, Sequence[Sequence]], n: int = 4, sigma: float = 6.0):
        self.n, self.sigma = n, sigma
        counted = {vid: [self._ngram_counts(ref) for ref in refs] for vid, refs in references.items()}
        self.document_frequency: Counter = Counter()
        for refs in counted.values():
            self.document_frequency.update({g for ref in refs for g in ref})
        self.log_videos = math.log(max(1, len(counted)))
        self.references = {vid: [self._vector(ref) for ref in refs] for vid, refs in counted.items()}

    def _ngram_counts(self, tokens: Sequence) -> dict:
        tokens = tuple(tokens)
        return Counter(tokens[i:i + k] for k in range(1, self.n + 1) for i in range(len(tokens) - k + 1))

    def _vector(self, counts: dict):
        vec = [dict() for _ in range(self.n)]
        norm = [0.0] * self.n
        length = 0
        for gram, tf in counts.items():
            order = len(gram) - 1
            weight = tf * (self.log_videos - math.log(max(1.0, self.document_frequency.get(gram, 0.0))))
            vec[order][gram] = weight
            norm[order] += weight * weight
            if order == 1:  # coco-caption measures length in bigrams
                length += tf
        return vec, [math.sqrt(x) for x in norm], length

    def __call__(self, video, tokens: Sequence) -> float:
        vec, norm, length = self._vector(self._ngram_counts(tokens))
        refs = self.references[video]
        total = 0.0
        for ref_vec, ref_norm, ref_length in refs:
            penalty = math.exp(-((length - ref_length) ** 2) / (2 * self.sigma ** 2))
            for order in range(self.n):
                ref_order = ref_vec[order]
                overlap = sum(min(w, ref_order.get(g, 0.0)) * ref_order.get(g, 0.0) for g, w in vec[order].items())
                if norm[order] and ref_norm[order]:
                    overlap /= norm[order] * ref_norm[order]
                total += overlap * penalty
        return 10.0 * total / (self.n * len(refs))
