"""OpenVINO as captioner uses it: telemetry off unless the user opts in, and no console output.

Every captioner module imports OpenVINO through `openvino()`, so the switch below is set before
OpenVINO's first import in the process.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings

# OpenVINO's telemetry (openvino-telemetry, imported by `import openvino`) writes a client id
# under ~/intel and sends usage events after a model conversion, unless the user ran its
# documented `opt_in_out --opt_out` (which writes under ~/intel too). OpenVINO's converter and
# NNCF run without it when it cannot be imported, so captioner hides it from the process unless
# the user opts in with CAPTIONER_OPENVINO_TELEMETRY=1.
TELEMETRY_VARIABLE = "CAPTIONER_OPENVINO_TELEMETRY"


def openvino():
    """The `openvino` module, imported with its telemetry off unless the user opted in."""
    if "openvino" not in sys.modules and os.environ.get(TELEMETRY_VARIABLE, "").strip() != "1":
        sys.modules.setdefault("openvino_telemetry", None)  # None in sys.modules: an ImportError
    import openvino as ov

    return ov


@contextlib.contextmanager
def quiet_openvino():
    """Hold back what OpenVINO's converter writes to the console (its C++ parts write to the
    process's file descriptors, its Python parts to sys.stdout/stderr and warnings): none of it
    is for the user. A conversion that fails raises ConversionError with the reason."""
    import io

    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(os.devnull, "wb") as sink:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
