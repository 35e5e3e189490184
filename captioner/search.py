"""Caption search, apart from the model: beam search (greedy with a beam of 1), n-best lists,
the length penalty and the words a caption may never contain, written once for every decoder.

Like whisper's decoding.py (a `TokenDecoder` searching over an `Inference`'s logits), the
search here sees a decoder only through its `Step`: the torch `CaptionModel` and the torch-free
`NumpyDecoder` each supply one, so both find the same captions by construction and a new cell
(a GRU beside the LSTM) needs only a new step. The search runs in numpy (a decoder on a GPU
hands over one (rows, vocab) array of log-probabilities per word).

How to search is a `Decoding`: beam, n-best, length penalty and length limit, checked in one
place (`check_settings`) for the API, the CLI, the server, the pipeline and training configs.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Mapping, Protocol

import numpy as np

from .errors import UsageError
from .text import BOS_ID, EOS_ID, PAD_ID, UNK_ID

# Captions a caption lists when not told how many: the best and two alternatives, or fewer
# when the beam holds fewer.
ALTERNATIVES = 3

# name -> (check, what a value must be)
_RANGES = {
    "beam": (lambda v: _is_int(v) and v >= 1, "at least 1"),
    "n_best": (lambda v: _is_int(v) and v >= 1, "at least 1"),
    "max_len": (lambda v: _is_int(v) and v >= 1, "at least 1"),
    "length_penalty": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                       and v >= 0, "a number >= 0"),
}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_settings(settings: Mapping[str, object], names: Mapping[str, str] | None = None) -> None:
    """Each decoding setting given (None: not given, the model's own is used) in its range, and an
    n-best list no longer than the beam it comes from; otherwise a one-line UsageError.

    `names` says how the caller spells a setting in messages (the CLI's "--n-best", a config's
    "predict.beam_size"); by default the API's names.
    """
    names = names or {}
    for key, value in settings.items():
        if value is not None:
            ok, requirement = _RANGES[key]
            if not ok(value):
                raise UsageError(f"{names.get(key, key)} must be {requirement}, got {value!r}")
    beam, n_best = settings.get("beam"), settings.get("n_best")
    if beam is not None and n_best is not None and n_best > beam:
        beam_name, n_best_name = names.get("beam", "beam"), names.get("n_best", "n_best")
        raise UsageError(f"{n_best_name} {n_best} is more than {beam_name} {beam}: beam search finds at most "
                         f"{beam} captions; raise {beam_name} to {n_best} or more")


@dataclass(frozen=True)
class Decoding:
    """How captions are searched for; also the `decoding` section of a training config."""

    beam: int = 3  # 1: greedy
    # Beam search ranks by log-probability / (words + 1) ** this: 0 favours short, generic captions.
    length_penalty: float = 0.5
    max_len: int = 20  # longest caption in words
    # Captions per input, best first; None: ALTERNATIVES, or the beam if smaller.
    n_best: int | None = None

    @property
    def count(self) -> int:
        """How many captions per input the search returns."""
        return min(ALTERNATIVES, self.beam) if self.n_best is None else self.n_best

    def validate(self) -> None:
        """A one-line UsageError for any value out of range, named as in a training config (whose
        `decoding` section this is: config.validate_config calls it)."""
        check_settings(dataclasses.asdict(self), {name: f"decoding.{name}" for name in _RANGES})

    def but(self, beam: int | None = None, length_penalty: float | None = None, max_len: int | None = None,
            n_best: int | None = None, names: Mapping[str, str] | None = None) -> "Decoding":
        """These settings with the given ones changed (None keeps a setting), checked: an n-best
        list asked for beyond the beam is refused, the default one follows the beam. `names`:
        as in check_settings."""
        changes = {"beam": beam, "length_penalty": length_penalty, "max_len": max_len, "n_best": n_best}
        result = dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})
        if n_best is None and result.n_best is not None and result.n_best > result.beam:
            result = dataclasses.replace(result, n_best=None)  # not asked for now: never a reason to refuse
        check_settings(dataclasses.asdict(result), names)
        return result


DEFAULT_DECODING = Decoding()


# ---------------------------------------------------------------------- the decoder's side
class Step(Protocol):
    """What a decoder supplies to the search; its state is opaque to the search."""

    def begin(self, feats, sources, copies: int):
        """The state before the first word: `copies` rows per input (beams), in input order."""

    def log_probs(self, state, prev: np.ndarray) -> tuple[np.ndarray, object]:
        """(rows, vocab) float32 log-softmax of the next word after `prev` (rows,), and the new state."""

    def select(self, state, rows: np.ndarray):
        """The state of these rows, in this order (beams that survive, reordered)."""


Hypotheses = list[tuple[list[int], float]]  # (word ids without <eos>, score), best first


def forbid(logp: np.ndarray, prev: np.ndarray, no_repeat: bool, must_end: bool, first: bool) -> np.ndarray:
    """Mask (in place) what a caption may never contain next; at the length limit only <eos> is left."""
    logp[:, [PAD_ID, BOS_ID, UNK_ID]] = -np.inf
    if first:  # an empty caption is never an answer, however unsure the model is
        logp[:, EOS_ID] = -np.inf
    if no_repeat:  # "a man is is playing": never the same word twice in a row
        logp[np.arange(len(prev)), prev] = -np.inf
    if must_end:
        eos = logp[:, EOS_ID].copy()
        logp.fill(-np.inf)
        logp[:, EOS_ID] = eos
    return logp


def _score(total: float, words: list[int], length_penalty: float) -> float:
    return total / (len(words) + 1) ** length_penalty


def _next(step: Step, state, prev: np.ndarray, no_repeat: bool, position: int, max_len: int):
    logp, state = step.log_probs(state, prev)
    return forbid(logp, prev, no_repeat, position == max_len, first=position == 0), state


# ---------------------------------------------------------------------- the searches
def search(step: Step, feats, sources, decoding: Decoding, no_repeat: bool = True) -> list[Hypotheses]:
    """Per input, `decoding.count` captions, best first (a beam of 1 is greedy search)."""
    check_settings(dataclasses.asdict(decoding))
    return beam_search(step, feats, sources, decoding.beam, decoding.max_len, decoding.length_penalty,
                       decoding.count, no_repeat)


def beam_search(step: Step, feats, sources, beam_size: int = 1, max_len: int = 20, length_penalty: float = 0.0,
                n_best: int = 1, no_repeat: bool = True) -> list[Hypotheses]:
    """Batched beam search: per input, the n best (word ids, score), best first. A beam of 1 is
    greedy search: the most likely word at every step.

    score = sum of word log-probabilities (with <eos>) / (words + 1) ** length_penalty; a
    penalty of 0 ranks by total probability, 1 by the mean per word (favours longer captions).
    An input stops once `beam_size` captions have ended (fairseq's rule).
    """
    check_settings({"beam": beam_size, "n_best": n_best, "max_len": max_len, "length_penalty": length_penalty})
    batch, k = len(feats), beam_size
    state = step.begin(feats, sources, k)
    prev = np.full(batch * k, BOS_ID, dtype=np.int64)
    history = np.zeros((batch * k, 0), dtype=np.int64)
    # All beams start identical; only the first is alive, or the top k would be k copies.
    scores = np.full((batch, k), -np.inf, dtype=np.float32)
    scores[:, 0] = 0.0
    finished: list[Hypotheses] = [[] for _ in range(batch)]
    done = [False] * batch
    offsets = np.arange(batch)[:, None] * k
    for position in range(max_len + 1):
        logp, state = _next(step, state, prev, no_repeat, position, max_len)
        vocab = logp.shape[1]
        candidates = (scores.reshape(-1, 1) + logp).reshape(batch, k * vocab)
        # 2k candidates: at most k of them end in <eos>, so k live ones always remain.
        top = _top(candidates, min(2 * k, k * vocab))
        top_scores = np.take_along_axis(candidates, top, 1)
        beam, token = top // vocab, top % vocab
        ends = (token == EOS_ID) & np.isfinite(top_scores)
        ends[:, k:] = False  # only endings that rank among the k best count
        for b, j in np.argwhere(ends).tolist():
            if not done[b]:
                words = history[b * k + beam[b, j]].tolist()
                finished[b].append((words, _score(float(top_scores[b, j]), words, length_penalty)))
        live_scores = np.where(token == EOS_ID, np.float32(-np.inf), top_scores)
        pick = _top(live_scores, k)
        scores = np.take_along_axis(live_scores, pick, 1)
        rows = (np.take_along_axis(beam, pick, 1) + offsets).reshape(-1)
        prev = np.take_along_axis(token, pick, 1).reshape(-1)
        history = np.concatenate([history[rows], prev[:, None]], axis=1)
        state = step.select(state, rows)
        done = [d or len(f) >= k for d, f in zip(done, finished)]
        if all(done):
            break
    return [sorted(f, key=lambda hyp: -hyp[1])[:n_best] for f in finished]


def _top(values: np.ndarray, count: int) -> np.ndarray:
    """Indices of the `count` largest per row, largest first; ties keep the lower index first
    (what a stable sort of the whole row gives, without sorting the whole vocabulary)."""
    rows, width = values.shape
    if count >= width:
        return np.argsort(-values, axis=1, kind="stable")[:, :count]
    kth = -np.partition(-values, count - 1, axis=1)[:, count - 1:count]  # each row's count-th largest
    above = values > kth
    ties = values == kth  # of these, the lowest indices fill what `above` leaves
    chosen = above | (ties & (np.cumsum(ties, axis=1) <= count - above.sum(1, keepdims=True)))
    columns = np.nonzero(chosen)[1].reshape(rows, count)
    order = np.argsort(-np.take_along_axis(values, columns, 1), axis=1, kind="stable")
    return np.take_along_axis(columns, order, 1)
