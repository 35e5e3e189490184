"""A training set joined from clips, photos and videos known only by their captions.

This is how the default model learns to name what the backbones recognise with few videos at
hand: a corpus such as MSVD has captions for 1,200 training videos, but the video of few. The
training set joins
  - the clips that have video, with their stored features and their captions;
  - photos (optional), trained on beside the videos; a photo has no motion, so the clip members'
    part of its vector is zeros (the backbones' own rule, `backbones/concept_backbone.py`);
  - every other video of the caption corpus, by its captions alone: no appearance (zeros) and
    the class probabilities its captions imply, corrupted the way the real heads err
    (`concepts.text_only_vector`), drawn afresh for each view.
The first extra view also shows the clips without their appearance features: caption-only
videos have none, and this teaches the decoder to read the real heads' concepts on their own.

Written as a feature store, extra views (`data.augment_features`) and a caption file, which
`captioner train` reads with `data.split: null`. The pipeline's `training-set` stage and
`scripts/build_default_model.py` run it.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from .atomic import atomic_write
from .errors import CaptionerError

# Photos whose object-head output joins the clips' as examples of how real heads err: enough to
# cover the head's habits, few enough that the clips' own outputs still count.
PHOTO_ERROR_SAMPLES = 2000


@dataclass
class TrainingSet:
    features: Path  # the training store
    views: list[Path]  # other draws of the same ids (data.augment_features)
    captions: Path  # JSON lines: {"video": id, "captions": [...]}
    counts: dict[str, int]


def held_out_ids(list_files: Iterable[str | os.PathLike] = (), stores: Iterable[str | os.PathLike] = ()) -> set[str]:
    """Videos never to train on: those named by files listing videos (a path, whose id is its stem
    as `captioner extract` names a lone input, or a bare id per line; '#' comments) and every
    video of the given feature stores (validation and test sets)."""
    from .inputs import video_id
    from .store import open_features

    ids: set[str] = set()
    for file in list_files:
        try:
            lines = Path(file).read_text(encoding="utf-8-sig").splitlines()
        except OSError as error:
            raise CaptionerError(f"cannot read the list of held-out videos ({error.strerror or error})", file) from None
        ids.update(video_id(Path(line.strip())) for line in lines if line.strip() and not line.lstrip().startswith("#"))
    for store in stores:
        ids.update(open_features(store).ids())
    return ids


@dataclass
class TextCorpus:
    """A caption corpus trained on by its captions alone: an entry of `training_set.text_corpora`.

    Its videos (or photos) have no appearance features here; their concepts are derived from
    their captions, or from a known action label, and corrupted as the real heads err. Captions
    outside [min_words, max_words] are skipped (MSVD's style, the one scored, is short: 7 words
    on average against VATEX's 14), then `captions_per_video` are drawn per video and `videos`
    videos at most, at random with the training set's seed: the corpora are balanced by these
    counts, not trained on whole (all of them would take hours per epoch on a CPU).
    """

    format: str  # msrvtt | vatex | coco
    path: str  # MSR-VTT videodatainfo JSON, a VATEX .en file (its .id beside it) or COCO captions JSON
    split: str | None = None  # msrvtt: train or val (the other is held out); null: all
    labels: str | None = None  # vatex: the Kinetics CSV that gives each clip's action class
    videos: int | None = None  # at most this many videos; null: every one
    captions_per_video: int = 1
    min_words: int = 4
    max_words: int = 12
    source: str = "video"  # video or image: which source vector the decoder is given (image: no actions)

    def validate(self) -> None:
        from .config import require

        require(self.format in ("msrvtt", "vatex", "coco"), "text_corpora[].format", "msrvtt, vatex or coco",
                self.format)
        require(self.source in ("video", "image"), "text_corpora[].source", "video or image", self.source)
        require(self.captions_per_video >= 1, "text_corpora[].captions_per_video", "at least 1",
                self.captions_per_video)
        require(self.videos is None or self.videos >= 1, "text_corpora[].videos", "at least 1 or null", self.videos)
        require(1 <= self.min_words <= self.max_words, "text_corpora[].min_words/max_words",
                "1 <= min_words <= max_words", (self.min_words, self.max_words))

    @property
    def name(self) -> str:
        return f"{self.format}_{Path(self.path).stem}" + (f"_{self.split}" if self.split else "")

    @classmethod
    def parse(cls, entries: Iterable[dict]) -> list["TextCorpus"]:
        from .config import from_dict

        corpora = [from_dict(cls, dict(entry), "training_set.text_corpora") for entry in entries]
        for corpus in corpora:
            corpus.validate()
        return corpora

    def files(self) -> list[Path]:
        files = [Path(self.path)] + ([Path(self.path).with_suffix(".id")] if self.format == "vatex" else [])
        return files + ([Path(self.labels)] if self.labels else [])


@dataclass
class TextVideo:
    id: str  # unique in the training set: the corpus format and the corpus's own id
    captions: list[str]
    label: str | None  # its action class, when the corpus knows it
    still: bool


def load_text_corpus(corpus: TextCorpus, rng: np.random.Generator) -> list[TextVideo]:
    """The videos and captions `corpus` contributes, drawn as its entry says."""
    from .corpora import load_coco, load_kinetics_labels, load_msrvtt, load_vatex, vatex_clip
    from .text import tokenize

    labels: dict[str, str] = {}
    if corpus.format == "msrvtt":
        loaded = load_msrvtt(corpus.path)
        captions = {vid: caps for vid, caps in loaded.captions.items()
                    if corpus.split is None or loaded.split[vid] == corpus.split}
    elif corpus.format == "vatex":
        captions = load_vatex(corpus.path)
        if corpus.labels:
            by_clip = load_kinetics_labels(corpus.labels)
            labels = {vid: by_clip[vatex_clip(vid)] for vid in captions if vatex_clip(vid) in by_clip}
    else:
        captions = load_coco(corpus.path)
    videos = []
    for vid in sorted(captions):
        fitting = [c for c in captions[vid] if corpus.min_words <= len(tokenize(c)) <= corpus.max_words]
        if fitting:
            picked = rng.permutation(len(fitting))[:corpus.captions_per_video]
            videos.append(TextVideo(f"{corpus.format}_{vid}", [fitting[k] for k in sorted(picked)],
                                    labels.get(vid), corpus.source == "image"))
    if corpus.videos is not None and len(videos) > corpus.videos:
        videos = [videos[k] for k in sorted(rng.choice(len(videos), corpus.videos, replace=False))]
    return videos


def build_training_set(out_dir: str | os.PathLike, clips: str | os.PathLike, clip_captions: Mapping[str, list[str]],
                       *, images: str | os.PathLike | None = None, image_captions: Mapping[str, list[str]] | None = None,
                       corpus: Mapping[str, list[str]] | None = None, exclude: Iterable[str] = (),
                       captions_per_video: int = 12, views: int = 2, seed: int = 0,
                       text_corpora: Iterable[TextCorpus] = ()) -> TrainingSet:
    """Write the training set into `out_dir` (replacing an earlier one) and return where it is.

    clips: a feature store of a concept backbone (`efficientnet_lite2_concepts+i3d_concepts`, say);
      its videos that `clip_captions` names are trained on.
    images: a store of photos from the same backbone; those `image_captions` names are trained on.
    corpus: captions of more videos; those with no video in `clips` and not in `exclude` (held-out
      and test videos) are trained on by their captions alone, `captions_per_video` each at most
      (one video's captions say much the same thing).
    text_corpora: more corpora known by their captions alone (`TextCorpus`: MSR-VTT, VATEX, COCO).
    The caption-derived concepts keep the share of probability that the real heads put on the
    classes the clips' own captions name (`concepts.agreement_shares`, measured on `clips`).
    """
    from .concepts import agreement_shares, appearance_mask, caption_probabilities, heads, text_only_vector
    from .store import open_features
    from .text import tokenize

    if views < 0 or captions_per_video < 0:
        raise CaptionerError(f"views and captions_per_video must be 0 or more, got {views} and {captions_per_video}")
    out_dir = Path(out_dir)
    clip_store = open_features(clips)
    provenance = clip_store.provenance
    concept_heads = heads(provenance)
    if not concept_heads:
        raise CaptionerError("the clips' backbone has no classifier heads; use a concept backbone such as "
                             "efficientnet_lite2_concepts+i3d_concepts", clip_store.path)
    feature_dim = clip_store.feature_dim
    clip_ids = [vid for vid in clip_store.ids() if vid in clip_captions]
    if not clip_ids:
        raise CaptionerError("none of the stored clips has captions in the training caption file", clip_store.path)
    clip_vectors, clip_metas = clip_store.pooled_with_meta(clip_ids)
    rng = np.random.default_rng(seed)
    # What the heads say of real footage, to corrupt derived concepts with: both heads on the
    # clips, the object head on photos too.
    real = {head.kind: clip_vectors[:, head.start:head.end] for head in concept_heads}
    image_ids, image_vectors = [], np.zeros((0, feature_dim), dtype=np.float32)
    if images is not None:
        image_store = open_features(images)
        if image_store.provenance != provenance:
            raise CaptionerError(f"the photos were extracted with another backbone or settings than the clips "
                                 f"({clip_store.path})", image_store.path)
        image_ids = [vid for vid in image_store.ids() if vid in (image_captions or {})]
        if image_ids:
            image_vectors = image_store.pooled_matrix(image_ids)[1]
            objects = next((h for h in concept_heads if h.kind == "objects"), None)
            if objects is not None:
                rows = rng.choice(len(image_ids), size=min(PHOTO_ERROR_SAMPLES, len(image_ids)), replace=False)
                real["objects"] = np.concatenate([real["objects"], image_vectors[rows, objects.start:objects.end]])

    # How far the real heads agree with what people say of the same clips: the calibration of
    # the corruption every caption-only video's concepts get.
    shares = {}
    for head in concept_heads:
        clean = np.stack([caption_probabilities([tokenize(c) for c in clip_captions[vid]], head) for vid in clip_ids])
        shares[head.kind] = agreement_shares(clean, clip_vectors[:, head.start:head.end])

    # A stored clip is trained on with its video or, without training captions, held out.
    held_out = set(exclude) | set(clip_store.ids())
    text_only = sorted(vid for vid in (corpus or {}) if vid not in held_out)
    tokens = {vid: [tokenize(c) for c in corpus[vid]] for vid in text_only}
    extra: list[tuple[str, TextVideo]] = []
    for text_corpus in text_corpora:
        extra += [(text_corpus.name, video) for video in load_text_corpus(text_corpus, rng)]
    action_index = {name: k for head in concept_heads if head.kind == "actions" for k, name in enumerate(head.classes)}

    store_paths = [out_dir / "features"] + [out_dir / f"view{i}" for i in range(1, views + 1)]
    for path in store_paths:
        if path.exists():
            shutil.rmtree(path)
    train = open_features(store_paths[0], "a")
    train.set_provenance(provenance)
    for vid, vector, meta in zip(clip_ids, clip_vectors, clip_metas):
        train.put(vid, vector, {**meta, "source": "clip"})
    for vid, vector in zip(image_ids, image_vectors):
        train.put(vid, vector, {"is_image": True, "source": "photo"})
    view_stores = [open_features(path, "a") for path in store_paths[1:]]
    for view in view_stores:
        view.set_provenance(provenance)
    if view_stores:
        appearance = appearance_mask(feature_dim, concept_heads)
        for vid, vector in zip(clip_ids, clip_vectors):
            view_stores[0].put(vid, np.where(appearance, 0.0, vector), {"is_image": False,
                                                                        "source": "clip, no appearance"})
    for store in [train, *view_stores]:
        for vid in text_only:
            store.put(vid, text_only_vector(tokens[vid], feature_dim, concept_heads, real, rng, shares),
                      {"is_image": False, "source": "captions only"})
        for name, video in extra:
            known = {"actions": action_index[video.label]} if video.label in action_index else None
            vector = text_only_vector([tokenize(c) for c in video.captions], feature_dim, concept_heads, real, rng,
                                      shares, known, still=video.still)
            store.put(video.id, vector, {"is_image": video.still, "source": f"captions only: {name}"})

    rows = [{"video": vid, "captions": list(image_captions[vid])} for vid in image_ids]
    rows += [{"video": vid, "captions": list(clip_captions[vid])} for vid in clip_ids]
    rows += [{"video": vid, "captions": list(corpus[vid][:captions_per_video or None])} for vid in text_only]
    rows += [{"video": video.id, "captions": video.captions} for _, video in extra]
    captions_path = out_dir / "captions.jsonl"
    atomic_write(captions_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    counts = {"photos": len(image_ids), "clips": len(clip_ids), "caption_only_videos": len(text_only),
              "captions": sum(len(r["captions"]) for r in rows), "views": views,
              "agreement_share": {kind: round(float(np.mean(v)), 4) if len(v) else None for kind, v in shares.items()}}
    for name in dict.fromkeys(name for name, _ in extra):
        chosen = [video for n, video in extra if n == name]
        counts[name] = {"videos": len(chosen), "captions": sum(len(v.captions) for v in chosen),
                        "labelled": sum(v.label in action_index for v in chosen)}
    return TrainingSet(store_paths[0], store_paths[1:], captions_path, counts)
