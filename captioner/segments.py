"""Steady timed captions: windows of one shot agree unless what they show changes.

`captioner caption --segments` pools each window of a video on its own. Four sample points of a
few seconds are a noisy view of a shot, and the decoder turns small differences into unrelated
captions ("slicing meat / making a pizza / talking" over one continuous shot of peeling a
papaya). So before decoding, each window's vector is pulled towards its shot: the windows are
cut into shots where neighbouring windows' appearance features stop looking alike
(`shot_starts`), and within a shot each window's vector becomes a mix of its neighbourhood and
the whole shot (`smooth_windows`). After decoding, neighbours of one shot whose captions say the
same content words are given one caption (`merge_same_meaning`), so subtitles show one cue.

`flicker` measures the result: distinct captions per minute.
"""

from __future__ import annotations

import numpy as np

from .text import stem

# Neighbouring windows whose appearance features are less alike than this (cosine) start a new
# shot. Measured on the MSVD clips with video: neighbouring 2-s windows of one shot score
# 0.8-1.0; a cut to other footage scores lower.
SHOT_CUT_COSINE = 0.75
# A window keeps this much of its own neighbourhood (itself and the windows next to it); the rest
# is the mean of its shot. Chosen on 11 MSVD train-split clips of 10-30 s in 2-s windows with the
# default model: 0.5 left 29 distinct captions of 51, 0.25 left 22 (MODEL_CARD.md).
OWN_WEIGHT = 0.25
NEIGHBOUR_WEIGHTS = (0.25, 0.5, 0.25)
# Words that say nothing about a caption's content when deciding whether two captions mean the same.
_FUNCTION_WORDS = frozenset("""a an the is are was were be being of on in at to with and or for from by
    into onto over under up down out off his her their its it this that there some something someone""".split())


def shot_starts(appearance: np.ndarray, threshold: float = SHOT_CUT_COSINE) -> list[int]:
    """Indices of the windows that start a shot (always 0), from per-window appearance vectors."""
    if len(appearance) == 0:
        return []
    unit = appearance / np.maximum(np.linalg.norm(appearance, axis=1, keepdims=True), 1e-12)
    similar = (unit[1:] * unit[:-1]).sum(axis=1)
    return [0] + [k + 1 for k, cosine in enumerate(similar) if cosine < threshold]


def smooth_windows(pooled: np.ndarray, starts: list[int], own_weight: float = OWN_WEIGHT) -> np.ndarray:
    """Each window's vector pulled towards its shot: own_weight x (itself and its neighbours,
    weighted NEIGHBOUR_WEIGHTS, within the shot) + the rest x the shot's mean. A shot of one
    window keeps its vector."""
    pooled = np.asarray(pooled, dtype=np.float32)
    smoothed = np.empty_like(pooled)
    bounds = list(starts) + [len(pooled)]
    for first, end in zip(bounds[:-1], bounds[1:]):
        shot = pooled[first:end]
        shot_mean = shot.mean(axis=0)
        for k in range(len(shot)):
            rows = [(j, w) for j, w in zip(range(k - 1, k + 2), NEIGHBOUR_WEIGHTS) if 0 <= j < len(shot)]
            local = sum(w * shot[j] for j, w in rows) / sum(w for _, w in rows)
            smoothed[first + k] = own_weight * local + (1 - own_weight) * shot_mean
    return smoothed


def content_words(caption: str) -> frozenset[str]:
    """A caption's words that carry its meaning, by their stems ("dogs" = "dog", "slices" = "slicing")."""
    return frozenset(stem(word) for word in caption.split() if word not in _FUNCTION_WORDS)


def same_meaning(first: str, second: str) -> bool:
    """Two captions say the same when one's content words hold the other's ("a man is slicing
    a tomato" and "a man is slicing tomatoes")."""
    a, b = content_words(first), content_words(second)
    return bool(a and b) and (a <= b or b <= a)


def merge_same_meaning(captions: list[tuple[str, float]], starts: list[int]) -> list[tuple[str, float]]:
    """(caption, score) per window, where neighbours of one shot that say the same take the
    better-scored caption of their run: one cue on screen, not two wordings flickering."""
    result = list(captions)
    shot_of = np.searchsorted(np.asarray(starts), np.arange(len(captions)), side="right")
    run_start = 0
    for k in range(1, len(captions) + 1):
        if k < len(captions) and shot_of[k] == shot_of[k - 1] and same_meaning(captions[k][0], captions[run_start][0]):
            continue
        best = max(range(run_start, k), key=lambda j: captions[j][1])
        for j in range(run_start, k):
            result[j] = (captions[best][0], captions[j][1])
        run_start = k
    return result


def flicker(captions: list[str], seconds: float) -> float:
    """Distinct captions per minute of video (the issue's measure of unsteady segments)."""
    if not captions or seconds <= 0:
        return 0.0
    return len(set(captions)) * 60.0 / seconds
