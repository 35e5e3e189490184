"""Which caption words each Kinetics action class stands for, learned from real pairs.

VATEX's validation videos are Kinetics-600 clips whose action class is known, each with 5
English captions: 14,050 pairs of "what I3D's label space says" and "what people write". For a
class, a word stands for it when the class's captions use it far more often than VATEX captions
at large: the words are ranked by (share of the class's captions using the word) x log(that
share / the share among all VATEX captions), a pointwise-mutual-information score weighted by
how often the word is used. "abseiling" -> rope, wall, rock, climbing; "getting a haircut" ->
hair, cut, chair.

The table for I3D's Kinetics-400 classes (those whose name is also a Kinetics-600 class) ships
as `assets/action_words.json`, written by `write_action_words` (`python3 -m captioner.action_words`),
and backs the hand table in `concepts.py`: a class's words are its hand-written ones, or its
own name's, followed by the learned ones.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from pathlib import Path
from typing import Iterable, Mapping

from .concepts import LEARNED_ACTION_WORDS as ASSET
WORDS_PER_CLASS = 4
# A learned word must be in this share of the class's captions, of at least this many videos,
# and this many times more common there than in all captions.
MIN_SHARE = 0.2
MIN_VIDEOS = 2
MIN_LIFT = 3.0
# Words over-represented in a class's captions that still name no action or object: manner,
# place and function words ("slowly", "down", "using", "sitting").
FILLERS = frozenset("""is are be being was an the a it its 's he she they them their this that there these
    those who which while then as so very also again around about into onto down up over under out off
    through across along together each other another one two three several many some few
    slowly quickly fast carefully while front back side top next near inside outside using uses use
    sitting standing stands sits showing shows show video camera shown how way different various
    different way first then begins starts start group having going behind routine four five time""".split())


def learn_action_words(by_action: Mapping[str, Mapping[str, list[str]]], all_captions: Iterable[str],
                       k: int = WORDS_PER_CLASS) -> dict[str, list[str]]:
    """{action: up to k words, most telling first} from {action: {video: captions}} and the
    whole caption pool the shares are compared against."""
    from .concepts import STOPWORDS
    from .text import tokenize

    pool = Counter()
    total = 0
    for caption in all_captions:
        pool.update(set(tokenize(caption)))
        total += 1
    if total == 0:
        raise ValueError("no captions to compare the classes' captions against")
    words = {}
    for action, videos in by_action.items():
        uses, videos_using = Counter(), Counter()
        count = 0
        for captions in videos.values():
            seen = set()
            for caption in captions:
                tokens = set(tokenize(caption))
                uses.update(tokens)
                seen |= tokens
                count += 1
            videos_using.update(seen)
        scores = {}
        for word, used in uses.items():
            share, overall = used / count, pool[word] / total
            if (share >= MIN_SHARE and videos_using[word] >= MIN_VIDEOS and overall > 0
                    and share / overall >= MIN_LIFT and word.isalpha() and len(word) > 1
                    and word not in STOPWORDS and word not in FILLERS):
                scores[word] = share * math.log(share / overall)
        words[action] = sorted(scores, key=lambda w: (-scores[w], w))[:k]
    return words


def write_action_words(data: str | os.PathLike, classes: list[str], out: str | os.PathLike = ASSET) -> dict:
    """Learn the table from `data` (../shared/data: vatex/, kinetics/) for `classes` (I3D's
    Kinetics-400 names; those Kinetics-600 lacks get no entry) and write it as JSON."""
    from .atomic import atomic_write
    from .corpora import load_kinetics_labels, load_vatex, vatex_by_action

    data = Path(data)
    val = load_vatex(data / "vatex" / "val.en")
    public_test = load_vatex(data / "vatex" / "public_test.en")
    joined = vatex_by_action(val, load_kinetics_labels(data / "kinetics" / "kinetics-600_val.csv"))
    learned = learn_action_words({c: joined.by_action[c] for c in classes if c in joined.by_action},
                                 (c for corpus in (val, public_test) for caps in corpus.values() for c in caps))
    table = {"source": "VATEX val captions joined to Kinetics-600 val labels; shares against VATEX val + "
                       "public_test captions (captioner/action_words.py)",
             "words": learned}
    atomic_write(Path(out), json.dumps(table, indent=1, sort_keys=True) + "\n")
    return table


if __name__ == "__main__":
    import sys

    from torchvision.models.video import R3D_18_Weights

    root = Path(__file__).resolve().parent.parent
    table = write_action_words(sys.argv[1] if len(sys.argv) > 1 else root.parent / "shared" / "data",
                               list(R3D_18_Weights.KINETICS400_V1.meta["categories"]))
    print(f"{ASSET}: {len(table['words'])} classes")
