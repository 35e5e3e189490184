"""Shared pieces of the evaluation tests: real MSVD captions, one Scorer, Java process checks."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def read_msvd_tsv(path: Path) -> dict[str, list[str]]:
    """`caption, caption, ..., <TAB>clip_id` lines, read independently of captioner.datasets."""
    references = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        captions, clip_id = line.split("\t")
        references[clip_id] = [c.strip() for c in captions.split(", ") if c.strip()]
    return references


@pytest.fixture(scope="session")
def msvd_test_refs(data_dir) -> dict[str, list[str]]:
    return read_msvd_tsv(data_dir / "msvd" / "captions" / "MSVD_test.tsv")


_SHARED_SCORER: list = []


@pytest.fixture(scope="session")
def scorer():
    """One METEOR process for the whole session: Java start-up is the slow part.

    Each test module imports this fixture, which gives pytest one fixture per module; the
    module-level list makes them all hand out the same Scorer, closed by the one that made it.
    """
    from captioner.metrics import Scorer

    owner = not _SHARED_SCORER
    if owner:
        _SHARED_SCORER.append(Scorer())
    yield _SHARED_SCORER[0]
    if owner:
        _SHARED_SCORER.pop().close()


def java_children(pid: int | None = None) -> list[int]:
    """Live java processes whose parent is `pid` (default: this process)."""
    pid = os.getpid() if pid is None else pid
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            comm = stat[stat.index("(") + 1:stat.rindex(")")]
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        except (OSError, ValueError):
            continue
        if ppid == pid and comm == "java":
            found.append(int(entry.name))
    return found


def processes_with_marker(marker: str) -> list[int]:
    """Live processes whose environment holds CAPTIONER_TEST_MARK=marker (children inherit it)."""
    needle = f"CAPTIONER_TEST_MARK={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None,
            timeout: float = 300) -> tuple[subprocess.CompletedProcess, list[int]]:
    """Run `captioner ARGS`; also return the processes it left behind (should be none)."""
    marker = uuid.uuid4().hex
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {}), "CAPTIONER_TEST_MARK": marker}
    proc = subprocess.run([sys.executable, "-m", "captioner.cli", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, env=full_env, timeout=timeout)
    return proc, processes_with_marker(marker)


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str, code: int = 1) -> None:
    """One `captioner: error:` line holding every fragment, exit `code` (2: a usage error)."""
    assert proc.returncode == code, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("captioner: error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
