"""Concepts: what the backbones' classifier heads recognise, in the words captions use.

A concept backbone (`backbones/concept_backbone.py`) appends class probabilities to a video's vector:
ImageNet objects from EfficientNet-Lite, Kinetics-400 actions from I3D. This module knows
where they sit in the vector (`heads`), which caption words each class name stands for
(`class_words`: "motorcycling" -> riding, motorcycle, road; hand-written
and learned from VATEX's captions of Kinetics clips, `action_words.py`), the top classes of a video for people
to read (`top_concepts`), and how to give a video that has only captions the probabilities
the heads would have produced (`caption_probabilities`, `corrupt`): the MSVD corpus has
captions for 1,200 training videos but the video of few, and this is how the decoder learns
to put concepts into words without them.

Numpy only: the caption path uses it without importing torch.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from .text import word_forms

# Words that say nothing about which class a caption describes: function words, and words
# that class names use but nearly every caption has ("a man is ...", "white").
STOPWORDS = frozenset("""a an the of or and with on in at to up down out off for from by into over through
    its his her their some something someone person people doing thing things other using
    man men woman women boy girl lady guy baby child white black green red blue yellow brown grey
    gray orange pink purple little small big large common giant eater""".split())
# A class whose name has more words counts as fully described by a caption with this many of them.
WORDS_FOR_A_MATCH = 2

# Kinetics classes whose own words are not what people write ("motorcycling": "riding a motorcycle").
ACTION_WORDS = {
    "motorcycling": "riding motorcycle motorbike bike",
    "skateboarding": "skateboarding riding skateboard",
    "snowboarding": "snowboarding snow board",
    "surfing water": "surfing wave board",
    "breakdancing": "dancing",
    "krumping": "dancing",
    "zumba": "dancing exercising",
    "belly dancing": "belly dancing",
    "tap dancing": "dancing",
    "barbequing": "cooking grilling",
    "bartending": "making drink mixing",
    "jogging": "running jogging",
    "biking through snow": "riding bike snow",
    "riding a bike": "riding bike bicycle",
    "riding mountain bike": "riding bike bicycle",
    "riding unicycle": "riding unicycle",
    "driving car": "driving car",
    "driving tractor": "driving tractor",
    "petting cat": "petting cat",
    "petting animal (not cat)": "petting animal",
    "grooming dog": "grooming dog",
    "walking the dog": "walking dog",
    "training dog": "training dog",
    "feeding birds": "feeding birds",
    "shuffling cards": "shuffling cards",
    "playing cards": "playing cards",
    "making a sandwich": "making sandwich bread",
    "making pizza": "making pizza",
    "cooking egg": "cooking egg",
    "frying vegetables": "frying cooking vegetables",
    "scrambling eggs": "scrambling eggs cooking",
    "peeling potatoes": "peeling potato",
    "cutting watermelon": "cutting slicing watermelon",
    "cutting pineapple": "cutting slicing pineapple",
    "chopping wood": "chopping wood",
    "deadlifting": "lifting weights",
    "bench pressing": "lifting weights",
    "clean and jerk": "lifting weights",
    "snatch weight lifting": "lifting weights",
    "squat": "exercising squat",
    "situp": "exercising",
    "push up": "push ups exercising",
    "pull ups": "pull ups exercising",
    "yoga": "yoga exercising",
    "sailing": "sailing boat",
    "jetskiing": "riding jet ski water",
    "water skiing": "skiing water",
    "skiing (not slalom or crosscountry)": "skiing snow",
    "tobogganing": "sledding snow",
    "swimming backstroke": "swimming",
    "swimming breast stroke": "swimming",
    "swimming butterfly stroke": "swimming",
    "playing guitar": "playing guitar",
    "strumming guitar": "playing guitar",
    "tapping guitar": "playing guitar",
    "playing drums": "playing drums",
    "drumming fingers": "drumming fingers",
    "playing keyboard": "playing piano keyboard",
    "playing piano": "playing piano",
    "singing": "singing",
    "beatboxing": "singing",
    "busking": "playing singing",
    "applauding": "clapping",
    "texting": "phone typing",
    "answering questions": "talking",
    "testifying": "talking",
    "news anchoring": "talking news",
    "auctioning": "talking",
    "slacklining": "walking rope",
    "dribbling basketball": "playing basketball dribbling",
    "dunking basketball": "basketball dunking",
    "shooting basketball": "shooting basketball",
    "playing basketball": "playing basketball",
    "kicking soccer ball": "kicking ball soccer",
    "juggling soccer ball": "ball soccer",
    "tossing coin": "coin",
    "parkour": "jumping running",
    "somersaulting": "flipping",
    "cartwheeling": "flipping",
    "gymnastics tumbling": "flipping gymnastics",
    "trapezing": "swinging",
    "riding or walking with horse": "riding horse",
    "riding camel": "riding camel",
    "riding elephant": "riding elephant",
    "riding scooter": "riding scooter",
    "bowling": "bowling ball",
    "archery": "shooting arrow bow",
    "abseiling": "climbing rope",
    "rock climbing": "climbing rock",
    "ice climbing": "climbing ice",
    "climbing tree": "climbing tree",
    "hoverboarding": "hoverboard",
    "tai chi": "exercising",
}

# Families of ImageNet classes (by index in the standard ILSVRC-2012 order) and the word
# people use for any member: a caption says "dog", not "Blenheim spaniel".
OBJECT_FAMILIES = (
    ((0, 6), "fish"), ((7, 24), "bird"), ((33, 37), "turtle"), ((38, 48), "lizard"), ((52, 68), "snake"),
    ((80, 100), "bird"), ((127, 146), "bird"), ((151, 268), "dog"), ((281, 285), "cat"),
    ((294, 297), "bear"), ((330, 332), "rabbit"), ((365, 382), "monkey"), ((389, 397), "fish"),
)


FAMILY_WORDS = frozenset(word for _, word in OBJECT_FAMILIES)

# What people write about each Kinetics class, learned from real pairs (`action_words.py` writes it).
LEARNED_ACTION_WORDS = Path(__file__).resolve().parent / "assets" / "action_words.json"


@lru_cache(maxsize=1)
def learned_action_words() -> dict[str, list[str]]:
    """{Kinetics-400 class: learned words} (empty if the asset is missing)."""
    try:
        return json.loads(LEARNED_ACTION_WORDS.read_text(encoding="utf-8"))["words"]
    except FileNotFoundError:
        return {}


@dataclass(frozen=True)
class Head:
    """One classifier's probabilities in a video vector: vector[start:start + len(classes)]."""
    kind: str  # "objects" (ImageNet) or "actions" (Kinetics)
    start: int
    classes: tuple[str, ...]

    @property
    def end(self) -> int:
        return self.start + len(self.classes)


def heads(provenance: dict | None) -> list[Head]:
    """The concept heads of a store's or checkpoint's feature provenance (none for plain features)."""
    provenance = provenance or {}
    members = provenance.get("members") or [provenance]
    found, offset = [], 0
    for member in members:
        concepts = member.get("concepts")
        if concepts:
            found.append(Head(concepts["kind"], offset + int(concepts["offset"]), tuple(concepts["classes"])))
        offset += int(member.get("feature_dim", 0))
    return found


def appearance_mask(feature_dim: int, concept_heads: list[Head]) -> np.ndarray:
    """True where a vector holds features rather than class probabilities."""
    mask = np.ones(feature_dim, dtype=bool)
    for head in concept_heads:
        mask[head.start:head.end] = False
    return mask


def display_name(class_name: str) -> str:
    """ImageNet lists synonyms ("tabby, tabby cat"): people read the first."""
    return class_name.split(",")[0].strip()


def class_words(class_name: str, kind: str, index: int) -> list[str]:
    """The caption words a class stands for, most specific first, without repeats."""
    if kind == "actions":
        # The hand-written words or the name's own, then what people write about the class
        # (learned from VATEX captions of Kinetics clips, `action_words.py`).
        text = ACTION_WORDS.get(class_name, class_name) + " " + " ".join(learned_action_words().get(class_name, ()))
    else:
        # The first names and the lower-case synonyms: skip Latin ("Felis concolor") and rare
        # capitalised variants, which no caption uses.
        synonyms = [s.strip() for s in class_name.split(",")]
        text = " ".join([synonyms[0]] + [s for s in synonyms[1:3] if s[:1].islower()])
        text += "".join(f" {word}" for (first, last), word in OBJECT_FAMILIES if first <= index <= last)
    words = []
    for word in re.findall(r"[a-z]+", text.lower()):
        # "dogs" beside "dog" would count as two words named where a caption says one.
        if word not in STOPWORDS and len(word) > 1 and not _forms([word]) & set(words):
            words.append(word)
    return words


def known_form(word: str, known) -> str | None:
    """`word` as the vocabulary spells it: itself, or its singular or plural."""
    for form in (word, word + "s", word[:-1] if word.endswith("s") else None, word + "es"):
        if form and form in known:
            return form
    return None


def class_word_table(concept_heads: list[Head], known) -> list[list[str]]:
    """Per class of every head, in vector order: its words that `known` (a vocabulary) holds."""
    table = []
    for head in concept_heads:
        for index, name in enumerate(head.classes):
            forms = [known_form(w, known) for w in class_words(name, head.kind, index)]
            table.append(list(dict.fromkeys(f for f in forms if f)))
    return table


def top_concepts(vector: np.ndarray, concept_heads: list[Head], k: int = 5) -> dict[str, list[dict]]:
    """Each head's k most probable classes in a pooled vector: {"actions": [{"name", "p"}], ...}."""
    result = {}
    for head in concept_heads:
        probs = np.asarray(vector[head.start:head.end], dtype=np.float64)
        if probs.sum() <= 0:  # a still image has no actions
            result[head.kind] = []
            continue
        order = np.argsort(-probs, kind="stable")[:k]
        result[head.kind] = [{"name": display_name(head.classes[i]), "p": round(float(probs[i]), 4)}
                             for i in order]
    return result


# ------------------------------------------------------------ videos that have only captions
def caption_probabilities(captions: list[list[str]], head: Head, sharpness: float = 2.0) -> np.ndarray:
    """What `head` would say of a video that these tokenised captions describe.

    A class scores the mean, over captions, of how much of it each caption names (all of its
    words, or WORDS_FOR_A_MATCH of them for longer names: its words are often alternatives,
    "riding motorcycle motorbike bike"); a family word ("dog") names every member of the family
    (118 breeds), so the belief spreads over look-alikes as a real head's does. Scores are
    sharpened and normalised like a softmax. A video no class matches gets all zeros: `corrupt`
    then fills in what the head says of unrelated footage.
    """
    table = _match_table(head)
    named = np.zeros((len(captions), len(table.words)))
    for row, caption in enumerate(captions):
        for word in _forms(caption):
            column = table.column.get(word)
            if column is not None:
                named[row, column] = 1.0
    share = np.minimum(1.0, (named @ table.own) / table.needed)
    family_named = (named @ table.family) > 0
    share = np.where((share == 0) & family_named, 1.0, share)  # "a cat": any cat
    scores = share.mean(axis=0) ** sharpness if len(captions) else np.zeros(len(head.classes))
    return scores / scores.sum() if scores.sum() > 0 else scores


@dataclass
class _MatchTable:
    words: list[str]
    column: dict[str, int]
    own: np.ndarray  # (words, classes): the class's own words
    needed: np.ndarray  # (classes,): how many of them make a full match (inf: none to match)
    family: np.ndarray  # (words, classes): the family word of classes in a family


_MATCH_TABLES: dict[tuple, _MatchTable] = {}


def _match_table(head: Head) -> _MatchTable:
    key = (head.kind, head.classes)
    if key not in _MATCH_TABLES:
        per_class = []
        for index, name in enumerate(head.classes):
            words = class_words(name, head.kind, index)
            family = [word for (first, last), word in OBJECT_FAMILIES if first <= index <= last] \
                if head.kind == "objects" else []
            # A family word names the family: "cat" in "Madagascar cat" (a lemur) is no evidence.
            own = [w for w in words if w not in FAMILY_WORDS or head.kind == "actions"]
            per_class.append((own, family))
        words = sorted({w for own, family in per_class for w in own + family})
        column = {w: i for i, w in enumerate(words)}
        own_matrix = np.zeros((len(words), len(per_class)))
        family_matrix = np.zeros((len(words), len(per_class)))
        needed = np.full(len(per_class), np.inf)
        for index, (own, family) in enumerate(per_class):
            for w in own:
                own_matrix[column[w], index] = 1.0
            for w in family:
                family_matrix[column[w], index] = 1.0
            if own:
                needed[index] = min(len(own), WORDS_FOR_A_MATCH)
        _MATCH_TABLES[key] = _MatchTable(words, column, own_matrix, needed, family_matrix)
    return _MATCH_TABLES[key]


def _forms(caption: list[str]) -> set[str]:
    """A caption's words with their singular and plural forms, as `known_form` matches them."""
    return {form for word in caption for form in word_forms(word)}


def corrupt(clean: np.ndarray, real_outputs: np.ndarray, rng: np.random.Generator,
            noise: tuple[float, float] = (0.3, 0.8), shares: np.ndarray | None = None) -> np.ndarray:
    """Mix caption-derived probabilities with a real head's output on other footage.

    Real heads err by putting much of their mass on a wrong but confident class ("cutting
    pineapple" for a tomato); a random real output (`real_outputs`, rows from clips with video)
    is exactly that kind of error, at the confidence real heads have. The caption-derived part
    keeps a share drawn from `shares` (what real heads put on the classes a clip's captions name,
    `agreement_shares`), else one drawn uniformly from 1 - `noise`; a video no class matched
    gets the real output alone.
    """
    other = real_outputs[rng.integers(len(real_outputs))]
    if clean.sum() <= 0:
        return other.astype(np.float32)
    keep = float(rng.choice(shares)) if shares is not None and len(shares) else 1.0 - rng.uniform(*noise)
    return (keep * clean + (1 - keep) * other).astype(np.float32)


def agreement_shares(clean: np.ndarray, real: np.ndarray) -> np.ndarray:
    """Per clip, the share of a real head's probability on the classes its captions name.

    clean: (clips, classes) caption-derived probabilities (`caption_probabilities`); real: the
    head's pooled output on the same clips. Clips whose captions name no class are left out.
    This is how far the heads agree with what people say, the calibration of `corrupt`.
    """
    named = clean > 0
    keep = named.any(axis=1)
    return (real * named).sum(axis=1)[keep] / np.maximum(real.sum(axis=1)[keep], 1e-12)


def text_only_vector(captions: list[list[str]], feature_dim: int, concept_heads: list[Head],
                     real_outputs: dict[str, np.ndarray], rng: np.random.Generator,
                     shares: dict[str, np.ndarray] | None = None, known: dict[str, int] | None = None,
                     still: bool = False) -> np.ndarray:
    """The vector of a video known only by its tokenised captions: no appearance (zeros), and per
    head the caption-derived probabilities corrupted like a real head's (`real_outputs[kind]`:
    rows of that head's output on real footage; `shares[kind]`: the calibration of `corrupt`).
    `known[kind]`: a class index known from a label (a Kinetics clip's action), which stands
    for the captions' guess. `still`: a photo's captions, whose action part stays zeros."""
    vector = np.zeros(feature_dim, dtype=np.float32)
    for head in concept_heads:
        if still and head.kind == "actions":
            continue
        if known and head.kind in known:
            clean = np.zeros(len(head.classes))
            clean[known[head.kind]] = 1.0
        else:
            clean = caption_probabilities(captions, head)
        vector[head.start:head.end] = corrupt(clean, real_outputs[head.kind], rng,
                                              shares=(shares or {}).get(head.kind))
    return vector
