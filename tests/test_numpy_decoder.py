"""The torch-free decoder: the same captions and scores as CaptionModel, from an export read without torch."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from captioner.caption import DEFAULT_MODEL
from captioner.errors import CaptionerError, UsageError
from captioner.model import (CaptionModel, ModelConfig, export_checkpoint, export_inference, inference_export,
                             load_checkpoint, save_checkpoint, source_ids)
from captioner.hashing import file_sha256
from captioner.numpy_decoder import InferenceExport, export_path, read_export
from captioner.store import open_features
from captioner.text import BOS_ID, PAD_ID, SPECIALS, Vocabulary

ROOT = Path(__file__).resolve().parent.parent
VOCAB = 40

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Greedy and beam search with every option that changes the search: n-best lists, length
# penalties, the repetition guard off, and a length limit short enough to force <eos>.
SEARCHES = [
    {"beam_size": 1},
    {"beam_size": 1, "length_penalty": 0.5, "max_len": 4},
    {"beam_size": 1, "length_penalty": 0.7},
    {"beam_size": 3, "n_best": 3, "length_penalty": 0.5},
    {"beam_size": 5, "n_best": 5, "length_penalty": 1.0},
    {"beam_size": 4, "n_best": 2, "length_penalty": 0.0, "max_len": 3},
    {"beam_size": 3, "n_best": 3, "no_repeat": False},
]


def _assert_same_hypotheses(torch_hyps, numpy_hyps):
    assert [[words for words, _ in video] for video in numpy_hyps] == \
           [[words for words, _ in video] for video in torch_hyps]
    for torch_video, numpy_video in zip(torch_hyps, numpy_hyps):
        assert [score for _, score in numpy_video] == pytest.approx([score for _, score in torch_video], abs=1e-4)


def _assert_decoders_agree(model: CaptionModel, decoder, feats: np.ndarray, sources=None):
    torch_sources = None if sources is None else source_ids(sources)
    for search in SEARCHES:
        expected = model.generate(torch.from_numpy(feats), sources=torch_sources, **search)
        _assert_same_hypotheses(expected, decoder.generate(feats, sources=sources, **search))


@pytest.fixture(scope="module")
def real_features(msvd_store) -> np.ndarray:
    ids, feats = open_features(msvd_store).pooled_matrix()
    assert len(ids) == 18
    return feats.astype(np.float32)


def test_equals_the_torch_decoder_on_real_features(caption_model, real_features, msvd_clips):
    """The shipped model (or the tiny trained one) on real clips' features: the 18 clips' store
    when the model reads those, else 4 clips through the model's own backbone (a concept model)."""
    checkpoint = load_checkpoint(caption_model)
    export = inference_export(caption_model)
    if real_features.shape[1] != checkpoint.model.config.feature_dim:
        from captioner.caption import Captioner

        captioner = Captioner.load(caption_model, device="cpu")
        real_features = np.stack([captioner.pooled_features(clip) for clip in msvd_clips[::5]])
    assert real_features.shape[1] == checkpoint.model.config.feature_dim
    _assert_decoders_agree(checkpoint.model, export.decoder, real_features)
    hyps = export.decoder.generate(real_features, beam_size=3)
    assert all(export.vocab.decode(video[0][0]) for video in hyps)  # never an empty caption


def _save(tmp_path, model: CaptionModel, name="model.pt") -> Path:
    vocab = Vocabulary(list(SPECIALS) + [f"w{i}" for i in range(VOCAB - len(SPECIALS))])
    path = tmp_path / name
    save_checkpoint(path, model, vocab, {"lr": 1e-3}, {"backbone": "random", "feature_dim": 24}, 2, {"val": 1.0})
    return path


def _model(seed=0, **overrides) -> CaptionModel:
    torch.manual_seed(seed)
    config = ModelConfig(**{"feature_dim": 24, "embed_size": 16, "hidden_size": 32, "dropout": 0.0, **overrides})
    concept_words = None
    if config.concept_heads:  # each class's word ids, some padded, one class without words
        classes = sum(end - start for start, end in config.concept_heads)
        concept_words = torch.randint(len(SPECIALS), VOCAB, (classes, 3))
        concept_words[::3, 2] = PAD_ID
        concept_words[-1] = PAD_ID
    model = CaptionModel(config, VOCAB, concept_words).eval()
    with torch.no_grad():  # a confident model, so decoding choices are far from ties
        model.head.weight.mul_(15)
    return model


@pytest.mark.parametrize("overrides", [{}, {"video_input": "first_step"},
                                       {"num_layers": 2, "hidden_size": 16, "tie_weights": True},
                                       {"condition_on_source": True},
                                       {"concept_heads": [[12, 18], [18, 24]], "condition_on_source": True},
                                       {"concept_heads": [[12, 18], [18, 24]], "condition_on_source": True,
                                        "video_appearance": False},
                                       {"cell": "gru"}, {"cell": "gru", "video_input": "first_step"},
                                       {"cell": "gru", "num_layers": 2, "hidden_size": 16, "tie_weights": True},
                                       {"cell": "gru", "condition_on_source": True}])
def test_every_model_shape_decodes_like_torch(tmp_path, overrides):
    model = _model(**overrides)
    export = read_export(export_inference(_save(tmp_path, model)))
    feats = np.random.default_rng(1).normal(size=(12, 24)).astype(np.float32)
    sources = ["image", "video"] * 6 if overrides.get("condition_on_source") else None
    _assert_decoders_agree(model, export.decoder, feats, sources)


def test_export_is_beside_the_checkpoint_without_pickles(tmp_path):
    checkpoint = _save(tmp_path, _model(tie_weights=True, hidden_size=16))
    written = export_inference(checkpoint)
    assert written == export_path(checkpoint) == tmp_path / "model.inference.npz"
    with zipfile.ZipFile(written) as archive:
        names = set(archive.namelist())
    assert "head.weight.npy" not in names  # tied: the embedding is stored once
    export = read_export(written)  # np.load(allow_pickle=False) inside: no object arrays
    assert export.checkpoint_sha256 == file_sha256(checkpoint)
    assert export.provenance == {"backbone": "random", "feature_dim": 24}
    assert export.meta["epoch"] == 2 and len(export.vocab) == VOCAB


def test_half_checkpoint_exports_the_same_half_weights(tmp_path):
    """A float16 package: both decoders compute with the same rounded weights, so they still agree."""
    half = export_checkpoint(_save(tmp_path, _model()), tmp_path / "half.pt", half=True)
    written = export_inference(half)
    with np.load(written) as data:
        assert data["lstm.weight_hh_l0"].dtype == np.float16
    feats = np.random.default_rng(2).normal(size=(8, 24)).astype(np.float32)
    _assert_decoders_agree(load_checkpoint(half).model, read_export(written).decoder, feats)


def test_the_export_records_the_cell_and_old_checkpoints_are_lstms(tmp_path):
    gru = read_export(export_inference(_save(tmp_path, _model(cell="gru"), "gru.pt")))
    assert gru.meta["model_config"]["cell"] == "gru"
    old = _save(tmp_path, _model(), "old.pt")
    payload = torch.load(old, weights_only=True)
    del payload["model_config"]["cell"]  # written before the GRU existed
    torch.save(payload, old)
    assert load_checkpoint(old).model.config.cell == "lstm"
    assert read_export(export_inference(old)).meta["model_config"]["cell"] == "lstm"


def test_gru_weights_cannot_be_read_as_an_lstm(tmp_path):
    written = export_inference(_save(tmp_path, _model(cell="gru")))
    with np.load(written) as data:
        weights = {k: data[k] for k in data.files if k != "__meta__"}
        meta = json.loads(str(data["__meta__"]))
    meta["model_config"]["cell"] = "rnn"
    with pytest.raises(ValueError, match="unknown recurrent cell 'rnn'"):
        InferenceExport.from_arrays(weights, meta)


def test_unreadable_exports_are_one_line_errors(tmp_path):
    garbage = tmp_path / "garbage.inference.npz"
    garbage.write_bytes(b"not a zip")
    with pytest.raises(CaptionerError, match="garbage.inference.npz: not a readable inference export"):
        read_export(garbage)
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, x=np.zeros(3))
    with pytest.raises(CaptionerError, match="foreign.npz"):
        read_export(foreign)
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, __meta__=np.array(json.dumps({"format": "something-else"})))
    with pytest.raises(CaptionerError, match="not a captioner inference export"):
        read_export(wrong)
    with pytest.raises(CaptionerError, match="not found"):
        read_export(tmp_path / "missing.npz")


def test_decoding_from_an_export_never_imports_torch(tmp_path):
    written = export_inference(_save(tmp_path, _model()))
    code = ("import sys, numpy as np\nfrom captioner.numpy_decoder import read_export\n"
            f"export = read_export({str(written)!r})\n"
            "hyps = export.decoder.generate(np.ones((2, 24), np.float32), beam_size=3, n_best=2)\n"
            "assert len(hyps) == 2 and all(len(h) == 2 for h in hyps)\n"
            "print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


@pytest.mark.skipif(not DEFAULT_MODEL.is_file(), reason="the default model is not built yet")
def test_shipped_model_has_a_current_export_and_the_package_stays_small():
    export = read_export(export_path(DEFAULT_MODEL))
    assert export.checkpoint_sha256 == file_sha256(DEFAULT_MODEL), "re-run the package step"
    shipped = sum(f.stat().st_size for f in DEFAULT_MODEL.parent.iterdir())
    assert shipped <= 30 * 1024 * 1024


@pytest.mark.skipif(not DEFAULT_MODEL.is_file(), reason="the default model is not built yet")
def test_a_concept_model_searches_and_reranks_in_float32():
    # Its class vectors once came out float64 (an int64 division), and every product of the
    # search after them with it: twice the decoding and reranking time.
    decoder = read_export(export_path(DEFAULT_MODEL)).decoder
    assert decoder.concept_heads
    feats = np.random.default_rng(0).random((3, decoder.feature_dim), dtype=np.float32)
    state = decoder.begin(feats, None, 2)
    log_probs, (layers, video_gates) = decoder.log_probs(state, np.full(6, BOS_ID))
    assert log_probs.dtype == np.float32 and video_gates.dtype == np.float32
    assert all(part.dtype == np.float32 for layer in layers for part in layer)
    # The likelihood the library reranks by reads one word row for all videos: the same figures.
    words = [5, 9, 2]
    state, previous, expected = decoder.begin(feats, None, 1), np.full(3, BOS_ID), np.zeros(3)
    for word in words:
        step_log_probs, state = decoder.log_probs(state, previous)
        expected += step_log_probs[:, word]
        previous = np.full(3, word)
    assert decoder.log_likelihood(feats, words) == pytest.approx(expected / len(words), abs=1e-6)


def test_a_heads_only_video_model_reads_no_appearance_of_videos_but_of_photos(tmp_path):
    model = _model(concept_heads=[[12, 18], [18, 24]], condition_on_source=True, video_appearance=False)
    decoder = read_export(export_inference(_save(tmp_path, model))).decoder
    feats = np.random.default_rng(2).normal(size=(4, 24)).astype(np.float32)
    other_looks = feats.copy()
    other_looks[:, :12] = np.random.default_rng(3).normal(size=(4, 12))  # the appearance part only
    for vectors in (decoder.video_vector, lambda f, s: model._video(torch.from_numpy(f), source_ids(s)).detach().numpy()):
        assert np.allclose(vectors(feats, ["video"] * 4), vectors(other_looks, ["video"] * 4), atol=1e-6)
        assert not np.allclose(vectors(feats, ["image"] * 4), vectors(other_looks, ["image"] * 4), atol=1e-3)


def test_heads_only_video_needs_a_concept_backbone():
    ModelConfig(video_appearance=False).validate()  # a config before training: the heads come with the store
    ModelConfig(feature_dim=24, concept_heads=[[12, 24]], video_appearance=False).validate()
    with pytest.raises(UsageError, match="video_appearance"):
        ModelConfig(feature_dim=24, video_appearance=False).validate()
