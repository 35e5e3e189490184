"""Training: teacher forcing with cross-entropy on (pooled video vector, caption) pairs.

    captioner train configs/train_msvd.yaml [--set key=value ...] [--resume]
    python -m torch.distributed.run --nproc_per_node=N -m captioner train CONFIG   (DDP)

A run directory holds config.yaml, last.pt (everything --resume needs), best.pt (the
checkpoint with the best validation score), metrics.csv (one row per epoch) and train.lock
(flock()ed by the one process training there).

Every video's pooled vector and every tokenised caption are loaded once into two tensors on
the training device; a batch is then two index operations, so no data loader or per-caption
Python runs in the loop. Checkpoints are written at the end of each epoch; `--resume`
continues from the last one exactly: same weights, optimizer, schedule, shuffling and dropout
RNG, so the following losses equal those of an uninterrupted run.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from . import locking
from .atomic import TMP_PREFIX, atomic_open, atomic_write, check_output_path
from .concepts import class_word_table, heads
from .config import load_config, save_config, validate_config
from .datasets import Captions, join_features, load_captions
from .device import cuda_autocast_dtype, resolve_device
from .precision import cpu_has_bf16
from .errors import CaptionerError, UsageError
from .feature_spec import MODEL_KEYS, FeatureSpec
from .model import (SOURCES, CaptionModel, Checkpoint, check_provenance, load_checkpoint, save_checkpoint,
                    source_name)
from .predict import predict_captions
from .store import open_features
from .text import EOS_ID, PAD_ID, Vocabulary, tokenize
from .train_config import RESUME_MAY_CHANGE, DataConfig, ModelConfig, TrainConfig, resume_differences  # noqa: F401

log = logging.getLogger("captioner")


# ----------------------------------------------------------------------------- data
@dataclass
class CaptionTensors:
    """One split on the training device: pooled vectors (videos x D) and padded captions."""

    video_ids: list[str]
    feats: torch.Tensor  # (videos, D)
    sources: torch.Tensor  # (videos,) index into model.SOURCES: image or video
    tokens: torch.Tensor  # (captions, max_words + 2): <bos> words <eos> <pad>...
    video_of: torch.Tensor  # (captions,) row of `feats` for each caption
    lengths: torch.Tensor  # (captions,) on the CPU, so cutting a batch needs no device sync
    paired: int  # rows of `feats` below this have features; the rest are caption-only (zeros)
    views: torch.Tensor | None = None  # (augmentation views, paired, D): other vectors of those rows

    def references(self) -> dict[int, list[list[int]]]:
        """Per video row with features, its captions as word ids (without <bos>, <eos>, padding)."""
        refs: dict[int, list[list[int]]] = {row: [] for row in range(self.paired)}
        for row, caption in zip(self.video_of.tolist(), self.tokens.tolist()):
            if row < self.paired:
                refs[row].append(caption_words(caption[1:]))
        return refs

    def __len__(self) -> int:
        return self.tokens.size(0)

    def batch(self, rows: torch.Tensor, views: torch.Generator | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(feats (B, D), tokens (B, L), sources (B,)) with L the longest caption of these rows.

        Given a generator, each row's vector is drawn from the main one and the augmentation views.
        """
        longest = int(self.lengths[rows].max())
        pick = None
        if views is not None and self.views is not None:
            pick = torch.randint(0, len(self.views) + 1, rows.shape, generator=views)
        rows = rows.to(self.tokens.device, non_blocking=True)
        videos = self.video_of[rows]
        feats = self.feats[videos]
        if pick is not None:
            pick = pick.to(feats.device)
            use = (pick > 0) & (videos < self.paired)
            alternative = self.views[(pick - 1).clamp(min=0), videos.clamp(max=self.paired - 1)]
            feats = torch.where(use[:, None], alternative, feats)
        return feats, self.tokens[rows, :longest], self.sources[videos]


def caption_words(ids: list[int]) -> list[int]:
    """The word ids of an encoded or sampled caption, without <eos> and padding."""
    return [t for t in ids if t not in (EOS_ID, PAD_ID)]


def load_split(features: str, captions_file: str, split: str | None) -> tuple[Captions, object]:
    store = open_features(features)
    captions = join_features(load_captions(captions_file, split), store.ids(), captions_file, features)
    return captions, store


def load_text_only(cfg: DataConfig, with_features: set[str]) -> Captions:
    """The captions of data.text_captions whose videos have no features."""
    if not cfg.text_captions:
        return {}
    captions = load_captions(cfg.text_captions, cfg.text_split)
    keep = cfg.text_captions_per_video or None
    return {vid: caps[:keep] for vid, caps in captions.items() if vid not in with_features and caps}


def view_matrix(view_path: str, video_ids: list[str], feats: np.ndarray, provenance: FeatureSpec | None) -> np.ndarray:
    """The view store's vectors of `video_ids` (N, D); the main vector where the view has none."""
    view = open_features(view_path)
    main, other = provenance or FeatureSpec({}), view.provenance or FeatureSpec({})
    differing = main.differences(other, (*MODEL_KEYS, "frames"))
    if differing:
        raise CaptionerError("extracted differently from data.features: " + ", ".join(
            f"{k} {other[k]!r} against {main[k]!r}" for k in differing), view_path)
    present = [i for i, vid in enumerate(video_ids) if vid in view]
    if not present:
        raise CaptionerError("holds none of the training videos (data.augment_features needs the "
                             "same ids as data.features)", view_path)
    matrix = feats.copy()
    matrix[present] = view.pooled_matrix([video_ids[i] for i in present])[1]
    return matrix


def make_tensors(store, captions: Captions, vocab: Vocabulary, max_words: int,
                 device: torch.device, text_only: Captions | None = None,
                 augment_features: list[str] = ()) -> CaptionTensors:
    video_ids = list(captions)
    feats, metas = store.pooled_with_meta(video_ids)
    views = [view_matrix(path, video_ids, feats, store.provenance) for path in augment_features]
    for path, matrix in [(store.path, feats), *zip(augment_features, views)]:
        _require_finite(matrix, video_ids, path)
    sources = [SOURCES.index(source_name(meta.get("is_image", False))) for meta in metas]
    paired = len(video_ids)
    if text_only:
        video_ids += list(text_only)
        feats = np.concatenate([feats, np.zeros((len(text_only), feats.shape[1]), feats.dtype)])
        sources += [SOURCES.index("video")] * len(text_only)
        captions = {**captions, **text_only}
    token_lists, video_of = [], []
    for row, vid in enumerate(video_ids):
        for caption in captions[vid]:
            token_lists.append(tokenize(caption))
            video_of.append(row)
    tokens, lengths = vocab.encode_batch(token_lists, max_words)
    return CaptionTensors(video_ids, torch.from_numpy(feats).to(device), torch.tensor(sources, device=device),
                          torch.from_numpy(tokens).to(device), torch.tensor(video_of, device=device),
                          torch.from_numpy(lengths), paired,
                          torch.from_numpy(np.stack(views)).to(device) if views else None)


def _require_finite(feats: np.ndarray, video_ids: list[str], store_path) -> None:
    """One NaN or inf in the inputs makes every weight NaN; stores written before extraction and
    import refused them may still hold some."""
    bad = np.flatnonzero(~np.isfinite(feats).all(axis=1))
    if len(bad):
        raise CaptionerError(f"features of {len(bad)} video(s) hold NaN or infinite values (e.g. "
                             f"{video_ids[bad[0]]!r}); extract or import them again", store_path)


# ----------------------------------------------------------------------------- one epoch
def caption_loss(model, feats, tokens, sources=None, label_smoothing: float = 0.0, sample_prob: float = 0.0):
    logits = model(feats, tokens[:, :-1], sample_prob, sources)
    return F.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten(), ignore_index=PAD_ID,
                           label_smoothing=label_smoothing)


def batch_layout(captions: int, batch_size: int, world: int) -> tuple[int, int]:
    """(captions per rank per step, steps per epoch); the incomplete last batch is skipped."""
    per_rank = max(1, min(batch_size, captions) // world)
    return per_rank, max(1, captions // (per_rank * world))


def scst_layout(videos: int, batch_size: int) -> tuple[int, int]:
    """(videos per step, steps per epoch) of self-critical training; the incomplete last batch is skipped."""
    per_step = max(1, min(batch_size, videos))
    return per_step, max(1, videos // per_step)


def _autocast_settings(cfg: TrainConfig, device: torch.device) -> tuple[bool, torch.dtype]:
    """(autocast on, its dtype): mixed precision on CUDA when cfg.amp asks for it, bf16 on a CPU
    with bf16 units when cfg.cpu_bf16 does. With autocast off the dtype is unused."""
    if device.type == "cuda":
        return cfg.amp, cuda_autocast_dtype() if cfg.amp else torch.float16
    return cfg.cpu_bf16 and cpu_has_bf16(), torch.bfloat16


def _optimizer_step(model, loss, optimizer, scheduler, scaler, cfg: TrainConfig) -> None:
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if cfg.grad_clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()


def train_epoch(model, data: CaptionTensors, optimizer, scheduler, scaler, cfg: TrainConfig,
                generator: torch.Generator, sample_prob: float = 0.0, rank: int = 0, world: int = 1,
                max_steps: int | None = None) -> float:
    """One pass over the shuffled captions; returns the mean training loss (over all ranks)."""
    model.train()
    device = data.tokens.device
    per_rank, steps = batch_layout(len(data), cfg.batch_size, world)
    # Every rank draws the same permutation and takes its own share of each batch.
    order = torch.randperm(len(data), generator=generator)
    if max_steps is not None:
        steps = min(steps, max_steps)
    amp, amp_dtype = _autocast_settings(cfg, device)
    total = torch.zeros((), device=device)
    for step in range(steps):
        start = (step * world + rank) * per_rank
        feats, tokens, sources = data.batch(order[start: start + per_rank], views=generator)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
            loss = caption_loss(model, feats, tokens, sources, cfg.label_smoothing, sample_prob)
        _optimizer_step(model, loss, optimizer, scheduler, scaler, cfg)
        total += loss.detach()
    if world > 1:
        dist.all_reduce(total)
    return total.item() / (steps * world)


def scst_epoch(model, data: CaptionTensors, reward, optimizer, scheduler, scaler, cfg: TrainConfig,
               generator: torch.Generator, max_steps: int | None = None) -> tuple[float, float]:
    """One self-critical pass over the videos with features: (mean loss, mean CIDEr-D reward)."""
    model.train()
    device = data.tokens.device
    k = cfg.scst_samples
    videos_per_step, steps = scst_layout(data.paired, cfg.batch_size)
    order = torch.randperm(data.paired, generator=generator)
    if max_steps is not None:
        steps = min(steps, max_steps)
    amp, amp_dtype = _autocast_settings(cfg, device)
    total_loss = total_reward = 0.0
    for step in range(steps):
        rows = order[step * videos_per_step: (step + 1) * videos_per_step].to(device)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
            tokens, logp = model.sample(data.feats[rows].repeat_interleave(k, 0), cfg.data.max_words,
                                        data.sources[rows].repeat_interleave(k, 0))
        captions = [caption_words(row) for row in tokens.tolist()]
        rewards = torch.tensor([reward(video, caption) for video, caption in
                                zip(rows.repeat_interleave(k).tolist(), captions)], device=device).view(-1, k)
        baseline = (rewards.sum(1, keepdim=True) - rewards) / max(1, k - 1)
        advantage = (rewards - baseline).view(-1, 1)
        mask = (tokens != PAD_ID).float()
        loss = -(advantage * logp.float() * mask).sum() / mask.sum()
        _optimizer_step(model, loss, optimizer, scheduler, scaler, cfg)
        total_loss += loss.item()
        total_reward += rewards.mean().item()
    return total_loss / steps, total_reward / steps


@torch.no_grad()
def validate(model: CaptionModel, data: CaptionTensors, references: Captions, vocab: Vocabulary,
             cfg: TrainConfig, batch_size: int = 256) -> dict[str, float]:
    """Validation loss (teacher forcing) and caption metrics of decoded captions."""
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(data), batch_size):
        feats, tokens, sources = data.batch(torch.arange(start, min(start + batch_size, len(data))))
        logits = model(feats, tokens[:, :-1], sources=sources)
        targets = tokens[:, 1:]
        total += F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=PAD_ID,
                                 reduction="sum").item()
        count += int((targets != PAD_ID).sum())
    result = {"val_loss": total / count}
    if cfg.val_metrics:
        from .metrics import score

        sources = [SOURCES[k] for k in data.sources.tolist()]
        hyps = predict_captions(model, vocab, data.feats, sources,
                                cfg.decoding.but(beam=cfg.val_beam_size), batch_size=batch_size)
        # The scorers need a word, and an empty caption must still count against the model.
        predictions = {vid: best[0].caption or "<empty>" for vid, best in zip(data.video_ids, hyps)}
        scores = score(predictions, {vid: references[vid] for vid in predictions}, cfg.val_metrics)
        result.update({f"val_{name}": value for name, value in scores.items()})
    return result


def best_key(cfg: TrainConfig) -> str:
    if not cfg.val_metrics:
        return "val_loss"
    from .metrics import parse_metrics

    return "val_" + parse_metrics([cfg.val_metrics[0]])[-1]


# ----------------------------------------------------------------------------- schedule
def lr_factor(cfg: TrainConfig, step: int, total_steps: int, steps_per_epoch: int) -> float:
    warmup = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps > 0 else 1.0
    if cfg.lr_schedule == "constant":
        return warmup
    if cfg.lr_schedule == "step":
        return warmup * cfg.lr_gamma ** (step // (steps_per_epoch * cfg.lr_step_epochs))
    if cfg.lr_schedule == "cosine":
        return warmup * 0.5 * (1 + math.cos(math.pi * min(1.0, step / max(1, total_steps))))
    raise CaptionerError(f"lr_schedule must be cosine, constant or step, not {cfg.lr_schedule!r}")


def make_optimizer(model, cfg: TrainConfig, steps_per_epoch: int):
    """Adam, the per-step learning-rate schedule and the fp16 gradient scaler (a no-op otherwise)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    total_steps = steps_per_epoch * cfg.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(cfg, step, total_steps, steps_per_epoch))
    device = next(model.parameters()).device
    amp, amp_dtype = _autocast_settings(cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp and amp_dtype == torch.float16)
    return optimizer, scheduler, scaler


# ----------------------------------------------------------------------------- the run
def train(cfg: TrainConfig, resume: bool = False) -> Path:
    """Train (or resume) the run in cfg.run_dir; returns the path of best.pt.

    The steps, in order: every check that needs no data, before any process group, file or
    model exists; the checkpoint a resumed run continues; the processes; the data and the
    vocabulary; the model and what updates it; then epoch after epoch.
    """
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    files = RunFiles(Path(cfg.run_dir))
    device = _check_before_start(cfg, resume, world, files)
    previous = _resumed_checkpoint(files, world, device, cfg) if resume else None
    _join_process_group(world, device)
    if rank != 0:
        log.setLevel(logging.ERROR)  # one copy of every warning, from rank 0

    data = load_training_data(cfg, previous, device, with_validation=rank == 0)
    trainer = _make_trainer(cfg, data, previous, world, rank, device)
    progress = _restore(previous, trainer, files, rank, device) if previous is not None else Progress()
    del previous  # the model holds its own copy of the weights now
    trainer.distribute(world, device)

    # Taken before the first write, so a run refused on its data leaves nothing behind.
    lock = _lock_run(files, resume) if rank == 0 else None
    try:
        _train_epochs(cfg, resume, world, rank, files, device, data, trainer, progress)
    finally:
        if lock is not None:
            locking.release(lock)
    return files.best


def _train_epochs(cfg: TrainConfig, resume: bool, world: int, rank: int, files: "RunFiles", device: torch.device,
                  data: "TrainingData", trainer: "Trainer", progress: "Progress") -> None:
    run_log = RunLog.open(cfg, files, resume, progress, data, world, device) if rank == 0 else None
    for epoch in range(progress.epoch, cfg.epochs):
        started = time.perf_counter()
        row = {"epoch": epoch + 1, **trainer.run_epoch(cfg, data.train, epoch, rank, world)}
        _require_finite_training(row, trainer.model, progress.epoch, files)
        seconds = time.perf_counter() - started
        rng = _gather_rng_states(device, world)
        if run_log is not None:
            if data.val is not None:
                row.update(validate(trainer.model, data.val, data.val_refs, data.vocab, cfg))
                _require_finite_training(row, trainer.model, progress.epoch, files)
            improved = progress.record(row, run_log.selection)
            run_log.save_epoch(trainer, data, row, improved,
                               {**trainer.state(), "rng": rng, "world": world, **progress.state()})
            run_log.print_epoch(row, seconds, improved, data.train)
        if world > 1:
            dist.barrier()
    if run_log is not None:
        run_log.close()
    if world > 1:
        dist.destroy_process_group()


def _lock_run(files: RunFiles, resume: bool) -> str:
    """One run at a time in a run directory (two resumes of one run would train it twice)."""
    try:
        files.dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CaptionerError(f"cannot create the run directory: {exc.strerror}", files.dir) from None
    key = locking.acquire(files.dir, "train.lock", "training in this run directory",
                          "wait for it to finish or choose another run_dir")
    if not resume and files.last.exists():  # started beside us, and finished before we got the lock
        locking.release(key)
        raise CaptionerError("run directory already holds a run; pass --resume to continue it or "
                             "choose another run_dir", files.dir)
    return key


# ---- before anything starts
@dataclass(frozen=True)
class RunFiles:
    """A run directory: config.yaml, last.pt (all --resume needs), best.pt and metrics.csv."""

    dir: Path

    @property
    def last(self) -> Path:
        return self.dir / "last.pt"

    @property
    def best(self) -> Path:
        return self.dir / "best.pt"

    @property
    def metrics(self) -> Path:
        return self.dir / "metrics.csv"


def _check_before_start(cfg: TrainConfig, resume: bool, world: int, files: RunFiles) -> torch.device:
    """Every check that needs no data: config values, the run directory, the process count and
    the device. Returns this process's device."""
    validate_config(cfg)
    if cfg.objective == "scst" and world > 1:
        raise CaptionerError("objective scst runs in one process; start it without torchrun")
    if cfg.batch_size < world:
        raise CaptionerError(f"batch_size {cfg.batch_size} is smaller than the {world} processes")
    check_output_path(files.dir, folder=True, flag="run_dir")  # a read-only place fails now, not after an epoch
    if resume and not files.last.is_file():
        raise CaptionerError("nothing to resume: no last.pt (start without --resume)", files.dir)
    if not resume and files.last.exists():
        raise CaptionerError("run directory already holds a run; pass --resume to continue it or "
                             "choose another run_dir", files.dir)
    if not cfg.data.features or not cfg.data.captions:
        raise CaptionerError("data.features and data.captions must be set")
    if resolve_device(cfg.device) == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def _resumed_checkpoint(files: RunFiles, world: int, device: torch.device, cfg: TrainConfig) -> Checkpoint:
    """last.pt of the run to continue, which must be resumed with the process count and the config
    it was trained with (but for RESUME_MAY_CHANGE)."""
    previous = load_checkpoint(files.last, device)
    trained_with = previous.train_state["world"]
    if trained_with != world:
        raise CaptionerError(f"run was trained with {trained_with} processes; resume it with the same number",
                             files.last)
    differing = resume_differences(previous.config, cfg)
    if differing:
        shown = "; ".join(differing[:4]) + (f"; and {len(differing) - 4} more" if len(differing) > 4 else "")
        raise UsageError(f"--resume with a changed config ({shown}); a resumed run may change only "
                         f"{', '.join(RESUME_MAY_CHANGE)}: train the new values in another run_dir", files.last)
    return previous


def _require_finite_training(row: dict, model: CaptionModel, last_saved: int, files: RunFiles) -> None:
    """Stop at the first non-finite loss or weight: the run's files keep the last finite epoch."""
    bad = [f"{k} {v}" for k, v in row.items() if isinstance(v, float) and not math.isfinite(v)]
    if not bad and not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        bad = ["weights not finite"]
    if bad:
        kept = f"last.pt keeps epoch {last_saved}" if last_saved else "nothing was saved"
        raise CaptionerError(f"epoch {row['epoch']}: {', '.join(bad)}; training stopped ({kept}); lower lr or "
                             "check the features", files.dir)


def _join_process_group(world: int, device: torch.device) -> None:
    """Bind this process to its GPU and, under torchrun, join the others (NCCL on GPUs, else Gloo)."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


# ---- data and vocabulary
@dataclass
class TrainingData:
    """What a run trains and validates on, tokenised with its vocabulary, on the training device."""

    train: CaptionTensors
    val: CaptionTensors | None  # None without validation, and on every rank but 0
    val_refs: Captions | None
    vocab: Vocabulary
    provenance: FeatureSpec | None  # of the training features
    text_only: int  # videos trained on their captions alone (data.text_captions)
    pretrained: Checkpoint | None  # init_from's checkpoint, until its weights are copied


def load_training_data(cfg: TrainConfig, previous: Checkpoint | None, device: torch.device,
                       with_validation: bool = True) -> TrainingData:
    """Captions joined to features and tokenised once, with the vocabulary: the resumed run's,
    init_from's (extended by this data's frequent words unless init_vocab is "keep") or built
    from these captions. Sets cfg.model to the architecture the run trains."""
    train_caps, train_store = load_split(cfg.data.features, cfg.data.captions, cfg.data.split)
    provenance = train_store.provenance
    text_only = load_text_only(cfg.data, set(train_caps))
    all_captions = [*train_caps.values(), *text_only.values()]
    pretrained = None
    if previous is not None:
        check_provenance(previous.provenance, provenance, previous.path, cfg.data.features)
        vocab, model_config = previous.vocab, previous.model.config
    elif cfg.init_from:
        pretrained = load_checkpoint(cfg.init_from, device)
        pretrained.check_features(provenance, cfg.data.features)
        model_config = pretrained.model.config
        vocab = pretrained.vocab
        if cfg.init_vocab == "extend":
            vocab = vocab.extend((tokenize(c) for caps in all_captions for c in caps), cfg.data.min_count)
    else:
        vocab = Vocabulary.build((tokenize(c) for caps in all_captions for c in caps), cfg.data.min_count)
        model_config = ModelConfig(**{**asdict(cfg.model), "feature_dim": train_store.feature_dim,
                                      "concept_heads": [[h.start, h.end] for h in heads(provenance)]})
        model_config.validate()
    if model_config.feature_dim != train_store.feature_dim:
        raise CaptionerError(f"features are {train_store.feature_dim}-d but the model expects "
                             f"{model_config.feature_dim}-d", cfg.data.features)
    cfg.model = model_config
    train_data = make_tensors(train_store, train_caps, vocab, cfg.data.max_words, device, text_only,
                              cfg.data.augment_features)
    val_data = val_refs = None
    if with_validation and (cfg.data.val_captions or cfg.data.val_split):
        val_features = cfg.data.val_features or cfg.data.features
        val_refs, val_store = load_split(val_features, cfg.data.val_captions or cfg.data.captions,
                                         cfg.data.val_split)
        check_provenance(provenance, val_store.provenance, cfg.data.features, val_features)
        val_data = make_tensors(val_store, val_refs, vocab, cfg.data.max_words, device)
    return TrainingData(train_data, val_data, val_refs, vocab, provenance, len(text_only), pretrained)


# ---- the model and what updates it
@dataclass
class Trainer:
    """The model and everything that updates it; last.pt holds all of it, so --resume continues exactly."""

    model: CaptionModel
    ddp_model: torch.nn.Module  # what train_epoch runs: the model, or its DDP wrapper (distribute)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    generator: torch.Generator  # shuffling and augmentation views: the same draws on every rank
    reward: object | None  # metrics.CiderReward for objective scst

    def run_epoch(self, cfg: TrainConfig, data: CaptionTensors, epoch: int, rank: int, world: int) -> dict:
        """One epoch of the configured objective: {"train_loss"} (and "train_CIDEr" for scst)."""
        if self.reward is not None:
            loss, cider = scst_epoch(self.model, data, self.reward, self.optimizer, self.scheduler, self.scaler,
                                     cfg, self.generator)
            return {"train_loss": loss, "train_CIDEr": cider}
        sample_prob = cfg.scheduled_sampling * epoch / max(1, cfg.epochs - 1)
        return {"train_loss": train_epoch(self.ddp_model, data, self.optimizer, self.scheduler, self.scaler, cfg,
                                          self.generator, sample_prob, rank, world)}

    def state(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "generator": self.generator.get_state()}

    def distribute(self, world: int, device: torch.device) -> None:
        """Wrap the model for DistributedDataParallel in a run of several processes."""
        if world > 1:
            self.ddp_model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device] if device.type == "cuda" else None)


def _make_trainer(cfg: TrainConfig, data: TrainingData, previous: Checkpoint | None, world: int, rank: int,
                  device: torch.device) -> Trainer:
    """The model (init_from's weights copied in), Adam, the schedule, the loss scaler, the generator."""
    torch.manual_seed(cfg.seed)
    concept_words = concept_word_ids(data.provenance, data.vocab, previous or data.pretrained)
    model = CaptionModel(cfg.model, len(data.vocab), concept_words).to(device)
    if data.pretrained is not None:
        _load_pretrained_weights(model, data.pretrained.model.state_dict())
        data.pretrained = None  # its tensors are the model's now
    scst = cfg.objective == "scst"
    steps_per_epoch = (scst_layout(data.train.paired, cfg.batch_size) if scst
                       else batch_layout(len(data.train), cfg.batch_size, world))[1]
    optimizer, scheduler, scaler = make_optimizer(model, cfg, steps_per_epoch)
    reward = None
    if scst:
        from .metrics import CiderReward

        reward = CiderReward(data.train.references())
    generator = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed + rank)  # dropout and sampling differ between ranks
    return Trainer(model, model, optimizer, scheduler, scaler, generator, reward)


# ---- a resumed run
@dataclass
class Progress:
    """Where a run stands: epochs done, the best score so far and its epoch, one metrics row per epoch."""

    epoch: int = 0
    best_score: float | None = None
    best_epoch: int | None = None
    history: list[dict] = field(default_factory=list)

    def record(self, row: dict, selection: str) -> bool:
        """Add an epoch's row; True when it is the best so far by the column `selection`."""
        current = row[selection]
        higher_is_better = selection not in ("val_loss", "train_loss")
        improved = self.best_score is None or (current > self.best_score if higher_is_better
                                               else current < self.best_score)
        if improved:
            self.best_score, self.best_epoch = current, row["epoch"]
        self.epoch = row["epoch"]
        self.history.append(row)
        return improved

    def state(self) -> dict:
        return {"best_score": self.best_score, "best_epoch": self.best_epoch, "history": self.history}


def _restore(previous: Checkpoint, trainer: Trainer, files: RunFiles, rank: int, device: torch.device) -> Progress:
    """Put the resumed run's weights, optimizer, schedule and random states back; returns its progress."""
    state = previous.train_state
    trainer.model.load_state_dict(previous.model.state_dict())
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scheduler.load_state_dict(state["scheduler"])
    trainer.scaler.load_state_dict(state["scaler"])
    trainer.generator.set_state(state["generator"])
    _set_rng_state(state["rng"][rank], device)
    # Checkpoints from before best_epoch and history were recorded: metrics.csv is all there is.
    history = state.get("history") or _read_metrics(files.metrics, previous.epoch)
    return Progress(previous.epoch, state["best_score"], state.get("best_epoch"), history)


# ---- epochs
def _gather_rng_states(device: torch.device, world: int) -> list[dict]:
    """Every rank's random state, for last.pt: a resumed run draws what this one would have."""
    if world == 1:
        return [_rng_state(device)]
    states = [None] * world
    dist.all_gather_object(states, _rng_state(device))
    return states


class RunLog:
    """Rank 0's side of a run: the run directory's files, TensorBoard and the lines on stderr."""

    def __init__(self, cfg: TrainConfig, files: RunFiles, columns: list[str], selection: str, writer):
        self.cfg, self.files, self.columns, self.selection, self.writer = cfg, files, columns, selection, writer

    @classmethod
    def open(cls, cfg: TrainConfig, files: RunFiles, resume: bool, progress: Progress, data: TrainingData,
             world: int, device: torch.device) -> "RunLog":
        scst = cfg.objective == "scst"
        columns = ["epoch", "train_loss"] + (["train_CIDEr"] if scst else []) + ["val_loss"] + (
            [f"val_{m}" for m in _metric_names(cfg)] if data.val is not None else [])
        with _writing(files.dir / "config.yaml", progress.epoch):
            files.dir.mkdir(parents=True, exist_ok=True)
            if resume:
                _recover_run_files(files.dir, files.last, files.best, progress.epoch, progress.best_epoch,
                                   progress.history, columns)
            save_config(cfg, files.dir / "config.yaml")  # unchanged: left alone
        train = data.train
        amp, amp_dtype = _autocast_settings(cfg, device)
        if cfg.cpu_bf16 and device.type == "cpu" and not amp:
            print("cpu_bf16 is set, but this CPU has no bf16 units (AVX-512 BF16 or AMX): training in fp32",
                  file=sys.stderr)
        print(f"training on {len(train)} captions of {len(train.video_ids)} videos, vocabulary "
              f"{len(data.vocab)} words, {world} process(es) on {device}"
              + (f" in {str(amp_dtype).removeprefix('torch.')} autocast" if amp else "")
              + (f" ({data.text_only} of them captions only)" if data.text_only else "")
              + (f"; validating on {len(data.val.video_ids)} videos" if data.val is not None else ""),
              file=sys.stderr)
        return cls(cfg, files, columns, best_key(cfg) if data.val is not None else "train_loss",
                   _tensorboard(files.dir))

    def save_epoch(self, trainer: Trainer, data: TrainingData, row: dict, improved: bool, train_state: dict) -> None:
        """last.pt, best.pt when the epoch improved, metrics.csv and TensorBoard's scalars.

        last.pt first: it records the best epoch and every row, so a kill during either write
        after it is repaired by --resume (_recover_run_files)."""
        metrics = {k: v for k, v in row.items() if k != "epoch"}
        with _writing(self.files.last, row["epoch"] - 1):
            save_checkpoint(self.files.last, trainer.model, data.vocab, asdict(self.cfg), data.provenance,
                            row["epoch"], metrics, train_state)
        if improved:
            with _writing(self.files.best, row["epoch"]):
                _copy_atomic(self.files.last, self.files.best)
        with _writing(self.files.metrics, row["epoch"]):
            _write_metrics(self.files.metrics, train_state["history"], self.columns)
        if self.writer is not None:
            for key, value in metrics.items():
                self.writer.add_scalar(key, value, row["epoch"])
            self.writer.flush()

    def print_epoch(self, row: dict, seconds: float, improved: bool, data: CaptionTensors) -> None:
        scst = self.cfg.objective == "scst"
        captions = data.paired * self.cfg.scst_samples if scst else len(data)
        shown = "  ".join(f"{k} {v:.4f}" for k, v in row.items() if k != "epoch")
        unit = "sampled captions/s" if scst else "captions/s"
        print(f"epoch {row['epoch']}/{self.cfg.epochs}  {shown}  ({seconds:.1f}s, {captions / seconds:.0f} {unit})"
              f"{'  *best' if improved else ''}", file=sys.stderr)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


# ----------------------------------------------------------------------------- helpers of the run
@contextmanager
def _writing(path: Path, saved_epoch: int):
    """A failed write of a run's file (disk full, read-only, quota) as one line saying what is kept.

    Every file is written to a temporary name and renamed, so what was there stays valid; a
    best.pt or metrics.csv left behind last.pt is rebuilt by --resume (_recover_run_files)."""
    try:
        yield
    except OSError as exc:
        kept = (f"last.pt holds epoch {saved_epoch}; free space or fix the folder, then --resume" if saved_epoch
                else "no epoch was saved")
        raise CaptionerError(f"cannot write {path.name}: {exc.strerror or exc}; {kept}", path.parent) from None


def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def concept_word_ids(provenance: dict | None, vocab: Vocabulary, previous: Checkpoint | None) -> torch.Tensor | None:
    """(classes, words) ids of the caption words each concept class stands for, padded with PAD_ID.

    A resumed or fine-tuned model keeps the table it was made with."""
    if previous is not None and previous.model.concepts is not None:
        return previous.model.concepts.concept_words.cpu()
    concept_heads = heads(provenance)
    if not concept_heads:
        return None
    table = [vocab.encode(words) for words in class_word_table(concept_heads, vocab.index)]
    width = max(1, max(len(ids) for ids in table))
    return torch.tensor([ids + [PAD_ID] * (width - len(ids)) for ids in table], dtype=torch.long)


def _load_pretrained_weights(model: CaptionModel, state: dict) -> None:
    """Copy weights; vocabulary-sized tensors keep the pre-trained words' rows, new rows stay fresh."""
    own = model.state_dict()
    for name, value in state.items():
        own[name][: value.shape[0]] = value
    model.load_state_dict(own)


def _read_metrics(path: Path, up_to_epoch: int) -> list[dict]:
    """The rows of metrics.csv up to an epoch (rows of epochs the checkpoint lacks are dropped)."""
    if not path.exists():
        return []
    with path.open(newline="") as fh:
        return [r for r in csv.DictReader(fh) if int(r["epoch"]) <= up_to_epoch]


def _write_metrics(path: Path, history: list[dict], columns: list[str]) -> None:
    """metrics.csv from the rows last.pt holds: one per epoch, written atomically."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if row.get(k) is None else row[k]) for k in columns} for row in history)
    atomic_write(path, text.getvalue())


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def _metric_names(cfg: TrainConfig) -> list[str]:
    from .metrics import parse_metrics

    return list(parse_metrics(cfg.val_metrics)) if cfg.val_metrics else []


def _copy_atomic(source: Path, dest: Path) -> None:
    with source.open("rb") as src, atomic_open(dest) as dst:
        shutil.copyfileobj(src, dst, 1 << 20)


def _recover_run_files(run_dir: Path, last_path: Path, best_path: Path, last_epoch: int, best_epoch: int | None,
                       history: list[dict], columns: list[str]) -> None:
    """Finish what a killed run left half done: best.pt and metrics.csv are rebuilt from last.pt.

    A kill between writing last.pt and copying it to best.pt would otherwise lose the best
    epoch for good: the resumed run already knows that score and never beats it by copying.
    """
    for stale in run_dir.glob(TMP_PREFIX + "*"):
        if stale.is_file():
            stale.unlink()
    if best_epoch == last_epoch:
        _copy_atomic(last_path, best_path)
    elif best_epoch is not None and not best_path.is_file():
        log.warning(f"warning: {best_path}: missing; epoch {best_epoch} was the best and only last.pt "
                    f"(epoch {last_epoch}) remains, so best.pt will be the next epoch that beats it")
    if history:
        _write_metrics(run_dir / "metrics.csv", history, columns)


def train_from_config(config_path: str | None, overrides: list[str] | None = None, resume: bool = False) -> Path:
    return train(load_config(TrainConfig, config_path, overrides), resume=resume)
