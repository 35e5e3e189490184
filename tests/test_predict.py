"""One features→captions path: the API, validation, the pipeline and both decoders decode alike,
with the decoding settings the checkpoint records."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from captioner.caption import Captioner
from captioner.config import from_dict, validate_config
from captioner.errors import CaptionerError
from captioner.model import CaptionModel, ModelConfig, export_inference, load_checkpoint, save_checkpoint
from captioner.numpy_decoder import read_export
from captioner.predict import DEFAULT_DECODING, Decoding, checkpoint_decoding, predict_captions
from captioner.store import open_features
from captioner.text import BOS_ID, EOS_ID, SPECIALS, Vocabulary

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DIM, VOCAB = 24, 40
# Settings far from every default, so a path that ignores the checkpoint's decodes differently.
RECORDED = {"beam": 4, "length_penalty": 1.0, "max_len": 5}


def _checkpoint(path: Path, decoding: dict | None) -> Path:
    torch.manual_seed(3)
    model = CaptionModel(ModelConfig(feature_dim=DIM, embed_size=16, hidden_size=32, dropout=0.0), VOCAB).eval()
    with torch.no_grad():  # a confident model, so decoding choices are far from ties
        model.head.weight.mul_(15)
    vocab = Vocabulary(list(SPECIALS) + [f"w{i}" for i in range(VOCAB - len(SPECIALS))])
    config = {"seed": 0, **({"decoding": decoding} if decoding is not None else {})}
    save_checkpoint(path, model, vocab, config, {"backbone": "random", "feature_dim": DIM, "frames": "uniform:4"},
                    1, {})
    return path


def _store(path: Path, rows: int = 12):
    rng = np.random.default_rng(5)
    store = open_features(path, "a")
    store.set_provenance({"backbone": "random", "feature_dim": DIM, "frames": "uniform:4"})
    for k in range(rows):
        store.put(f"v{k:02d}", rng.normal(size=(3, DIM)).astype(np.float32), {"is_image": k % 4 == 0})
    return open_features(path)


def test_decoding_defaults_come_from_the_checkpoint(tmp_path):
    recorded = load_checkpoint(_checkpoint(tmp_path / "a.pt", RECORDED))
    assert recorded.decoding == Decoding(**RECORDED)
    assert read_export(export_inference(recorded.path)).meta["decoding"] == RECORDED
    older = load_checkpoint(_checkpoint(tmp_path / "b.pt", None))  # saved before configs had the section
    assert older.decoding == DEFAULT_DECODING == Decoding(beam=3, length_penalty=0.5, max_len=20)
    assert checkpoint_decoding({"decoding": {"beam": 1}}) == Decoding(beam=1)


def test_every_path_decodes_a_store_alike_with_the_checkpoints_settings(tmp_path, monkeypatch):
    """The pipeline's predict stage, validation in training, Captioner (numpy) and Checkpoint (torch)."""
    from pipelines.stages import PipelineConfig, _predict_stage

    import captioner.metrics
    from captioner.train import CaptionTensors, TrainConfig, validate

    train_dir, store_dir, predict_dir = tmp_path / "train", tmp_path / "extract-test", tmp_path / "predict"
    checkpoint = load_checkpoint(_checkpoint(train_dir / "best.pt", RECORDED))
    store = _store(store_dir / "features")
    ids, feats = store.pooled_matrix()
    sources = ["image" if k % 4 == 0 else "video" for k in range(len(ids))]
    expected = [best[0].caption for best in
                predict_captions(checkpoint.model, checkpoint.vocab, feats, sources, Decoding(**RECORDED))]
    # The recorded settings matter here: the default ones give other captions for these vectors.
    assert expected != [best[0].caption for best in
                        predict_captions(checkpoint.model, checkpoint.vocab, feats, sources, DEFAULT_DECODING)]

    predict_dir.mkdir()
    _predict_stage(PipelineConfig(), {"test": "extract-test"}).run(
        {"train": train_dir, "extract-test": store_dir, "predict": predict_dir})
    assert json.loads((predict_dir / "predictions.json").read_text()) == dict(zip(ids, expected))

    api = Captioner.load(checkpoint.path, device="cpu", load_backbone=False)
    assert api.decoding == Decoding(**RECORDED)
    assert {i: c.caption for i, c in api.caption_store(store)} == dict(zip(ids, expected))
    assert [best[0].caption for best in checkpoint.predict(feats, sources)] == expected

    # Validation decodes with the same settings, but its own beam (val_beam_size).
    seen = {}
    monkeypatch.setattr(captioner.metrics, "score", lambda predictions, refs, metrics: seen.update(predictions)
                        or {"CIDEr": 0.0})
    data = CaptionTensors(video_ids=ids, feats=torch.from_numpy(feats),
                          sources=torch.tensor([0 if s == "image" else 1 for s in sources]),
                          tokens=torch.tensor([[BOS_ID, 5, EOS_ID]] * len(ids)), video_of=torch.arange(len(ids)),
                          lengths=torch.full((len(ids),), 3), paired=len(ids))
    cfg = from_dict(TrainConfig, {"decoding": RECORDED, "val_beam_size": RECORDED["beam"], "val_metrics": ["CIDEr"]})
    validate(checkpoint.model, data, {i: ["w1 w2"] for i in ids}, checkpoint.vocab, cfg)
    assert seen == {i: c or "<empty>" for i, c in zip(ids, expected)}


def test_batches_give_the_captions_of_single_rows(tmp_path):
    checkpoint = load_checkpoint(_checkpoint(tmp_path / "m.pt", None))
    export = read_export(export_inference(checkpoint.path))
    feats = np.random.default_rng(7).normal(size=(9, DIM)).astype(np.float32)
    for decoder in (checkpoint.model, export.decoder):
        together = predict_captions(decoder, checkpoint.vocab, feats, n_best=2, batch_size=4)
        alone = [predict_captions(decoder, checkpoint.vocab, row[None], n_best=2)[0] for row in feats]
        assert [[h.caption for h in row] for row in together] == [[h.caption for h in row] for row in alone]
        assert [h.score for row in together for h in row] == pytest.approx([h.score for row in alone for h in row],
                                                                          abs=1e-4)


def test_decoding_settings_out_of_range_are_one_line_errors(tmp_path):
    with pytest.raises(CaptionerError, match="^beam must be at least 1, got 0$"):
        DEFAULT_DECODING.but(beam=0)
    with pytest.raises(CaptionerError, match="decoding.length_penalty must be a number >= 0"):
        from captioner.train import TrainConfig

        validate_config(from_dict(TrainConfig, {"decoding": {"length_penalty": -1}}))
    from pipelines import load_pipeline

    config = Path(__file__).resolve().parent.parent / "configs" / "pipeline_smoke.yaml"
    with pytest.raises(CaptionerError, match="predict.max_len must be at least 1"):
        load_pipeline(config, ["predict.max_len=0"])
