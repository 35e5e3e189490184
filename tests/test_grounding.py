"""Grounding: head support of caption words, hallucinated words, reranking, generic and copied shares."""

from __future__ import annotations

import numpy as np

from captioner.concepts import Head
from captioner.grounding import (agreement, content_words, copied_share, generic_share, hallucinated_words,
                                 head_support, rerank)
from captioner.predict import Hypothesis

HEADS = [Head("objects", 0, ("library", "kangaroo", "tabby, tabby cat")),
         Head("actions", 3, ("getting a haircut", "feeding birds", "cutting pineapple"))]


def _vector(objects, actions):
    return np.array(objects + actions, dtype=np.float32)


def test_support_comes_from_the_most_probable_class_standing_for_a_word():
    support = head_support(_vector([0.26, 0.05, 0.0], [0.20, 0.0, 0.7]), HEADS)
    assert abs(support["librari"] - 0.26) < 1e-6  # words are known by their stems
    assert abs(support["slice"] - 0.7) < 1e-6  # "cutting pineapple" stands for slicing too
    assert "kangaroo" in support and support["kangaroo"] < 0.1


def test_hallucinated_words_are_content_words_nobody_backs():
    support = head_support(_vector([0.26, 0.05, 0.0], [0.20, 0.0, 0.0]), HEADS)
    refs = ["a teacher is talking to students", "a woman teaches a class"]
    assert content_words("a woman is feeding a kangaroo") == ["feeding", "kangaroo"]
    assert hallucinated_words("a woman is feeding a kangaroo", refs, support) == ["feeding", "kangaroo"]
    assert hallucinated_words("a woman is talking in a library", refs, support) == []  # library 0.26
    assert hallucinated_words("a woman is teaching students", refs, support) == []  # the references say so


def test_rerank_prefers_the_caption_the_heads_back_among_likely_ones():
    support = head_support(_vector([0.0, 0.0, 0.0], [0.0, 0.0, 0.9]), HEADS)
    nbest = [Hypothesis("a man is slicing bread", -1.00), Hypothesis("a man is slicing a pineapple", -1.10),
             Hypothesis("a man is playing guitar", -1.05)]
    assert agreement("a man is slicing a pineapple", support) > agreement("a man is slicing bread", support)
    assert [h.caption for h in rerank(nbest, support, 0)] == [h.caption for h in nbest]
    reranked = rerank(nbest, support, 1.0)
    assert reranked[0].caption == "a man is slicing a pineapple" and reranked[0].score == -1.10
    # A far less likely caption stays behind however well the heads back it.
    assert rerank([nbest[0], Hypothesis("a pineapple", -9.0)], support, 1.0)[0] == nbest[0]


def test_generic_and_copied_shares():
    corpus = ["a man is talking"] * 5 + ["a man is playing a guitar"] * 3 + ["a cat is eating"]
    assert generic_share(["a man is talking", "a dog runs"], corpus, top=1) == 0.5
    assert copied_share(["A cat is eating.", "a dog runs"], corpus) == 0.5
