"""``cosencfs mount``: settings from the command line and the config file, then the daemon."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from cosencfs.cli.options import (
    AES_WRAPS,
    COMMON_CLI_FIELDS,
    LOG_LEVELS,
    add_endpoint_arguments,
    command_line_values,
)
from cosencfs.config import MountSettings, build_mount_settings, load_config_file, split_target
from cosencfs.errors import ConfigError
from cosencfs.mount.logsetup import setup_logging


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "args",
        nargs="*",
        metavar="BUCKET[/PREFIX] MOUNTPOINT",
        help="what to mount and where (with --local DIR: only MOUNTPOINT); "
        "may also come from the config file",
    )
    p.add_argument("--config", metavar="FILE", help="TOML file with mount settings")
    p.add_argument("--local", metavar="DIR", help="serve DIR with a built-in local COS server")
    add_endpoint_arguments(p)
    p.add_argument("--key-file", help="AES master key file (base64, as the COS SDK reads it)")
    p.add_argument(
        "--also-read-key-file",
        dest="also_read",
        action="append",
        metavar="FILE",
        help="an older AES key file whose objects must stay readable (during a key rotation)",
    )
    p.add_argument("--rsa-public-key", help="RSA public key (PEM)")
    p.add_argument("--rsa-private-key", help="RSA private key (PEM)")
    p.add_argument(
        "--aes-wrap",
        choices=AES_WRAPS,
        help="how new data keys are wrapped with an AES master key: 'sdk' (default; "
        "readable by the COS SDK; weak, see docs/format.md) or 'kw' (AES key wrap)",
    )
    p.add_argument("--cache-dir", help="cache directory (default ~/.cache/cosencfs)")
    p.add_argument("--cache-size", help="cache size limit (default 1G)")
    p.add_argument("-f", "--foreground", action="store_true", default=None, help="do not detach")
    p.add_argument(
        "-o",
        dest="fuse_options",
        action="append",
        metavar="OPTS",
        help="FUSE mount options, e.g. allow_other",
    )
    p.add_argument(
        "--metrics-addr",
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (a port alone: on "
        "127.0.0.1); off by default",
    )
    p.add_argument(
        "--writeback-delay",
        type=float,
        metavar="SECONDS",
        help="upload a closed file this long after its last change (default 1)",
    )
    p.add_argument(
        "--dir-ttl", type=float, metavar="SECONDS", help="reuse a directory listing this long"
    )
    p.add_argument(
        "--request-deadline",
        type=float,
        metavar="SECONDS",
        help="give up on a request to COS, retries included, after this long (default 30)",
    )
    p.add_argument(
        "--allow-plaintext",
        action="store_true",
        default=None,
        help="serve objects that have a body but no encryption envelope (buckets shared "
        "with cosfs); refused by default, see docs/security.md",
    )
    p.add_argument(
        "--trust-metadata-modes",
        action="store_true",
        default=None,
        help="keep setuid/setgid bits from x-cos-meta-mode (dropped by default: anyone "
        "who can write to the bucket can set them)",
    )
    p.add_argument(
        "--require-integrity",
        action="store_true",
        default=None,
        help="refuse every object without integrity tags (written by the SDK, another tool "
        "or an older cosencfs, or stripped by an attacker); see docs/format.md, 12.10",
    )
    # The benchmark's switch to measure what tags cost: not for users.
    p.add_argument(
        "--x-bench-untagged",
        dest="write_tags",
        action="store_false",
        default=None,
        help=argparse.SUPPRESS,
    )
    p.add_argument("--uid", type=int, help="owner of objects without metadata")
    p.add_argument("--gid", type=int, help="group of objects without metadata")
    p.add_argument("--log-level", choices=LOG_LEVELS)
    p.add_argument(
        "--debug",
        action="append",
        metavar="SUBSYSTEM",
        help="debug logging for store, cache, fs, fuse, mount, server or all",
    )


#: argparse destination -> settings name
_CLI_FIELDS = {
    **COMMON_CLI_FIELDS,
    "also_read": "keys.also_read",
    "cache_dir": "cache.dir",
    "cache_size": "cache.size",
    "foreground": "fuse.foreground",
    "fuse_options": "fuse.options",
    "metrics_addr": "metrics_addr",
    "writeback_delay": "fs.writeback_delay",
    "dir_ttl": "fs.dir_ttl",
    "request_deadline": "network.request_deadline",
    "allow_plaintext": "fs.allow_plaintext",
    "trust_metadata_modes": "fs.trust_metadata_modes",
    "require_integrity": "fs.require_integrity",
    "write_tags": "fs.write_tags",
    "uid": "fs.uid",
    "gid": "fs.gid",
}


def settings_from_args(args: argparse.Namespace) -> MountSettings:
    values = load_config_file(args.config) if args.config else {}
    cli: dict[str, Any] = {}
    positional: list[str] = args.args
    if args.local:
        cli["local_dir"] = args.local
        if len(positional) > 1:
            raise ConfigError("with --local DIR give only the MOUNTPOINT")
        if positional:
            cli["mountpoint"] = positional[0]
    elif len(positional) == 2:
        cli["bucket"], cli["prefix"] = split_target(positional[0])
        cli["mountpoint"] = positional[1]
    elif len(positional) == 1 and args.config:
        cli["mountpoint"] = positional[0]
    elif positional or not args.config:
        raise ConfigError("give BUCKET[/PREFIX] and MOUNTPOINT (or --config FILE)")
    values.update(command_line_values(args, cli, _CLI_FIELDS))
    return build_mount_settings(values)


def run(args: argparse.Namespace) -> int:
    from cosencfs.mount import daemon  # noqa: PLC0415 - pyfuse3 only when mounting

    try:
        settings = settings_from_args(args)
    except ConfigError as exc:
        print(f"cosencfs: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, settings.debug)
    return daemon.run(settings)
