"""The `captioner` command: a thin layer over the Python API.

Each subcommand parses its flags, imports the library lazily (so `captioner --help` never
imports torch) and calls one API function. User errors (`CaptionerError`) become one line on
stderr and a non-zero exit; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys

from . import __version__
from .errors import CaptionerError, UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's default prints usage too; keep it, exit 2
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


# ----------------------------------------------------------------------------- extract
def _add_extract(sub) -> None:
    p = sub.add_parser("extract", help="extract backbone features for videos into a feature store",
                       description="Extract per-frame features and their time-mean for every input "
                                   "video. Resumable: re-running skips finished videos.")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="video/image files, folders (searched recursively) or .txt files listing paths")
    p.add_argument("--out", required=True, metavar="STORE", help="feature store directory")
    p.add_argument("--backbone", default="efficientnet_lite2",
                   help="registry name, several joined with '+' (e.g. efficientnet_lite2+i3d), or "
                        "ARCH=PATH for a timm/torchvision architecture with local weights")
    p.add_argument("--frames", default="uniform:16", metavar="SAMPLING",
                   help="uniform:N (default uniform:16), fps:F or all")
    p.add_argument("--batch-size", type=int, default=32, help="frames per backbone batch")
    p.add_argument("--workers", type=int, default=None,
                   help="decoding processes (default: one per spare core, at least 1)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="distribute videos over a Ray cluster ('auto' or host:port)")
    p.add_argument("--failures", default=None, metavar="FILE",
                   help="where to write the failure list (default STORE/failures.jsonl)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=_run_extract)


def _run_extract(args) -> int:
    from .extract import ExtractConfig, extract

    config = ExtractConfig(backbone=args.backbone, frames=args.frames, batch_size=args.batch_size,
                           workers=args.workers, device=args.device, ray_address=args.ray_address)
    summary = extract(args.inputs, args.out, config, failures_path=args.failures,
                      progress=not args.quiet)
    return 0 if summary.failed == 0 else 1


# ----------------------------------------------------------------------------- features
def _add_features(sub) -> None:
    p = sub.add_parser("features", help="inspect, import or export a feature store")
    fsub = p.add_subparsers(dest="features_command", metavar="ACTION", parser_class=_Parser)
    fsub.required = True
    imp = fsub.add_parser("import", help="import an HDF5 file or a folder of <id>.npy files")
    imp.add_argument("source")
    imp.add_argument("--out", required=True, metavar="STORE")
    imp.add_argument("--format", default="auto", choices=["auto", "hdf5", "npy"])
    imp.set_defaults(handler=_run_features_import)
    exp = fsub.add_parser("export", help="export to one HDF5 file or a folder of <id>.npy files")
    exp.add_argument("store")
    exp.add_argument("dest")
    exp.add_argument("--format", default="auto", choices=["auto", "hdf5", "npy"])
    exp.set_defaults(handler=_run_features_export)
    info = fsub.add_parser("info", help="print what a store holds and how it was extracted")
    info.add_argument("store")
    info.set_defaults(handler=_run_features_info)


def _run_features_import(args) -> int:
    from .store import import_features, open_features

    n = import_features(args.source, open_features(args.out, "a"), args.format)
    print(f"imported {n} videos into {args.out}")
    return 0


def _run_features_export(args) -> int:
    from .store import export_features, open_features

    n = export_features(open_features(args.store), args.dest, args.format)
    print(f"exported {n} videos to {args.dest}")
    return 0


def _run_features_info(args) -> int:
    import json

    from .store import open_features

    store = open_features(args.store)
    print(json.dumps({"path": str(store.path), "videos": len(store), "feature_dim": store.feature_dim,
                      "provenance": store.provenance}, indent=2))
    return 0


# ----------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="captioner", description="Caption videos in English.")
    parser.add_argument("--version", action="version", version=f"captioner {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for add in (_add_extract, _add_features):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except UsageError as exc:
        print(f"captioner: error: {exc}", file=sys.stderr)
        return 2
    except CaptionerError as exc:
        print(f"captioner: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("captioner: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `captioner caption ... | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
