"""Where captioner caches what it can rebuild: compiled OpenVINO models, weight-file checksums."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Where captioner caches what it can rebuild (XDG_CACHE_HOME respected)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "captioner"
