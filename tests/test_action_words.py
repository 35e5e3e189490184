"""The Kinetics class -> caption words table learned from VATEX captions of labelled clips."""

from __future__ import annotations

import json

from captioner.action_words import ASSET, learn_action_words, write_action_words
from captioner.concepts import class_words

from conftest import DATA


def kinetics_400_classes():
    from torchvision.models.video import R3D_18_Weights

    return list(R3D_18_Weights.KINETICS400_V1.meta["categories"])  # I3D's classes, in its order


def test_words_over_represented_in_a_class_captions_are_learned():
    by_action = {"abseiling": {"v1": ["a man climbs down a rock wall on a rope", "a man on a rope"],
                               "v2": ["a woman goes down a rope on a wall", "a rope and a wall"]},
                 "petting cat": {"v3": ["a man is petting a cat", "a cat is being petted"],
                                 "v4": ["a woman pets her cat", "a cat sits"]}}
    pool = [c for videos in by_action.values() for caps in videos.values() for c in caps] + ["a man is talking"] * 40
    learned = learn_action_words(by_action, pool)
    assert learned["abseiling"][:2] == ["rope", "wall"]
    assert learned["petting cat"][0] == "cat"
    assert not {"a", "man", "down", "on"} & set(learned["abseiling"])  # function words and people never


def test_the_shipped_table_is_what_the_real_pairs_teach(tmp_path):
    table = write_action_words(DATA, kinetics_400_classes(), tmp_path / "words.json")
    assert json.loads(ASSET.read_text())["words"] == table["words"]
    words = table["words"]
    assert len(words) == 368  # the Kinetics-400 classes Kinetics-600 names alike
    assert "rope" in words["abseiling"] and "pineapple" in words["cutting pineapple"]
    assert "hair" in words["getting a haircut"]


def test_class_words_put_hand_words_first_then_learned_ones():
    assert class_words("motorcycling", "actions", 0)[:3] == ["riding", "motorcycle", "motorbike"]
    assert "road" in class_words("motorcycling", "actions", 0)
    assert class_words("abseiling", "actions", 0)[0] == "climbing" and "rope" in class_words("abseiling", "actions", 0)
    assert class_words("grooming dog", "actions", 0).count("dog") == 1
    assert "dogs" not in class_words("grooming dog", "actions", 0)  # one word, not its plural beside it
