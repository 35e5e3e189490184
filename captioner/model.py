"""The caption model: a mean-pooled video vector drives an LSTM (or a GRU) that writes a sentence.

Venugopalan et al., "Translating Videos to Natural Language Using Deep Recurrent Neural
Networks" (NAACL 2015): the video is one vector (the time-mean of CNN frame features). It is
projected to the word-embedding size and fed to the LSTM at every step beside the previous
word, so the decoder cannot forget the video; `video_input="first_step"` feeds it once, as the
first input, like Show and Tell. `cell: gru` swaps the LSTM for a GRU (Cho et al. 2014), a
simpler cell. Decoding is captioner.search (greedy or beam search, stopping at <eos>) over this
model's step, the same search the torch-free decoder runs.

One model can serve photos and videos: with `condition_on_source` a learned vector for the
kind of input (a still image or a video) is added to the video vector, so the decoder learns
each corpus's style (Flickr8k's long descriptive sentences, MSVD's short "a man is slicing a
tomato") instead of averaging them.

A checkpoint holds the weights with everything needed to use them: the vocabulary, the
configs, and the provenance of the features it was trained on, so that features from another
backbone are refused instead of silently producing nonsense.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import search
from .atomic import atomic_open
from .errors import CaptionerError, check_file_format
from .feature_spec import FeatureSpec
from .hashing import file_sha256
from .numpy_decoder import (SOURCES, InferenceExport, check_provenance,  # noqa: F401
                            export_path, source_name, write_export)
from .predict import Decoding, Hypothesis, checkpoint_decoding, predict_captions
from .text import BOS_ID, EOS_ID, PAD_ID, Vocabulary
from .train_config import ModelConfig  # noqa: F401  (re-exported)

CHECKPOINT_FORMAT = "captioner-checkpoint"
CHECKPOINT_VERSION = 1


class ConceptInput(nn.Module):
    """Class probabilities -> a vector in word-embedding space, one per classifier head.

    Each class is the mean embedding of the caption words its name stands for
    (`concept_words`, rows of word ids padded with PAD_ID), taken from the decoder's own word
    embedding; a head's vector is the probability-weighted sum over its classes. So the
    decoder reads "motorcycling 0.7" as the words it writes, and a class no training video
    showed still reaches its words.
    """

    def __init__(self, heads: list, concept_words: torch.Tensor, embed: nn.Embedding):
        super().__init__()
        self.heads = [tuple(h) for h in heads]
        self.register_buffer("concept_words", concept_words.long())
        self.embed = [embed]  # a list, so the shared embedding is not registered twice
        self.proj = nn.Linear(len(self.heads) * embed.embedding_dim, embed.embedding_dim)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        words = self.concept_words
        counts = (words != PAD_ID).sum(1, keepdim=True).clamp(min=1)
        class_vectors = self.embed[0](words).sum(1) / counts  # (classes, E); PAD embeds to 0
        per_head, row = [], 0
        for start, end in self.heads:
            per_head.append(feats[:, start:end] @ class_vectors[row:row + end - start])
            row += end - start
        return self.proj(torch.cat(per_head, dim=1))


class CaptionModel(nn.Module):
    def __init__(self, config: ModelConfig, vocab_size: int, concept_words: torch.Tensor | None = None):
        """`concept_words`: with config.concept_heads, the word ids of every class (see ConceptInput)."""
        super().__init__()
        config.validate()
        if config.feature_dim <= 0:
            raise CaptionerError("model.feature_dim must be positive")
        self.config = config
        self.vocab_size = vocab_size
        self.every_step = config.video_input == "every_step"
        appearance = torch.ones(config.feature_dim, dtype=torch.bool)
        for start, end in config.concept_heads:
            appearance[start:end] = False
        self.register_buffer("appearance", appearance.nonzero()[:, 0], persistent=False)
        self.video_proj = nn.Linear(len(self.appearance), config.embed_size)
        self.source_embed = nn.Embedding(len(SOURCES), config.embed_size) if config.condition_on_source else None
        self.embed = nn.Embedding(vocab_size, config.embed_size, padding_idx=PAD_ID)
        rnn_in = 2 * config.embed_size if self.every_step else config.embed_size
        cell = {"lstm": nn.LSTM, "gru": nn.GRU}[config.cell]
        # Registered under the cell's name: checkpoints' weights are "lstm.*" or "gru.*".
        self.add_module(config.cell, cell(rnn_in, config.hidden_size, config.num_layers, batch_first=True,
                                          dropout=config.dropout if config.num_layers > 1 else 0.0))
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.hidden_size, vocab_size)
        if config.tie_weights:
            self.head.weight = self.embed.weight
        self.concepts = None
        if config.concept_heads:
            classes = sum(end - start for start, end in config.concept_heads)
            if concept_words is None or concept_words.ndim != 2 or len(concept_words) != classes:
                raise CaptionerError(f"model.concept_heads cover {classes} classes: give the word ids of each")
            self.concepts = ConceptInput(config.concept_heads, concept_words, self.embed)

    @property
    def rnn(self) -> nn.Module:
        return getattr(self, self.config.cell)

    def _video(self, feats: torch.Tensor, sources: torch.Tensor | None) -> torch.Tensor:
        """The projected video vector; `sources` (B,) indexes SOURCES (None: all videos)."""
        if sources is None:
            sources = torch.full(feats.shape[:1], SOURCES.index("video"), dtype=torch.long, device=feats.device)
        appearance = feats[:, self.appearance] if self.concepts is not None else feats
        if not self.config.video_appearance:
            appearance = appearance * (sources != SOURCES.index("video")).to(appearance.dtype)[:, None]
        video = self.video_proj(appearance)
        if self.concepts is not None:
            video = video + self.concepts(feats)
        if self.source_embed is not None:
            video = video + self.source_embed(sources)
        return video

    # ------------------------------------------------------------------ training
    def forward(self, feats: torch.Tensor, tokens: torch.Tensor, sample_prob: float = 0.0,
                sources: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, L, V): position t predicts the word after tokens[:, t] (teacher forcing).

        With `sample_prob` > 0 (scheduled sampling, Bengio et al. 2015) each input word after
        <bos> is, with that probability, replaced by a word sampled from the model's own
        previous prediction, so training sees the kind of inputs decoding will.
        """
        video = self.drop(self._video(feats, sources))
        if sample_prob > 0:
            return self._forward_sampled(video, tokens, sample_prob)
        words = self.drop(self.embed(tokens))
        if self.every_step:
            out, _ = self.rnn(torch.cat([words, video[:, None].expand_as(words)], dim=-1))
        else:
            out, _ = self.rnn(torch.cat([video[:, None], words], dim=1))
            out = out[:, 1:]
        return self.head(self.drop(out))

    def _forward_sampled(self, video, tokens, sample_prob):
        state = self._initial_state(video)
        logits, prev = [], tokens[:, 0]
        for t in range(tokens.size(1)):
            if t > 0:
                sampled = torch.multinomial(logits[-1].detach().float().softmax(-1), 1)[:, 0]
                use_sample = torch.rand(prev.shape, device=prev.device) < sample_prob
                prev = torch.where(use_sample, sampled, tokens[:, t])
            step_logits, state = self._step(video, prev, state)
            logits.append(step_logits)
        return torch.stack(logits, dim=1)

    # ------------------------------------------------------------------ one decoding step
    def _initial_state(self, video):
        if self.every_step:
            return None
        _, state = self.rnn(video[:, None])  # the video is the first input, before <bos>
        return state

    def _step(self, video, prev_tokens, state):
        x = self.drop(self.embed(prev_tokens))[:, None]
        if self.every_step:
            x = torch.cat([x, video[:, None]], dim=-1)
        out, state = self.rnn(x, state)
        return self.head(self.drop(out[:, 0])), state

    def sample(self, feats: torch.Tensor, max_len: int = 20, sources: torch.Tensor | None = None,
               no_repeat: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Captions drawn from the model (with gradients), for self-critical training.

        Returns (tokens (B, L), log-probabilities (B, L)); positions after <eos> are PAD_ID
        with log-probability 0. The same words are forbidden as in decoding, so the model is
        trained on the distribution it decodes from.
        """
        video = self.drop(self._video(feats, sources))
        state = self._initial_state(video)
        prev = torch.full((feats.size(0),), BOS_ID, dtype=torch.long, device=feats.device)
        alive = torch.ones(feats.size(0), dtype=torch.bool, device=feats.device)
        tokens, logps = [], []
        for step in range(max_len + 1):
            logits, state = self._step(video, prev, state)
            # Forbidden words get zero probability and the rest is renormalised.
            forbidden = search.forbid(np.zeros(logits.shape, np.float32), prev.cpu().numpy(), no_repeat,
                                      step == max_len, first=step == 0)
            logp = F.log_softmax(logits.float() + torch.from_numpy(forbidden).to(logits.device), -1)
            word = torch.multinomial(logp.detach().exp(), 1)[:, 0]
            word_logp = logp.gather(1, word[:, None])[:, 0]
            tokens.append(torch.where(alive, word, torch.full_like(word, PAD_ID)))
            logps.append(torch.where(alive, word_logp, torch.zeros_like(word_logp)))
            alive = alive & (word != EOS_ID)
            # Ended rows are fed <bos>: any word keeps them valid (their outputs are masked),
            # while <eos> again would leave nothing allowed at the length limit.
            prev = torch.where(alive, word, torch.full_like(word, BOS_ID))
            if not alive.any():
                break
        return torch.stack(tokens, 1), torch.stack(logps, 1)

    # ------------------------------------------------------------------ the search's Step
    def begin(self, feats, sources, copies: int):
        """`sources`: a (B,) tensor of SOURCES indices, or None (all videos)."""
        feats = torch.as_tensor(feats, device=self.head.weight.device)
        video = self._video(feats, sources).repeat_interleave(copies, dim=0)
        return video, self._initial_state(video)

    def log_probs(self, state, prev: np.ndarray):
        video, rnn_state = state
        logits, rnn_state = self._step(video, torch.from_numpy(prev).to(video.device), rnn_state)
        return F.log_softmax(logits.float(), -1).cpu().numpy(), (video, rnn_state)

    def select(self, state, rows: np.ndarray):
        video, rnn_state = state
        rows = torch.from_numpy(rows).to(video.device)
        if isinstance(rnn_state, tuple):  # an LSTM's (h, c)
            return video[rows], tuple(part[:, rows] for part in rnn_state)
        return video[rows], None if rnn_state is None else rnn_state[:, rows]

    # ------------------------------------------------------------------ decoding
    @torch.no_grad()
    def generate(self, feats: torch.Tensor, beam_size: int = 1, max_len: int = 20,
                 length_penalty: float = 0.0, n_best: int = 1, no_repeat: bool = True,
                 sources: torch.Tensor | None = None) -> list[list[tuple[list[int], float]]]:
        """Per video, the n best (word ids, score), best first (captioner.search.beam_search)."""
        return search.beam_search(self, feats, sources, beam_size, max_len, length_penalty, n_best, no_repeat)


def source_ids(sources, device=None) -> torch.Tensor:
    """Indices into SOURCES for a sequence of "image"/"video" names."""
    unknown = set(sources) - set(SOURCES)
    if unknown:
        raise ValueError(f"source must be one of {SOURCES}, got {sorted(unknown)}")
    return torch.tensor([SOURCES.index(s) for s in sources], dtype=torch.long, device=device)


# ---------------------------------------------------------------------- checkpoints
def save_checkpoint(path: str | os.PathLike, model: CaptionModel, vocab: Vocabulary, config: dict,
                    provenance: Mapping | None, epoch: int, metrics: dict, train_state: dict | None = None) -> None:
    """Write atomically (temporary file + rename): a crash never leaves half a checkpoint."""
    path = Path(path)
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
               "model_config": asdict(model.config), "vocab": vocab.words,
               "model": model.state_dict(), "config": config,
               "provenance": None if provenance is None else FeatureSpec(provenance).to_dict(),
               "epoch": epoch, "metrics": metrics, "train_state": train_state}
    with atomic_open(path) as fh:
        torch.save(payload, fh)


@dataclass
class Checkpoint:
    model: CaptionModel  # in eval mode
    vocab: Vocabulary
    config: dict  # the training config it was made with
    provenance: FeatureSpec | None  # of the features it was trained on (the training store's)
    path: Path
    epoch: int = 0
    metrics: dict = field(default_factory=dict)
    train_state: dict | None = None  # optimizer, scheduler, RNG: only what --resume needs

    def __post_init__(self):
        self.provenance = FeatureSpec.from_dict(self.provenance)

    def check_features(self, provenance: Mapping | None, features_path=None) -> None:
        check_provenance(self.provenance, provenance, self.path, features_path)

    @property
    def decoding(self) -> Decoding:
        """How this model is decoded unless told otherwise (its training config's `decoding`)."""
        return checkpoint_decoding(self.config)

    def predict(self, feats, sources: str | list[str] = "video", n_best: int = 1,
                decoding: Decoding | None = None) -> list[list[Hypothesis]]:
        """The n-best captions of each pooled feature vector (rows of a (B, D) array or tensor),
        decoded as `decoding` says (default: this checkpoint's own settings).

        `sources` ("image" or "video", one for all rows or one per row) says what the vectors
        were extracted from; it matters only to a model trained with condition_on_source.
        """
        feats = np.asarray(feats, dtype=np.float32) if not isinstance(feats, torch.Tensor) else feats
        if feats.ndim == 1:
            feats = feats[None]
        return predict_captions(self.model, self.vocab, feats, sources, decoding or self.decoding, n_best)


def export_checkpoint(source: str | os.PathLike, dest: str | os.PathLike, *, half: bool = False) -> Path:
    """A copy of a checkpoint to ship: without the optimizer state and, with `half`, with its
    weights in float16 (half the size: a 1024-unit LSTM fits a 30 MB package). Loading copies
    them back into float32 parameters."""
    payload = torch.load(source, map_location="cpu", weights_only=True)
    payload["train_state"] = None
    if half:
        payload["model"] = {k: v.half() if v.is_floating_point() else v for k, v in payload["model"].items()}
    dest = Path(dest)
    with atomic_open(dest) as fh:
        torch.save(payload, fh)
    return dest


def _read_payload(path: Path, device: str | torch.device = "cpu") -> dict:
    """A checkpoint file's contents, checked to be one this captioner understands."""
    if not path.is_file():
        raise CaptionerError("checkpoint not found", path)
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # torch raises many types for a truncated or foreign file
        raise CaptionerError(f"not a readable checkpoint ({type(exc).__name__}: {exc})", path) from None
    check_file_format(payload, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, "checkpoint", path)
    return payload


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> Checkpoint:
    """A trained model in eval mode with its vocabulary, config and feature provenance."""
    path = Path(path)
    payload = _read_payload(path, device)
    vocab = Vocabulary(payload["vocab"])
    model = CaptionModel(ModelConfig(**payload["model_config"]), len(vocab),
                         payload["model"].get("concepts.concept_words")).to(device)
    model.load_state_dict(payload["model"])
    model.eval()
    return Checkpoint(model=model, vocab=vocab, config=payload["config"], provenance=payload["provenance"],
                      path=path, epoch=payload["epoch"], metrics=payload["metrics"],
                      train_state=payload.get("train_state"))


# ---------------------------------------------------------------------- inference export
def _export_arrays(payload: dict, path: Path) -> tuple[dict, dict]:
    # The weights keep the checkpoint's dtype (float16 after `export_checkpoint(half=True)`),
    # so the torch and numpy decoders compute with exactly the same numbers.
    weights = {k: v.detach().cpu().numpy() for k, v in payload["model"].items()
               if v.is_floating_point() or k == "concepts.concept_words"}
    if payload["model_config"].get("tie_weights"):
        weights.pop("head.weight", None)  # the word embedding again: stored once
    meta = {"model_config": asdict(ModelConfig(**payload["model_config"])),  # every key, the cell too
            "vocab": payload["vocab"],
            "provenance": payload["provenance"], "epoch": payload.get("epoch", 0),
            "metrics": payload.get("metrics", {}), "checkpoint_sha256": file_sha256(path),
            # What the torch-free path decodes with unless told otherwise: the checkpoint's own.
            "decoding": {k: v for k, v in asdict(checkpoint_decoding(payload.get("config"))).items()
                         if v is not None}}
    return weights, meta


def inference_export(path: str | os.PathLike) -> InferenceExport:
    """The torch-free decoder (captioner.numpy_decoder) of any checkpoint, built in memory."""
    path = Path(path)
    weights, meta = _export_arrays(_read_payload(path), path)
    return InferenceExport.from_arrays(weights, meta, path)


def export_inference(path: str | os.PathLike, dest: str | os.PathLike | None = None) -> Path:
    """Write a checkpoint's inference export (default: beside it, `model.inference.npz`)."""
    path = Path(path)
    weights, meta = _export_arrays(_read_payload(path), path)
    return write_export(dest or export_path(path), weights, meta)
