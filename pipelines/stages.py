"""The captioning pipeline: one config from videos to a report, as cached stages.

    extract-pretrain ──> pretrain ──┐            (only with videos.pretrain: image pre-training)
    extract-train ─┬─ (training-set) ┼──> train ──> predict ──> evaluate ──> report
    extract-images ┘                 │                 ^           ^
    extract-val ─────────────────────┘                 │           │
    extract-test ──────────────────────────────────────┴───────────┘

training-set runs when `training_set.corpus` is given (the default model's recipe,
`captioner.training_set`): it joins the train videos, the photos of videos.images and the
corpus's other videos, known by their captions alone, into the store the train stage reads.

evaluate's baselines also read extract-train; video sets listing the same videos share one store.

Every stage calls the library (`captioner.extract`, `captioner.train`, `captioner.model`,
`captioner.evaluate`, `captioner.report`); this module only decides what each stage reads,
which config values its outputs depend on and where they go. Relative paths in the config
are relative to the current directory, as in `captioner train` configs.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping

from captioner import locking
from captioner.atomic import atomic_write
from captioner.config import load_config, save_config
from captioner.errors import CaptionerError, UsageError
from captioner.feature_spec import FeatureSpec
from captioner.extract import ExtractConfig
from captioner.search import check_settings
from captioner.train_config import TrainConfig  # torch-free: a config typo fails fast
from captioner.training_set import TextCorpus

from .graph import MARKER, Stage, Step, execute, format_plan, plan

STORE = "features"  # the feature store inside an extraction stage's directory
VIDEO_SETS = ("pretrain", "images", "train", "val", "test")
LAUNCH = "torchrun.json"  # a multi-node training stage's launch command, for the other nodes
LOCK = "pipeline.lock"  # held by the one `pipeline run` working in a run directory


@dataclass
class VideosConfig:
    """Videos of each set: files, folders or .txt path lists (as `captioner extract` takes them).

    Each non-empty set is extracted into its own feature store.
    """

    train: list[str] = field(default_factory=list)
    val: list[str] = field(default_factory=list)  # empty: training validates on the train store (if at all)
    test: list[str] = field(default_factory=list)
    pretrain: list[str] = field(default_factory=list)  # images for the pretrain stage; empty: no pre-training
    pretrain_frames: str = "uniform:1"  # an image is a one-frame video
    images: list[str] = field(default_factory=list)  # photos trained on beside the videos (training_set)
    max_failures: int = 0  # undecodable videos a set may have before its extraction counts as failed


@dataclass
class TrainingSetConfig:
    """Train on more than the train videos (captioner.training_set): photos beside them and the
    other videos of a caption corpus by their captions alone. Needs a concept backbone."""

    corpus: str | None = None  # caption file of the videos known by captions alone; null: no training-set stage
    corpus_split: str | None = None  # a split name or a file listing ids; null: the whole file
    exclude: list[str] = field(default_factory=list)  # files listing held-out videos (paths or ids) never trained on
    captions_per_video: int = 12  # of each caption-only video
    views: int = 2  # other draws of their derived concepts, as data.augment_features
    image_captions: str | None = None  # captions of videos.images
    image_split: str | None = "train"
    seed: int = 0
    # More corpora by their captions alone (captioner.training_set.TextCorpus: format, path, ...).
    text_corpora: list[dict] = field(default_factory=list)


@dataclass
class DistributedConfig:
    """How the pretrain and train stages run: in this process, or under torchrun."""

    nproc_per_node: int = 1  # training processes per node (GPUs per node); more than 1 starts torchrun
    nnodes: int = 1  # other nodes join with `captioner pipeline join CONFIG`
    master_addr: str | None = None  # rendezvous host, reachable from every node (needed when nnodes > 1)
    master_port: int = 29500


@dataclass
class PredictConfig:
    # Decoding settings; null takes the trained model's own (its config's `decoding` section),
    # which is also what `captioner caption` uses, so reports score the captions users get.
    beam_size: int | None = None
    length_penalty: float | None = None
    max_len: int | None = None
    device: str = "auto"  # auto | cpu | cuda

    def validate(self) -> None:
        check_settings({"beam": self.beam_size, "length_penalty": self.length_penalty, "max_len": self.max_len},
                       {"beam": "predict.beam_size", "length_penalty": "predict.length_penalty",
                        "max_len": "predict.max_len"})


@dataclass
class EvaluateConfig:
    references: str | None = None  # caption file of the test videos (default: train.data.captions)
    split: str | None = "test"  # split of it, a file listing ids, or null for all
    metrics: list[str] = field(default_factory=lambda: ["BLEU", "METEOR", "ROUGE-L", "CIDEr"])
    baselines: bool = True  # constant-caption and nearest-neighbour baselines from the training data
    k: int = 10  # neighbours the nearest-neighbour baseline pools


@dataclass
class ReportConfig:
    title: str | None = None
    videos: str | None = None  # folder of the test videos for thumbnails (default: the folder holding them)
    thumbnails: bool = True


@dataclass
class PipelineConfig:
    run_dir: str = "runs/pipeline"
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    videos: VideosConfig = field(default_factory=VideosConfig)
    # Stage `pretrain` (when videos.pretrain is given) and stage `train` (which then starts from
    # pretrain's best.pt) are `captioner train` configs. The pipeline sets their run_dir and
    # data.features / data.val_features (and train.init_from after pre-training).
    pretrain: TrainConfig = field(default_factory=TrainConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    training_set: TrainingSetConfig = field(default_factory=TrainingSetConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    report: ReportConfig = field(default_factory=ReportConfig)


def load_pipeline(path: str | os.PathLike, overrides: list[str] | None = None) -> PipelineConfig:
    config = load_config(PipelineConfig, path, overrides)
    set_by_pipeline = TrainConfig()
    for section in ("pretrain", "train") if config.videos.pretrain else ("train",):
        cfg = getattr(config, section)
        for name, value, default in (("run_dir", cfg.run_dir, set_by_pipeline.run_dir),
                                     ("data.features", cfg.data.features, ""),
                                     ("data.val_features", cfg.data.val_features, None)):
            if value != default:
                raise UsageError(f"{section}.{name} is set by the pipeline (it is {value!r}); remove it", path)
    if config.videos.pretrain and config.train.init_from is not None:
        raise UsageError("train.init_from is set by the pipeline to the pretrain stage's best.pt when "
                         "videos.pretrain is given; remove one of them", path)
    for name in ("train", "test"):
        if not getattr(config.videos, name):
            raise UsageError(f"videos.{name} is empty: list the {name} videos (files, folders or .txt lists)",
                             path)
    if config.training_set.corpus:
        for name in ("augment_features", "text_captions"):
            if getattr(config.train.data, name):
                raise UsageError(f"train.data.{name} is set by the pipeline's training-set stage when "
                                 "training_set.corpus is given; remove it", path)
        if config.videos.images and not config.training_set.image_captions:
            raise UsageError("videos.images needs training_set.image_captions (the photos' captions)", path)
    elif config.videos.images:
        raise UsageError("videos.images are trained on through the training-set stage: set training_set.corpus "
                         "(or move the photos to videos.pretrain to pre-train on them)", path)
    if config.distributed.nproc_per_node < 1 or config.distributed.nnodes < 1:
        raise UsageError("distributed.nproc_per_node and distributed.nnodes must be at least 1", path)
    if config.distributed.nnodes > 1 and not config.distributed.master_addr:
        raise UsageError("distributed.nnodes > 1 needs distributed.master_addr (the rendezvous host)", path)
    return config


# ----------------------------------------------------------------------------- extract
def _extract_stage(config: PipelineConfig, name: str, progress: bool) -> Stage:
    from captioner.extract import extract
    from captioner.inputs import collect_inputs, video_ids
    from captioner.store import open_features

    inputs = getattr(config.videos, name)
    extract_config = copy.deepcopy(config.extract)
    if name == "pretrain":
        extract_config.frames = config.videos.pretrain_frames
    paths = collect_inputs(inputs)
    stage_name = f"extract-{name}"

    def run(dirs: Mapping[str, Path]) -> None:
        store_path = dirs[stage_name] / STORE
        if store_path.exists():  # filled from an earlier list, maybe: drop the videos no longer listed
            wanted = set(video_ids(collect_inputs(inputs)).values())
            store = open_features(store_path, "a")
            for video_id in store.ids():
                if video_id not in wanted:
                    store.delete(video_id)
        summary = extract(inputs, store_path, extract_config, progress=progress)
        if summary.failed > config.videos.max_failures:
            raise CaptionerError(f"{summary.failed} of {summary.total} videos could not be extracted (reasons in "
                                 f"{store_path / 'failures.jsonl'}); fix or remove them from videos.{name}, or "
                                 f"raise videos.max_failures")

    # Where and how fast extraction runs does not change the features, so batch size, workers,
    # device, runtime (see captioner.store) and the Ray address are not part of the key.
    params = FeatureSpec.asked(extract_config.backbone, extract_config.frames, extract_config.precision).pipeline_key()
    return Stage(stage_name, run, params=params, inputs=paths, outputs=[f"{STORE}/store.json"], dir_params=params,
                 verify=lambda stage_dir: _store_problem(stage_dir / STORE, paths))


def _store_problem(store_path: Path, paths: list[Path]) -> str | None:
    """Why an extraction stage's store no longer holds what it extracted: videos deleted from it
    (those that failed to extract, listed in failures.jsonl, were never there)."""
    from captioner.inputs import video_ids
    from captioner.store import open_features

    try:
        held = set(open_features(store_path).ids())
    except CaptionerError as exc:
        return exc.reason
    failed = set()
    try:
        failed = {json.loads(line).get("id") for line in (store_path / "failures.jsonl").read_text().splitlines()
                  if line.strip()}
    except (OSError, ValueError, AttributeError):
        pass
    lost = set(video_ids(paths).values()) - held - failed
    return f"{len(lost)} of its videos are missing from {STORE}/" if lost else None


# ----------------------------------------------------------------------------- training set
TRAINING_SET = "training-set"


def _training_set_stage(config: PipelineConfig, stores: Mapping[str, str]) -> Stage:
    cfg, data = config.training_set, config.train.data
    # Videos of the val and test stores are never trained on, whatever the corpus holds.
    held_out = list(dict.fromkeys(stores[name] for name in ("val", "test")
                                  if name in stores and stores[name] != stores["train"]))
    deps = list(dict.fromkeys(filter(None, [stores["train"], stores.get("images"), *held_out])))

    def run(dirs: Mapping[str, Path]) -> None:
        from captioner.datasets import load_captions
        from captioner.training_set import build_training_set, held_out_ids

        exclude = held_out_ids(cfg.exclude, [dirs[store] / STORE for store in held_out])
        images = stores.get("images")
        built = build_training_set(
            dirs[TRAINING_SET], dirs[stores["train"]] / STORE, load_captions(data.captions, data.split),
            images=dirs[images] / STORE if images else None,
            image_captions=load_captions(cfg.image_captions, cfg.image_split) if images else None,
            corpus=load_captions(cfg.corpus, cfg.corpus_split), exclude=exclude,
            captions_per_video=cfg.captions_per_video, views=cfg.views, seed=cfg.seed,
            text_corpora=TextCorpus.parse(cfg.text_corpora))
        _write_json(dirs[TRAINING_SET] / "counts.json", built.counts)
        print(f"{TRAINING_SET}: " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in built.counts.items()),
              file=sys.stderr)

    params = {**asdict(cfg), "captions_split": data.split}
    inputs = [Path(f) for f in (data.captions, cfg.corpus, cfg.image_captions) if f]
    inputs += [Path(f) for f in cfg.exclude] + _split_files(data.split, cfg.corpus_split, cfg.image_split)
    inputs += [f for corpus in TextCorpus.parse(cfg.text_corpora) for f in corpus.files()]
    return Stage(TRAINING_SET, run, params=params, inputs=inputs, deps=deps,
                 outputs=["features/store.json", "captions.jsonl", "counts.json"])


# ----------------------------------------------------------------------------- train
# Model options added after runs were keyed, at the value every earlier run had: left out of the
# key there, so adding an option never re-trains what was trained without it.
LATER_MODEL_OPTIONS = {"video_appearance": True}


def _train_params(cfg: TrainConfig) -> dict:
    params = asdict(cfg)
    for key in ("run_dir", "device"):
        params.pop(key)
    for key in ("features", "val_features"):
        params["data"].pop(key)
    for key, before in LATER_MODEL_OPTIONS.items():
        if params["model"].get(key) == before:
            params["model"].pop(key)
    return params


def _split_files(*splits: str | None) -> list[Path]:
    """The splits given as files listing ids (the others are split names)."""
    return [Path(s) for s in splits if s and os.path.isfile(s)]


def _train_inputs(cfg: TrainConfig, init_from_stage: bool) -> list[Path]:
    files = [Path(f) for f in (cfg.data.captions, cfg.data.val_captions) if f]
    files += _split_files(cfg.data.split, cfg.data.val_split)
    if cfg.init_from and not init_from_stage:
        files.append(Path(cfg.init_from))
    return files


def _torchrun(config_file: Path, dist: DistributedConfig, rendezvous_id: str, resume: bool) -> list[str]:
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={dist.nproc_per_node}"]
    if dist.nnodes == 1:
        command.append("--standalone")  # a free local port: pipelines side by side never collide
    else:  # every node runs the same command; ranks are assigned at the rendezvous
        command += [f"--nnodes={dist.nnodes}", "--rdzv_backend=c10d",
                    f"--rdzv_endpoint={dist.master_addr}:{dist.master_port}", f"--rdzv_id={rendezvous_id}"]
    return command + ["-m", "captioner", "train", str(config_file)] + (["--resume"] if resume else [])


def run_torchrun(command: list[str]) -> None:
    """Run torchrun, passing its output through; a failure becomes the trainer's own error line."""
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parent.parent)  # so that a source checkout works uninstalled
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    reason = None
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
    try:
        for line in process.stderr:
            sys.stderr.write(line)
            if "captioner: error:" in line:
                reason = line.rsplit("captioner: error:", 1)[1].strip()  # ranks may share a line
        code = process.wait()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    if code != 0:
        raise CaptionerError(f"torchrun exited with status {code}: " + (reason or "see the output above"))


def _train_stage(config: PipelineConfig, name: str, stores: Mapping[str, str]) -> Stage:
    cfg: TrainConfig = getattr(config, name)
    joined = name == "train" and bool(config.training_set.corpus)
    features = TRAINING_SET if joined else stores[name]
    val_features = stores.get("val") if name == "train" else None
    deps = list(dict.fromkeys(filter(None, [features, val_features])))
    if name == "train" and config.videos.pretrain:
        deps.append("pretrain")

    def run(dirs: Mapping[str, Path]) -> None:
        staged = copy.deepcopy(cfg)
        staged.run_dir = str(dirs[name])
        staged.data.features = str(dirs[features] / STORE)
        if joined:  # the training set's own store, views and caption file
            staged.data.augment_features = sorted(str(p) for p in dirs[TRAINING_SET].glob("view*"))
            staged.data.captions = str(dirs[TRAINING_SET] / "captions.jsonl")
            staged.data.split = None
        staged.data.val_features = str(dirs[val_features] / STORE) if val_features else None
        if "pretrain" in deps:
            staged.init_from = str(dirs["pretrain"] / "best.pt")
        (dirs[name] / LAUNCH).unlink(missing_ok=True)  # only ever the command of the current attempt
        resume = (dirs[name] / "last.pt").is_file()  # an interrupted run of this very key
        if resume:
            print(f"{name}: resuming from {dirs[name] / 'last.pt'}", file=sys.stderr)
        dist = config.distributed
        if dist.nproc_per_node * dist.nnodes == 1:
            from captioner.train import train

            train(staged, resume=resume)
            return
        config_file = dirs[name] / "train.yaml"
        save_config(staged, config_file)
        command = _torchrun(config_file.resolve(), dist, dirs[name].name, resume)
        if dist.nnodes > 1:  # what `captioner pipeline join` starts on the other nodes
            _write_json(dirs[name] / LAUNCH, {"command": command[1:]})
        run_torchrun(command)

    return Stage(name, run, params=_train_params(cfg), inputs=_train_inputs(cfg, "pretrain" in deps), deps=deps,
                 outputs=["best.pt", "last.pt", "metrics.csv"])


# ----------------------------------------------------------------------------- predict / evaluate / report
def _write_json(path: Path, value) -> None:
    atomic_write(path, json.dumps(value, indent=1, ensure_ascii=False) + "\n")


def _predict_stage(config: PipelineConfig, stores: Mapping[str, str]) -> Stage:
    cfg = config.predict

    def run(dirs: Mapping[str, Path]) -> None:
        from captioner.caption import Captioner

        # The same path as `captioner caption --features STORE`: the checkpoint's decoding settings
        # unless the config overrides them.
        captioner = Captioner.load(dirs["train"] / "best.pt", device=cfg.device, load_backbone=False)
        predictions = captioner.store_predictions(dirs[stores["test"]] / STORE, beam=cfg.beam_size,
                                                  length_penalty=cfg.length_penalty, max_len=cfg.max_len)
        _write_json(dirs["predict"] / "predictions.json", predictions)
        decoding = captioner.decoding.but(cfg.beam_size, cfg.length_penalty, cfg.max_len)
        print(f"predict: captioned {len(predictions)} videos with {captioner.checkpoint_path} (beam "
              f"{decoding.beam}, length penalty {decoding.length_penalty:g}, max length {decoding.max_len})",
              file=sys.stderr)

    return Stage("predict", run, params={"beam_size": cfg.beam_size, "length_penalty": cfg.length_penalty,
                                         "max_len": cfg.max_len},
                 deps=["train", stores["test"]], outputs=["predictions.json"])


def _test_references(config: PipelineConfig) -> str:
    return config.evaluate.references or config.train.data.captions


def _evaluate_stage(config: PipelineConfig, stores: Mapping[str, str]) -> Stage:
    cfg, data = config.evaluate, config.train.data

    def run(dirs: Mapping[str, Path]) -> None:
        from captioner.evaluate import evaluate_files, format_table, write_results

        evaluation = evaluate_files(
            dirs["predict"] / "predictions.json", _test_references(config), split=cfg.split, metrics=cfg.metrics,
            train_references=data.captions if cfg.baselines else None, train_split=data.split,
            train_features=dirs[stores["train"]] / STORE if cfg.baselines else None,
            test_features=dirs[stores["test"]] / STORE if cfg.baselines else None, k=cfg.k)
        write_results(evaluation, dirs["evaluate"] / "evaluation.json")
        _write_json(dirs["evaluate"] / "scores.json", {s.name: s.corpus for s in evaluation.systems})
        print(format_table(evaluation), flush=True)

    params = {"references_split": cfg.split, "metrics": cfg.metrics, "baselines": cfg.baselines}
    inputs = [Path(_test_references(config)), *_split_files(cfg.split)]
    deps = ["predict"]
    if cfg.baselines:
        params.update(k=cfg.k, train_split=data.split)
        inputs += [Path(data.captions), *_split_files(data.split)]
        deps += list(dict.fromkeys([stores["train"], stores["test"]]))
    return Stage("evaluate", run, params=params, inputs=inputs, deps=deps,
                 outputs=["evaluation.json", "scores.json"])


def _report_stage(config: PipelineConfig, stores: Mapping[str, str], progress: bool) -> Stage:
    cfg, data = config.report, config.train.data
    videos = None
    if cfg.thumbnails:
        videos = cfg.videos
        if videos is None:
            from captioner.inputs import collect_inputs

            videos = os.path.commonpath([str(p.resolve().parent) for p in collect_inputs(config.videos.test)])

    def run(dirs: Mapping[str, Path]) -> None:
        from captioner.datasets import load_references
        from captioner.evaluate import read_results
        from captioner.report import write_report

        evaluation = read_results(dirs["evaluate"] / "evaluation.json")
        train_references = load_references(data.captions, data.split)
        paths = write_report(evaluation, dirs["report"], videos=videos, run=dirs["train"],
                             train_references=train_references, title=cfg.title, progress=progress)
        print(f"report: {paths['html']}", file=sys.stderr)

    return Stage("report", run, params={"title": cfg.title, "videos": videos, "train_split": data.split},
                 inputs=[Path(data.captions)], deps=["evaluate", "train", stores["test"]],
                 outputs=["report.html", "report.md", "report.json"])


# ----------------------------------------------------------------------------- the pipeline
def _stores(config: PipelineConfig) -> dict[str, str]:
    """The extraction stage of each given video set; sets listing the same videos share one.

    (MSR-VTT, say, is one folder for every split: its caption file says which video is which.)
    """
    stores: dict[str, str] = {}
    for name in VIDEO_SETS:
        inputs = getattr(config.videos, name)
        if inputs:
            twin = next((other for other in stores if "pretrain" not in (name, other)
                         and getattr(config.videos, other) == inputs), None)
            stores[name] = stores[twin] if twin else f"extract-{name}"
    return stores


def build_stages(config: PipelineConfig, progress: bool = True) -> list[Stage]:
    """The stages in running order; only the video sets that are given are extracted."""
    stores = _stores(config)
    stages = [_extract_stage(config, name, progress) for name in stores if stores[name] == f"extract-{name}"]
    if config.videos.pretrain:
        stages.append(_train_stage(config, "pretrain", stores))
    if config.training_set.corpus:
        stages.append(_training_set_stage(config, stores))
    stages += [_train_stage(config, "train", stores), _predict_stage(config, stores),
               _evaluate_stage(config, stores), _report_stage(config, stores, progress)]
    return stages


def run_pipeline(config: PipelineConfig, *, until: list[str] = (), force: list[str] = (), dry_run: bool = False,
                 progress: bool = True, out=None) -> list[Step]:
    """Print the plan, then run the stages that are not up to date (unless dry_run)."""
    out = out or sys.stdout
    run_dir = Path(config.run_dir).resolve()  # the stages may run in other processes, even on other nodes
    if dry_run:
        return _run_locked(config, run_dir, until, force, dry_run, progress, out)
    _require_extras(plan(build_stages(config, progress), run_dir, until, force))  # before anything is made
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CaptionerError(f"cannot create the run directory: {exc.strerror}", run_dir) from None
    # Two runs on one directory would both resume the same stage (train it twice, interleave a store).
    key = locking.acquire(run_dir, LOCK, "running this pipeline", "wait for it to finish or use another run_dir")
    try:
        return _run_locked(config, run_dir, until, force, dry_run, progress, out)
    finally:
        locking.release(key)


def _run_locked(config: PipelineConfig, run_dir: Path, until, force, dry_run: bool, progress: bool,
                out) -> list[Step]:
    steps = plan(build_stages(config, progress), run_dir, until, force)
    print(f"pipeline {run_dir}: {sum(s.action != 'skip' for s in steps)} of {len(steps)} stages to run"
          + (" (dry run)" if dry_run else ""), file=out)
    print(format_plan(steps), file=out, flush=True)
    if dry_run:
        return steps
    started = time.perf_counter()
    execute(steps)
    print(f"pipeline finished in {time.perf_counter() - started:.1f}s", file=out)
    report = next((s.dir for s in steps if s.stage.name == "report" and (s.dir / MARKER).exists()), None)
    if report is not None:
        print(f"report: {report / 'report.html'}", file=out)
    return steps


# What a stage needs beyond the light install (captioner.extras), checked before any stage runs:
# a missing extra is one line at the start, not a failure after an hour of extraction.
STAGE_EXTRAS = {"pretrain": ("torch",), "train": ("torch",),
                "evaluate": ("pycocoevalcap",), "report": ("pycocoevalcap",)}


def _require_extras(steps: list[Step]) -> None:
    from captioner.extras import require

    running = [s.stage.name for s in steps if s.action != "skip"]
    needed = dict.fromkeys(m for name in running for m in STAGE_EXTRAS.get(name, ()))
    require(f"`captioner pipeline run` (stages {', '.join(n for n in running if n in STAGE_EXTRAS)})", *needed)


def join_training(config: PipelineConfig, stage: str = "train", poll_seconds: float = 2.0, out=None) -> None:
    """On another node of a multi-node run: wait for `stage` to launch torchrun, then join it.

    The run directory must be on a file system every node sees at the same path.
    """
    out = out or sys.stdout
    if config.distributed.nnodes < 2:
        raise CaptionerError("distributed.nnodes is 1: there is no training run to join")
    steps = {s.stage.name: s for s in plan(build_stages(config, progress=False), Path(config.run_dir).resolve())}
    if stage not in steps or stage not in ("pretrain", "train"):
        raise CaptionerError(f"no training stage {stage!r} in this pipeline (pretrain runs only with videos.pretrain)")
    stage_dir = steps[stage].dir
    print(f"waiting for the pipeline to launch {stage} in {stage_dir}", file=out, flush=True)
    while not (stage_dir / LAUNCH).is_file():
        if (stage_dir / MARKER).is_file():
            print(f"{stage} is already complete", file=out)
            return
        time.sleep(poll_seconds)
    command = json.loads((stage_dir / LAUNCH).read_text(encoding="utf-8"))["command"]
    run_torchrun([sys.executable, *command])
