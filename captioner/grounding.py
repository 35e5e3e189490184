"""How far a caption says what the heads recognise: support, hallucinated words, reranking.

A concept model's vector holds what its classifier heads recognise (`concepts.py`). Each class
stands for caption words (`concepts.class_words`: "cutting pineapple" -> cutting, slicing,
pineapple, knife, ...); a word is *supported* by a head as strongly as the most probable class
that stands for it (`head_support`). Content words are compared by their Snowball (Porter 2) stems, so
"slicing" is supported by "slices" and "cut" by "cutting".

- `hallucinated_words`: the content words a caption asserts that no reference and no
  confident head supports ("feeding a kangaroo" for a teacher in a classroom) - the measure of
  specific false captions.
- `rerank`: the n-best list of the beam ordered by the decoder's score plus a weight times the
  caption's concept agreement (the mean support of its content words): of captions the decoder
  finds about as likely, the one the heads back comes first, and a generic one ("a man is
  talking", no content word but its verb) beats a specific one the heads do not back.
- `generic_share` and `copied_share`: how often captions are the corpus's most frequent
  sentences, or any training sentence verbatim.
"""

from __future__ import annotations

from collections import Counter
from functools import lru_cache
from typing import Iterable, Mapping, Sequence

import numpy as np

from .concepts import STOPWORDS, Head, class_words
from .text import stem, tokenize

# How much concept agreement counts against the decoder's score when `captioner caption`
# reranks its n-best list (chosen on the MSVD dev clips; MODEL_CARD.md).
RERANK_WEIGHT = 0.0
# Heads are trusted from this probability on ("library 0.26" supports "library"; a class at
# 0.05 is one guess among many).
CONFIDENT = 0.2
# Words any caption may use without a head or a reference backing them: function words and
# generic subjects, and the verbs that say nothing specific.
GENERIC = frozenset("""is are was were be being has have it its this that there some something someone
    person people man men woman women boy boys girl girls lady guy guys kid kids child children baby
    player players group crowd one two three other another front back top side inside outside
    while then very also together each doing does do playing plays play talking talks talk
    speaking speaks standing stands sitting sits walking walks looking looks""".split()) | STOPWORDS


def content_words(caption: str) -> list[str]:
    """The words of a caption that assert something specific (objects, actions, places)."""
    return [w for w in tokenize(caption) if w not in GENERIC and w.isalpha() and len(w) > 1]


@lru_cache(maxsize=8)
def _class_stems(kind: str, classes: tuple[str, ...]) -> tuple[frozenset[str], ...]:
    return tuple(frozenset(stem(w) for w in class_words(name, kind, index)) for index, name in enumerate(classes))


def head_support(vector: np.ndarray, concept_heads: Sequence[Head]) -> dict[str, float]:
    """Stem -> the probability of the most probable class standing for it, over every head."""
    support: dict[str, float] = {}
    for head in concept_heads:
        probs = np.asarray(vector[head.start:head.end], dtype=np.float64)
        stems = _class_stems(head.kind, head.classes)
        for index in np.flatnonzero(probs >= 0.01):
            for s in stems[index]:
                support[s] = max(support.get(s, 0.0), float(probs[index]))
    return support


def hallucinated_words(caption: str, references: Iterable[str], support: Mapping[str, float],
                       confident: float = CONFIDENT) -> list[str]:
    """Content words of `caption` that no reference uses and no head supports with `confident`."""
    said = {stem(w) for ref in references for w in tokenize(ref)}
    return [w for w in content_words(caption) if stem(w) not in said and support.get(stem(w), 0.0) < confident]


def agreement(caption: str, support: Mapping[str, float]) -> float:
    """Mean head support of a caption's content words (0 for a caption without any)."""
    words = content_words(caption)
    return float(np.mean([support.get(stem(w), 0.0) for w in words])) if words else 0.0


def rerank(nbest: Sequence, support: Mapping[str, float], weight: float) -> list:
    """The n-best hypotheses (caption, score) ordered by score + weight x concept agreement;
    each keeps its own score. weight 0 keeps the beam's order."""
    if weight == 0 or len(nbest) < 2:
        return list(nbest)
    keyed = [(hyp.score + weight * agreement(hyp.caption, support), -k, hyp) for k, hyp in enumerate(nbest)]
    return [hyp for *_, hyp in sorted(keyed, key=lambda item: (item[0], item[1]), reverse=True)]


def generic_share(captions: Iterable[str], corpus: Iterable[str], top: int = 10) -> float:
    """Share of `captions` that are among the `top` most frequent sentences of `corpus`."""
    frequent = {c for c, _ in Counter(" ".join(tokenize(c)) for c in corpus).most_common(top)}
    captions = [" ".join(tokenize(c)) for c in captions]
    return sum(c in frequent for c in captions) / len(captions) if captions else 0.0


def copied_share(captions: Iterable[str], corpus: Iterable[str]) -> float:
    """Share of `captions` found word for word among the sentences of `corpus`."""
    known = {" ".join(tokenize(c)) for c in corpus}
    captions = [" ".join(tokenize(c)) for c in captions]
    return sum(c in known for c in captions) / len(captions) if captions else 0.0
