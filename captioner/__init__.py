"""video-captioner: turn a video into an English sentence.

Heavy modules (torch, decord) are imported on first use, so `import captioner` and
`captioner --help` stay fast.
"""

from __future__ import annotations

from .version import __version__

__all__ = ["__version__", "open_features", "Captioner", "CaptionerError", "get_writer"]


def __getattr__(name: str):
    if name == "open_features":
        from .store import open_features

        return open_features
    if name == "CaptionerError":
        from .errors import CaptionerError

        return CaptionerError
    if name == "Captioner":
        from .caption import Captioner

        return Captioner
    if name == "get_writer":  # a Caption as txt, json, srt or vtt: get_writer("srt").write(result, "a.srt")
        from .writers import get_writer

        return get_writer
    raise AttributeError(f"module 'captioner' has no attribute {name!r}")
