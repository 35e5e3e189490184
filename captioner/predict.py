"""Pooled features → captions: the one place every caption of the project is decoded.

`captioner caption`, the Python API, the web server, validation during training and the
pipeline's predict stage all call `predict_captions` (or `predict_store`, its loop over a
feature store), so a pipeline report scores exactly the decoder users run. It takes either
decoder: `CaptionModel` (torch, for training and GPUs) or `NumpyDecoder` (the torch-free one
`captioner caption` uses); both run the same search and give the same captions.

How to decode (beam size, length penalty, length limit) is a `Decoding`. Its defaults belong
to the model: a training config's `decoding` section is saved in every checkpoint and its
inference export, and `checkpoint_decoding` reads it back (checkpoints from before the section
get `DEFAULT_DECODING`, what `captioner caption` always used).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Iterable, Iterator, NamedTuple, Sequence

import numpy as np

from .errors import CaptionerError
from .numpy_decoder import SOURCES, source_name


@dataclass(frozen=True)
class Decoding:
    """How captions are searched for; also the `decoding` section of a training config."""

    beam: int = 3
    # Beam search ranks by log-probability / (words + 1) ** this: 0 favours short, generic captions.
    length_penalty: float = 0.5
    max_len: int = 20  # longest caption in words

    def validate(self) -> None:
        """A one-line CaptionerError for any value out of range (config.validate_config calls it too)."""
        from .config import require

        require(isinstance(self.beam, int) and self.beam >= 1, "decoding.beam", "at least 1", self.beam)
        require(isinstance(self.max_len, int) and self.max_len >= 1, "decoding.max_len", "at least 1",
                self.max_len)
        require(isinstance(self.length_penalty, (int, float)) and math.isfinite(self.length_penalty)
                and self.length_penalty >= 0, "decoding.length_penalty", "a number >= 0", self.length_penalty)

    def but(self, beam: int | None = None, length_penalty: float | None = None,
            max_len: int | None = None) -> "Decoding":
        """These settings with the given ones changed (None keeps a setting), checked."""
        changes = {k: v for k, v in (("beam", beam), ("length_penalty", length_penalty), ("max_len", max_len))
                   if v is not None}
        result = dataclasses.replace(self, **changes)
        try:
            result.validate()
        except CaptionerError as error:  # the config's field names mean nothing to an API caller
            raise CaptionerError(error.reason.replace("decoding.", "")) from None
        return result


DEFAULT_DECODING = Decoding()


def checkpoint_decoding(config: dict | None) -> Decoding:
    """The decoding a checkpoint's training config asks for (its `decoding` section), else the default."""
    recorded = (config or {}).get("decoding") or {}
    fields = {f.name for f in dataclasses.fields(Decoding)}
    return dataclasses.replace(DEFAULT_DECODING, **{k: v for k, v in recorded.items() if k in fields})


class Hypothesis(NamedTuple):
    caption: str
    score: float  # sum of word log-probabilities (with <eos>) / (words + 1) ** length_penalty


def _is_torch(decoder) -> bool:
    return hasattr(decoder, "parameters")  # a CaptionModel; checked without importing torch


def predict_captions(decoder, vocab, feats, sources: str | Sequence[str] = "video",
                     decoding: Decoding = DEFAULT_DECODING, n_best: int = 1,
                     batch_size: int = 256) -> list[list[Hypothesis]]:
    """Per row of `feats` (pooled vectors, (N, D) array or tensor), its `n_best` captions, best first.

    `decoder` is a torch `CaptionModel` or a `NumpyDecoder`, `vocab` the vocabulary it was trained
    with. `sources` says what each row was extracted from ("image" or "video", one for all rows or
    one per row); it matters only to a model trained with condition_on_source. `n_best` is capped
    at the beam size (a beam holds no more). Rows are decoded `batch_size` at a time.
    """
    decoding.validate()
    rows = len(feats)
    names = [sources] * rows if isinstance(sources, str) else list(sources)
    if len(names) != rows or set(names) - set(SOURCES):
        raise ValueError(f"sources: one of {SOURCES} per row ({rows}), got {names!r}")
    n_best = max(1, min(n_best, decoding.beam))
    search = dict(beam_size=decoding.beam, max_len=decoding.max_len, length_penalty=decoding.length_penalty,
                  n_best=n_best)
    hyps = []
    for start in range(0, rows, batch_size):
        batch, batch_sources = feats[start:start + batch_size], names[start:start + batch_size]
        hyps.extend(_generate_torch(decoder, batch, batch_sources, search) if _is_torch(decoder)
                    else _generate_numpy(decoder, batch, batch_sources, search))
    return [[Hypothesis(vocab.decode(tokens), float(score)) for tokens, score in row] for row in hyps]


def _generate_numpy(decoder, feats, sources, search):
    from threadpoolctl import threadpool_limits

    # A few (beam, 512) x (512, 2560) products per word: BLAS threads only add overhead here,
    # and on a busy 2-core machine they made decoding 10-20x slower (measured).
    with threadpool_limits(1, user_api="blas"):
        return decoder.generate(np.asarray(feats, dtype=np.float32), sources=sources, **search)


def _generate_torch(model, feats, sources, search):
    import torch

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            feats = torch.as_tensor(feats, device=device) if isinstance(feats, torch.Tensor) \
                else torch.as_tensor(np.asarray(feats, dtype=np.float32), device=device)
            ids = torch.tensor([SOURCES.index(s) for s in sources], dtype=torch.long, device=device)
            return model.generate(feats, sources=ids, **search)
    finally:
        model.train(was_training)


class StoreItem(NamedTuple):
    id: str
    hypotheses: list[Hypothesis] | None  # n-best, best first; None when it failed
    error: CaptionerError | None
    pooled: np.ndarray | None  # the vector it was captioned from
    meta: dict | None  # its store entry's meta (source path, frames, is_image, ...)


def predict_store(decoder, vocab, store, ids: Iterable[str] | None = None, decoding: Decoding = DEFAULT_DECODING,
                  n_best: int = 1, batch_size: int = 256) -> Iterator[StoreItem]:
    """Caption the pooled vectors of a feature store (`ids`, default all), `batch_size` at a time.

    Yields one StoreItem per id, in order: an id the store lacks, or an unreadable entry, fails
    alone. Check the store's provenance against the model first (`check_features`).
    """
    if (store.provenance or {}).get("mirror"):
        raise CaptionerError("this store holds mirrored frames' features (extract --mirror), a training "
                             "augmentation; caption from a store extracted without --mirror", store.path)
    ids = store.ids() if ids is None else list(ids)
    for start in range(0, len(ids), batch_size):
        chunk, readable, failed = ids[start:start + batch_size], {}, {}
        for video_id in chunk:
            try:
                readable[video_id] = _pooled_and_meta(store, video_id)
            except CaptionerError as error:
                failed[video_id] = error
        pooled = [p for p, _ in readable.values()]
        hyps = iter(predict_captions(decoder, vocab, np.stack(pooled) if pooled else np.zeros((0, 1), np.float32),
                                     [source_name(m.get("is_image", False)) for _, m in readable.values()],
                                     decoding, n_best, batch_size))
        for video_id in chunk:
            if video_id in failed:
                yield StoreItem(video_id, None, failed[video_id], None, None)
            else:
                yield StoreItem(video_id, next(hyps), None, *readable[video_id])


def _pooled_and_meta(store, video_id: str) -> tuple[np.ndarray, dict]:
    pooled, metas = store.pooled_with_meta([video_id])  # a missing or damaged entry: CaptionerError
    return pooled[0], metas[0]
