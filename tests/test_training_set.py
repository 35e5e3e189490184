"""The default recipe's training set: clips, photos and caption-only videos joined into one store."""

from __future__ import annotations

import json

import numpy as np
import pytest

from captioner.errors import CaptionerError
from captioner.store import open_features
from captioner.training_set import build_training_set

OBJECTS = ["tabby, tabby cat", "moped", "guitar"]
ACTIONS = ["motorcycling", "playing guitar", "petting cat"]
APPEARANCE = 4
DIM = APPEARANCE + len(OBJECTS) + len(ACTIONS)
PROVENANCE = {"backbone": "toy_concepts+toy_clip_concepts", "feature_dim": DIM, "weights_sha256": "0",
              "members": [{"feature_dim": APPEARANCE + len(OBJECTS),
                           "concepts": {"kind": "objects", "offset": APPEARANCE, "classes": OBJECTS}},
                          {"feature_dim": len(ACTIONS),
                           "concepts": {"kind": "actions", "offset": 0, "classes": ACTIONS}}]}


def _store(path, vectors: dict, provenance=PROVENANCE, is_image=False):
    store = open_features(path, "a")
    store.set_provenance(provenance)
    for vid, vector in vectors.items():
        store.put(vid, np.asarray(vector, dtype=np.float32)[None], {"is_image": is_image})
    return path


def _vector(rng, obj: int, act: int | None):
    vector = np.zeros(DIM, dtype=np.float32)
    vector[:APPEARANCE] = rng.normal(size=APPEARANCE)
    vector[APPEARANCE + obj] = 1.0
    if act is not None:
        vector[APPEARANCE + len(OBJECTS) + act] = 1.0
    return vector


@pytest.fixture
def sources(tmp_path):
    rng = np.random.default_rng(1)
    clips = _store(tmp_path / "clips", {"c_moto": _vector(rng, 1, 0), "c_cat": _vector(rng, 0, 2),
                                        "c_val": _vector(rng, 2, 1)})
    photos = _store(tmp_path / "photos", {"p_cat": _vector(rng, 0, None), "p_dev": _vector(rng, 2, None)},
                    is_image=True)
    clip_captions = {"c_moto": ["a man rides a motorcycle"], "c_cat": ["a woman is petting a cat"]}
    corpus = {"c_moto": ["a man rides a motorcycle"],
              "t_guitar": [f"a man is playing a guitar {i}" for i in range(20)],
              "t_moto": ["a man is riding a motorcycle", "someone rides a moped"],
              "t_dev": ["a cat is playing"], "c_val": ["a man plays guitar"]}
    return clips, photos, clip_captions, corpus


def test_clips_photos_and_caption_only_videos_join_in_one_store_with_views(tmp_path, sources):
    clips, photos, clip_captions, corpus = sources
    built = build_training_set(tmp_path / "set", clips, clip_captions, images=photos,
                               image_captions={"p_cat": ["a cat on a sofa"]}, corpus=corpus, exclude={"t_dev"},
                               captions_per_video=12, views=2, seed=0)
    train = open_features(built.features)
    # c_val has video but no training captions: held out, also as a caption-only video.
    assert sorted(train.ids()) == ["c_cat", "c_moto", "p_cat", "t_guitar", "t_moto"]
    assert built.counts == {"photos": 1, "clips": 2, "caption_only_videos": 2, "captions": 17, "views": 2}
    assert train.provenance["backbone"] == PROVENANCE["backbone"]
    np.testing.assert_allclose(train.pooled_matrix(["c_moto"])[1][0], open_features(clips).pooled_matrix(["c_moto"])[1][0])

    guitar = train.pooled_matrix(["t_guitar"])[1][0]
    assert not guitar[:APPEARANCE].any()  # no appearance: nobody has seen the video
    objects, actions = guitar[APPEARANCE:APPEARANCE + 3], guitar[APPEARANCE + 3:]
    assert objects.sum() == pytest.approx(1, abs=1e-5) and actions.sum() == pytest.approx(1, abs=1e-5)
    assert actions.argmax() == ACTIONS.index("playing guitar") or objects.argmax() == OBJECTS.index("guitar")

    view1, view2 = (open_features(p) for p in built.views)
    assert sorted(view1.ids()) == ["c_cat", "c_moto", "t_guitar", "t_moto"]  # the clips without appearance
    assert sorted(view2.ids()) == ["t_guitar", "t_moto"]
    moto = view1.pooled_matrix(["c_moto"])[1][0]
    assert not moto[:APPEARANCE].any() and moto[APPEARANCE + 1] == 1.0
    assert not np.allclose(view2.pooled_matrix(["t_moto"])[1][0], train.pooled_matrix(["t_moto"])[1][0])

    rows = [json.loads(line) for line in built.captions.read_text().splitlines()]
    captions = {row["video"]: row["captions"] for row in rows}
    assert set(captions) == {"p_cat", "c_moto", "c_cat", "t_guitar", "t_moto"}
    assert len(captions["t_guitar"]) == 12 and captions["p_cat"] == ["a cat on a sofa"]


def test_a_rebuild_replaces_the_set_and_is_reproducible(tmp_path, sources):
    clips, photos, clip_captions, corpus = sources
    first = build_training_set(tmp_path / "set", clips, clip_captions, corpus=corpus, views=1, seed=3)
    vectors = open_features(first.features).pooled_matrix()[1]
    second = build_training_set(tmp_path / "set", clips, clip_captions, corpus=corpus, views=0, seed=3)
    assert second.views == [] and not (tmp_path / "set" / "view2").exists()
    np.testing.assert_array_equal(open_features(second.features).pooled_matrix()[1], vectors)


def test_sources_that_cannot_be_joined_are_one_line_errors(tmp_path, sources):
    clips, photos, clip_captions, corpus = sources
    other = _store(tmp_path / "other", {"p": np.zeros(DIM)}, provenance={**PROVENANCE, "weights_sha256": "1"},
                   is_image=True)
    with pytest.raises(CaptionerError, match="another backbone"):
        build_training_set(tmp_path / "set", clips, clip_captions, images=other, image_captions={"p": ["x"]})
    plain = _store(tmp_path / "plain", {"v": np.zeros(4)}, provenance={"backbone": "toy", "feature_dim": 4,
                                                                        "weights_sha256": "0"})
    with pytest.raises(CaptionerError, match="no classifier heads"):
        build_training_set(tmp_path / "set", plain, {"v": ["a caption"]})
    with pytest.raises(CaptionerError, match="none of the stored clips"):
        build_training_set(tmp_path / "set", clips, {"elsewhere": ["a caption"]})


def test_the_default_pipeline_is_the_build_script_s_recipe():
    """scripts/build_default_model.py runs configs/pipeline_default.yaml; the pipeline trains on the
    joined set, validates on Flickr8k dev photos and never lists an MSVD test clip for training."""
    import os
    from pathlib import Path

    from pipelines import build_stages, load_pipeline

    root = Path(__file__).resolve().parent.parent
    script = (root / "scripts" / "build_default_model.py").read_text()
    assert 'CONFIG = ROOT / "configs" / "pipeline_default.yaml"' in script
    cwd = os.getcwd()
    os.chdir(root)
    try:
        config = load_pipeline("configs/pipeline_default.yaml")
        names = [stage.name for stage in build_stages(config, progress=False)]
    finally:
        os.chdir(cwd)
    assert names == ["extract-images", "extract-train", "extract-val", "extract-test", "training-set", "train",
                     "predict", "evaluate", "report"]
    assert config.extract.backbone == "efficientnet_lite2_concepts+i3d_concepts"
    lists = root / "configs" / "lists"
    train = {Path(line).stem for line in (lists / "msvd_train_clips.txt").read_text().split()}
    held_out = {Path(line).stem for name in ("msvd_dev_clips.txt", "msvd_test_clips.txt")
                for line in (lists / name).read_text().split()}
    assert len(train) == 40 and not train & held_out


def test_held_out_videos_come_from_lists_and_stores(tmp_path, sources):
    from captioner.training_set import held_out_ids

    clips, photos, _, _ = sources
    listed = tmp_path / "dev.txt"
    listed.write_text("# held out\n../clips/t_dev.avi\nt_other\n\n")
    assert held_out_ids([listed], [photos]) == {"t_dev", "t_other", "p_cat", "p_dev"}
    with pytest.raises(CaptionerError, match="cannot read the list"):
        held_out_ids([tmp_path / "missing.txt"])
