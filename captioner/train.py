"""Training: teacher forcing with cross-entropy on (pooled video vector, caption) pairs.

    captioner train configs/train_msvd.yaml [--set key=value ...] [--resume]
    python -m torch.distributed.run --nproc_per_node=N -m captioner.train CONFIG   (DDP)

A run directory holds config.yaml, last.pt (everything --resume needs), best.pt (the
checkpoint with the best validation score) and metrics.csv (one row per epoch).

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
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from .atomic import TMP_PREFIX, atomic_open, atomic_write
from .concepts import class_word_table, heads
from .config import load_config, require, save_config, validate_config
from .datasets import Captions, join_features, load_captions
from .errors import CaptionerError
from .model import (PROVENANCE_KEYS, SOURCES, CaptionModel, Checkpoint, ModelConfig, check_provenance,
                    load_checkpoint, provenance_differences, save_checkpoint, source_name)
from .predict import Decoding, predict_captions
from .store import open_features
from .text import EOS_ID, PAD_ID, Vocabulary, tokenize

log = logging.getLogger("captioner")


@dataclass
class DataConfig:
    features: str = ""  # feature store of the training videos
    captions: str = ""  # caption file (any format captioner.datasets reads)
    split: str | None = "train"  # split name, a file listing ids, or null for the whole file
    # Validation: on when val_captions or val_split is set; stores/files default to the above.
    val_features: str | None = None
    val_captions: str | None = None
    val_split: str | None = "val"
    max_words: int = 20  # longer training captions are cut (decoding.max_len limits generated ones)
    min_count: int = 2  # words seen fewer times in the training captions become <unk>
    # Captions of videos you have no features for (the rest of a corpus): trained with an
    # all-zero feature vector as videos, they teach a source-conditioned decoder that corpus's
    # language. Videos that do have features are skipped here (they are trained on as usual).
    text_captions: str | None = None
    text_split: str | None = None
    text_captions_per_video: int = 0  # at most this many per video (0: all)
    # Stores holding other views of the training videos (same ids and backbone), e.g. made with
    # `captioner extract --mirror`. Each time a caption is trained on, its video's vector comes
    # from `features` or one of these, at random: more looks at each of few photos. Videos a
    # view lacks keep their `features` vector. Validation, self-critical steps and captioning
    # use `features` only.
    augment_features: list[str] = field(default_factory=list)

    def validate(self) -> None:
        require(self.max_words >= 1, "data.max_words", "at least 1", self.max_words)
        require(self.min_count >= 1, "data.min_count", "at least 1", self.min_count)
        require(self.text_captions_per_video >= 0, "data.text_captions_per_video", "0 (all) or more",
                self.text_captions_per_video)


@dataclass
class TrainConfig:
    run_dir: str = "runs/caption"
    seed: int = 0
    epochs: int = 30
    batch_size: int = 64  # captions per optimizer step, over all processes
    lr: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float = 5.0  # max gradient norm; 0 turns clipping off
    lr_schedule: str = "cosine"  # cosine | constant | step (x lr_gamma every lr_step_epochs)
    warmup_steps: int = 200
    lr_step_epochs: int = 10
    lr_gamma: float = 0.5
    label_smoothing: float = 0.0
    # "xe": cross-entropy on the reference captions (teacher forcing). "scst": self-critical
    # sequence training (Rennie et al. 2017), fine-tuning a cross-entropy model (init_from)
    # to maximise the CIDEr-D of its own sampled captions; batch_size then counts videos,
    # each sampled scst_samples times, and the baseline is the mean reward of the other
    # samples of the same video (Luo 2020), so no extra greedy decoding is needed.
    objective: str = "xe"
    scst_samples: int = 5
    scheduled_sampling: float = 0.0  # probability of feeding the model's own word, reached linearly at the last epoch
    amp: bool = True  # mixed precision on CUDA (ignored on CPU)
    device: str = "auto"  # auto | cpu | cuda
    # Scores computed on the validation set each epoch (captioner.metrics names); best.pt is
    # chosen by the first (BLEU means BLEU-4); an empty list chooses by validation loss.
    val_metrics: list[str] = field(default_factory=lambda: ["CIDEr"])
    # How this model's captions are decoded, saved in its checkpoints: `captioner caption`, the
    # server and the pipeline use it unless told otherwise, and validation does too, with
    # val_beam_size as a cheaper beam.
    decoding: Decoding = field(default_factory=Decoding)
    val_beam_size: int = 1
    # Fine-tuning: start from this checkpoint's weights and architecture (the model section is
    # then ignored). init_vocab "extend" keeps every pre-trained word at its id and appends the
    # new frequent words of this data (fresh rows); "keep" uses the pre-trained vocabulary as is.
    init_from: str | None = None
    init_vocab: str = "extend"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def validate(self) -> None:
        """Every range a value of this class must lie in; the nested configs check their own."""
        from .metrics import parse_metrics

        require(self.epochs >= 1, "epochs", "at least 1", self.epochs)
        require(self.batch_size >= 1, "batch_size", "at least 1", self.batch_size)
        require(math.isfinite(self.lr) and self.lr > 0, "lr", "a positive number", self.lr)
        require(math.isfinite(self.weight_decay) and self.weight_decay >= 0, "weight_decay", "0 or more",
                self.weight_decay)
        require(math.isfinite(self.grad_clip) and self.grad_clip >= 0, "grad_clip", "0 (off) or more",
                self.grad_clip)
        require(self.lr_schedule in ("cosine", "constant", "step"), "lr_schedule", "cosine, constant or step",
                self.lr_schedule)
        require(self.warmup_steps >= 0, "warmup_steps", "0 or more", self.warmup_steps)
        require(self.lr_step_epochs >= 1, "lr_step_epochs", "at least 1", self.lr_step_epochs)
        require(math.isfinite(self.lr_gamma) and self.lr_gamma > 0, "lr_gamma", "a positive number", self.lr_gamma)
        require(0 <= self.label_smoothing < 1, "label_smoothing", "at least 0 and below 1", self.label_smoothing)
        require(self.objective in ("xe", "scst"), "objective", "xe or scst", self.objective)
        if self.objective == "scst":
            require(self.scst_samples >= 2, "scst_samples", "at least 2 (the baseline is the other samples' "
                    "mean reward)", self.scst_samples)
        require(0 <= self.scheduled_sampling <= 1, "scheduled_sampling", "between 0 and 1", self.scheduled_sampling)
        require(self.device in ("auto", "cpu", "cuda"), "device", "auto, cpu or cuda", self.device)
        require(self.val_beam_size >= 1, "val_beam_size", "at least 1", self.val_beam_size)
        require(self.init_vocab in ("extend", "keep"), "init_vocab", "extend or keep", self.init_vocab)
        if self.val_metrics:
            parse_metrics(self.val_metrics)


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


def view_matrix(view_path: str, video_ids: list[str], feats: np.ndarray, provenance: dict | None) -> np.ndarray:
    """The view store's vectors of `video_ids` (N, D); the main vector where the view has none."""
    view = open_features(view_path)
    main, other = provenance or {}, view.provenance or {}
    differing = provenance_differences(main, other, (*PROVENANCE_KEYS, "frames"))
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
    amp = cfg.amp and device.type == "cuda"
    return amp, torch.bfloat16 if amp and torch.cuda.is_bf16_supported() else torch.float16


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
    # bf16 autocast needs no loss scaling; fp16 (GPUs without bf16) does.
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp and device.type == "cuda"
                                  and not torch.cuda.is_bf16_supported())
    return optimizer, scheduler, scaler


# ----------------------------------------------------------------------------- the run
def _setup_distributed(cfg: TrainConfig) -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise CaptionerError("device cuda requested but CUDA is not available")
    if use_cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return rank, world, device


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


def train(cfg: TrainConfig, resume: bool = False) -> Path:
    """Train (or resume) the run in cfg.run_dir; returns the path of best.pt."""
    validate_config(cfg)  # before any process group, file or model exists
    rank, world, device = _setup_distributed(cfg)
    if rank != 0:
        log.setLevel(logging.ERROR)  # one copy of every warning, from rank 0
    if cfg.objective == "scst" and world > 1:
        raise CaptionerError("objective scst runs in one process; start it without torchrun")
    if cfg.batch_size < world:
        raise CaptionerError(f"batch_size {cfg.batch_size} is smaller than the {world} processes")
    run_dir = Path(cfg.run_dir)
    last_path, best_path = run_dir / "last.pt", run_dir / "best.pt"
    if resume and not last_path.is_file():
        raise CaptionerError("nothing to resume: no last.pt (start without --resume)", run_dir)
    if not resume and last_path.exists():
        raise CaptionerError("run directory already holds a run; pass --resume to continue it or "
                             "choose another run_dir", run_dir)
    if not cfg.data.features or not cfg.data.captions:
        raise CaptionerError("data.features and data.captions must be set")

    # ---- data: captions joined to features, tokenised once
    train_caps, train_store = load_split(cfg.data.features, cfg.data.captions, cfg.data.split)
    provenance = train_store.provenance
    text_only = load_text_only(cfg.data, set(train_caps))
    all_captions = [*train_caps.values(), *text_only.values()]
    previous: Checkpoint | None = load_checkpoint(last_path, device) if resume else None
    pretrained: Checkpoint | None = None
    if previous is not None:
        check_provenance(previous.provenance, provenance, last_path, cfg.data.features)
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
    if model_config.feature_dim != train_store.feature_dim:
        raise CaptionerError(f"features are {train_store.feature_dim}-d but the model expects "
                             f"{model_config.feature_dim}-d", cfg.data.features)
    cfg.model = model_config
    train_data = make_tensors(train_store, train_caps, vocab, cfg.data.max_words, device, text_only,
                              cfg.data.augment_features)

    val_data = val_refs = None
    if rank == 0 and (cfg.data.val_captions or cfg.data.val_split):
        val_features = cfg.data.val_features or cfg.data.features
        val_refs, val_store = load_split(val_features, cfg.data.val_captions or cfg.data.captions,
                                         cfg.data.val_split)
        check_provenance(provenance, val_store.provenance, cfg.data.features, val_features)
        val_data = make_tensors(val_store, val_refs, vocab, cfg.data.max_words, device)
    selection = best_key(cfg) if val_data is not None else "train_loss"

    # ---- model, optimizer, schedule
    torch.manual_seed(cfg.seed)
    model = CaptionModel(model_config, len(vocab), concept_word_ids(provenance, vocab, previous or pretrained)).to(device)
    if pretrained is not None:
        _load_pretrained_weights(model, pretrained.model.state_dict())
        del pretrained
    scst = cfg.objective == "scst"
    steps_per_epoch = (scst_layout(train_data.paired, cfg.batch_size) if scst
                       else batch_layout(len(train_data), cfg.batch_size, world))[1]
    optimizer, scheduler, scaler = make_optimizer(model, cfg, steps_per_epoch)
    reward = None
    if scst:
        from .metrics import CiderReward

        reward = CiderReward(train_data.references())
    generator = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed + rank)  # dropout and sampling differ between ranks
    start_epoch, best_score, best_epoch, history = 0, None, None, []
    if previous is not None:
        state = previous.train_state
        model.load_state_dict(previous.model.state_dict())
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        generator.set_state(state["generator"])
        if state["world"] != world:
            raise CaptionerError(f"run was trained with {state['world']} processes; resume it with the same number",
                                 last_path)
        _set_rng_state(state["rng"][rank], device)
        start_epoch, best_score = previous.epoch, state["best_score"]
        # Checkpoints from before best_epoch and history were recorded: metrics.csv is all there is.
        best_epoch = state.get("best_epoch")
        history = state.get("history") or _read_metrics(run_dir / "metrics.csv", start_epoch)
        del previous
    ddp_model = model
    if world > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device] if device.type == "cuda" else None)

    columns = ["epoch", "train_loss"] + (["train_CIDEr"] if scst else []) + ["val_loss"] + (
        [f"val_{m}" for m in _metric_names(cfg)] if val_data is not None else [])
    writer = None
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            _recover_run_files(run_dir, last_path, best_path, start_epoch, best_epoch, history, columns)
        save_config(cfg, run_dir / "config.yaml")
        writer = _tensorboard(run_dir)
        print(f"training on {len(train_data)} captions of {len(train_data.video_ids)} videos, vocabulary "
              f"{len(vocab)} words, {world} process(es) on {device}"
              + (f" ({len(text_only)} of them captions only)" if text_only else "")
              + (f"; validating on {len(val_data.video_ids)} videos" if val_data is not None else ""),
              file=sys.stderr)

    for epoch in range(start_epoch, cfg.epochs):
        tic = time.perf_counter()
        sample_prob = cfg.scheduled_sampling * epoch / max(1, cfg.epochs - 1)
        train_reward = None
        if scst:
            train_loss, train_reward = scst_epoch(model, train_data, reward, optimizer, scheduler, scaler, cfg,
                                                  generator)
        else:
            train_loss = train_epoch(ddp_model, train_data, optimizer, scheduler, scaler, cfg, generator,
                                     sample_prob, rank, world)
        seconds = time.perf_counter() - tic
        throughput = train_data.paired * cfg.scst_samples if scst else len(train_data)
        rng = [_rng_state(device)]
        if world > 1:
            rng = [None] * world
            dist.all_gather_object(rng, _rng_state(device))
        if rank == 0:
            row = {"epoch": epoch + 1, "train_loss": train_loss}
            if scst:
                row["train_CIDEr"] = train_reward
            if val_data is not None:
                row.update(validate(model, val_data, val_refs, vocab, cfg))
            current = row[selection]
            higher_is_better = selection not in ("val_loss", "train_loss")
            improved = best_score is None or (current > best_score if higher_is_better else current < best_score)
            if improved:
                best_score, best_epoch = current, epoch + 1
            history.append(row)
            # last.pt first: it records the best epoch and every row, so a kill during either
            # write below is repaired by --resume (_recover_run_files).
            train_state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                           "scaler": scaler.state_dict(), "generator": generator.get_state(), "rng": rng,
                           "world": world, "best_score": best_score, "best_epoch": best_epoch,
                           "history": history}
            metrics = {k: v for k, v in row.items() if k != "epoch"}
            save_checkpoint(last_path, model, vocab, asdict(cfg), provenance, epoch + 1, metrics, train_state)
            if improved:
                _copy_atomic(last_path, best_path)
            _write_metrics(run_dir / "metrics.csv", history, columns)
            if writer is not None:
                for key, value in metrics.items():
                    writer.add_scalar(key, value, epoch + 1)
                writer.flush()
            shown = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
            unit = "sampled captions/s" if scst else "captions/s"
            print(f"epoch {epoch + 1}/{cfg.epochs}  {shown}  ({seconds:.1f}s, {throughput / seconds:.0f} {unit})"
                  f"{'  *best' if improved else ''}", file=sys.stderr)
        if world > 1:
            dist.barrier()
    if writer is not None:
        writer.close()
    if world > 1:
        dist.destroy_process_group()
    return best_path


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


if __name__ == "__main__":  # python -m torch.distributed.run ... -m captioner.train CONFIG [...]
    from .cli import main

    sys.exit(main(["train", *sys.argv[1:]]))
