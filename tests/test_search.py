"""Decoding options (captioner.search): one rule for every caller, and the search's word filter."""

from __future__ import annotations

import numpy as np
import pytest

from captioner.errors import UsageError
from captioner.search import ALTERNATIVES, DEFAULT_DECODING, Decoding, _top, beam_search, check_settings, forbid
from captioner.text import BOS_ID, EOS_ID, PAD_ID, UNK_ID


def test_n_best_follows_the_beam_unless_asked_for():
    assert DEFAULT_DECODING.count == ALTERNATIVES == 3
    assert DEFAULT_DECODING.but(beam=1).count == 1  # the default list shrinks with the beam
    assert DEFAULT_DECODING.but(beam=5).count == 3
    assert DEFAULT_DECODING.but(beam=5, n_best=5).count == 5
    # A list asked for before is not a reason to refuse a smaller beam later: it follows the beam.
    assert DEFAULT_DECODING.but(beam=5, n_best=5).but(beam=2).count == 2


@pytest.mark.parametrize("changes, message", [
    ({"n_best": 5}, "n_best 5 is more than beam 3: beam search finds at most 3 captions; raise beam to 5 or more"),
    ({"beam": 2, "n_best": 3}, "n_best 3 is more than beam 2"),
    ({"beam": 0}, "beam must be at least 1, got 0"),
    ({"n_best": 0}, "n_best must be at least 1, got 0"),
    ({"max_len": 2.5}, "max_len must be at least 1, got 2.5"),
    ({"length_penalty": float("inf")}, "length_penalty must be a number >= 0, got inf"),
    ({"length_penalty": -0.5}, "length_penalty must be a number >= 0, got -0.5"),
])
def test_settings_out_of_range_are_one_usage_error(changes, message):
    with pytest.raises(UsageError, match="^" + message.replace("(", r"\(")):
        DEFAULT_DECODING.but(**changes)


def test_callers_name_the_settings_their_way():
    flags = {"beam": "--beam", "n_best": "--n-best"}
    with pytest.raises(UsageError, match="^--n-best 4 is more than --beam 2: .* raise --beam to 4 or more$"):
        check_settings({"beam": 2, "n_best": 4}, flags)
    with pytest.raises(UsageError, match="^--n-best 4 is more than --beam 3"):  # the model's own beam
        DEFAULT_DECODING.but(n_best=4, names=flags)
    with pytest.raises(UsageError, match="^decoding.beam must be at least 1"):  # a training config's section
        Decoding(beam=0).validate()
    check_settings({"beam": None, "n_best": None, "max_len": None, "length_penalty": None})  # nothing asked for


def test_forbidden_words():
    logp = np.zeros((2, 8), np.float32)
    prev = np.array([5, BOS_ID])
    first = forbid(logp.copy(), prev, no_repeat=True, must_end=False, first=True)
    assert np.isneginf(first[:, [PAD_ID, BOS_ID, UNK_ID, EOS_ID]]).all()  # no empty caption
    assert np.isneginf(first[0, 5]) and np.isfinite(first[1, 5])  # never the same word twice in a row
    later = forbid(logp.copy(), prev, no_repeat=False, must_end=False, first=False)
    assert np.isfinite(later[:, EOS_ID]).all() and np.isfinite(later[0, 5])
    last = forbid(logp.copy(), prev, no_repeat=True, must_end=True, first=False)
    assert np.isfinite(last[:, EOS_ID]).all() and np.isneginf(np.delete(last, EOS_ID, axis=1)).all()


class _Chain:
    """A Step whose next word is all but fixed by the previous one: w is followed by w + 1, until 7 ends."""

    vocab = 9

    def begin(self, feats, sources, copies):
        return None

    def log_probs(self, state, prev):
        logp = np.full((len(prev), self.vocab), -10.0, np.float32)
        logp[:, EOS_ID] = -50.0  # only the chain ever ends before the length limit
        nxt = np.where(prev == BOS_ID, 4, prev + 1)
        logp[np.arange(len(prev)), np.where(nxt > 7, EOS_ID, nxt)] = -0.1
        return logp, state

    def select(self, state, rows):
        return state


def test_the_search_sees_a_decoder_only_through_its_step():
    for beam in (1, 3):
        [[(words, score), *_]] = beam_search(_Chain(), np.zeros((1, 2)), None, beam, max_len=10, n_best=1)
        assert words == [4, 5, 6, 7] and score == pytest.approx(-0.5)
    [[(words, _)]] = beam_search(_Chain(), np.zeros((1, 2)), None, 1, max_len=2)  # the length limit ends it
    assert words == [4, 5]


def test_top_candidates_are_a_stable_sort_s_first():
    """The beam's candidates without sorting the vocabulary: ties (and -inf) in index order, as a
    stable sort of the whole row orders them, so the search's choices never depend on the method."""
    rng = np.random.default_rng(0)
    for _ in range(100):
        values = rng.integers(-4, 4, size=(rng.integers(1, 8), rng.integers(2, 40))).astype(np.float32)
        values[rng.random(values.shape) < 0.3] = -np.inf
        for count in range(1, values.shape[1] + 1):
            assert (_top(values, count) == np.argsort(-values, axis=1, kind="stable")[:, :count]).all()
