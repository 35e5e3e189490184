"""Steady timed captions: shots from appearance, smoothing within a shot, same-meaning merges."""

from __future__ import annotations

import numpy as np
import pytest

from captioner.segments import content_words, flicker, merge_same_meaning, same_meaning, shot_starts, smooth_windows


def test_a_cut_starts_a_shot_and_a_steady_shot_does_not():
    rng = np.random.default_rng(0)
    first, second = rng.normal(size=64), rng.normal(size=64)
    windows = np.stack([first + 0.1 * rng.normal(size=64) for _ in range(4)]
                       + [second + 0.1 * rng.normal(size=64) for _ in range(3)])
    assert shot_starts(windows) == [0, 4]
    assert shot_starts(windows[:4]) == [0]
    assert shot_starts(np.zeros((0, 64))) == []


def test_smoothing_pulls_windows_towards_their_shot_and_never_across_a_cut():
    windows = np.array([[0.0], [0.0], [3.0], [0.0], [10.0], [10.0]], dtype=np.float32)
    smoothed = smooth_windows(windows, [0, 4], own_weight=0.5)
    # The odd window of the first shot is pulled halfway to the shot (mean 0.75), its neighbours
    # a little; the second shot is untouched by the first.
    assert smoothed[2, 0] == pytest.approx(0.5 * (0.25 * 0 + 0.5 * 3 + 0.25 * 0) + 0.5 * 0.75)
    assert 0 < smoothed[1, 0] < smoothed[2, 0]
    np.testing.assert_allclose(smoothed[4:], [[10.0], [10.0]])
    np.testing.assert_allclose(smooth_windows(windows[:1], [0]), windows[:1])  # one window keeps its vector


def test_neighbours_that_say_the_same_share_the_better_caption():
    assert content_words("a man is slicing tomatoes") == content_words("a man slices a tomato") == {"man", "slice", "tomato"}
    assert same_meaning("a man is slicing a tomato", "a man is slicing tomatoes")
    assert same_meaning("a man is slicing", "a man is slicing a tomato")
    assert not same_meaning("a man is slicing a tomato", "a woman is dancing")
    captions = [("a man is slicing a tomato", -1.0), ("a man is slicing tomatoes", -0.5),
                ("a woman is dancing", -0.7), ("a man is slicing a tomato", -0.9)]
    merged = merge_same_meaning(captions, [0])
    assert [c for c, _ in merged] == ["a man is slicing tomatoes"] * 2 + ["a woman is dancing",
                                                                          "a man is slicing a tomato"]
    assert [s for _, s in merged] == [-1.0, -0.5, -0.7, -0.9]  # each window keeps its own score
    # Across a cut nothing is merged.
    assert [c for c, _ in merge_same_meaning(captions[:2], [0, 1])] == [captions[0][0], captions[1][0]]


def test_flicker_counts_distinct_captions_per_minute():
    assert flicker(["a", "b", "a", "a"], 30.0) == pytest.approx(4.0)
    assert flicker([], 30.0) == 0.0


def test_a_single_shot_clip_gets_one_caption_or_near_identical_ones():
    """A 17-s single shot of a woman cutting vegetables: captioned window by window, the default
    model said 7 different things in 2-s windows (measured); steadied, one or two that agree."""
    from captioner.caption import Captioner, segment_windows
    from captioner.writers import merge_repeats
    from captioner.video import probe

    from conftest import MSVD_CLIPS

    clip = MSVD_CLIPS / "04Gt01vatkk_248_265.avi"
    captioner = Captioner.load("default")
    result = captioner.caption(clip, segments=2)
    captions = [s.caption for s in result.segments]
    assert len(captions) == len(segment_windows(probe(clip).duration, 2)) >= 8
    assert len(set(captions)) <= 2
    assert len(merge_repeats(result.segments)) <= 2
