"""Model shapes, decoding (greedy, beam, n-best, repetition guard) and checkpoints."""

from __future__ import annotations

import pytest
import torch

from captioner.errors import CaptionerError
from captioner.model import CaptionModel, ModelConfig, export_checkpoint, load_checkpoint, save_checkpoint
from captioner.search import forbid
from captioner.text import BOS_ID, EOS_ID, SPECIALS, Vocabulary

VOCAB = 40


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model(seed=0, **overrides) -> CaptionModel:
    torch.manual_seed(seed)
    config = ModelConfig(**{"feature_dim": 24, "embed_size": 16, "hidden_size": 32, "dropout": 0.0, **overrides})
    model = CaptionModel(config, VOCAB).eval()
    with torch.no_grad():  # a confident model, so decoding choices are far from ties
        model.head.weight.mul_(15)
    return model


@pytest.mark.parametrize("overrides", [{}, {"video_input": "first_step"},
                                       {"num_layers": 2, "hidden_size": 16, "tie_weights": True},
                                       {"cell": "gru"}, {"cell": "gru", "video_input": "first_step"}])
def test_forward_gives_next_word_logits(overrides):
    model = _model(**overrides)
    tokens = torch.randint(4, VOCAB, (3, 7))
    tokens[:, 0] = BOS_ID
    logits = model(torch.randn(3, 24), tokens)
    assert logits.shape == (3, 7, VOCAB)
    # Causal: changing a later word leaves the logits of earlier positions unchanged.
    changed = tokens.clone()
    changed[:, 5] = 4 if int(changed[0, 5]) != 4 else 5
    torch.testing.assert_close(model(torch.randn(3, 24).zero_(), tokens)[:, :5],
                               model(torch.zeros(3, 24), changed)[:, :5])


def test_the_cell_is_an_lstm_or_a_gru():
    assert isinstance(_model().rnn, torch.nn.LSTM) and isinstance(_model(cell="gru").rnn, torch.nn.GRU)
    assert {k.split(".")[0] for k in _model(cell="gru").state_dict()} >= {"gru"}
    with pytest.raises(CaptionerError, match="model.cell must be lstm or gru, not 'rnn'"):
        _model(cell="rnn")


def test_tied_weights_need_equal_sizes():
    with pytest.raises(CaptionerError, match="tie_weights"):
        _model(tie_weights=True)
    model = _model(tie_weights=True, hidden_size=16)
    assert model.head.weight is model.embed.weight


@pytest.mark.parametrize("video_input", ["every_step", "first_step"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_beam_size_one_is_greedy(video_input, cell):
    """A beam of 1 takes the most likely allowed word at every step: checked against the model's
    teacher-forced log-probabilities of the caption it returned."""
    model = _model(video_input=video_input, cell=cell)
    feats = torch.randn(16, 24)
    for penalty in (0.0, 0.8):
        for row, [(tokens, score)] in enumerate(model.generate(feats, beam_size=1, max_len=12, length_penalty=penalty)):
            sequence = torch.tensor([[BOS_ID, *tokens, EOS_ID]])
            with torch.no_grad():
                logp = model(feats[row:row + 1], sequence[:, :-1]).float().log_softmax(-1)[0].numpy()
            for position, word in enumerate(sequence[0, 1:].tolist()):
                allowed = forbid(logp[position:position + 1].copy(), sequence[0, position:position + 1].numpy(),
                                 True, position == 12, first=position == 0)
                assert allowed.argmax() == word
            assert score == pytest.approx(logp[range(len(tokens) + 1), sequence[0, 1:]].sum()
                                          / (len(tokens) + 1) ** penalty, abs=1e-4)


def test_n_best_is_sorted_distinct_and_at_least_as_good_as_greedy():
    model = _model(seed=1)
    feats = torch.randn(6, 24)
    nbest = model.generate(feats, beam_size=5, n_best=5, max_len=10)
    greedy = model.generate(feats, beam_size=1, max_len=10)
    for hyps, [(_, greedy_score)] in zip(nbest, greedy):
        scores = [score for _, score in hyps]
        assert len(hyps) == 5 and scores == sorted(scores, reverse=True)
        assert len({tuple(tokens) for tokens, _ in hyps}) == 5
        assert scores[0] >= greedy_score - 1e-5
        assert all(len(tokens) <= 10 and EOS_ID not in tokens for tokens, _ in hyps)
    with pytest.raises(CaptionerError, match="n_best 3 is more than beam 2"):  # the one rule, captioner.search
        model.generate(feats, beam_size=2, n_best=3)


def test_scores_are_log_probabilities_of_the_caption():
    model = _model(seed=2)
    feats = torch.randn(1, 24)
    for penalty in (0.0, 1.0):
        tokens, score = model.generate(feats, beam_size=3, max_len=8, length_penalty=penalty)[0][0]
        sequence = torch.tensor([[BOS_ID, *tokens, EOS_ID]])
        logp = model(feats, sequence[:, :-1]).log_softmax(-1)[0].gather(1, sequence[0, 1:, None]).sum()
        assert score == pytest.approx(logp.item() / (len(tokens) + 1) ** penalty, abs=1e-4)


def test_repetition_guard():
    model = _model(seed=3)
    with torch.no_grad():  # make word 7 overwhelmingly likely after anything
        model.head.bias.zero_()
        model.head.bias[7] = 100.0
    feats = torch.randn(4, 24)
    unguarded = model.generate(feats, beam_size=3, max_len=6, no_repeat=False)
    assert unguarded[0][0][0] == [7] * 6
    for hyps in model.generate(feats, beam_size=3, max_len=6) + model.generate(feats, beam_size=1, max_len=6):
        tokens = hyps[0][0]
        assert all(a != b for a, b in zip(tokens, tokens[1:])) and tokens.count(7) >= 3


def test_checkpoint_round_trip_and_backbone_check(tmp_path):
    model = _model(video_input="first_step")
    vocab = Vocabulary([*SPECIALS] + [f"w{i}" for i in range(VOCAB - 4)])
    provenance = {"backbone": "efficientnet_lite0", "feature_dim": 24, "weights_sha256": "abc"}
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, vocab, {"seed": 1}, provenance, epoch=3, metrics={"val_CIDEr": 0.5})
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temporary left behind
    checkpoint = load_checkpoint(path)
    assert not checkpoint.model.training and checkpoint.vocab == vocab and checkpoint.epoch == 3
    feats = torch.randn(3, 24)
    assert checkpoint.model.generate(feats, beam_size=2) == model.generate(feats, beam_size=2)
    captions = [best[0].caption for best in checkpoint.predict(feats.numpy())]  # the default decoding
    assert captions == [vocab.decode(h[0][0]) for h in model.generate(feats, beam_size=3, length_penalty=0.5)]
    checkpoint.check_features({**provenance, "frames": "uniform:8"})
    with pytest.raises(CaptionerError, match="different backbone.*efficientnet_lite2") as info:
        checkpoint.check_features({**provenance, "backbone": "efficientnet_lite2"}, "runs/features/x")
    assert str(info.value).startswith("runs/features/x: ")


def test_exported_checkpoint_drops_training_state_and_can_be_half(tmp_path):
    model = _model()
    vocab = Vocabulary([*SPECIALS] + [f"w{i}" for i in range(VOCAB - 4)])
    source = tmp_path / "best.pt"
    save_checkpoint(source, model, vocab, {}, None, epoch=2, metrics={}, train_state={"optimizer": {"x": 1}})
    full = load_checkpoint(export_checkpoint(source, tmp_path / "full.pt"))
    half = load_checkpoint(export_checkpoint(source, tmp_path / "half.pt", half=True))
    assert full.train_state is None and half.train_state is None and half.epoch == 2
    assert (tmp_path / "half.pt").stat().st_size < 0.6 * (tmp_path / "full.pt").stat().st_size
    for name, weights in full.model.state_dict().items():
        assert half.model.state_dict()[name].dtype == torch.float32  # float16 only on disk
        torch.testing.assert_close(half.model.state_dict()[name], weights, atol=1e-3, rtol=1e-3)


def test_bad_checkpoint_files(tmp_path):
    with pytest.raises(CaptionerError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CaptionerError, match="not a readable checkpoint"):
        load_checkpoint(junk)
    other = tmp_path / "other.pt"
    torch.save({"state": 1}, other)
    with pytest.raises(CaptionerError, match="not a captioner checkpoint"):
        load_checkpoint(other)
