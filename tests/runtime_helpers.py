"""Loading a backbone in a fresh process, as a new `captioner` command would: tests of the
OpenVINO cache (test_runtime, test_int8) ask what that process converted and imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "timm", "nncf")


def load_in_fresh_process(spec: str, precision: str = "auto", setup: str = "") -> dict:
    """{"hit": cache hit, "imported": which of HEAVY it imported, "shape": of one frame's
    features, "provenance": its FeatureSpec record} of `spec` loaded on OpenVINO in a new
    process; `setup`: Python lines run first (e.g. a smaller calibration set)."""
    code = (f"import json, sys, numpy as np\n{setup}"
            "from captioner.runtime import load_backbone\n"
            f"fx = load_backbone({spec!r}, runtime='openvino', precision={precision!r})\n"
            "f = fx.features(np.full((1, 224, 224, 3), 128, np.uint8))\n"
            f"print(json.dumps({{'hit': fx.cache_hit, 'imported': [m for m in {HEAVY!r} if m in sys.modules],"
            " 'shape': list(f.shape), 'provenance': fx.provenance()}))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])
