"""One line on stderr, for a person watching a terminal, before anything that takes seconds.

Pipes and logs stay clean: nothing is written when stderr is not a terminal (`CAPTIONER_NOTICES=1`
forces the lines, `=0` hides them).
"""

from __future__ import annotations

import os
import sys

NOTICES_VARIABLE = "CAPTIONER_NOTICES"


def notices_enabled() -> bool:
    forced = os.environ.get(NOTICES_VARIABLE, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def notice(message: str) -> None:
    """`captioner: MESSAGE` on stderr when a person is watching (see the module doc)."""
    if notices_enabled():
        print(f"captioner: {message}", file=sys.stderr, flush=True)
