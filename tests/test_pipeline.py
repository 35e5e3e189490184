"""The pipeline on the real MSVD clips: caching, plan, --force/--until, failures, resume, scale-out.

One smoke run (configs/pipeline_smoke.yaml) in a module-scoped run directory is shared by the
tests; each later test changes something and checks exactly which stages ran again.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from captioner import open_features
from captioner.cli import main as cli_main
from captioner.errors import CaptionerError
from captioner.model import load_checkpoint
from conftest import DATA, MSVD_TEST_CLIPS, MSVD_TRAIN_SUBSET, free_port
from pipelines.stages import run_torchrun

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "configs" / "pipeline_smoke.yaml"
STAGES = ["extract-train", "extract-test", "train", "predict", "evaluate", "report"]


@dataclass
class Run:
    code: int
    out: str
    err: str
    seconds: float

    def actions(self) -> dict[str, str]:
        """Stage -> run/resume/skip, from the printed plan."""
        rows = [line.split(None, 2) for line in self.out.splitlines() if line.startswith("  ")]
        return {row[0]: row[1] for row in rows}


def pipeline(run_dir: Path, *args: str) -> Run:
    """`captioner pipeline run configs/pipeline_smoke.yaml` in this process, from the project root."""
    out, err = io.StringIO(), io.StringIO()
    started = time.perf_counter()
    with contextlib.chdir(ROOT), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main(["pipeline", "run", str(SMOKE), "--quiet", "--set", f"run_dir={run_dir}", *args])
    return Run(code, out.getvalue(), err.getvalue(), time.perf_counter() - started)


def _subprocess_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}


def clip_ids(vids: list[str]) -> set[str]:
    """Clip ids (file stems) of vidN names, from the dataset's own mapping."""
    number_of = dict(line.split() for line in (DATA / "msvd" / "youtube_mapping.txt").read_text().splitlines()
                     if line.strip())
    wanted = set(vids)
    return {clip for clip, vid in number_of.items() if vid in wanted}


def stage_dir(run_dir: Path, stage: str) -> Path:
    return (run_dir / stage / "latest").resolve()


def marker(run_dir: Path, stage: str) -> dict:
    return json.loads((stage_dir(run_dir, stage) / ".done.json").read_text())


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[Path, Run]:
    run_dir = tmp_path_factory.mktemp("pipeline") / "run"
    first = pipeline(run_dir)
    assert first.code == 0, first.err[-3000:]
    return run_dir, first


# ----------------------------------------------------------------------------- caching
def test_first_run_makes_every_stage_and_a_second_run_skips_them_all(smoke):
    run_dir, first = smoke
    assert first.actions() == dict.fromkeys(STAGES, "run")
    assert list(first.actions()) == STAGES  # the plan is printed before anything runs
    for stage in STAGES:
        assert marker(run_dir, stage)["stage"] == stage
    # Trained on the train-split clips only; captioned and scored the test-split clips.
    assert set(open_features(stage_dir(run_dir, "extract-train") / "features").ids()) == clip_ids(MSVD_TRAIN_SUBSET)
    predictions = json.loads((stage_dir(run_dir, "predict") / "predictions.json").read_text())
    assert set(predictions) == clip_ids(MSVD_TEST_CLIPS)
    scores = json.loads((stage_dir(run_dir, "evaluate") / "scores.json").read_text())
    assert set(scores) == {"model", "constant caption", "nearest neighbour"}
    assert set(scores["model"]) >= {"BLEU-4", "METEOR", "ROUGE-L", "CIDEr"}
    report = json.loads((stage_dir(run_dir, "report") / "report.json").read_text())
    assert report["videos"] == 9 and report["training_curves"]["train_loss"]
    assert f"report: {stage_dir(run_dir, 'report') / 'report.html'}" in first.out

    markers = {stage: marker(run_dir, stage) for stage in STAGES}
    second = pipeline(run_dir)
    assert second.code == 0, second.err
    assert second.actions() == dict.fromkeys(STAGES, "skip")
    assert "0 of 6 stages to run" in second.out and "up to date" in second.out
    # No work done (a behavioural check: wall-clock ratios flake on a loaded machine): no stage
    # started, no store was opened for extraction, no marker was rewritten.
    assert second.err == "" and "[1/" not in second.out
    assert {stage: marker(run_dir, stage) for stage in STAGES} == markers


def test_predictions_equal_captioner_caption_for_the_same_clips_and_model(smoke, tmp_path):
    """The predict stage and `captioner caption` decode through one function with the model's settings."""
    run_dir, first = smoke
    predictions = json.loads((stage_dir(run_dir, "predict") / "predictions.json").read_text())
    model = tmp_path / "best.pt"  # a copy: captioning writes the model's inference export beside it
    shutil.copy(stage_dir(run_dir, "train") / "best.pt", model)
    clips = [DATA / "msvd" / "clips" / f"{clip_id}.avi" for clip_id in sorted(predictions)]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        assert cli_main(["caption", *map(str, clips), "--model", str(model), "--json", "--no-progress"]) == 0
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert {r["id"]: r["caption"] for r in records} == predictions
    settings = {(r["beam"], r["length_penalty"], r["max_len"]) for r in records}
    assert settings == {(3, 0.5, 20)}
    assert "beam 3, length penalty 0.5, max length 20)" in first.err
    # From the test store the stage read, the API gives the same captions too.
    from captioner import Captioner

    from_store = Captioner.load(model, device="cpu", load_backbone=False).caption_store(
        stage_dir(run_dir, "extract-test") / "features")
    assert {video_id: result.caption for video_id, result in from_store} == predictions


def test_a_training_key_reruns_training_and_what_follows_under_torchrun(smoke):
    run_dir, _ = smoke
    stores = {s: marker(run_dir, s) for s in ("extract-train", "extract-test")}
    changed = pipeline(run_dir, "--set", "train.lr=0.002", "--set", "distributed.nproc_per_node=2",
                       "--set", "evaluate.metrics=[BLEU,CIDEr]")  # no METEOR: saves a Java start
    assert changed.code == 0, changed.err[-3000:]
    assert changed.actions() == {"extract-train": "skip", "extract-test": "skip", "train": "run", "predict": "run",
                                 "evaluate": "run", "report": "run"}
    assert "lr 0.003 -> 0.002" in changed.out and "upstream train changed" in changed.out
    assert set(json.loads((stage_dir(run_dir, "evaluate") / "scores.json").read_text())["model"]) == {
        "BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "CIDEr"}
    assert {s: marker(run_dir, s) for s in stores} == stores  # extraction untouched
    checkpoint = load_checkpoint(stage_dir(run_dir, "train") / "best.pt")
    assert checkpoint.train_state["world"] == 2 and checkpoint.config["lr"] == 0.002
    assert "2 process(es)" in changed.err
    # Stages are cached by key, not overwritten: the first configuration is still complete.
    back = pipeline(run_dir)
    assert back.code == 0 and back.actions() == dict.fromkeys(STAGES, "skip"), back.out


def test_dry_run_prints_the_plan_and_runs_nothing(smoke):
    run_dir, _ = smoke
    before = sorted(p.name for p in (run_dir / "train").iterdir())
    dry = pipeline(run_dir, "--set", "train.epochs=2", "--dry-run")
    assert dry.code == 0, dry.err
    assert "(dry run)" in dry.out and "epochs 4 -> 2" in dry.out
    assert dry.actions() == {"extract-train": "skip", "extract-test": "skip", "train": "run", "predict": "run",
                             "evaluate": "run", "report": "run"}
    assert sorted(p.name for p in (run_dir / "train").iterdir()) == before
    assert dry.err == ""


def test_force_and_until_choose_the_stages(smoke):
    run_dir, _ = smoke
    predicted = marker(run_dir, "predict")
    written = (stage_dir(run_dir, "predict") / "predictions.json").stat().st_mtime_ns
    forced = pipeline(run_dir, "--force", "predict", "--until", "predict")
    assert forced.code == 0, forced.err
    assert forced.actions() == {"extract-train": "skip", "extract-test": "skip", "train": "skip", "predict": "run",
                                "evaluate": "skip", "report": "skip"}
    assert "forced" in forced.out and "not needed for --until" in forced.out
    assert (stage_dir(run_dir, "predict") / "predictions.json").stat().st_mtime_ns > written
    assert marker(run_dir, "predict")["key"] == predicted["key"]
    # A group name: every extraction stage, each already up to date.
    extract_only = pipeline(run_dir, "--until", "extract")
    assert extract_only.actions() == {"extract-train": "skip", "extract-test": "skip", "train": "skip",
                                      "predict": "skip", "evaluate": "skip", "report": "skip"}
    assert extract_only.out.count("not needed for --until") == 4
    unknown = pipeline(run_dir, "--force", "trian")  # a usage error: exit 2
    assert unknown.code == 2
    assert unknown.err.strip() == ("captioner: error: no pipeline stage 'trian'; stages: extract-train, "
                                   "extract-test, train, predict, evaluate, report")


def test_a_failing_stage_says_which_and_why_and_keeps_earlier_stages(smoke, tmp_path):
    run_dir, _ = smoke
    missing = tmp_path / "MSVD_train.tsv"
    failed = pipeline(run_dir, "--set", f"train.data.captions={missing}")
    assert failed.code == 1
    assert failed.err.splitlines()[-1] == (f"captioner: error: pipeline stage train failed: {missing}: "
                                           "caption file not found")
    assert "Traceback" not in failed.err
    assert failed.actions()["extract-train"] == "skip"
    assert (stage_dir(run_dir, "extract-train") / ".done.json").is_file()
    again = pipeline(run_dir)  # nothing was lost
    assert again.code == 0 and again.actions() == dict.fromkeys(STAGES, "skip")


def test_a_stage_whose_outputs_are_gone_runs_again_with_what_follows(smoke):
    """issue 23 #4: `rm -rf` of a stage's features/ or its best.pt still printed "0 of 6 stages to run"."""
    run_dir, _ = smoke
    shutil.rmtree(stage_dir(run_dir, "extract-test") / "features")
    (stage_dir(run_dir, "train") / "best.pt").unlink()
    again = pipeline(run_dir)
    assert again.code == 0, again.err[-3000:]
    assert again.actions() == {"extract-train": "skip", "extract-test": "run", "train": "run", "predict": "run",
                               "evaluate": "run", "report": "run"}
    assert "up to date but features/store.json is missing" in again.out
    assert "up to date but best.pt is missing" in again.out and "upstream train is made again" in again.out
    assert set(open_features(stage_dir(run_dir, "extract-test") / "features").ids()) == clip_ids(MSVD_TEST_CLIPS)
    assert load_checkpoint(stage_dir(run_dir, "train") / "best.pt").epoch >= 1
    assert pipeline(run_dir).actions() == dict.fromkeys(STAGES, "skip")


def test_a_second_pipeline_run_on_one_run_dir_is_refused(tmp_path):
    """issue 23 #4: two runs started together both resumed (and trained) the same stage."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    script = ("import sys; from captioner import locking; "
              f"locking.acquire({str(run_dir)!r}, 'pipeline.lock', 'x', 'y'); print('ready', flush=True); "
              "sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env=_subprocess_env())
    try:
        assert holder.stdout.readline().strip() == "ready"
        second = pipeline(run_dir)
    finally:
        holder.kill()
        holder.wait()
    assert second.code == 1
    assert second.err.splitlines() == [f"captioner: error: {run_dir}: process {holder.pid} is running this pipeline; "
                                       "wait for it to finish or use another run_dir"]
    assert sorted(p.name for p in run_dir.iterdir()) == ["pipeline.lock"]
    assert pipeline(run_dir, "--dry-run").code == 0  # a plan reads only


def test_the_plan_checks_each_stages_outputs(tmp_path):
    """The stage engine alone: a marker with lost, empty or damaged outputs is not up to date."""
    from pipelines.graph import Stage, execute, plan

    ran = []

    def writes(name, verify=None):
        def run(dirs):
            ran.append(name)
            (dirs[name] / f"{name}.json").write_text("{}")
        return Stage(name, run, deps=[d for d in "ab" if d < name], outputs=[f"{name}.json"], verify=verify)

    problems = {}
    stages = [writes("a"), writes("b"), writes("c", verify=lambda d: problems.get("c"))]

    def run_all() -> dict[str, str]:
        ran.clear()
        steps = plan(stages, tmp_path)
        execute(steps, log=io.StringIO())
        return {s.stage.name: s.reason for s in steps if s.action != "skip"}

    assert list(run_all()) == ["a", "b", "c"]
    assert run_all() == {} and ran == []
    (tmp_path / "b" / "latest" / "b.json").unlink()
    assert run_all() == {"b": "up to date but b.json is missing", "c": "upstream b is made again"}
    assert ran == ["b", "c"]
    (tmp_path / "a" / "latest" / "a.json").write_text("")
    assert run_all() == {"a": "up to date but a.json is empty", "b": "upstream a is made again",
                         "c": "upstream a is made again"}
    (tmp_path / "c" / "latest" / "c.json").write_text("{")
    assert run_all() == {"c": "up to date but c.json is not valid JSON"}
    problems["c"] = "its store lost 2 videos"
    assert [(s.action, s.reason) for s in plan(stages, tmp_path)][2] == ("run", "up to date but its store lost 2 videos")
    with pytest.raises(CaptionerError, match="pipeline stage c failed: .*: finished, but its store lost 2 videos"):
        run_all()  # a stage must leave outputs that verify


# ----------------------------------------------------------------------------- resume
def test_an_interrupted_extraction_resumes_per_video(smoke):
    run_dir, _ = smoke
    store_dir = stage_dir(run_dir, "extract-test")
    # What a kill during extraction leaves: some videos in the store, no completion marker.
    store = open_features(store_dir / "features", "a")
    lost = store.ids()[:2]
    for video_id in lost:
        store.delete(video_id)
    (store_dir / ".done.json").unlink()
    resumed = pipeline(run_dir)
    assert resumed.code == 0, resumed.err
    assert resumed.actions() == dict.fromkeys(STAGES, "skip") | {"extract-test": "resume"}
    assert "extracted 2, skipped 7" in resumed.err
    assert set(open_features(store_dir / "features").ids()) == clip_ids(MSVD_TEST_CLIPS)


def test_training_killed_mid_run_resumes_from_its_last_checkpoint(smoke):
    run_dir, _ = smoke
    # SIGKILL as soon as the first checkpoint appears: epochs take far longer than one poll.
    args = ["--until", "train", "--set", "train.epochs=6"]
    process = subprocess.Popen([sys.executable, "-m", "captioner.cli", "pipeline", "run", str(SMOKE), "--quiet",
                                "--set", f"run_dir={run_dir}", *args], cwd=ROOT, env=_subprocess_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        last = None
        while last is None and time.monotonic() < deadline and process.poll() is None:
            found = [d for d in (run_dir / "train").iterdir() if (d / "last.pt").is_file() and
                     not (d / ".done.json").exists() and not d.is_symlink()]
            last = found[0] if found else None
            time.sleep(0.05)
        assert last is not None, process.stdout.read() if process.poll() is not None else "no checkpoint in time"
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    done_epochs = load_checkpoint(last / "last.pt").epoch
    assert 1 <= done_epochs < 6
    resumed = pipeline(run_dir, *args)
    assert resumed.code == 0, resumed.err[-3000:]
    assert resumed.actions()["train"] == "resume"
    assert f"resuming from {last / 'last.pt'}" in resumed.err
    assert f"epoch {done_epochs}/6" not in resumed.err and "epoch 6/6" in resumed.err
    assert load_checkpoint(last / "last.pt").epoch == 6 and (last / ".done.json").is_file()


# ----------------------------------------------------------------------------- scale-out
def test_a_torchrun_failure_is_the_trainers_own_error_line():
    # Two ranks writing at once can share a line; the last error on it is the one to report.
    ranks = ("import sys; sys.stderr.write('captioner: error: a.tsv: bad'); "
             "sys.stderr.write('captioner: error: a.tsv: bad\\nChildFailedError: ...\\n'); sys.exit(1)")
    with pytest.raises(CaptionerError) as failure:
        run_torchrun([sys.executable, "-c", ranks])
    assert str(failure.value) == "torchrun exited with status 1: a.tsv: bad"
    with pytest.raises(CaptionerError, match="status 3: see the output above"):
        run_torchrun([sys.executable, "-c", "raise SystemExit(3)"])


@pytest.mark.slow
def test_two_nodes_train_together_through_pipeline_join(smoke):
    run_dir, _ = smoke
    overrides = ["--set", "train.lr=0.0025", "--set", "distributed.nnodes=2",
                 "--set", "distributed.master_addr=127.0.0.1", "--set", f"distributed.master_port={free_port()}"]
    # The second "node" is started first: it waits until the pipeline launches the stage.
    joiner = subprocess.Popen([sys.executable, "-m", "captioner.cli", "pipeline", "join", str(SMOKE),
                               "--set", f"run_dir={run_dir}", *overrides], cwd=ROOT, env=_subprocess_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        first = pipeline(run_dir, "--until", "train", *overrides)
        joined = joiner.communicate(timeout=300)[0]
    finally:
        joiner.kill()
        joiner.wait()
    assert first.code == 0, first.err[-3000:]
    assert joiner.returncode == 0, joined[-3000:]
    assert "waiting for the pipeline to launch train" in joined
    assert first.actions()["train"] == "run"
    checkpoint = load_checkpoint(stage_dir(run_dir, "train") / "best.pt")
    assert checkpoint.train_state["world"] == 2 and checkpoint.config["lr"] == 0.0025


@pytest.mark.slow
def test_extraction_stage_runs_on_a_ray_cluster(tmp_path, msvd_clips, ray_head):
    address, ray_temp = ray_head
    clips = [c for c in msvd_clips if c.stem in clip_ids(MSVD_TRAIN_SUBSET)][:3]
    result = subprocess.run(
        [sys.executable, "-m", "captioner.cli", "pipeline", "run", str(SMOKE), "--quiet",
         "--set", f"run_dir={tmp_path / 'run'}", "--set", f"videos.train=[{','.join(map(str, clips))}]",
         "--until", "extract-train", "--ray-address", address],
        cwd=ROOT, env=_subprocess_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "extracted 3, skipped 0" in result.stderr
    store = open_features(stage_dir(tmp_path / "run", "extract-train") / "features")
    assert set(store.ids()) == {c.stem for c in clips}
    # The videos were embedded by Ray workers of this cluster, not locally.
    worker_logs = "".join(p.read_text(errors="replace") for p in ray_temp.glob("session_*/logs/worker-*"))
    assert "_embed_chunk" in worker_logs


# ----------------------------------------------------------------------------- prepare_msvd
def _prepare_msvd(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "prepare_msvd.py"), *args], capture_output=True,
                          text=True, timeout=120)


def test_prepare_msvd_writes_split_lists_and_counts_missing_clips(tmp_path, msvd_clips):
    mapping = DATA / "msvd" / "youtube_mapping.txt"
    assert b"\r\n" in mapping.read_bytes()[:200]  # the official file's CRLF line endings
    clips = tmp_path / "YouTubeClips"
    clips.mkdir()
    train, test = sorted(clip_ids(MSVD_TRAIN_SUBSET))[:2], sorted(clip_ids(MSVD_TEST_CLIPS))[:1]
    for clip_id in train + test:
        (clips / f"{clip_id}.avi").symlink_to(DATA / "msvd" / "clips" / f"{clip_id}.avi")
    (clips / "-4wsuPCjDBc_5_15.avi").write_bytes(b"not a real video")  # vid1: listed, decoding is later's job
    (clips / "not_in_msvd.avi").write_bytes(b"x")
    result = _prepare_msvd("--clips", str(clips), "--mapping", str(mapping), "--out", str(tmp_path / "lists"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "train: 3 of 1200 clips (1197 missing)", "val: 0 of 100 clips (100 missing)",
        "test: 1 of 670 clips (669 missing)",
        f"1966 clip(s) missing from {clips}: listed in {tmp_path / 'lists' / 'missing.txt'}"]
    assert "1 file(s)" in result.stderr and "not_in_msvd" in result.stderr
    listed = (tmp_path / "lists" / "train.txt").read_text().splitlines()
    assert listed[0] == str(clips / "-4wsuPCjDBc_5_15.avi")  # in vidN order, the links' own paths
    assert {Path(p).stem for p in listed} == {"-4wsuPCjDBc_5_15", *train}
    assert (tmp_path / "lists" / "val.txt").read_text() == ""
    assert len((tmp_path / "lists" / "missing.txt").read_text().splitlines()) == 1966

    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = _prepare_msvd("--clips", str(empty), "--mapping", str(mapping), "--out", str(tmp_path / "lists2"))
    assert nothing.returncode == 1 and "train: 0 of 1200 clips (1200 missing)" in nothing.stdout
    bad = _prepare_msvd("--clips", str(clips), "--mapping", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "l3"))
    assert bad.returncode == 1 and bad.stderr.startswith("prepare_msvd: error: ") and "nope.txt" in bad.stderr


def test_extraction_is_keyed_by_bf16_but_not_by_the_runtime():
    """Runtimes give the same features (a store may mix them); bf16 gives slightly different ones."""
    from pipelines import load_pipeline
    from pipelines.stages import _extract_stage

    def key(*overrides: str) -> dict:
        return _extract_stage(load_pipeline(SMOKE, list(overrides)), "train", progress=False).params

    assert key() == key("extract.runtime=torch") == key("extract.runtime=openvino", "extract.precision=fp32")
    assert key("extract.precision=bf16") == {**key(), "precision": "bf16"}
    assert key("extract.precision=mixed") == {**key(), "precision": "mixed"}


def test_a_write_failing_in_a_stage_is_one_line_naming_the_stage(tmp_path):
    """The class of issue 23 #6 in pipelines: an OSError in a stage was a traceback."""
    import errno

    from pipelines.graph import Stage, StageFailed, execute, plan

    def full_disk(dirs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(StageFailed) as caught:
        execute(plan([Stage("a", full_disk, outputs=["a.json"])], tmp_path), log=io.StringIO())
    assert str(caught.value) == (f"pipeline stage a failed: {next((tmp_path / 'a').iterdir())}: "
                                 "No space left on device")


def test_a_model_option_at_its_earlier_value_keeps_the_train_key():
    # Runs trained before model.video_appearance existed read video appearance: at that value the
    # option is left out of the key, so adding it re-trained nothing; any other value re-trains.
    from captioner.train_config import TrainConfig
    from pipelines.stages import _train_params

    config = TrainConfig()
    assert "video_appearance" not in _train_params(config)["model"]
    config.model.video_appearance = False
    assert _train_params(config)["model"]["video_appearance"] is False
