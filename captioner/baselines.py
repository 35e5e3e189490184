"""Baselines that need no trained model, scored beside it so its numbers mean something.

- `constant_caption`: the most frequent training caption, given to every video. It shows how
  far the metrics reward saying something generic ("a man is playing a guitar").
- `nearest_neighbour_captions`: retrieval in the style of Devlin et al. 2015, "Exploring
  Nearest Neighbor Approaches for Image Captioning" (arXiv:1505.04467): take the k training
  videos closest to the test video (cosine of pooled features), gather all their captions and
  return the consensus caption, the one with the highest mean similarity to the others. Like
  the paper we measure similarity with CIDEr's n-gram tf-idf cosine (idf over training
  videos, n = 1..4, averaged over n); unlike coco-caption's CIDEr-D it has no length penalty
  or clipping, which only matter when scoring against references, not for ranking.
- `concept_retrieval_captions`: the same consensus caption, of the one training video whose
  captions name the objects and actions the test video's classifier heads recognise.
"""

from __future__ import annotations

from collections import Counter
from typing import Mapping, Sequence

import numpy as np

from .errors import CaptionerError, UsageError
from .text import tokenize

NGRAM_ORDERS = (1, 2, 3, 4)


def _normal(caption: str) -> str:
    return " ".join(tokenize(caption))


def constant_caption(train_references: Mapping[str, Sequence[str]]) -> str:
    """The most frequent training caption (as scored: lowercased, PTB tokens, no punctuation).

    Ties go to the caption seen first, so the result depends only on the file.
    """
    counts = Counter(c for caps in train_references.values() for c in map(_normal, caps) if c)
    if not counts:
        raise CaptionerError("the training references hold no captions")
    return counts.most_common(1)[0][0]


def _ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


class _ConsensusRanker:
    """Tf-idf n-gram vectors of the training captions; picks a candidate set's consensus."""

    def __init__(self, train_ids: list[str], train_references: Mapping[str, Sequence[str]]):
        from scipy.sparse import csr_matrix

        self.captions: dict[str, list[str]] = {i: [c for c in map(_normal, train_references[i]) if c]
                                               for i in train_ids}
        tokens = {i: [c.split() for c in caps] for i, caps in self.captions.items()}
        self.rows: dict[str, list[int]] = {}
        document_frequency: Counter = Counter()
        for i in train_ids:
            document_frequency.update({g for t in tokens[i] for n in NGRAM_ORDERS for g in _ngrams(t, n)})
        index = {g: k for k, g in enumerate(document_frequency)}
        idf = np.log(max(len(train_ids), 1)) - np.log(np.array([document_frequency[g] for g in index] or [1.0]))
        # One L2-normalised tf-idf vector per caption and n-gram order, stacked side by side
        # and scaled so that a dot product is the mean of the per-order cosines.
        data, cols, indptr = [], [], [0]
        for i in train_ids:
            self.rows[i] = list(range(len(indptr) - 1, len(indptr) - 1 + len(tokens[i])))
            for t in tokens[i]:
                for n in NGRAM_ORDERS:
                    counts = Counter(_ngrams(t, n))
                    weights = np.array([c * idf[index[g]] for g, c in counts.items()])
                    norm = np.linalg.norm(weights)
                    if norm > 0:
                        data.extend(weights / norm / np.sqrt(len(NGRAM_ORDERS)))
                        cols.extend(index[g] for g in counts)
                indptr.append(len(data))
        self.matrix = csr_matrix((data, cols, indptr), shape=(len(indptr) - 1, max(len(index), 1)))

    def consensus(self, neighbour_ids: Sequence[str]) -> str:
        rows = [r for i in neighbour_ids for r in self.rows[i]]
        texts = [c for i in neighbour_ids for c in self.captions[i]]
        if len(rows) == 1:
            return texts[0]
        vectors = self.matrix[rows]
        similarity = (vectors @ vectors.T).toarray()
        mean_to_others = (similarity.sum(axis=1) - similarity.diagonal()) / (len(rows) - 1)
        return texts[int(np.argmax(mean_to_others))]  # ties: the nearest video's caption wins


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    matrix = np.asarray(matrix, dtype=np.float64)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms > 0, norms, 1.0)


def retrieval_pool(train_store, train_references: Mapping[str, Sequence[str]]) -> list[str]:
    """The training videos nearest-neighbour retrieval draws from: those with features and captions."""
    stored = set(train_store.ids())
    return [i for i in train_references if i in stored and any(_normal(c) for c in train_references[i])]


def caption_pool(train_references: Mapping[str, Sequence[str]]) -> list[str]:
    """The training videos concept retrieval draws from: every one with a caption."""
    return [i for i in train_references if any(_normal(c) for c in train_references[i])]


def nearest_neighbour_captions(train_store, train_references: Mapping[str, Sequence[str]], test_store,
                               test_ids: Sequence[str], k: int = 10) -> dict[str, str]:
    """Consensus caption among the k training videos nearest to each test video.

    train_store / test_store: feature stores (`captioner.open_features`), possibly the same one.
    Only training videos that have both features and captions take part.
    """
    if k < 1:
        raise UsageError(f"k must be at least 1, got {k}")
    train_ids = retrieval_pool(train_store, train_references)
    if not train_ids:
        raise CaptionerError("no training video has both captions and features", train_store.path)
    available = set(test_store.ids())
    missing = [i for i in test_ids if i not in available]
    if missing:
        raise CaptionerError(f"{len(missing)} of {len(test_ids)} evaluated videos have no features here "
                             f"(e.g. {missing[0]!r})", test_store.path)
    train_backbone = (train_store.provenance or {}).get("backbone")
    test_backbone = (test_store.provenance or {}).get("backbone")
    if train_backbone and test_backbone and train_backbone != test_backbone:
        raise CaptionerError(f"training features come from {train_backbone!r} but test features from "
                             f"{test_backbone!r}; nearest neighbours need the same backbone", test_store.path)
    train = _unit_rows(train_store.pooled_matrix(train_ids)[1])
    test = _unit_rows(test_store.pooled_matrix(list(test_ids))[1])
    if train.shape[1] != test.shape[1]:
        raise CaptionerError(f"feature sizes differ: {train.shape[1]} (training) vs {test.shape[1]} (test)",
                             test_store.path)
    ranker = _ConsensusRanker(train_ids, train_references)
    k = min(k, len(train_ids))
    similarity = test @ train.T
    captions = {}
    for row, video_id in enumerate(test_ids):
        nearest = np.argpartition(-similarity[row], k - 1)[:k]
        nearest = nearest[np.argsort(-similarity[row, nearest], kind="stable")]
        captions[video_id] = ranker.consensus([train_ids[j] for j in nearest])
    return captions


def concept_retrieval_captions(train_references: Mapping[str, Sequence[str]], test_store,
                               test_ids: Sequence[str]) -> dict[str, str]:
    """The consensus caption of the training video whose captions best name what the test
    video's classifier heads see.

    Needs a test store of a concept backbone (`captioner.concepts`), but no training features:
    every training video's concepts are derived from its captions, so the whole caption corpus
    takes part (1,200 MSVD videos, though few have video here). Similarity is the cosine of
    the heads' probabilities, averaged over heads.
    """
    from .concepts import caption_probabilities, heads

    concept_heads = heads(test_store.provenance)
    if not concept_heads:
        raise CaptionerError("the concept-retrieval baseline needs features of a concept backbone "
                             "(e.g. efficientnet_lite2_concepts+i3d_concepts)", test_store.path)
    train_ids = caption_pool(train_references)
    if not train_ids:
        raise CaptionerError("the training references hold no captions")
    test = test_store.pooled_matrix(list(test_ids))[1]
    similarity = np.zeros((len(test_ids), len(train_ids)))
    for head in concept_heads:
        train = np.stack([caption_probabilities([tokenize(c) for c in train_references[i]], head)
                          for i in train_ids])
        similarity += _unit_rows(test[:, head.start:head.end]) @ _unit_rows(train).T / len(concept_heads)
    ranker = _ConsensusRanker(train_ids, train_references)
    return {video_id: ranker.consensus([train_ids[int(np.argmax(similarity[row]))]])
            for row, video_id in enumerate(test_ids)}
