"""Caption text: the tokenizer, the vocabulary, and the two rules for a word's other forms.

Captions are scored by the coco-caption metrics, which first run Stanford's PTBTokenizer
(lowercased, punctuation split off, then dropped). Training on the same tokens means the model
emits exactly what the scorer compares; `tokenize` reproduces that tokenizer with regular
expressions so training does not start a Java process, and a test checks that the two agree
on the real MSVD and Flickr8k captions.
"""

from __future__ import annotations

import re
from collections import Counter
from functools import lru_cache
from typing import Iterable, Sequence

import numpy as np

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)
PAD_ID, BOS_ID, EOS_ID, UNK_ID = range(4)

# Tokens that pycocoevalcap's PTBTokenizer removes after tokenising (its PUNCTUATIONS list).
# Its list spells the bracket escapes in upper case while the tokens are lowercased by then,
# so brackets survive as -lrb- etc.; we keep them too, to score what the scorer scores.
_DROPPED = {"''", "'", "``", "`", ".", "?", "!", ",", ":", "-", "--", "...", ";", '"'}
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "{": "-lcb-", "}": "-rcb-", "[": "-lsb-", "]": "-rsb-"}
# PTBTokenizer treats these as spaces (zero-width characters are common in YouTube text).
_INVISIBLE = re.compile("[\ufeff\u200b\u200c\u200d\u2060\u00a0]")
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"',
                         "\u2014": " -- ", "\u2013": " -- "})
_TOKEN = re.compile(r"""
      (?:[a-z]\.){2,}                                          # u.s.  p.m.  a.b.c.
    | (?:mr|mrs|ms|dr|prof|st|jr|sr|etc|vs|inc|ltd|mt|ft|bros)\.(?![^\W_])  # abbreviations
    | [a-z]\.(?=\s)                                             # initials: r. madhavan
    | [#@]?[^\W_]+(?:(?:[-./'_!?]|(?<=\d)[,:](?=\d))[^\W_]+)*  # words, 1,000  3:30  e-mail
    | 'n' | '(?:s|re|ve|ll|d|m|n)(?![^\W_])                     # slip 'n' slide, lady 's
    | \.{2,} | -{2,} | [!?]+                                    # ...  --  !!!  ?!
    | \S                                                       # any other symbol alone
""", re.VERBOSE)
_CONTRACTION = re.compile(r"^(.+?)(n't|'s|'re|'ve|'ll|'d|'m)$")
_SPLIT_WORDS = {"cannot": ("can", "not"), "gonna": ("gon", "na"), "wanna": ("wan", "na"),
                "gotta": ("got", "ta")}


def tokenize(caption: str) -> list[str]:
    """Lowercased PTB tokens without punctuation, as the coco-caption scorers see a caption."""
    text = _INVISIBLE.sub(" ", caption).translate(_QUOTES).lower()
    tokens: list[str] = []
    for tok in _TOKEN.findall(text):
        if tok in _SPLIT_WORDS:
            tokens.extend(_SPLIT_WORDS[tok])
            continue
        if tok.startswith(".."):
            tok = "..."
        elif tok.startswith("--"):
            tok = "--"
        tok = _BRACKETS.get(tok, tok)
        if tok in _DROPPED:
            continue
        match = _CONTRACTION.match(tok)
        tokens.extend(match.groups() if match else (tok,))
    return tokens


def word_forms(word: str) -> tuple[str, ...]:
    """`word` with the singular and plural spellings a word list may hold instead ("dogs": dog;
    "dog": dogs; "dishes": dishe, dish). For looking a word up where it must be spelled as listed
    (class names, a vocabulary); whether two words mean the same is `stem`'s rule."""
    forms = [word, word + "s"]
    if word.endswith("s"):
        forms.append(word[:-1])
    if word.endswith("es"):
        forms.append(word[:-2])
    return tuple(forms)


@lru_cache(maxsize=65536)
def stem(word: str) -> str:
    """The word's Snowball (Porter 2) stem: "slicing", "slices" and "sliced" are one word."""
    return _stemmer().stemWord(word)


@lru_cache(maxsize=1)
def _stemmer():
    # A small pure-Python package that imports in milliseconds (nltk's Porter stemmer takes
    # seconds to import, too long for `caption`).
    import snowballstemmer

    return snowballstemmer.stemmer("english")


class Vocabulary:
    """Words <-> ids. Ids 0-3 are always <pad> <bos> <eos> <unk>; the rest by frequency."""

    def __init__(self, words: Sequence[str]):
        if tuple(words[:4]) != SPECIALS:
            raise ValueError(f"a vocabulary starts with {SPECIALS}")
        self.words = list(words)
        self.index = {w: i for i, w in enumerate(self.words)}
        if len(self.index) != len(self.words):
            raise ValueError("vocabulary words must be unique")

    @classmethod
    def build(cls, token_lists: Iterable[Sequence[str]], min_count: int = 1) -> Vocabulary:
        return cls(SPECIALS).extend(token_lists, min_count)

    def extend(self, token_lists: Iterable[Sequence[str]], min_count: int = 1) -> Vocabulary:
        """A new vocabulary: these words first (ids unchanged), then new frequent words."""
        counts = Counter(tok for tokens in token_lists for tok in tokens)
        # Frequency first, then alphabetical, so the same captions always give the same ids.
        new = sorted((w for w, n in counts.items() if n >= min_count and w not in self.index),
                     key=lambda w: (-counts[w], w))
        return Vocabulary(self.words + new)

    def __len__(self) -> int:
        return len(self.words)

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocabulary) and self.words == other.words

    def encode(self, tokens: Sequence[str]) -> list[int]:
        return [self.index.get(t, UNK_ID) for t in tokens]

    def decode(self, ids: Iterable[int]) -> str:
        """Ids to a caption string: stops at <eos>, leaves out <pad>/<bos>/<unk>."""
        words = []
        for i in ids:
            i = int(i)
            if i == EOS_ID:
                break
            if i > UNK_ID:
                words.append(self.words[i])
        return " ".join(words)

    def encode_batch(self, token_lists: Sequence[Sequence[str]], max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """Pad `<bos> words <eos>` into one int64 array (N, max_len + 2); also the lengths.

        Captions longer than `max_len` words are cut (their <eos> kept), so the model still
        learns to stop.
        """
        out = np.full((len(token_lists), max_len + 2), PAD_ID, dtype=np.int64)
        lengths = np.empty(len(token_lists), dtype=np.int64)
        for row, tokens in enumerate(token_lists):
            ids = [BOS_ID] + self.encode(tokens[:max_len]) + [EOS_ID]
            out[row, : len(ids)] = ids
            lengths[row] = len(ids)
        return out, lengths
