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
    shares = built.counts.pop("agreement_share")
    assert built.counts == {"photos": 1, "clips": 2, "caption_only_videos": 2, "captions": 17, "views": 2}
    assert set(shares) == {"objects", "actions"}
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


def _text_corpora(tmp_path):
    """Tiny files in the real corpora's formats: MSR-VTT, VATEX with Kinetics labels, COCO."""
    msrvtt = tmp_path / "msrvtt.json"
    msrvtt.write_text(json.dumps({
        "videos": [{"video_id": "video0", "split": "train", "category": 3},
                   {"video_id": "video1", "split": "validate", "category": 3}],
        "sentences": [{"video_id": "video0", "caption": "a man is playing a guitar on stage"},
                      {"video_id": "video0", "caption": "guitar"},  # too short: skipped
                      {"video_id": "video1", "caption": "a man is playing a guitar in a room"}]}))
    (tmp_path / "val.en").write_text("a man rides his motorcycle down a road .\n"
                                     "a man on a motorbike goes very fast along the long winding mountain road .\n")
    (tmp_path / "val.id").write_text("yt_a_000010_000020&0\nyt_a_000010_000020&1\n")
    labels = tmp_path / "k600.csv"
    labels.write_text("label,youtube_id,time_start,time_end,split\nmotorcycling,yt_a,10,20,val\n")
    coco = tmp_path / "coco.json"
    coco.write_text(json.dumps({"annotations": [{"image_id": 7, "caption": "A cat sleeps on a sofa."}]}))
    return [{"format": "msrvtt", "path": str(msrvtt), "split": "train", "captions_per_video": 2},
            {"format": "vatex", "path": str(tmp_path / "val.en"), "labels": str(labels), "captions_per_video": 2},
            {"format": "coco", "path": str(coco), "source": "image"}]


def test_text_corpora_join_as_caption_only_videos_with_calibrated_concepts(tmp_path, sources):
    from captioner.training_set import TextCorpus

    clips, _, clip_captions, _ = sources
    corpora = TextCorpus.parse(_text_corpora(tmp_path))
    built = build_training_set(tmp_path / "set", clips, clip_captions, corpus={}, views=1, seed=0,
                               text_corpora=corpora)
    train = open_features(built.features)
    # MSR-VTT's val video is held out (split train); the VATEX caption over 12 words is skipped.
    assert sorted(train.ids()) == ["c_cat", "c_moto", "coco_coco7", "msrvtt_video0", "vatex_yt_a_000010_000020"]
    assert built.counts["msrvtt_msrvtt_train"] == {"videos": 1, "captions": 1, "labelled": 0}
    assert built.counts["vatex_val"] == {"videos": 1, "captions": 1, "labelled": 1}
    captions = {json.loads(line)["video"]: json.loads(line)["captions"] for line in built.captions.read_text().splitlines()}
    assert captions["msrvtt_video0"] == ["a man is playing a guitar on stage"]
    # The toy clips' heads put all their mass on what their captions name: the labelled VATEX
    # clip's actions stay its Kinetics class, and a photo's captions have no actions.
    assert built.counts["agreement_share"]["actions"] == pytest.approx(1.0)
    vectors = dict(zip(*train.pooled_matrix(["vatex_yt_a_000010_000020", "coco_coco7"])))
    moto = vectors["vatex_yt_a_000010_000020"]
    assert not moto[:APPEARANCE].any() and moto[APPEARANCE + len(OBJECTS) + ACTIONS.index("motorcycling")] == 1.0
    cat = vectors["coco_coco7"]
    assert not cat[APPEARANCE + len(OBJECTS):].any() and cat[APPEARANCE + OBJECTS.index("tabby, tabby cat")] > 0.9
    assert open_features(built.features).meta("coco_coco7")["is_image"] is True


def test_agreement_shares_measure_what_real_heads_put_on_the_captions_classes():
    from captioner.concepts import agreement_shares, corrupt

    clean = np.array([[0.5, 0.5, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    real = np.array([[0.6, 0.0, 0.4], [0.2, 0.3, 0.5], [0.9, 0.0, 0.1]])
    np.testing.assert_allclose(agreement_shares(clean, real), [0.6, 0.1])  # the second names no class
    rng = np.random.default_rng(0)
    mixed = corrupt(np.array([0.0, 0.0, 1.0]), np.array([[1.0, 0.0, 0.0]]), rng, shares=np.array([0.25]))
    np.testing.assert_allclose(mixed, [0.75, 0.0, 0.25])


def test_a_malformed_text_corpus_entry_is_a_usage_error():
    from captioner.training_set import TextCorpus

    with pytest.raises(CaptionerError, match="format must be msrvtt, vatex or coco"):
        TextCorpus.parse([{"format": "webvid", "path": "x"}])
    with pytest.raises(CaptionerError, match="unknown key"):
        TextCorpus.parse([{"format": "coco", "path": "x", "captions": 3}])


def test_the_quality_recipe_adds_the_text_corpora_and_keys_its_stage_by_their_files():
    """configs/pipeline_quality.yaml: MSR-VTT train (its val split is the language-transfer dev
    set), VATEX with Kinetics labels, COCO as photos; changing a corpus file reruns the stage."""
    import os
    from pathlib import Path

    from captioner.training_set import TextCorpus
    from pipelines import build_stages, load_pipeline

    root = Path(__file__).resolve().parent.parent
    cwd = os.getcwd()
    os.chdir(root)
    try:
        config = load_pipeline("configs/pipeline_quality.yaml")
        stage = next(s for s in build_stages(config, progress=False) if s.name == "training-set")
    finally:
        os.chdir(cwd)
    corpora = TextCorpus.parse(config.training_set.text_corpora)
    assert {c.format for c in corpora} == {"msrvtt", "vatex", "coco"}
    assert [c.split for c in corpora if c.format == "msrvtt"] == ["train"]
    assert [c.source for c in corpora if c.format == "coco"] == ["image"]
    inputs = {p.name for p in stage.inputs}
    assert {"train_val_videodatainfo.json", "val.en", "val.id", "kinetics-600_val.csv",
            "captions_val2017.json"} <= inputs
