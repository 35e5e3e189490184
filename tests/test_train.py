"""Training end to end: memorising real clips, exact resume, fine-tuning, DDP, user errors."""

from __future__ import annotations

import csv
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import captioner.train as train_module
from captioner import open_features
from captioner.datasets import load_captions
from captioner.errors import CaptionerError
from captioner.model import load_checkpoint
from captioner.train import TrainConfig, load_config, train

ROOT = Path(__file__).resolve().parent.parent


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _config(tmp_path, **overrides) -> TrainConfig:
    base = {"run_dir": str(tmp_path / "run"), "epochs": 4, "batch_size": 16, "warmup_steps": 2, "lr": 3e-3,
            "val_metrics": [], "model": {"embed_size": 32, "hidden_size": 48}}
    tmp_path.mkdir(parents=True, exist_ok=True)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump({**base, **overrides}))
    return load_config(TrainConfig, config_file)


def _metrics(run_dir) -> list[dict]:
    with open(Path(run_dir) / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def msvd_train_captions(data_dir):
    return load_captions(data_dir / "msvd" / "captions" / "MSVD_train.tsv", "train")


@pytest.fixture(scope="module")
def random_store(tmp_path_factory, msvd_train_captions):
    """40 MSVD training clips with random 32-d features: fast data for the mechanics tests."""
    path = tmp_path_factory.mktemp("features") / "random"
    store = open_features(path, "a")
    rng = np.random.default_rng(0)
    for vid in list(msvd_train_captions)[:40]:
        store.put(vid, rng.standard_normal((3, 32)).astype(np.float32))
    store.set_provenance({"backbone": "random", "feature_dim": 32})
    return path


def _data(random_store, data_dir, **extra) -> dict:
    return {"features": str(random_store), "captions": str(data_dir / "msvd" / "captions" / "MSVD_train.tsv"),
            "split": "train", "val_split": None, **extra}


# ------------------------------------------------------------------------- memorisation
def test_memorises_captions_of_real_clips(msvd_store, msvd_train_captions, tmp_path):
    from captioner.metrics import score

    store = open_features(msvd_store)
    clips = [vid for vid in store.ids() if vid in msvd_train_captions]
    assert len(clips) == 9  # the train-split clips; the test-split ones are never trained on
    captions = {vid: msvd_train_captions[vid][:2] for vid in clips}
    caption_file = tmp_path / "clips.jsonl"
    caption_file.write_text("".join(json.dumps({"video": v, "captions": c}) + "\n" for v, c in captions.items()))
    config = _config(tmp_path, epochs=80, batch_size=18, lr=1e-2, lr_schedule="constant", warmup_steps=0,
                     data={"features": str(msvd_store), "captions": str(caption_file), "split": None,
                           "val_split": None, "min_count": 1},
                     model={"embed_size": 64, "hidden_size": 128, "dropout": 0.0})
    best = train(config)
    checkpoint = load_checkpoint(best)
    _, feats = store.pooled_matrix(clips)
    greedy = checkpoint.decoding.but(beam=1)
    predictions = {clip: best[0].caption for clip, best in zip(clips, checkpoint.predict(feats, decoding=greedy))}
    bleu4 = score(predictions, captions, ["BLEU-4"])["BLEU-4"]
    print(f"memorisation BLEU-4 {bleu4:.3f}: {predictions}")
    assert bleu4 > 0.9


# ------------------------------------------------------------------------- images and videos
def test_source_conditioning_learns_a_style_per_source(tmp_path):
    """The same vectors as photos and as videos, captioned in two styles: only the source differs."""
    store = open_features(tmp_path / "features", "a")
    rng = np.random.default_rng(0)
    subjects = ["dog", "cat", "horse", "bird"]
    rows = []
    for subject in subjects:
        vector = rng.standard_normal((1, 16)).astype(np.float32)
        store.put(f"photo_{subject}", vector, {"is_image": True})
        store.put(f"clip_{subject}", np.repeat(vector, 3, 0), {"is_image": False})
        rows.append({"video": f"photo_{subject}", "captions": [f"a brown {subject} stands on the green grass"]})
        rows.append({"video": f"clip_{subject}", "captions": [f"a {subject} is running"]})
    store.set_provenance({"backbone": "random", "feature_dim": 16})
    captions = tmp_path / "captions.jsonl"
    captions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = _config(tmp_path, epochs=150, batch_size=8, lr=1e-2, lr_schedule="constant", warmup_steps=0,
                     data={"features": str(tmp_path / "features"), "captions": str(captions), "split": None,
                           "val_split": None, "min_count": 1},
                     model={"embed_size": 32, "hidden_size": 64, "dropout": 0.0, "condition_on_source": True})
    checkpoint = load_checkpoint(train(config))
    _, vectors = open_features(tmp_path / "features").pooled_matrix([f"photo_{s}" for s in subjects])
    greedy = checkpoint.decoding.but(beam=1)

    def captions(source):
        return [best[0].caption for best in checkpoint.predict(vectors, source, decoding=greedy)]

    assert captions("image") == [f"a brown {s} stands on the green grass" for s in subjects]
    assert captions("video") == [f"a {s} is running" for s in subjects]


def _views_toy(tmp_path, subjects):
    """Photos whose main and second-view vectors differ, one caption each."""
    rng = np.random.default_rng(1)
    main, view = open_features(tmp_path / "main", "a"), open_features(tmp_path / "view", "a")
    for subject in subjects:
        main.put(f"photo_{subject}", rng.standard_normal((1, 16)).astype(np.float32), {"is_image": True})
        view.put(f"photo_{subject}", rng.standard_normal((1, 16)).astype(np.float32), {"is_image": True})
    for store in (main, view):
        store.set_provenance({"backbone": "random", "feature_dim": 16, "frames": "uniform:1"})
    captions = tmp_path / "captions.jsonl"
    captions.write_text("".join(json.dumps({"video": f"photo_{s}", "captions": [f"a {s} on the grass"]}) + "\n"
                                for s in subjects))
    return captions


def test_augmentation_views_teach_every_view(tmp_path):
    """data.augment_features: a model trained with a second view captions that view too."""
    subjects = ["dog", "cat", "horse", "bird", "cow", "frog"]
    captions = _views_toy(tmp_path, subjects)
    _, second_view = open_features(tmp_path / "view").pooled_matrix([f"photo_{s}" for s in subjects])
    expected = [f"a {s} on the grass" for s in subjects]
    results = {}
    for name, views in (("plain", []), ("augmented", [str(tmp_path / "view")])):
        config = _config(tmp_path / name, epochs=150, batch_size=12, lr=1e-2, lr_schedule="constant",
                         warmup_steps=0, model={"embed_size": 32, "hidden_size": 64, "dropout": 0.0},
                         data={"features": str(tmp_path / "main"), "captions": str(captions), "split": None,
                               "val_split": None, "min_count": 1, "augment_features": views})
        checkpoint = load_checkpoint(train(config))
        results[name] = [best[0].caption for best in
                         checkpoint.predict(second_view, decoding=checkpoint.decoding.but(beam=1))]
    assert results["augmented"] == expected
    assert sum(a == b for a, b in zip(results["plain"], expected)) < len(subjects) // 2, results["plain"]


def test_augmentation_views_are_drawn_per_caption_and_checked(tmp_path):
    from captioner.text import Vocabulary

    subjects = ["dog", "cat"]
    captions = load_captions(_views_toy(tmp_path, subjects))
    main = open_features(tmp_path / "main")
    vocab = Vocabulary.build([["a", "dog"]], 1)
    data = train_module.make_tensors(main, captions, vocab, 10, torch.device("cpu"),
                                     text_only={"no_features": ["a dog"]},
                                     augment_features=[str(tmp_path / "view")])
    rows = torch.arange(len(data)).repeat(50)
    feats, _, _ = data.batch(rows, views=torch.Generator().manual_seed(0))
    vectors = {"main": data.feats, "view": data.views[0]}
    for row in range(data.paired):  # each photo's rows take both vectors, never anything else
        taken = feats[rows == row]
        from_main = (taken == vectors["main"][row]).all(1)
        from_view = (taken == vectors["view"][row]).all(1)
        assert (from_main | from_view).all() and from_main.any() and from_view.any()
    assert (feats[rows == data.paired] == 0).all()  # caption-only rows keep their zero vector
    assert torch.equal(data.batch(rows)[0], data.feats[data.video_of[rows]])  # no generator: main only

    other = open_features(tmp_path / "other", "a")
    other.put("photo_dog", np.zeros((1, 16), np.float32))
    other.set_provenance({"backbone": "random", "feature_dim": 16, "frames": "uniform:8"})
    with pytest.raises(CaptionerError, match="extracted differently from data.features: frames 'uniform:8'"):
        train_module.make_tensors(main, captions, vocab, 10, torch.device("cpu"),
                                  augment_features=[str(tmp_path / "other")])


def test_captions_without_features_extend_the_language(random_store, data_dir, tmp_path, capsys):
    """data.text_captions: videos without features are trained on with a zero vector."""
    with_features = open_features(random_store).ids()
    text = tmp_path / "text.jsonl"
    text.write_text(json.dumps({"video": "no_features_1", "captions": ["a zorblat is quuxing", "x", "y"]}) + "\n"
                    + json.dumps({"video": "no_features_2", "captions": ["a zorblat is quuxing frobnicately"]}) + "\n"
                    + json.dumps({"video": with_features[0], "captions": ["a zorblat has glimmerwhisks"]}) + "\n")
    config = _config(tmp_path, epochs=1, model={"embed_size": 32, "hidden_size": 48, "condition_on_source": True},
                     data=_data(random_store, data_dir, text_captions=str(text), text_captions_per_video=1,
                                min_count=2))
    checkpoint = load_checkpoint(train(config))
    assert "(2 of them captions only)" in capsys.readouterr().err
    vocab = checkpoint.vocab.words
    assert "zorblat" in vocab and "quuxing" in vocab  # twice in the text captions
    assert "frobnicately" not in vocab  # once
    assert "glimmerwhisks" not in vocab  # its video has features: not a caption-only video


def test_self_critical_fine_tuning_raises_the_cider_reward(msvd_train_captions, tmp_path):
    """12 videos (random vectors) with one caption each: SCST must climb towards them."""
    store = open_features(tmp_path / "features", "a")
    rng = np.random.default_rng(0)
    videos = list(msvd_train_captions)[:12]
    for vid in videos:
        store.put(vid, rng.standard_normal((2, 32)).astype(np.float32))
    store.set_provenance({"backbone": "random", "feature_dim": 32})
    captions = tmp_path / "captions.jsonl"
    captions.write_text("".join(json.dumps({"video": v, "captions": msvd_train_captions[v][:1]}) + "\n"
                                for v in videos))
    data = {"features": str(tmp_path / "features"), "captions": str(captions), "split": None,
            "val_split": None, "min_count": 1}
    xe = _config(tmp_path / "xe", epochs=5, warmup_steps=0, data=data)
    scst = _config(tmp_path / "scst", epochs=20, objective="scst", scst_samples=4, batch_size=4, lr=5e-3,
                   warmup_steps=0, lr_schedule="constant", init_from=str(train(xe)), init_vocab="keep",
                   data=data, model={"embed_size": 32, "hidden_size": 48, "dropout": 0.0})
    best = train(scst)
    rows = _metrics(scst.run_dir)
    assert list(rows[0])[:3] == ["epoch", "train_loss", "train_CIDEr"]
    rewards = [float(r["train_CIDEr"]) for r in rows]
    print("SCST train CIDEr-D per epoch:", [round(r, 3) for r in rewards])
    assert np.mean(rewards[-3:]) > 1.5 * np.mean(rewards[:3])
    assert load_checkpoint(best).config["objective"] == "scst"


# ------------------------------------------------------------------------- run directory, resume
def test_run_directory_and_validation_metric(random_store, data_dir, tmp_path):
    val = str(data_dir / "msvd" / "captions" / "MSVD_train.tsv")
    config = _config(tmp_path, epochs=2, val_metrics=["CIDEr", "BLEU"],
                     data=_data(random_store, data_dir, val_captions=val, val_split="train"))
    best = train(config)
    run = Path(config.run_dir)
    assert sorted(p.name for p in run.iterdir() if p.name != "tensorboard") == [
        "best.pt", "config.yaml", "last.pt", "metrics.csv", "train.lock"]
    rows = _metrics(run)
    assert list(rows[0]) == ["epoch", "train_loss", "val_loss", "val_BLEU-1", "val_BLEU-2", "val_BLEU-3",
                             "val_BLEU-4", "val_CIDEr"]
    assert [r["epoch"] for r in rows] == ["1", "2"] and all(float(r["val_CIDEr"]) >= 0 for r in rows)
    checkpoint = load_checkpoint(best)
    best_epoch = max(rows, key=lambda r: float(r["val_CIDEr"]))["epoch"]
    assert checkpoint.epoch == int(best_epoch)
    assert checkpoint.provenance == {"backbone": "random", "feature_dim": 32}
    assert checkpoint.config["model"]["feature_dim"] == 32
    assert load_config(TrainConfig, run / "config.yaml").model.feature_dim == 32
    with pytest.raises(CaptionerError, match="already holds a run"):
        train(config)


@pytest.mark.parametrize("cpu_has_bf16", [True, False])
def test_cpu_bf16_autocasts_only_on_a_cpu_with_bf16_units(random_store, data_dir, tmp_path, monkeypatch, capsys,
                                                          cpu_has_bf16):
    monkeypatch.setattr(train_module, "cpu_has_bf16", lambda: cpu_has_bf16)
    head_dtypes = set()
    original_init = train_module.CaptionModel.__init__

    def recording_init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.head.register_forward_hook(lambda module, inputs, output: head_dtypes.add(output.dtype)
                                        if module.training else None)

    monkeypatch.setattr(train_module.CaptionModel, "__init__", recording_init)
    config = _config(tmp_path, epochs=2, cpu_bf16=True, data=_data(random_store, data_dir))
    best = train(config)
    log = capsys.readouterr().err
    rows = _metrics(config.run_dir)
    assert all(np.isfinite(float(r["train_loss"])) for r in rows)
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    if cpu_has_bf16:
        assert head_dtypes == {torch.bfloat16} and "in bfloat16 autocast" in log
    else:
        assert head_dtypes == {torch.float32} and "no bf16 units" in log
    # Weights stay fp32 either way: the checkpoint is the same kind of file.
    assert all(t.dtype == torch.float32 for t in load_checkpoint(best).model.state_dict().values()
               if t.is_floating_point())


def test_resume_continues_exactly(random_store, data_dir, tmp_path, monkeypatch):
    # Dropout and scheduled sampling draw random numbers: resuming must restore those too.
    settings = dict(epochs=3, batch_size=64, scheduled_sampling=0.3, label_smoothing=0.1,
                    model={"embed_size": 32, "hidden_size": 48, "dropout": 0.3},
                    data=_data(random_store, data_dir, val_split="train"))
    straight = _config(tmp_path / "a", **settings)
    train(straight)

    interrupted = _config(tmp_path / "b", **settings)
    real_epoch, calls = train_module.train_epoch, []

    def ctrl_c_in_second_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_epoch", ctrl_c_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(interrupted)
    monkeypatch.setattr(train_module, "train_epoch", real_epoch)
    assert [r["epoch"] for r in _metrics(interrupted.run_dir)] == ["1"]
    train(interrupted, resume=True)

    assert _metrics(interrupted.run_dir) == _metrics(straight.run_dir)
    a, b = (load_checkpoint(Path(c.run_dir) / "last.pt") for c in (straight, interrupted))
    for (name, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(x, y), name


KILL_WHILE_WRITING_BEST = """
import os, signal, sys
from pathlib import Path

real_replace, best_writes = os.replace, []

def replace(source, dest, *args, **kwargs):
    if Path(dest).name == "best.pt":
        best_writes.append(dest)
        if len(best_writes) == int(sys.argv[2]):  # the copy is written, not yet renamed into place
            os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(source, dest, *args, **kwargs)

os.replace = replace
from captioner.train import train_from_config
train_from_config(sys.argv[1])
"""


def test_a_kill_while_best_pt_is_written_is_repaired_by_resume(random_store, data_dir, tmp_path):
    """SIGKILL between last.pt and best.pt of the best epoch: --resume must rebuild best.pt and
    metrics.csv (before, best.pt kept the previous best for good and metrics.csv lost a row)."""
    settings = dict(epochs=3, lr_schedule="constant", warmup_steps=0, data=_data(random_store, data_dir))
    straight = _config(tmp_path / "a", **settings)
    train(straight)
    rows = _metrics(straight.run_dir)
    # Chosen by training loss, which falls every epoch here: each epoch writes best.pt, the 3rd last.
    assert [float(r["train_loss"]) for r in rows] == sorted((float(r["train_loss"]) for r in rows), reverse=True)

    killed = _config(tmp_path / "b", **settings)
    run = Path(killed.run_dir)
    proc = subprocess.run([sys.executable, "-c", KILL_WHILE_WRITING_BEST, str(tmp_path / "b" / "config.yaml"), "3"],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert load_checkpoint(run / "last.pt").epoch == 3 and load_checkpoint(run / "best.pt").epoch == 2
    assert list(run.glob(".tmp-*"))  # the half-done copy a SIGKILL leaves behind

    train(killed, resume=True)
    assert load_checkpoint(run / "best.pt").epoch == 3
    assert _metrics(run) == rows
    assert not list(run.glob(".tmp-*"))


def test_fine_tune_extends_the_vocabulary_and_checks_the_backbone(random_store, data_dir, tmp_path,
                                                                  msvd_train_captions):
    pre = _config(tmp_path / "pre", epochs=1, data=_data(random_store, data_dir))
    pretrained = load_checkpoint(train(pre))

    # Video data with new words, from the same backbone.
    jsonl = tmp_path / "video.jsonl"
    vids = list(msvd_train_captions)[:4]
    jsonl.write_text("".join(json.dumps({"video": v, "captions": ["zorblax is glorping", "zorblax glorps"]}) + "\n"
                             for v in vids))
    fine = _config(tmp_path, epochs=1, init_from=str(Path(pre.run_dir) / "best.pt"),
                   data={"features": str(random_store), "captions": str(jsonl), "split": None,
                         "val_split": None, "min_count": 1},
                   model={"embed_size": 8, "hidden_size": 8})  # ignored: the architecture comes from init_from
    tuned = load_checkpoint(train(fine))
    n = len(pretrained.vocab)
    assert tuned.vocab.words[:n] == pretrained.vocab.words and "zorblax" in tuned.vocab.words[n:]
    assert tuned.model.config == pretrained.model.config

    other = tmp_path / "other_store"
    store = open_features(other, "a")
    for vid in vids:
        store.put(vid, np.zeros((1, 32), np.float32))
    store.set_provenance({"backbone": "efficientnet_lite2", "feature_dim": 32})
    wrong = _config(tmp_path / "pre", run_dir=str(tmp_path / "wrong"), epochs=1,
                    init_from=str(Path(pre.run_dir) / "best.pt"),
                    data={"features": str(other), "captions": str(jsonl), "split": None, "val_split": None})
    with pytest.raises(CaptionerError, match="different backbone"):
        train(wrong)


# ------------------------------------------------------------------------- command line
def _cli(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "captioner.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}, timeout=300)


def test_cli_train_errors_are_one_line(tmp_path, random_store, data_dir):
    missing = _cli("train", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 1 and missing.stderr.strip().count("\n") == 0
    assert "config file not found" in missing.stderr
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "data": _data(random_store, data_dir)}))
    bad_key = _cli("train", str(config), "--set", "model.hiden_size=3")  # a config's mistakes are usage errors
    assert bad_key.returncode == 2 and "unknown config key" in bad_key.stderr
    assert bad_key.stderr.strip().count("\n") == 0
    nothing = _cli("train", str(config), "--resume")
    assert nothing.returncode == 1 and "nothing to resume" in nothing.stderr
    bad_value = _cli("train", str(config), "--set", "epochs=ten")
    assert bad_value.returncode == 2 and "epochs must be a whole number, got 'ten'" in bad_value.stderr
    no_epochs = _cli("train", str(config), "--set", "epochs=0")  # used to exit 0 without training
    assert no_epochs.returncode == 2 and no_epochs.stderr.strip().count("\n") == 0
    assert f"{config}: epochs must be at least 1, got 0" in no_epochs.stderr
    no_units = _cli("train", str(config), "--set", "model.hidden_size=0")  # used to be a torch traceback
    assert no_units.returncode == 2 and no_units.stderr.strip().count("\n") == 0
    assert "model.hidden_size must be at least 1, got 0" in no_units.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override, message", [
    ("epochs=0", "epochs must be at least 1, got 0"),
    ("epochs=-3", "epochs must be at least 1, got -3"),
    ("lr=-1", "lr must be a positive number, got -1"),
    ("lr=.nan", "lr must be a positive number, got nan"),
    ("batch_size=0", "batch_size must be at least 1"),
    ("model.hidden_size=0", "model.hidden_size must be at least 1, got 0"),
    ("model.embed_size=-4", "model.embed_size must be at least 1"),
    ("model.num_layers=0", "model.num_layers must be at least 1"),
    ("model.dropout=1.5", "model.dropout must be at least 0 and below 1"),
    ("model.cell=rnn", "model.cell must be lstm or gru, not 'rnn'"),
    ("label_smoothing=1", "label_smoothing must be at least 0 and below 1"),
    ("scheduled_sampling=2", "scheduled_sampling must be between 0 and 1"),
    ("warmup_steps=-1", "warmup_steps must be 0 or more"),
    ("lr_schedule=linear", "lr_schedule must be cosine, constant or step"),
    ("val_metrics=[BLUE]", "unknown metric 'BLUE'"),
    ("data.max_words=0", "data.max_words must be at least 1"),
    ("data.min_count=0", "data.min_count must be at least 1"),
    ("device=gpu", "device must be auto, cpu or cuda"),
])
def test_every_config_value_is_checked_before_anything_runs(tmp_path, random_store, data_dir, override, message):
    config_file = tmp_path / "c.yaml"
    config_file.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "data": _data(random_store, data_dir)}))
    with pytest.raises(CaptionerError, match=re.escape(f"{config_file}: {message}")):
        load_config(TrainConfig, config_file, [override])
    # The API checks a config built in code as well, before creating anything.
    key, value = override.split("=", 1)
    cfg = load_config(TrainConfig, config_file)
    section = cfg.model if key.startswith("model.") else cfg.data if key.startswith("data.") else cfg
    setattr(section, key.rsplit(".", 1)[-1], yaml.safe_load(value) if key != "lr_schedule" else value)
    with pytest.raises(CaptionerError, match=re.escape(message)):
        train(cfg)
    assert not (tmp_path / "run").exists()


def test_config_values_take_their_field_types(tmp_path):
    config_file = tmp_path / "c.yaml"
    config_file.write_text("lr: 1e-3\nepochs: 3\nmodel:\n  dropout: 0\ndata:\n  split: 2007\n  val_split: null\n")
    cfg = load_config(TrainConfig, config_file, ["weight_decay=5e-5", "amp=false"])
    assert (cfg.lr, cfg.weight_decay, cfg.model.dropout) == (1e-3, 5e-5, 0.0)  # YAML 1.1 reads 1e-3 as text
    assert (cfg.epochs, cfg.amp, cfg.data.split, cfg.data.val_split) == (3, False, "2007", None)
    for bad, message in [("epochs=2.5", "epochs must be a whole number"), ("lr=fast", "lr must be a number"),
                         ("amp=maybe", "amp must be true or false"),
                         ("data.split=[a]", "split must be a string or null")]:
        with pytest.raises(CaptionerError, match=message):
            load_config(TrainConfig, config_file, [bad])


def test_launch_checks_come_before_the_process_group(tmp_path, random_store, data_dir, monkeypatch):
    data = {"data": _data(random_store, data_dir)}
    train(_config(tmp_path / "one", epochs=1, **data))  # a run of one process, to resume with two
    # Two processes, but no rendezvous address: initialising the process group would fail with
    # torch's own error, so each of these must be found before it.
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for cfg, resume, message in [
            (_config(tmp_path / "scst", objective="scst", **data), False, "objective scst runs in one process"),
            (_config(tmp_path / "small", batch_size=1, **data), False, "batch_size 1 is smaller than the 2 processes"),
            (_config(tmp_path / "fresh", **data), True, "nothing to resume"),
            (_config(tmp_path / "one", **data), True, "run was trained with 1 processes; resume it with the same"),
            (_config(tmp_path / "nodata"), False, "data.features and data.captions must be set")]:
        with pytest.raises(CaptionerError, match=re.escape(message)):
            train(cfg, resume=resume)
        assert not torch.distributed.is_initialized()


@pytest.mark.slow
def test_ddp_two_cpu_processes(random_store, data_dir, tmp_path):
    config = tmp_path / "ddp.yaml"
    config.write_text(yaml.safe_dump({
        "run_dir": str(tmp_path / "run"), "epochs": 2, "batch_size": 32, "val_metrics": [],
        "model": {"embed_size": 32, "hidden_size": 48}, "data": _data(random_store, data_dir, val_split="train")}))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
         "-m", "captioner", "train", str(config)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 process(es)" in result.stderr
    assert result.stdout.count("best checkpoint:") == 1, result.stdout  # one line, not one per process
    rows = _metrics(tmp_path / "run")
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert float(rows[1]["train_loss"]) < float(rows[0]["train_loss"])
    checkpoint = load_checkpoint(tmp_path / "run" / "best.pt")
    assert checkpoint.train_state["world"] == 2 and len(checkpoint.train_state["rng"]) == 2


# ------------------------------------------------------------------------- what a run must never save
def _nan_store(random_store, path, monkeypatch):
    """A store holding one NaN video, as stores written before import and extraction refused them."""
    import captioner.store as store_module

    with monkeypatch.context() as patched:
        patched.setattr(store_module, "non_finite_reason", lambda array: None, raising=False)
        source, store = open_features(random_store), open_features(path, "a")
        store.set_provenance(source.provenance)
        for vid in source.ids():
            store.put(vid, source.frames(vid))
        store.put(source.ids()[3], np.full((3, 32), np.nan, np.float32))
        store.close()
    return source.ids()[3]


def test_non_finite_features_are_refused_before_training(random_store, data_dir, tmp_path, monkeypatch):
    """issue 23 #2: an all-NaN video trained a NaN model, saved as best.pt, exit 0."""
    poisoned = _nan_store(random_store, tmp_path / "nan_store", monkeypatch)
    cfg = _config(tmp_path, epochs=2, data=_data(tmp_path / "nan_store", data_dir))
    with pytest.raises(CaptionerError) as caught:
        train(cfg)
    assert str(caught.value) == (f"{tmp_path / 'nan_store'}: features of 1 video(s) hold NaN or infinite values "
                                 f"(e.g. {poisoned!r}); extract or import them again")
    assert not (Path(cfg.run_dir) / "best.pt").exists()


@pytest.mark.parametrize("poison", ["loss", "weights"])
def test_a_non_finite_loss_or_weight_stops_training_and_keeps_the_last_finite_epoch(
        random_store, data_dir, tmp_path, monkeypatch, poison):
    cfg = _config(tmp_path, epochs=3, data=_data(random_store, data_dir))
    real_epoch, calls = train_module.train_epoch, []

    def diverges_in_second_epoch(model, *args, **kwargs):
        loss = real_epoch(model, *args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            with torch.no_grad():
                next(model.parameters()).fill_(float("inf"))
            return float("nan") if poison == "loss" else loss
        return loss

    monkeypatch.setattr(train_module, "train_epoch", diverges_in_second_epoch)
    with pytest.raises(CaptionerError) as caught:
        train(cfg)
    shown = "train_loss nan" if poison == "loss" else "weights not finite"
    assert str(caught.value) == (f"{cfg.run_dir}: epoch 2: {shown}; training stopped (last.pt keeps epoch 1); "
                                 "lower lr or check the features")
    for name in ("best.pt", "last.pt"):
        saved = load_checkpoint(Path(cfg.run_dir) / name)
        assert saved.epoch == 1
        assert all(torch.isfinite(p).all() for p in saved.model.parameters())
    assert [r["epoch"] for r in _metrics(cfg.run_dir)] == ["1"]


# ------------------------------------------------------------------------- resuming with another config
def test_resume_refuses_a_changed_config_and_names_the_keys(random_store, data_dir, tmp_path):
    """issue 23 #3: other captions, lr and hidden_size on --resume went through; config.yaml then
    claimed the new values for the whole run."""
    from captioner.cli import main as cli_main

    config_file = tmp_path / "c.yaml"
    config_file.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "epochs": 2, "batch_size": 16,
                                           "val_metrics": [], "model": {"embed_size": 16, "hidden_size": 16},
                                           "data": _data(random_store, data_dir)}))
    run = tmp_path / "run"
    assert cli_main(["train", str(config_file)]) == 0
    saved = {name: ((run / name).read_bytes(), (run / name).stat().st_mtime_ns) for name in ("config.yaml", "last.pt")}
    other_captions = tmp_path / "other.tsv"
    other_captions.write_bytes((data_dir / "msvd" / "captions" / "MSVD_train.tsv").read_bytes())
    code = cli_main(["train", str(config_file), "--resume", "--set", "lr=0.1", "--set", "model.hidden_size=256",
                     "--set", f"data.captions={other_captions}"])
    assert code == 2
    for name, state in saved.items():
        assert ((run / name).read_bytes(), (run / name).stat().st_mtime_ns) == state
    with pytest.raises(CaptionerError) as caught:
        train(load_config(TrainConfig, config_file, ["lr=0.1", "model.hidden_size=256",
                                                     f"data.captions={other_captions}"]), resume=True)
    captions = str(data_dir / "msvd" / "captions" / "MSVD_train.tsv")
    assert str(caught.value) == (
        f"{run / 'last.pt'}: --resume with a changed config (lr 0.001 -> 0.1; model.hidden_size 16 -> 256; "
        f"data.captions {captions!r} -> {str(other_captions)!r}); a resumed run may change only epochs, device, "
        "run_dir: train the new values in another run_dir")
    # Nothing to train (epochs as saved): the run's files stay as they are.
    assert cli_main(["train", str(config_file), "--resume"]) == 0
    assert (run / "config.yaml").stat().st_mtime_ns == saved["config.yaml"][1]
    # More epochs may be asked for; config.yaml then says so.
    assert cli_main(["train", str(config_file), "--resume", "--set", "epochs=3"]) == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["epochs"] == 3
    assert load_checkpoint(run / "last.pt").epoch == 3


# ------------------------------------------------------------------------- write failures
def test_a_full_disk_while_training_is_one_line_and_last_pt_stays_valid(random_store, data_dir, tmp_path,
                                                                        monkeypatch, capsys):
    """issue 23 #6: ENOSPC in shutil.copyfileobj (best.pt) was a traceback."""
    import errno
    import shutil

    from captioner.cli import main as cli_main

    config_file = tmp_path / "c.yaml"
    config_file.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "epochs": 2, "batch_size": 16,
                                           "lr_schedule": "constant", "warmup_steps": 0, "val_metrics": [],
                                           "model": {"embed_size": 16, "hidden_size": 16},
                                           "data": _data(random_store, data_dir)}))
    real_copy = shutil.copyfileobj
    copies = []

    def full_on_second_copy(*args, **kwargs):
        copies.append(1)
        if len(copies) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_copy(*args, **kwargs)

    monkeypatch.setattr(shutil, "copyfileobj", full_on_second_copy)
    assert cli_main(["train", str(config_file)]) == 1
    monkeypatch.undo()
    err = capsys.readouterr().err.strip().splitlines()
    run = tmp_path / "run"
    assert err[-1] == (f"captioner: error: {run}: cannot write best.pt: No space left on device; last.pt holds "
                       "epoch 2; free space or fix the folder, then --resume")
    assert load_checkpoint(run / "last.pt").epoch == 2 and load_checkpoint(run / "best.pt").epoch == 1
    assert not list(run.glob(".tmp-*"))
    assert cli_main(["train", str(config_file), "--resume"]) == 0  # repairs best.pt
    assert load_checkpoint(run / "best.pt").epoch == 2


def test_a_read_only_run_dir_is_refused_before_training_and_mid_run_is_one_line(random_store, data_dir, tmp_path,
                                                                                monkeypatch, capsys):
    import errno
    import tempfile

    from captioner.cli import main as cli_main

    run = tmp_path / "ro" / "run"
    config_file = tmp_path / "c.yaml"
    config_file.write_text(yaml.safe_dump({"run_dir": str(run), "epochs": 1, "batch_size": 16, "val_metrics": [],
                                           "model": {"embed_size": 16, "hidden_size": 16},
                                           "data": _data(random_store, data_dir)}))
    # Tests run as root, whom permission bits do not stop: a read-only mount is what access() reports.
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if str(path) == str(tmp_path / "ro")
                        else real_access(path, mode, **kw))
    (tmp_path / "ro").mkdir()
    assert cli_main(["train", str(config_file)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"captioner: error: {run}: run_dir: cannot write there: {tmp_path / 'ro'} is not writable"]
    assert not run.exists()
    monkeypatch.undo()
    # The folder turns read-only during the run (remounted): the checkpoint write fails in one line.
    real_mkstemp = tempfile.mkstemp

    def read_only(*args, dir=None, **kwargs):
        if dir is not None and Path(dir) == run:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    assert cli_main(["train", str(config_file)]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"captioner: error: {run}: cannot write config.yaml: Read-only file system; no epoch was saved")


@pytest.mark.parametrize("command", ["train", "pipeline"])
def test_a_self_referencing_yaml_alias_is_a_usage_error(tmp_path, command, capsys):
    """issue 23 #7: `val_metrics: &m [*m]` was a RecursionError traceback."""
    from captioner.cli import main as cli_main

    config_file = tmp_path / "c.yaml"
    config_file.write_text("val_metrics: &m [*m]\n" if command == "train" else "train:\n  val_metrics: &m [a, *m]\n")
    args = ["train", str(config_file)] if command == "train" else ["pipeline", "run", str(config_file), "--dry-run"]
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [f"captioner: error: {config_file}: a YAML alias refers to itself (at "
                                f"{'val_metrics' if command == 'train' else 'train.val_metrics'}); "
                                "write the value out"]
    overridden = tmp_path / "ok.yaml"
    overridden.write_text("epochs: 2\n")
    assert cli_main(["train", str(overridden), "--set", "val_metrics=&m [*m]"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "captioner: error: --set: a YAML alias refers to itself (at val_metrics); write the value out"]


def test_a_second_training_process_on_one_run_dir_is_refused(random_store, data_dir, tmp_path):
    """The class of issue 23 #4 in `captioner train`: two resumes of one run trained it twice."""
    from captioner.locking import DirectoryLocked

    cfg = _config(tmp_path, epochs=1, data=_data(random_store, data_dir))
    run = Path(cfg.run_dir)
    run.mkdir()
    script = ("import sys; from captioner import locking; "
              f"locking.acquire({str(run)!r}, 'train.lock', 'x', 'y'); print('ready', flush=True); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(DirectoryLocked) as caught:
            train(cfg)
    finally:
        holder.kill()
        holder.wait()
    assert str(caught.value) == (f"{run}: process {holder.pid} is training in this run directory; wait for it to "
                                 "finish or choose another run_dir")
    assert sorted(p.name for p in run.iterdir()) == ["train.lock"]
    train(cfg)  # the holder is gone: the lock went with it
    assert (run / "best.pt").is_file()


def test_a_key_given_twice_in_a_yaml_config_is_a_usage_error(tmp_path, capsys):
    """The class of issue 23 #8 in configs: PyYAML kept the last of two `epochs:` silently."""
    from captioner.cli import main as cli_main

    config_file = tmp_path / "c.yaml"
    config_file.write_text("epochs: 5\nmodel:\n  hidden_size: 8\nepochs: 50\n")
    assert cli_main(["train", str(config_file)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"captioner: error: {config_file}:4: invalid YAML: key 'epochs' appears twice in one mapping"]
    merged = tmp_path / "merged.yaml"  # a merge key's values may still be overridden
    merged.write_text("pretrain:\n  model: &m {hidden_size: 8, embed_size: 8}\ntrain:\n  model: {<<: *m, hidden_size: 16}\n")
    from pipelines.stages import PipelineConfig

    loaded = load_config(PipelineConfig, merged)
    assert (loaded.train.model.hidden_size, loaded.train.model.embed_size) == (16, 8)
