"""Command-line entry point: ``cosencfs SUBCOMMAND ...``.

Each subcommand is a pair of functions in a module: one adds its arguments
to a parser, one runs it and returns the exit status.  Heavy imports
(pyfuse3, the SDK) happen inside the run functions.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from cosencfs import __version__

#: command name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str, str, str]] = {
    "mount": ("cosencfs.cmd_mount", "configure", "run", "mount a bucket (or a prefix of one)"),
    "umount": (
        "cosencfs.cmd_mount",
        "configure_umount",
        "run_umount",
        "upload everything dirty, then unmount",
    ),
    "local-server": (
        "cosencfs.server.cli",
        "configure",
        "run",
        "run a local COS-compatible server over a directory",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cosencfs",
        description="Mount a Tencent COS bucket with client-side encryption "
        "compatible with the COS Python SDK.",
    )
    parser.add_argument("--version", action="version", version=f"cosencfs {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, configure, run, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=help_text)
        getattr(module, configure)(p)
        p.set_defaults(_run=getattr(module, run))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc: int = args._run(args)
    except KeyboardInterrupt:
        return 130
    return rc


if __name__ == "__main__":
    sys.exit(main())
