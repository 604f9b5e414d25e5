"""Command-line entry point: ``cosencfs SUBCOMMAND ...``, one module per command.

Each command's module has two functions: ``configure`` adds its arguments to
a parser, ``run`` runs it and returns the exit status.  Heavy imports
(pyfuse3, the SDK) happen inside the run functions.  The mount(8) helper
form (``cosencfs SOURCE MOUNTPOINT -o opts``) is turned into ``mount`` here.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from cosencfs import __version__
from cosencfs.hardening import harden_process

#: command name -> (module, one-line help); each module has ``configure(parser)``
#: and ``run(args) -> exit status``.
COMMANDS: dict[str, tuple[str, str]] = {
    "mount": ("cosencfs.cli.mount", "mount a bucket (or a prefix of one)"),
    "umount": ("cosencfs.cli.umount", "upload everything dirty, then unmount"),
    "stats": ("cosencfs.cli.stats", "show requests, cost, cache and upload state of a mount"),
    "sync": ("cosencfs.cli.sync", "upload everything dirty in a mount and wait"),
    "keygen": (
        "cosencfs.cli.keygen",
        "create a master key file (AES) or key pair (RSA) in the COS SDK's formats",
    ),
    "rekey": (
        "cosencfs.cli.rekey",
        "rotate the master key: re-wrap every object's data key, metadata only",
    ),
    "fsck": (
        "cosencfs.cli.fsck",
        "check that every object opens with the key and can be shown by a mount",
    ),
    "local-server": (
        "cosencfs.cli.local_server",
        "run a local COS-compatible server over a directory",
    ),
}


#: Commands that load master keys or server secrets.
KEY_HOLDERS = frozenset({"keygen", "rekey", "fsck", "local-server"})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cosencfs",
        description="Mount a Tencent COS bucket with client-side encryption "
        "compatible with the COS Python SDK.",
    )
    parser.add_argument("--version", action="version", version=f"cosencfs {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.configure(p)
        p.set_defaults(_run=module.run)
    return parser


#: mount(8) options that mean nothing to FUSE (mount.fuse3 drops some itself).
_GENERIC_MOUNT_OPTIONS = frozenset(
    {
        "rw",
        "defaults",
        "auto",
        "noauto",
        "user",
        "nouser",
        "users",
        "_netdev",
        "nofail",
        "async",
        "dev",
        "suid",
        "exec",
        "relatime",
        "noatime",
        "atime",
    }
)
#: ``-o name=value`` options of the mount helper form that are cosencfs settings.
_HELPER_SETTINGS = {
    "config": "--config",
    "endpoint": "--endpoint",
    "region": "--region",
    "key_file": "--key-file",
    "rsa_public_key": "--rsa-public-key",
    "rsa_private_key": "--rsa-private-key",
    "cache_dir": "--cache-dir",
    "cache_size": "--cache-size",
    "metrics_addr": "--metrics-addr",
}


def helper_argv(argv: Sequence[str]) -> list[str]:
    """``cosencfs SOURCE MOUNTPOINT -o opts`` (how mount.fuse3 runs us for
    ``mount -t fuse.cosencfs`` and fstab) -> ``cosencfs mount ...``."""
    positional: list[str] = []
    out: list[str] = ["mount"]
    it = iter(argv)
    for arg in it:
        if arg == "-o":
            opts = next(it, "")
        elif arg.startswith("-o"):
            opts = arg[2:]
        else:
            positional.append(arg)
            continue
        for opt in filter(None, (o.strip() for o in opts.split(","))):
            name, eq, value = opt.partition("=")
            if eq and name in _HELPER_SETTINGS:
                out += [_HELPER_SETTINGS[name], value]
            elif opt not in _GENERIC_MOUNT_OPTIONS and not opt.startswith("x-"):
                out += ["-o", opt]
    return out + positional


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; ``argv`` None means the process is the ``cosencfs`` program
    (only then is it hardened: tests call this with an explicit ``argv``)."""
    parser = build_parser()
    as_argv = list(sys.argv[1:] if argv is None else argv)
    if as_argv and not as_argv[0].startswith("-") and as_argv[0] not in COMMANDS:
        as_argv = helper_argv(as_argv)
    as_program = argv is None
    args = parser.parse_args(as_argv)
    if as_program and args.command in KEY_HOLDERS:
        # Master keys, data keys and plaintext in memory: no core dumps
        # (the mount does this itself before it daemonizes).
        harden_process()
    try:
        rc: int = args._run(args)
    except KeyboardInterrupt:
        return 130
    return rc
