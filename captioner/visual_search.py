"""What a video looks like, in the sentence-embedding space the library searches (numpy only).

A library's captions are often wrong ("a man is speaking" for a man styling his hair), and a
query compared with wrong captions misses. So the search also compares the query with what the
backbones recognised: two unit 384-d vectors per video in all-MiniLM-L6-v2's space, made from the
class probabilities of the default model's features (ImageNet objects, Kinetics-400 actions):

  learned   a ridge-regression map from the square-rooted, standardised class probabilities
            to the mean MiniLM embedding of a video's captions, trained on the 1,127 MSVD
            train-split videos the caption model knows only by their captions (their
            probabilities derived from the captions and corrupted as the real heads err;
            captioner/training_set.py), never on the clips the benchmark queries
            (scripts/train_visual_search.py);
  concepts  zero-shot: per head, the top-k classes' MiniLM(class name) weighted by p ** power,
            unit-normalised, the heads added.

A query's visual score for a set of videos is z(cos(query, learned)) + z(cos(query, concepts)),
z over the videos scored; `captioner.library` adds it to its text score, before and inside the
caption-model rerank, with the weights stored beside the map (chosen on the dev clips' queries:
docs/library.md). The map (assets/visual_search.npz, float16, 2 MB) is tied to the features it
was trained on (backbone and feature size); other features get no visual score.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

MAP_FILE = Path(__file__).resolve().parent / "assets" / "visual_search.npz"


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def zscore(values) -> np.ndarray:
    """(v - mean) / std over the values given; zeros when they are all equal (or there are none)."""
    values = np.asarray(values, dtype=np.float64)
    spread = values.std() if values.size else 0.0
    return (values - values.mean()) / spread if spread > 0 else np.zeros_like(values)


@dataclass(frozen=True)
class VisualMap:
    backbone: str  # the features it reads: this backbone's, of this size
    feature_dim: int
    prob_start: int  # where the class probabilities start and end in a feature vector
    prob_end: int
    weights: np.ndarray  # (prob_end - prob_start, 384): the ridge map, standardisation folded in
    bias: np.ndarray  # (384,)
    heads: tuple  # ((start, end, (classes, 384) class-name embeddings), ...)
    top_k: int
    power: float
    pre_weight: float  # of z(visual) beside z(text score), before the rerank
    rerank_weight: float  # of z(visual) inside the rerank

    @classmethod
    def load(cls, path: str | Path = MAP_FILE) -> "VisualMap":
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            heads = tuple((h["start"], h["end"], data[f"class_emb_{h['kind']}"].astype(np.float32))
                          for h in meta["heads"])
            return cls(meta["backbone"], int(meta["feature_dim"]), int(meta["prob_start"]), int(meta["prob_end"]),
                       data["W"].astype(np.float32), data["b"].astype(np.float32), heads,
                       int(meta["zeroshot"]["k"]), float(meta["zeroshot"]["power"]),
                       float(meta["fusion"]["pre_weight"]), float(meta["fusion"]["post_weight"]))

    def reads(self, backbone: str | None, feature_dim: int | None) -> bool:
        """Whether features of this backbone and size are the ones the map was trained on."""
        return backbone == self.backbone and feature_dim == self.feature_dim

    def video_vectors(self, features: np.ndarray) -> np.ndarray:
        """(n, 2, 384): each video's learned and concept vectors, from its pooled features."""
        features = np.atleast_2d(np.asarray(features, dtype=np.float32))
        # In row blocks: a library's first search makes these for every video (10,000 at once),
        # and each block's (rows, classes) weights stay small.
        return np.concatenate([self._block_vectors(features[start:start + 2048])
                               for start in range(0, len(features), 2048)] or [np.zeros((0, 2, 384), np.float32)])

    def _block_vectors(self, features: np.ndarray) -> np.ndarray:
        probabilities = np.clip(features[:, self.prob_start:self.prob_end], 0, None)
        learned = _unit(np.sqrt(probabilities) @ self.weights + self.bias)
        concepts = np.zeros_like(learned)
        for start, end, class_vectors in self.heads:
            p = np.clip(features[:, start:end], 0, None)
            p = np.sqrt(p) if self.power == 0.5 else p ** np.float32(self.power)
            top = np.argpartition(-p, self.top_k - 1, axis=1)[:, :self.top_k]
            # Each video's top-k classes' weights, the rest zero: one product with the class-name
            # embeddings instead of gathering k of them per video.
            weights = np.zeros_like(p)
            np.put_along_axis(weights, top, np.take_along_axis(p, top, axis=1), axis=1)
            concepts += _unit(weights @ class_vectors)  # a photo's action head: zeros, adds nothing
        return np.stack([learned, _unit(concepts)], axis=1).astype(np.float32)

    @staticmethod
    def scores(query_vector: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        """Each video's visual score for a query (its unit MiniLM vector), z over these videos."""
        cosines = np.asarray(vectors, dtype=np.float32) @ np.asarray(query_vector, dtype=np.float32)
        return zscore(cosines[:, 0]) + zscore(cosines[:, 1])


@lru_cache(maxsize=1)
def shipped_map() -> VisualMap | None:
    """The map that ships with the package; None when the file is missing or unreadable."""
    try:
        return VisualMap.load(MAP_FILE)
    except (OSError, ValueError, KeyError):
        return None
