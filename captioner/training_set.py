"""A training set joined from clips, photos and videos known only by their captions.

This is how the default model learns to name what the backbones recognise with few videos at
hand: a corpus such as MSVD has captions for 1,200 training videos, but the video of few. The
training set joins
  - the clips that have video, with their stored features and their captions;
  - photos (optional), trained on beside the videos; a photo has no motion, so the clip members'
    part of its vector is zeros (the backbones' own rule, `backbones/concepts.py`);
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


def build_training_set(out_dir: str | os.PathLike, clips: str | os.PathLike, clip_captions: Mapping[str, list[str]],
                       *, images: str | os.PathLike | None = None, image_captions: Mapping[str, list[str]] | None = None,
                       corpus: Mapping[str, list[str]] | None = None, exclude: Iterable[str] = (),
                       captions_per_video: int = 12, views: int = 2, seed: int = 0) -> TrainingSet:
    """Write the training set into `out_dir` (replacing an earlier one) and return where it is.

    clips: a feature store of a concept backbone (`efficientnet_lite2_concepts+i3d_concepts`, say);
      its videos that `clip_captions` names are trained on.
    images: a store of photos from the same backbone; those `image_captions` names are trained on.
    corpus: captions of more videos; those with no video in `clips` and not in `exclude` (held-out
      and test videos) are trained on by their captions alone, `captions_per_video` each at most
      (one video's captions say much the same thing).
    """
    from .concepts import appearance_mask, heads, text_only_vector
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

    # A stored clip is trained on with its video or, without training captions, held out.
    held_out = set(exclude) | set(clip_store.ids())
    text_only = sorted(vid for vid in (corpus or {}) if vid not in held_out)
    tokens = {vid: [tokenize(c) for c in corpus[vid]] for vid in text_only}

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
            store.put(vid, text_only_vector(tokens[vid], feature_dim, concept_heads, real, rng),
                      {"is_image": False, "source": "captions only"})

    rows = [{"video": vid, "captions": list(image_captions[vid])} for vid in image_ids]
    rows += [{"video": vid, "captions": list(clip_captions[vid])} for vid in clip_ids]
    rows += [{"video": vid, "captions": list(corpus[vid][:captions_per_video or None])} for vid in text_only]
    captions_path = out_dir / "captions.jsonl"
    atomic_write(captions_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    counts = {"photos": len(image_ids), "clips": len(clip_ids), "caption_only_videos": len(text_only),
              "captions": sum(len(r["captions"]) for r in rows), "views": views}
    return TrainingSet(store_paths[0], store_paths[1:], captions_path, counts)
