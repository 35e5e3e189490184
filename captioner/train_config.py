"""The configs of `captioner train`, importable without torch.

`captioner train` and `captioner pipeline` load and check a config (every key, type and range)
with these before torch is imported, so a typo costs a fraction of a second. `captioner.train`
and `captioner.model` re-export them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .config import require
from .errors import UsageError
from .search import Decoding


@dataclass
class ModelConfig:
    feature_dim: int = 0  # set from the feature store when training starts
    embed_size: int = 256
    hidden_size: int = 256  # small enough to train on a CPU; the configs in configs/ use 512
    num_layers: int = 1
    cell: str = "lstm"  # or "gru" (Cho et al. 2014): the recurrent cell; checkpoints without it are LSTMs
    dropout: float = 0.3
    video_input: str = "every_step"  # or "first_step"
    tie_weights: bool = False  # share the word embedding with the output layer
    condition_on_source: bool = False  # add a learned image/video vector to the video input
    # [start, end) of each classifier head's probabilities in the input vector (concept
    # backbones, see captioner/concepts.py); the rest of the vector is appearance features.
    concept_heads: list = field(default_factory=list)
    # False: a video's appearance features are not read, only its heads' probabilities (photos
    # keep theirs). Caption-only training videos have no appearance, so a model that learned
    # video mostly from them reads real footage the way it was taught (MODEL_CARD.md).
    video_appearance: bool = True

    def validate(self) -> None:
        """Range checks that need no data (feature_dim 0 means: taken from the feature store)."""
        for name in ("embed_size", "hidden_size", "num_layers"):
            value = getattr(self, name)
            require(value >= 1, f"model.{name}", "at least 1", value)
        require(self.feature_dim >= 0, "model.feature_dim", "positive (or 0: from the feature store)",
                self.feature_dim)
        require(0 <= self.dropout < 1, "model.dropout", "at least 0 and below 1", self.dropout)
        if self.cell not in ("lstm", "gru"):
            raise UsageError(f"model.cell must be lstm or gru, not {self.cell!r}")
        if self.video_input not in ("every_step", "first_step"):
            raise UsageError(f"model.video_input must be every_step or first_step, not {self.video_input!r}")
        if self.tie_weights and self.embed_size != self.hidden_size:
            raise UsageError("model.tie_weights needs model.embed_size == model.hidden_size "
                             f"(got {self.embed_size} and {self.hidden_size})")
        # The heads are known once the features are (feature_dim set from the store, with them).
        if not self.video_appearance and self.feature_dim and not self.concept_heads:
            raise UsageError("model.video_appearance: false needs a concept backbone: without its heads' "
                             "probabilities a video would be read as nothing")
        for start, end in self.concept_heads:
            if not 0 <= start < end <= (self.feature_dim or end):
                raise UsageError(f"model.concept_heads: [{start}, {end}) is not inside the "
                                 f"{self.feature_dim}-d input")


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
    # bf16 autocast on a CPU that computes in bf16 (AVX-512 BF16 or AMX; ignored elsewhere and on
    # CUDA). See the README's "Training on a CPU" for the step time and scores it was judged by.
    cpu_bf16: bool = False
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

    def require_data(self) -> None:
        """What a run needs beyond valid values (a pipeline config leaves these for the pipeline to set)."""
        if not self.data.features or not self.data.captions:
            raise UsageError("data.features and data.captions must be set")


# What `train --resume` may change: how many epochs the run goes to (continue a finished run, or
# end sooner), where it runs (device) and where its directory is now (run_dir, moved or copied).
# Every other value shapes the data, the model or the optimisation last.pt already holds; a run
# whose epochs were trained under two configs could not say what it is.
RESUME_MAY_CHANGE = ("epochs", "device", "run_dir")


def resume_differences(saved: dict, cfg: TrainConfig) -> list[str]:
    """`key old -> new` for every value of `cfg` that differs from the config the run was saved
    with (its last.pt) and may not change on resume."""
    import json
    from dataclasses import asdict

    def flat(mapping: dict, prefix: str = "") -> dict:
        out = {}
        for key, value in mapping.items():
            out.update(flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
        return out

    def normal(value):  # tuples and lists, ints and floats compare as their YAML/JSON forms
        return json.loads(json.dumps(value, default=str))

    new, old, default = flat(asdict(cfg)), flat(saved), flat(asdict(TrainConfig()))
    ignored = set(RESUME_MAY_CHANGE)
    if cfg.init_from:
        ignored |= {k for k in new if k.startswith("model.")}  # the architecture is init_from's
    # Filled in from the feature store when the run started.
    ignored |= {k for k, unset in (("model.feature_dim", 0), ("model.concept_heads", [])) if new.get(k) == unset}
    differing = []
    for key in new:
        if key in ignored:
            continue
        before = old.get(key, default.get(key))  # a key added since the run began: its default then
        if normal(before) != normal(new[key]):
            differing.append(f"{key} {before!r} -> {new[key]!r}")
    return differing
