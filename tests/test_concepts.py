"""Concepts: class names -> caption words, heads in a vector, text-only videos, the model's concept input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from captioner.concepts import (Head, appearance_mask, caption_probabilities, class_word_table, class_words,
                                corrupt, heads, text_only_vector, top_concepts)
from captioner.datasets import load_captions
from captioner.model import CaptionModel, ModelConfig, load_checkpoint, save_checkpoint
from captioner.text import PAD_ID, Vocabulary, tokenize


@pytest.fixture(scope="module")
def class_names():
    from torchvision.models.video import R3D_18_Weights

    from captioner.backbones.efficientnet import imagenet_class_names

    return imagenet_class_names(), list(R3D_18_Weights.KINETICS400_V1.meta["categories"])


@pytest.fixture(scope="module")
def concept_heads(class_names):
    objects, actions = class_names
    provenance = {"backbone": "efficientnet_lite2_concepts+i3d_concepts", "members": [
        {"feature_dim": 1280 + 1000, "concepts": {"kind": "objects", "offset": 1280, "classes": objects}},
        {"feature_dim": 400, "concepts": {"kind": "actions", "offset": 0, "classes": actions}}]}
    return heads(provenance)


def test_class_names_become_the_words_captions_use(class_names):
    objects, actions = class_names
    assert class_words("motorcycling", "actions", actions.index("motorcycling"))[:2] == ["riding", "motorcycle"]
    assert class_words("cutting pineapple", "actions", 0)[0] == "cutting"
    assert class_words(objects[281], "objects", 281) == ["tabby", "cat"]  # "tabby, tabby cat"
    assert "dog" in class_words(objects[200], "objects", 200)  # a breed names its family
    panda = class_words(objects[388], "objects", 388)  # "giant panda, panda, panda bear, ..., Ailuropoda ..."
    assert "panda" in panda and "ailuropoda" not in panda
    shark = class_words(objects[2], "objects", 2)  # "great white shark, white shark, man-eater, ..."
    assert "shark" in shark and not {"man", "white"} & set(shark)


def test_heads_sit_where_the_members_put_them(concept_heads):
    objects, actions = concept_heads
    assert (objects.kind, objects.start, objects.end) == ("objects", 1280, 2280)
    assert (actions.kind, actions.start, actions.end) == ("actions", 2280, 2680)
    mask = appearance_mask(2680, concept_heads)
    assert mask[:1280].all() and not mask[1280:].any()
    assert heads({"backbone": "efficientnet_lite2", "feature_dim": 1280}) == []


def test_word_table_keeps_the_vocabulary_s_forms():
    head = Head("actions", 0, ("petting cat", "juggling soccer ball", "zzz unknown"))
    table = class_word_table([head], {"petting": 4, "cats": 5, "ball": 6, "soccer": 7})
    assert table == [["petting", "cats"], ["ball", "soccer"], []]


def test_a_text_only_video_gets_the_concepts_its_captions_name(data_dir, concept_heads):
    captions = load_captions(data_dir / "msvd" / "captions" / "MSVD_test.tsv")
    objects, actions = concept_heads

    def top(vid, head):
        probs = caption_probabilities([tokenize(c) for c in captions[vid]], head)
        assert probs.sum() == pytest.approx(1.0)
        return head.classes[int(np.argmax(probs))]

    assert top("klteYv1Uv9A_27_33", actions) == "motorcycling"  # "a man is riding a motorcycle"
    assert top("xPR0xFgCAZY_17_27", actions).startswith("cutting")  # slicing a tomato
    assert top("ufFT2BWh3BQ_0_8", objects).startswith("giant panda")
    # "a cat is ...": a cat, not the lemur called "Madagascar cat"
    assert top("f9Won2JpOEU_60_80", objects) in objects.classes[281:286]


def test_corruption_mixes_in_a_real_head_s_error():
    rng = np.random.default_rng(0)
    clean = np.array([0.0, 1.0, 0.0])
    real = np.array([[0.9, 0.1, 0.0], [0.8, 0.0, 0.2]])
    mixed = corrupt(clean, real, rng, noise=(0.5, 0.5))
    assert mixed.sum() == pytest.approx(1.0) and mixed[1] >= 0.5 and mixed[0] >= 0.4
    unmatched = corrupt(np.zeros(3), real, rng)
    assert any(np.allclose(unmatched, row) for row in real)


def test_text_only_vector_has_no_appearance_and_a_distribution_per_head(concept_heads):
    rng = np.random.default_rng(0)
    real = {h.kind: np.full((2, h.end - h.start), 1.0 / (h.end - h.start)) for h in concept_heads}
    vector = text_only_vector([tokenize("a man is riding a motorcycle")], 2680, concept_heads, real, rng)
    assert not vector[:1280].any()
    for head in concept_heads:
        assert vector[head.start:head.end].sum() == pytest.approx(1.0, abs=1e-5)
    assert np.argmax(vector[2280:]) == concept_heads[1].classes.index("motorcycling")


def test_top_concepts_are_ranked_and_a_still_has_no_actions(concept_heads):
    vector = np.zeros(2680, dtype=np.float32)
    vector[1280 + 388], vector[1280 + 387] = 0.6, 0.3  # giant panda, lesser panda
    top = top_concepts(vector, concept_heads, k=2)
    assert [c["name"] for c in top["objects"]] == ["giant panda", "lesser panda"]
    assert top["objects"][0]["p"] == pytest.approx(0.6)
    assert top["actions"] == []


# ----------------------------------------------------------------------------- the model's input
def _concept_model(vocab_size=12, words=((4, 5), (6, PAD_ID), (PAD_ID, PAD_ID))):
    config = ModelConfig(feature_dim=5, embed_size=8, hidden_size=16, dropout=0.0, concept_heads=[[2, 5]])
    return CaptionModel(config, vocab_size, torch.tensor(words))


def test_concepts_reach_the_decoder_through_their_words_embeddings(one_torch_thread):
    torch.manual_seed(0)
    model = _concept_model().eval()
    assert model.video_proj.in_features == 2  # the appearance part only
    feats = torch.tensor([[0.1, 0.2, 1.0, 0.0, 0.0], [0.1, 0.2, 0.0, 1.0, 0.0]])
    concepts = model.concepts(feats)
    embed = model.embed.weight
    expected = model.concepts.proj(torch.stack([(embed[4] + embed[5]) / 2, embed[6]]))
    torch.testing.assert_close(concepts, expected)
    # A class with no known words contributes nothing.
    torch.testing.assert_close(model.concepts(torch.tensor([[0.0, 0.0, 0.0, 0.0, 1.0]])),
                               model.concepts.proj.bias[None])
    first, second = model.generate(feats, beam_size=1)
    assert first != second or not torch.allclose(concepts[0], concepts[1])


def test_a_concept_model_survives_a_checkpoint(tmp_path, one_torch_thread):
    torch.manual_seed(0)
    model = _concept_model().eval()
    vocab = Vocabulary(["<pad>", "<bos>", "<eos>", "<unk>"] + [f"w{i}" for i in range(8)])
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, vocab, {}, None, 1, {})
    loaded = load_checkpoint(path).model
    assert torch.equal(loaded.concepts.concept_words, model.concepts.concept_words)
    feats = torch.rand(3, 5)
    assert loaded.generate(feats, beam_size=2) == model.generate(feats, beam_size=2)


def test_concept_heads_must_fit_the_input():
    from captioner.errors import CaptionerError

    with pytest.raises(CaptionerError, match="concept_heads"):
        CaptionModel(ModelConfig(feature_dim=4, concept_heads=[[2, 6]]), 10, torch.zeros(4, 1, dtype=torch.long))
    with pytest.raises(CaptionerError, match="word ids"):
        CaptionModel(ModelConfig(feature_dim=5, concept_heads=[[2, 5]]), 10, None)


def test_training_on_a_concept_store_builds_the_class_word_table(tmp_path, one_torch_thread):
    from captioner.store import open_features
    from captioner.train import DataConfig, TrainConfig, train

    classes = ["riding horse", "playing guitar", "slicing tomato"]
    provenance = {"backbone": "toy_concepts", "feature_dim": 4 + 3, "weights_sha256": "0",
                  "concepts": {"kind": "actions", "offset": 4, "classes": classes}}
    store = open_features(tmp_path / "store", "a")
    store.set_provenance(provenance)
    rng = np.random.default_rng(0)
    captions = {}
    for i in range(12):
        which = i % 3
        vector = np.zeros(7, dtype=np.float32)
        vector[:4] = rng.normal(size=4)
        vector[4 + which] = 1.0
        store.put(f"v{i}", vector, {"is_image": False})
        captions[f"v{i}"] = [["a man is riding a horse", "a man is playing a guitar",
                              "a woman is slicing a tomato"][which]] * 3
    (tmp_path / "captions.json").write_text(__import__("json").dumps(captions))
    config = TrainConfig(run_dir=str(tmp_path / "run"), epochs=2, batch_size=8, warmup_steps=0, val_metrics=[],
                         device="cpu", model=ModelConfig(embed_size=16, hidden_size=16),
                         data=DataConfig(features=str(tmp_path / "store"), captions=str(tmp_path / "captions.json"),
                                         split=None, val_split=None, min_count=1))
    checkpoint = load_checkpoint(train(config))
    assert checkpoint.model.config.concept_heads == [[4, 7]]
    words = [[checkpoint.vocab.words[i] for i in row if i != PAD_ID]
             for row in checkpoint.model.concepts.concept_words.tolist()]
    assert words == [["riding", "horse"], ["playing", "guitar"], ["slicing", "tomato"]]


def test_concept_retrieval_baseline_finds_the_video_whose_captions_name_the_concepts(tmp_path):
    from captioner.baselines import concept_retrieval_captions
    from captioner.evaluate import CONCEPT_RETRIEVAL, baseline_captions
    from captioner.store import open_features

    classes = ["riding horse", "playing guitar", "slicing tomato"]
    store = open_features(tmp_path / "test", "a")
    store.set_provenance({"backbone": "toy_concepts", "feature_dim": 5, "weights_sha256": "0",
                          "concepts": {"kind": "actions", "offset": 2, "classes": classes}})
    store.put("t_guitar", np.array([0.3, 0.1, 0.1, 0.8, 0.1], dtype=np.float32))
    store.put("t_horse", np.array([0.3, 0.1, 0.7, 0.1, 0.2], dtype=np.float32))
    train = {"a": ["a man is riding a horse", "a person rides a horse"],
             "b": ["a man is playing a guitar", "someone plays guitar", "a man is playing a guitar"],
             "c": ["a woman is slicing a tomato"]}
    assert concept_retrieval_captions(train, store, ["t_guitar", "t_horse"]) == {
        "t_guitar": "a man is playing a guitar", "t_horse": "a man is riding a horse"}
    assert CONCEPT_RETRIEVAL in baseline_captions(["t_guitar"], train, test_features=store)


def test_report_shows_the_concepts_that_caption_json_carries(tmp_path):
    import json

    from captioner.report import _concepts_html, prediction_concepts

    concepts = {"actions": [{"name": "motorcycling", "p": 0.72}], "objects": [{"name": "moped", "p": 0.38}]}
    predictions = tmp_path / "p.jsonl"
    predictions.write_text(json.dumps({"path": "x/klte.avi", "id": "klte", "caption": "a man is riding a motorcycle",
                                       "concepts": concepts}) + "\n" + json.dumps({"id": "other", "caption": "c"}) + "\n")
    found = prediction_concepts(predictions)
    assert found == {"klte": concepts}
    shown = _concepts_html(found["klte"])
    assert "motorcycling 0.72" in shown and "moped 0.38" in shown
    assert _concepts_html(None) == "" and _concepts_html({"actions": []}) == ""


# ----------------------------------------------------------------------------- concept backbones
@pytest.mark.slow
def test_concept_backbones_name_what_a_real_clip_shows_and_a_still_has_no_actions(msvd_clips, data_dir):
    from captioner import backbones
    from captioner.video import Sampling, decode

    model = backbones.create("efficientnet_lite2_concepts+i3d_concepts")
    assert model.feature_dim == 1280 + 1000 + 400
    objects, actions = heads(model.provenance())
    (clip,) = [p for p in msvd_clips if p.stem == "klteYv1Uv9A_27_33"]  # a man riding a motorcycle
    decoded = decode(clip, Sampling.parse("uniform:2"), short_side=model.decode_short_side, clip_len=model.clip_len)
    pooled = model.features(torch.from_numpy(decoded.frames)).mean(0).numpy()
    for head in (objects, actions):
        assert pooled[head.start:head.end].sum() == pytest.approx(1.0, abs=1e-4)
    top = top_concepts(pooled, [objects, actions], k=5)
    assert "motorcycling" in [c["name"] for c in top["actions"]][:2]
    assert {"moped", "motor scooter", "crash helmet"} & {c["name"] for c in top["objects"]}

    photo = data_dir / "flickr8k" / "images" / "1000268201_693b08cb0e.jpg"
    still = decode(photo, Sampling.parse("uniform:2"), short_side=model.decode_short_side, clip_len=model.clip_len)
    vector = model.features(torch.from_numpy(still.frames)).mean(0).numpy()
    assert not vector[actions.start:actions.end].any()  # no motion, no action
    # Told it is a photo, the combination skips I3D and gives the same vector.
    np.testing.assert_allclose(model.features(torch.from_numpy(still.frames), still=True).mean(0).numpy(), vector,
                               atol=1e-5)
    alone = backbones.create("efficientnet_lite2_concepts")
    image_part = alone.features(torch.from_numpy(still.frames[:, 0])).mean(0).numpy()
    np.testing.assert_allclose(vector[:actions.start], image_part, atol=1e-4)


# ----------------------------------------------------------------------------- the shipped model
@pytest.mark.slow
def test_default_model_captions_the_test_clips_fluently_and_differently(msvd_clips):
    from conftest import MSVD_TEST_CLIPS, msvd_vid_numbers

    from captioner.caption import Captioner

    vids = msvd_vid_numbers()
    test_clips = [c for c in msvd_clips if vids[c.stem] in MSVD_TEST_CLIPS]
    captioner = Captioner.load()
    assert heads(captioner.model.provenance)  # the shipped model reads concepts
    results = {clip.stem: captioner.caption(clip) for clip in test_clips}
    captions = [r.caption for r in results.values()]
    assert len(test_clips) == 9
    # What the heads recognised comes with the caption (caption --json, the web API).
    motorcycle = results["klteYv1Uv9A_27_33"].to_dict()["concepts"]
    assert motorcycle["actions"][0]["name"] == "motorcycling" and motorcycle["actions"][0]["p"] > 0.5
    assert len(motorcycle["objects"]) == 5
    made = results["klteYv1Uv9A_27_33"].to_dict()
    assert (made["beam"], made["length_penalty"], made["max_len"]) == (3, 0.5, 20)
    assert made["checkpoint"] and made["captioner_version"]
    for caption in captions:
        words = caption.split()
        assert words and "<unk>" not in words
        assert all(a != b for a, b in zip(words, words[1:]))
    assert len(set(captions)) >= 5, captions
