"""The caption decoder in numpy, read from an inference export: captioning without torch.

`captioner caption` spent most of its time importing torch for a decoder that does a few
small matrix products per word. This module is the same decoder (the video vector, the LSTM or
GRU step; the search over it is captioner.search, shared with the torch model) over plain numpy
arrays, and the file format it reads: `model.inference.npz` beside `model.pt`, the weights
(float32, or float16 when the checkpoint holds float16) with the vocabulary, config and feature
provenance as JSON. Given the same features it returns the torch decoder's captions and scores
(to float32 rounding); tests check that on real features.

What a checkpoint and its export share without torch (the input kinds, the provenance check)
lives here too; `captioner.model` re-exports it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .atomic import atomic_open
from .errors import CaptionerError, check_file_format
from .feature_spec import MODEL_KEYS, FeatureSpec, jsonable
from . import search
from .text import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Vocabulary

EXPORT_FORMAT = "captioner-inference"
EXPORT_VERSION = 1
EXPORT_SUFFIX = ".inference.npz"
_META_KEY = "__meta__"  # the JSON metadata, stored as a 0-d string array (no pickle needed)
# The kinds of input a source-conditioned model tells apart, by index.
SOURCES = ("image", "video")
# ---------------------------------------------------------------------- shared with the checkpoint
def source_name(is_image: bool) -> str:
    """The source of an input: a still image or a video (a store entry's meta["is_image"])."""
    return "image" if is_image else "video"


def check_provenance(trained_on: Mapping | None, given: Mapping | None, checkpoint_path, features_path) -> None:
    """Refuse features extracted differently from the ones a checkpoint was trained on."""
    trained_on, given = FeatureSpec.from_dict(trained_on), FeatureSpec.from_dict(given)
    differing = trained_on.differences(given, MODEL_KEYS) if trained_on is not None and given is not None else []
    if differing:
        what = ", ".join(f"{k} {given[k]!r} (checkpoint {checkpoint_path} expects {trained_on[k]!r})"
                         for k in differing)
        raise CaptionerError(f"features were extracted with a different backbone: {what}; re-extract "
                             f"with --backbone {trained_on.backbone}", features_path)


# ---------------------------------------------------------------------- the export file
def export_path(checkpoint_path: str | os.PathLike) -> Path:
    """Where a checkpoint's inference export lives: beside it, `model.pt` -> `model.inference.npz`."""
    path = Path(checkpoint_path)
    return path.with_name(path.stem + EXPORT_SUFFIX)


def write_export(path: str | os.PathLike, weights: dict[str, np.ndarray], meta: dict) -> Path:
    """Write weights + metadata atomically; `meta` needs model_config and vocab."""
    path = Path(path)
    payload = {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, **meta}
    with atomic_open(path) as fh:
        np.savez(fh, **{_META_KEY: np.array(json.dumps(payload, default=jsonable))}, **weights)
    return path


class InferenceExport:
    """A decoder with everything needed to caption: vocabulary, feature provenance, metadata."""

    def __init__(self, decoder: "NumpyDecoder", vocab: Vocabulary, meta: dict, path: Path | None = None):
        self.decoder = decoder
        self.vocab = vocab
        self.meta = meta
        self.provenance = FeatureSpec.from_dict(meta.get("provenance"))
        self.path = path

    @property
    def checkpoint_sha256(self) -> str | None:
        """The digest of the checkpoint file this was exported from (None if not recorded)."""
        return self.meta.get("checkpoint_sha256")

    def check_features(self, provenance: Mapping | None, features_path=None) -> None:
        check_provenance(self.provenance, provenance, self.path, features_path)

    def sentence_log_likelihood(self, sentence: str, feats: np.ndarray) -> np.ndarray:
        """(N,): the mean log-probability per word of `sentence` given each of N feature vectors,
        as the model would say it of that video (words outside the vocabulary are skipped).
        How well a video explains a query: what `captioner.library` reranks its hits by."""
        from .text import tokenize

        words = [i for i in self.vocab.encode(tokenize(sentence)) if i != UNK_ID] + [EOS_ID]
        return self.decoder.log_likelihood(np.asarray(feats, dtype=np.float32), words)

    @classmethod
    def from_arrays(cls, weights: dict[str, np.ndarray], meta: dict, path: Path | None = None) -> "InferenceExport":
        vocab = Vocabulary(meta["vocab"])
        return cls(NumpyDecoder(weights, meta["model_config"], len(vocab)), vocab, meta, path)


def read_export(path: str | os.PathLike) -> InferenceExport:
    """An inference export, read without torch; a foreign or damaged file is a CaptionerError."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data[_META_KEY]))
            weights = {k: data[k] for k in data.files if k != _META_KEY}
    except FileNotFoundError:
        raise CaptionerError("inference export not found", path) from None
    except (OSError, ValueError, KeyError) as exc:  # not a zip, no metadata, bad JSON, pickled arrays
        raise CaptionerError(f"not a readable inference export ({type(exc).__name__}: {exc})", path) from None
    check_file_format(meta, EXPORT_FORMAT, EXPORT_VERSION, "inference export", path)
    try:
        return InferenceExport.from_arrays(weights, meta, path)
    except (KeyError, ValueError) as exc:
        raise CaptionerError(f"inference export is incomplete ({type(exc).__name__}: {exc})", path) from None


# ---------------------------------------------------------------------- the decoder
def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # exp(-x) would overflow for very negative gates


def _log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


class _LSTMLayer:
    """One layer of torch.nn.LSTM; its state is (h, c). Weights are transposed once so every
    step is x @ W; the two biases are always summed."""

    def __init__(self, w_ih, w_hh, b_ih, b_hh):
        self.w_ih, self.w_hh = np.ascontiguousarray(w_ih.T), np.ascontiguousarray(w_hh.T)
        self.bias = b_ih + b_hh

    def zero(self, rows: int):
        hidden = self.w_hh.shape[0]
        return np.zeros((rows, hidden), np.float32), np.zeros((rows, hidden), np.float32)

    def step(self, x_part: np.ndarray, state):
        """(output, state) after one input; `x_part` is the input already multiplied by w_ih."""
        h, c = state
        gates = x_part + h @ self.w_hh + self.bias
        i, f, g, o = np.split(gates, 4, axis=1)  # torch's gate order
        c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
        out = _sigmoid(o) * np.tanh(c)
        return out, (out, c)


class _GRULayer:
    """One layer of torch.nn.GRU (Cho et al. 2014); its state is (h,). The biases stay apart:
    the reset gate scales the hidden state's share of the candidate, bias included."""

    def __init__(self, w_ih, w_hh, b_ih, b_hh):
        self.w_ih, self.w_hh = np.ascontiguousarray(w_ih.T), np.ascontiguousarray(w_hh.T)
        self.b_ih, self.b_hh = b_ih, b_hh

    def zero(self, rows: int):
        return (np.zeros((rows, self.w_hh.shape[0]), np.float32),)

    def step(self, x_part: np.ndarray, state):
        (h,) = state
        x_r, x_z, x_n = np.split(x_part + self.b_ih, 3, axis=1)  # torch's gate order
        h_r, h_z, h_n = np.split(h @ self.w_hh + self.b_hh, 3, axis=1)
        reset, update = _sigmoid(x_r + h_r), _sigmoid(x_z + h_z)
        candidate = np.tanh(x_n + reset * h_n)
        h = (1 - update) * candidate + update * h
        return h, (h,)


CELLS = {"lstm": _LSTMLayer, "gru": _GRULayer}


class NumpyDecoder:
    """CaptionModel's inference half (captioner.model) in float32 numpy: the `Step` that
    captioner.search searches over.

    `weights` are CaptionModel's state_dict as arrays (any float dtype; computed in float32).
    """

    def __init__(self, weights: dict[str, np.ndarray], model_config: dict, vocab_size: int):
        w = {k: np.asarray(v, dtype=np.float32) for k, v in weights.items()}
        self.config = dict(model_config)
        self.vocab_size = vocab_size
        self.every_step = self.config.get("video_input", "every_step") == "every_step"
        self.video_appearance = bool(self.config.get("video_appearance", True))  # exports before it read it
        self.embed_size = int(self.config["embed_size"])
        self.video_weight = np.ascontiguousarray(w["video_proj.weight"].T)
        self.feature_dim = int(self.config.get("feature_dim") or self.video_weight.shape[0])
        self.video_bias = w["video_proj.bias"]
        self.source_embed = w.get("source_embed.weight")  # only with condition_on_source
        self.embed = w["embed.weight"]
        cell = self.config.get("cell", "lstm")  # exports made before the GRU have LSTMs
        if cell not in CELLS:
            raise ValueError(f"unknown recurrent cell {cell!r} (this captioner knows {', '.join(CELLS)})")
        self.layers = [CELLS[cell](*(w[f"{cell}.{part}_l{n}"] for part in ("weight_ih", "weight_hh", "bias_ih",
                                                                            "bias_hh")))
                       for n in range(int(self.config.get("num_layers", 1)))]
        head = w["embed.weight"] if self.config.get("tie_weights") else w["head.weight"]
        self.head_weight = np.ascontiguousarray(head.T)
        self.head_bias = w["head.bias"]
        if self.embed.shape[0] != vocab_size or self.head_bias.shape[0] != vocab_size:
            raise ValueError(f"weights are for {self.embed.shape[0]} words, the vocabulary has {vocab_size}")
        # Concept inputs (model.ConceptInput): each class is the mean embedding of its words.
        self.concept_heads = [tuple(h) for h in self.config.get("concept_heads") or []]
        if self.concept_heads:
            words = np.asarray(weights["concepts.concept_words"]).astype(np.int64)
            counts = np.maximum((words != PAD_ID).sum(1, keepdims=True), 1)
            # The <pad> row embeds to 0. float32: divided by int64 counts it would be float64, and
            # every product of the search after it too (twice the time, measured).
            self.class_vectors = (self.embed[words].sum(1) / counts).astype(np.float32)
            self.concept_weight = np.ascontiguousarray(w["concepts.proj.weight"].T)
            self.concept_bias = w["concepts.proj.bias"]
            appearance = np.ones(self.feature_dim, dtype=bool)
            for start, end in self.concept_heads:
                appearance[start:end] = False
            self.appearance = np.flatnonzero(appearance)

    # ------------------------------------------------------------------ the per-video input
    def video_vector(self, feats: np.ndarray, sources=None) -> np.ndarray:
        """(B, embed) the decoder sees beside every word; `sources`: SOURCES names (None: videos)."""
        names = ["video"] * len(feats) if sources is None else list(sources)
        if not self.concept_heads:
            video = feats @ self.video_weight + self.video_bias
        else:
            per_head, row = [], 0
            for start, end in self.concept_heads:
                per_head.append(feats[:, start:end] @ self.class_vectors[row:row + end - start])
                row += end - start
            appearance = feats[:, self.appearance]
            if not self.video_appearance:
                appearance = appearance * np.array([s != "video" for s in names], np.float32)[:, None]
            video = (appearance @ self.video_weight + self.video_bias
                     + np.concatenate(per_head, axis=1) @ self.concept_weight + self.concept_bias)
        if self.source_embed is not None:
            video = video + self.source_embed[[SOURCES.index(s) for s in names]]
        return video

    # ------------------------------------------------------------------ one step
    def _rnn(self, x_part: np.ndarray, state):
        """One step of every layer; `x_part` is the first layer's input already multiplied by its weights."""
        new_state, out = [], None
        for n, layer in enumerate(self.layers):
            out, layer_state = layer.step(x_part if n == 0 else out @ layer.w_ih, state[n])
            new_state.append(layer_state)
        return out, new_state

    def _start(self, video: np.ndarray):
        """(state, the video's constant share of the first layer's gates per step)."""
        w_ih = self.layers[0].w_ih
        state = [layer.zero(len(video)) for layer in self.layers]
        if self.every_step:
            # The word and the video are concatenated at every step; the video half of the
            # product never changes, so it is computed once per caption, not once per word.
            return state, video @ w_ih[self.embed_size:]
        _, state = self._rnn(video @ w_ih, state)  # the video is the first input, before <bos>
        return state, None

    # ------------------------------------------------------------------ the search's Step
    def begin(self, feats, sources, copies: int):
        return self._start(np.repeat(self.video_vector(self._rows(feats), sources), copies, axis=0))

    def log_probs(self, state, prev: np.ndarray):
        layers, video_gates = state
        x_part = self.embed[prev] @ self.layers[0].w_ih[: self.embed_size]
        if video_gates is not None:
            x_part = x_part + video_gates
        out, layers = self._rnn(x_part, layers)
        return _log_softmax(out @ self.head_weight + self.head_bias), (layers, video_gates)

    def select(self, state, rows: np.ndarray):
        layers, video_gates = state
        return ([tuple(part[rows] for part in layer) for layer in layers],
                None if video_gates is None else video_gates[rows])

    def _rows(self, feats) -> np.ndarray:
        return np.asarray(feats, dtype=np.float32).reshape(-1, self.feature_dim)

    def log_likelihood(self, feats: np.ndarray, words: list[int]) -> np.ndarray:
        """(N,): the mean log-probability of the word ids `words` (ending with <eos>) after <bos>,
        for each of N videos, the model reading the words as given (teacher forcing)."""
        rows = self._rows(feats)
        state = self.begin(rows, None, 1)
        # Every video reads the same word: its share of the gates is computed for one row, and
        # broadcasts over the videos' states.
        previous, total = np.array([BOS_ID]), np.zeros(len(rows))
        for word in words:
            log_probs, state = self.log_probs(state, previous)
            total += log_probs[:, word]
            previous = np.array([word])
        return total / max(len(words), 1)

    # ------------------------------------------------------------------ decoding
    def generate(self, feats, beam_size: int = 1, max_len: int = 20, length_penalty: float = 0.0,
                 n_best: int = 1, no_repeat: bool = True, sources=None) -> list[list[tuple[list[int], float]]]:
        """Per video, the n best (word ids, score), best first (captioner.search.beam_search)."""
        return search.beam_search(self, self._rows(feats), sources, beam_size, max_len, length_penalty, n_best,
                                  no_repeat)
