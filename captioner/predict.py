"""Pooled features → captions: the one place every caption of the project is decoded.

`captioner caption`, the Python API, the web server, validation during training and the
pipeline's predict stage all call `predict_captions` (or `predict_store`, its loop over a
feature store), so a pipeline report scores exactly the decoder users run. It takes either
decoder: `CaptionModel` (torch, for training and GPUs) or `NumpyDecoder` (the torch-free one
`captioner caption` uses); both run the same search and give the same captions.

How to decode (beam size, n-best, length penalty, length limit) is a `Decoding`
(captioner.search, re-exported here). Its defaults belong
to the model: a training config's `decoding` section is saved in every checkpoint and its
inference export, and `checkpoint_decoding` reads it back (checkpoints from before the section
get `DEFAULT_DECODING`, what `captioner caption` always used).
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Iterator, NamedTuple, Sequence

import numpy as np

from .errors import CaptionerError
from .numpy_decoder import SOURCES, source_name
from .search import DEFAULT_DECODING, Decoding, search  # noqa: F401 (Decoding is imported from here too)


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
                     decoding: Decoding = DEFAULT_DECODING, n_best: int | None = None,
                     batch_size: int = 256) -> list[list[Hypothesis]]:
    """Per row of `feats` (pooled vectors, (N, D) array or tensor), its n-best captions, best first.

    `decoder` is a torch `CaptionModel` or a `NumpyDecoder`, `vocab` the vocabulary it was trained
    with. `sources` says what each row was extracted from ("image" or "video", one for all rows or
    one per row); it matters only to a model trained with condition_on_source. `n_best`, when
    given, replaces `decoding.n_best` (more than the beam is refused). Rows are decoded
    `batch_size` at a time.
    """
    decoding = decoding.but(n_best=n_best)
    rows = len(feats)
    names = [sources] * rows if isinstance(sources, str) else list(sources)
    if len(names) != rows or set(names) - set(SOURCES):
        raise ValueError(f"sources: one of {SOURCES} per row ({rows}), got {names!r}")
    hyps = []
    for start in range(0, rows, batch_size):
        batch, batch_sources = feats[start:start + batch_size], names[start:start + batch_size]
        hyps.extend(_search_torch(decoder, batch, batch_sources, decoding) if _is_torch(decoder)
                    else _search_numpy(decoder, batch, batch_sources, decoding))
    return [[Hypothesis(vocab.decode(tokens), float(score)) for tokens, score in row] for row in hyps]


def _search_numpy(decoder, feats, sources, decoding):
    from .device import one_blas_thread

    # A few (beam, 512) x (512, 2560) products per word: BLAS threads only add overhead here.
    with one_blas_thread():
        return search(decoder, np.asarray(feats, dtype=np.float32).reshape(len(feats), -1), sources, decoding)


def _search_torch(model, feats, sources, decoding):
    import torch

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            feats = torch.as_tensor(feats, device=device) if isinstance(feats, torch.Tensor) \
                else torch.as_tensor(np.asarray(feats, dtype=np.float32), device=device)
            ids = torch.tensor([SOURCES.index(s) for s in sources], dtype=torch.long, device=device)
            return search(model, feats, ids, decoding)
    finally:
        model.train(was_training)


class StoreItem(NamedTuple):
    id: str
    hypotheses: list[Hypothesis] | None  # n-best, best first; None when it failed
    error: CaptionerError | None
    pooled: np.ndarray | None  # the vector it was captioned from
    meta: dict | None  # its store entry's meta (source path, frames, is_image, ...)


def predict_store(decoder, vocab, store, ids: Iterable[str] | None = None, decoding: Decoding = DEFAULT_DECODING,
                  n_best: int | None = None, batch_size: int = 256) -> Iterator[StoreItem]:
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
