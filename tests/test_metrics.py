"""The scores are coco-caption's, exactly; the Java helpers survive hostile input and paths."""

from __future__ import annotations

import shutil

import pytest

from captioner.errors import CaptionerError
from captioner.metrics import BLEU_KEYS, Scorer, parse_metrics, score_per_video
from eval_helpers import java_children, msvd_test_refs, scorer  # noqa: F401  (fixtures)

N_VIDEOS = 40


@pytest.fixture(scope="module")
def real_case(msvd_test_refs):
    """Real MSVD test captions: the first caption of each video predicts it, the rest are references."""
    ids = list(msvd_test_refs)[:N_VIDEOS]
    # A neighbour's caption for every third video, so that scores spread between good and bad.
    predictions = {i: msvd_test_refs[ids[(n + 1) % N_VIDEOS] if n % 3 == 0 else i][0] for n, i in enumerate(ids)}
    references = {i: msvd_test_refs[i][1:] for i in ids}
    return predictions, references


def _coco_direct(predictions, references):
    """What pycocoevalcap's own classes return, called as COCOEvalCap calls them."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: [{"caption": c} for c in refs] for i, refs in references.items()})
    res = tokenizer.tokenize({i: [{"caption": predictions[i]}] for i in references})
    corpus, per_video = {}, {}
    bleu, bleu_each = Bleu(4).compute_score(gts, res, verbose=0)
    for n, key in enumerate(BLEU_KEYS):
        corpus[key], per_video[key] = bleu[n], bleu_each[n]
    meteor = Meteor()
    try:
        corpus["METEOR"], per_video["METEOR"] = meteor.compute_score(gts, res)
    finally:
        meteor.meteor_p.stdin.close()
        meteor.meteor_p.kill()
        meteor.meteor_p.wait()
    corpus["ROUGE-L"], per_video["ROUGE-L"] = Rouge().compute_score(gts, res)
    corpus["CIDEr"], per_video["CIDEr"] = Cider().compute_score(gts, res)
    return corpus, per_video


def test_scores_equal_pycocoevalcap(real_case, scorer):
    predictions, references = real_case
    ours = scorer.score_per_video(predictions, references)
    corpus, per_video = _coco_direct(predictions, references)
    assert set(ours.corpus) == {*BLEU_KEYS, "METEOR", "ROUGE-L", "CIDEr"}
    for key in corpus:
        assert ours.corpus[key] == corpus[key], key  # exactly: same tokens, same scorers
        assert [ours.per_video[i][key] for i in references] == [float(v) for v in per_video[key]], key
    # Sanity on the case itself: borrowed captions score lower than the videos' own.
    own = [i for n, i in enumerate(references) if n % 3]
    borrowed = [i for n, i in enumerate(references) if n % 3 == 0]
    mean = lambda ids: sum(ours.per_video[i]["CIDEr"] for i in ids) / len(ids)  # noqa: E731
    assert mean(own) > 2 * mean(borrowed)
    assert 0 < ours.corpus["METEOR"] < 1 and ours.corpus["CIDEr"] > 0


def test_bootstrap_resamples_are_scored_as_coco_scores_a_set(real_case, scorer):
    """Each bootstrap sample is the corpus score pycocoevalcap gives the sample itself (a video drawn
    twice in it twice): BLEU and METEOR pooled, CIDEr-D with the sample's document frequencies."""
    import numpy as np

    predictions, references = real_case
    samples = scorer.bootstrap(predictions, references, resamples=6, seed=3)
    assert set(samples) == {*BLEU_KEYS, "METEOR", "ROUGE-L", "CIDEr"} and all(len(v) == 6 for v in samples.values())
    ids = list(predictions)
    picks = np.random.default_rng(3).integers(0, len(ids), size=(6, len(ids)))
    for row in (0, 5):
        drawn = [ids[j] for j in picks[row]]
        assert len(set(drawn)) < len(drawn)  # some video drawn more than once
        named = [f"{video}#{k}" for k, video in enumerate(drawn)]
        corpus, _ = _coco_direct({n: predictions[v] for n, v in zip(named, drawn)},
                                 {n: references[v] for n, v in zip(named, drawn)})
        for key, value in corpus.items():
            assert samples[key][row] == pytest.approx(value, rel=1e-9, abs=1e-12), (key, row)
    # Systems scored on the same ids get the same samples, so their intervals compare.
    other = scorer.bootstrap({i: "a man is talking" for i in ids}, references, resamples=6, seed=3)
    assert not np.allclose(other["CIDEr"], samples["CIDEr"])
    assert scorer.bootstrap(predictions, references, resamples=6, seed=3)["CIDEr"].tolist() == \
        samples["CIDEr"].tolist()


def test_nltk_corpus_bleu_agrees_on_the_same_tokens(real_case, scorer):
    """nltk's corpus BLEU on coco's PTB tokens.

    Both use the closest reference length for the brevity penalty (ties to the shorter one), so
    the scores agree to rounding whenever every hypothesis has at least n tokens. They differ
    only where a hypothesis is shorter than n: nltk counts it as one n-gram (its modified
    precision divides by max(1, count)), coco as zero and adds 1e-9 / 1e-15 epsilons instead
    of smoothing, which moves BLEU-4 on 40 videos by about 1e-4; we allow 1e-3.
    """
    from nltk.translate.bleu_score import corpus_bleu

    predictions, references = real_case
    ids = list(references)
    hyps = dict(zip(ids, scorer.tokenizer.tokenize_captions(predictions[i] for i in ids)))
    refs = scorer.tokenizer.tokenize(references)
    ours = scorer.score(predictions, references)
    shortest = min(len(hyps[i].split()) for i in ids)
    for n, key in enumerate(BLEU_KEYS, 1):
        theirs = corpus_bleu([[r.split() for r in refs[i]] for i in ids], [hyps[i].split() for i in ids],
                             weights=(1 / n,) * n)
        tolerance = 1e-9 if n <= shortest else 1e-3
        assert ours[key] == pytest.approx(theirs, abs=tolerance), key


def test_metric_names_and_subsets(real_case, scorer):
    assert parse_metrics("bleu, CIDEr") == (*BLEU_KEYS, "CIDEr")
    assert parse_metrics(["Bleu_4", "ROUGE_L", "meteor"]) == ("BLEU-4", "METEOR", "ROUGE-L")
    with pytest.raises(CaptionerError, match="unknown metric 'BLUE'"):
        parse_metrics("BLUE")
    predictions, references = real_case
    with Scorer("BLEU-2,CIDEr") as subset:  # no METEOR: no METEOR process
        assert subset._meteor is None
        scores = subset.score(predictions, references)
    full = scorer.score(predictions, references)
    assert scores == {"BLEU-2": full["BLEU-2"], "CIDEr": full["CIDEr"]}


def test_hostile_captions_keep_their_videos(scorer):
    """Line breaks of every kind (the tokenizer and METEOR are line protocols), METEOR's '|||'
    field separator, non-ASCII and empty captions: each video keeps its own scores."""
    references = {"v1": ["a man is playing a guitar", "someone plays the guitar"],
                  "v2": ["a café owner is pouring coffee", "un homme verse du café"],
                  "v3": ["a cat is sleeping", "the cat ||| sleeps on a sofa"],
                  "v4": ["日本語 の テスト", "a test in japanese"]}
    hostile = {"v1": "a man\ris playing\x85 a\u2028guitar", "v2": "a café owner\r\nis pouring\x0bcoffee",
               "v3": "", "v4": "日本語 の\nテスト"}
    clean = {"v1": "a man is playing a guitar", "v2": "a café owner is pouring coffee", "v3": "",
             "v4": "日本語 の テスト"}
    got = scorer.score_per_video(hostile, references)
    want = scorer.score_per_video(clean, references)
    assert got.per_video == want.per_video and got.corpus == want.corpus
    assert got.per_video["v1"]["BLEU-4"] == pytest.approx(1.0) and got.per_video["v3"]["CIDEr"] == 0
    assert got.per_video["v2"]["METEOR"] > 0.9 and got.per_video["v4"]["METEOR"] > 0.9


def test_scorer_closes_meteor_and_errors_are_one_line(monkeypatch, capsys):
    before = set(java_children())
    with Scorer("METEOR"):  # closed while METEOR is still loading; after scoring: see test_evaluate
        assert len(set(java_children()) - before) == 1
    assert set(java_children()) == before
    with pytest.raises(CaptionerError, match="no reference captions"):
        score_per_video({"v": "a dog"}, {"w": ["a dog"]}, metrics="BLEU")
    Scorer(["SPICE", "BLEU-1"]).close()  # models absent here: one line, and BLEU still works
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "SPICE skipped" in err
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(CaptionerError, match="apt-get install -y default-jre-headless"):
        Scorer("BLEU")


def test_training_reward_is_coco_cider_with_fixed_document_frequencies(real_case):
    from pycocoevalcap.cider.cider import Cider

    from captioner.metrics import CiderReward
    from captioner.text import tokenize

    predictions, references = real_case
    gts = {i: [" ".join(tokenize(c)) for c in refs] for i, refs in references.items()}
    res = {i: [" ".join(tokenize(predictions[i]))] for i in references}
    _, coco = Cider().compute_score(gts, res)
    reward = CiderReward({i: [c.split() for c in caps] for i, caps in gts.items()})
    ours = [reward(i, res[i][0].split()) for i in references]
    assert ours == pytest.approx([float(v) for v in coco], abs=1e-12)
    # Word ids work as tokens; the document frequencies stay those of the whole set, so a
    # video scored on its own keeps its score (coco's scorer would recompute them from one video).
    vocab = {w: n for n, w in enumerate(sorted({w for caps in gts.values() for c in caps for w in c.split()}))}
    first = next(iter(references))
    by_id = CiderReward({i: [[vocab[w] for w in c.split()] for c in caps] for i, caps in gts.items()})
    assert by_id(first, [vocab.get(w, -1) for w in res[first][0].split()]) == pytest.approx(ours[0], abs=1e-12)
    assert Cider().compute_score({first: gts[first]}, {first: res[first]})[0] != pytest.approx(ours[0])
