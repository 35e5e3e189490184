"""A stage graph whose stages are cached by what they depend on, and resumable.

Each stage declares its config values (`params`), the files it reads (`inputs`) and the
stages it needs (`deps`). The hash of those, with the upstream stages' own keys, is the
stage's key; its outputs live in `RUN/<stage>/<key>/`. The directory counts as complete only
once `.done.json` naming that key has been renamed into place after every declared output
exists, so a crash at any moment leaves either a complete stage or an unmarked directory that
the next run resumes. Keys depend on configs and inputs, never on outputs, so the whole plan
is known before anything runs: that is what `--dry-run` prints.

A stage whose outputs can be brought up to date in place (a feature store: extraction skips
the videos it already holds) names `dir_params`: its directory is keyed by those alone and
keeps its contents across input changes, while `.done.json` still records the full key.

A marker is not enough to skip a stage: its declared outputs must still exist and verify
(`outputs_problem`: present, non-empty, JSON that parses, checkpoints that open as archives,
and whatever the stage's own `verify` checks). A stage whose outputs were deleted or damaged
runs again, and so does every stage after it, whose outputs were made from the lost ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping

from captioner.atomic import atomic_write
from captioner.errors import CaptionerError, UsageError
from captioner.hashing import file_sha256
from captioner.inputs import is_media

MARKER = ".done.json"
LATEST = "latest"  # RUN/<stage>/latest -> the stage's directory in the last run that needed it
# Files at most this large are fingerprinted by content; larger ones and media by size + mtime.
HASH_LIMIT = 64 << 20


@dataclass
class Stage:
    name: str
    run: Callable[[Mapping[str, Path]], None]  # gets every stage's directory by name, its own included
    params: dict = field(default_factory=dict)  # config values the outputs depend on (JSON-able)
    inputs: list[Path] = field(default_factory=list)  # files the outputs depend on
    deps: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)  # paths (relative to the stage directory) it must leave
    dir_params: dict | None = None  # key the directory by these only (outputs updated in place)
    # What else its outputs must satisfy to count (e.g. a store holding every input): the stage
    # directory in, a one-line reason they do not out, or None.
    verify: Callable[[Path], str | None] | None = None


class StageFailed(CaptionerError):
    def __init__(self, stage: str, error: CaptionerError):
        self.stage = stage
        super().__init__(f"pipeline stage {stage} failed: {error}")


# ----------------------------------------------------------------------------- keys
def fingerprint(path: str | os.PathLike) -> str:
    """What a file's contents are known by: a content hash for small files, else size and mtime.

    Media files are never read (size + mtime only); the name stays part of it because the
    feature store knows videos by their file names.
    """
    path = Path(path)
    try:
        stat = path.stat()
    except OSError:
        return f"{path}: missing"  # the stage that reads it reports the error
    if path.is_dir():
        raise CaptionerError("expected a file, found a folder", path)
    if is_media(path) or stat.st_size > HASH_LIMIT:
        return f"{path.name}: {stat.st_size} bytes, mtime {stat.st_mtime_ns}"
    return f"{path.name}: sha256 {file_sha256(path)}"


def _hash(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _flatten(params: Mapping, prefix: str = "") -> dict:
    flat = {}
    for key, value in params.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


# ----------------------------------------------------------------------------- plan
@dataclass
class Step:
    stage: Stage
    key: str
    dir: Path
    action: str  # run | resume | skip
    reason: str
    description: dict  # what the key was made of, kept in .done.json to explain later changes
    fresh: bool = False  # discard the directory's contents first (--force)
    wanted: bool = True  # False: left out by --until


def _read_marker(stage_dir: Path) -> dict | None:
    try:
        return json.loads((stage_dir / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _why_changed(old: dict | None, new: dict) -> str:
    """One line on what differs from the stage's last completed run."""
    if old is None:
        return "never run"
    changes = []
    old_params, new_params = _flatten(old.get("params", {})), _flatten(new["params"])
    for name in sorted(set(old_params) | set(new_params)):
        if old_params.get(name) != new_params.get(name):
            changes.append(f"{name} {old_params.get(name)!r} -> {new_params.get(name)!r}")
    old_inputs, new_inputs = set(old.get("inputs", [])), set(new["inputs"])
    if old_inputs != new_inputs:
        changes.append(f"{len(new_inputs - old_inputs)} input file(s) new or changed, "
                       f"{len(old_inputs - new_inputs)} gone")
    for dep, key in new["deps"].items():
        if old.get("deps", {}).get(dep) != key:
            changes.append(f"upstream {dep} changed")
    if not changes:
        return "no completed run of this key"
    return "; ".join(changes[:4]) + (f"; and {len(changes) - 4} more" if len(changes) > 4 else "")


def outputs_problem(stage: Stage, stage_dir: Path) -> str | None:
    """Why a completed stage's outputs cannot be trusted any more (deleted, emptied, damaged), or None."""
    for output in stage.outputs:
        path = stage_dir / output
        if not path.exists():
            return f"{output} is missing"
        if path.is_file():
            if path.stat().st_size == 0:
                return f"{output} is empty"
            if path.suffix == ".json":
                try:
                    json.loads(path.read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    return f"{output} is not valid JSON"
            if path.suffix == ".pt" and not zipfile.is_zipfile(path):  # torch.save writes a zip archive
                return f"{output} is damaged"
    return stage.verify(stage_dir) if stage.verify is not None else None


def select(stages: Iterable[Stage], names: Iterable[str]) -> set[str]:
    """Stage names matching each of `names` exactly or as a group prefix ('extract' = 'extract-*')."""
    known = [s.name for s in stages]
    chosen = set()
    for name in names:
        matches = [s for s in known if s == name or s.startswith(name + "-")]
        if not matches:
            raise UsageError(f"no pipeline stage {name!r}; stages: {', '.join(known)}")
        chosen.update(matches)
    return chosen


def plan(stages: list[Stage], run_dir: Path, until: Iterable[str] = (), force: Iterable[str] = ()) -> list[Step]:
    """Keys, directories and what to do for every stage (in order), without touching anything."""
    by_name = {s.name: s for s in stages}
    wanted = set(by_name)
    if until:
        wanted = set()
        todo = list(select(stages, until))
        while todo:  # a stage and everything upstream of it
            name = todo.pop()
            if name not in wanted:
                wanted.add(name)
                todo.extend(by_name[name].deps)
    asked = select(stages, force)
    forced = set(asked)
    remade: dict[str, str] = {}  # stage -> the upstream stage whose lost outputs are made again
    keys: dict[str, str] = {}
    steps = []
    for stage in stages:
        description = {"stage": stage.name, "params": stage.params,
                       "inputs": sorted(fingerprint(p) for p in stage.inputs),
                       "deps": {d: keys[d] for d in stage.deps}}
        key = keys[stage.name] = _hash(description)
        stage_dir = run_dir / stage.name / (key if stage.dir_params is None else _hash(stage.dir_params))
        if any(d in forced for d in stage.deps):
            forced.add(stage.name)  # its inputs are being rewritten
        upstream = next((remade[d] for d in stage.deps if d in remade), None)
        marker = _read_marker(stage_dir)
        fresh = False
        lost = outputs_problem(stage, stage_dir) if marker is not None and marker.get("key") == key else None
        if stage.name not in wanted:
            action, reason = "skip", "not needed for --until"
        elif stage.name in forced:
            action, reason, fresh = "run", "forced" if stage.name in asked else "upstream forced", True
        elif upstream is not None:
            remade[stage.name] = upstream
            action, reason, fresh = "run", f"upstream {upstream} is made again", stage.dir_params is None
        elif lost is not None:
            # A stage updated in place (a store) fills in what is missing; any other starts over.
            remade[stage.name] = stage.name
            action, reason, fresh = "run", f"up to date but {lost}", stage.dir_params is None
        elif marker is not None and marker.get("key") == key:
            action, reason = "skip", "up to date"
        elif stage_dir.is_dir() and marker is None:
            action, reason = "resume", "an earlier run of this stage was interrupted"
        else:
            action, reason = "run", _why_changed(marker or _read_marker(run_dir / stage.name / LATEST), description)
        steps.append(Step(stage, key, stage_dir, action, reason, description, fresh, stage.name in wanted))
    return steps


def format_plan(steps: list[Step]) -> str:
    width = max(len(s.stage.name) for s in steps)
    return "\n".join(f"  {s.stage.name.ljust(width)}  {s.action:<6}  {s.reason}" for s in steps)


# ----------------------------------------------------------------------------- execution
def _point_latest(stage_dir: Path) -> None:
    link = stage_dir.parent / LATEST
    tmp = stage_dir.parent / f".tmp-{LATEST}-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(stage_dir.name)
    os.replace(tmp, link)


def execute(steps: list[Step], log=None) -> None:
    """Run the steps that are not skipped, in order; raise StageFailed naming the stage."""
    log = log or sys.stderr
    dirs = {s.stage.name: s.dir for s in steps}
    for step in steps:
        if step.wanted and step.action == "skip":
            _point_latest(step.dir)
    todo = [s for s in steps if s.action != "skip"]
    for number, step in enumerate(todo, 1):
        stage = step.stage
        if step.fresh and step.dir.exists():
            shutil.rmtree(step.dir)
        step.dir.mkdir(parents=True, exist_ok=True)
        (step.dir / MARKER).unlink(missing_ok=True)
        print(f"[{number}/{len(todo)}] {stage.name}: {step.action} ({step.reason}) in {step.dir}", file=log, flush=True)
        started = time.perf_counter()
        try:
            stage.run(dirs)
            problem = outputs_problem(stage, step.dir)
            if problem:
                raise CaptionerError(f"finished, but {problem}", step.dir)
        except CaptionerError as exc:
            raise StageFailed(stage.name, exc) from None
        except OSError as exc:  # disk full, read-only, quota, a file gone: the machine's state, not a bug
            if exc.strerror is None:
                raise
            raise StageFailed(stage.name, CaptionerError(exc.strerror, exc.filename or step.dir)) from None
        except Exception as exc:  # a bug: keep the traceback, but say where it happened
            exc.add_note(f"in pipeline stage {stage.name} ({step.dir})")
            raise
        seconds = time.perf_counter() - started
        done = {"key": step.key, **step.description, "seconds": round(seconds, 3),
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        atomic_write(step.dir / MARKER, json.dumps(done, indent=1, default=str))
        _point_latest(step.dir)
        print(f"[{number}/{len(todo)}] {stage.name}: done in {seconds:.1f}s", file=log, flush=True)
