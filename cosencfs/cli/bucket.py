"""What ``rekey`` and ``fsck`` share: bucket arguments, settings, the store, exit status.

Bucket, endpoint, region, credentials and key files come from ``--config
FILE`` (the mount's TOML format) and the command line, the command line
winning; credentials also from ``COS_SECRET_ID`` / ``COS_SECRET_KEY`` /
``COS_TOKEN``.  Nothing here prints a secret or key material (key ids are
public fingerprints).

Exit status of the key commands: 0 done / clean, 1 something failed /
problems found, 2 usage, configuration, key or bucket errors, 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

import trio

from cosencfs.cli.options import (
    COMMON_CLI_FIELDS,
    LOG_LEVELS,
    add_endpoint_arguments,
    command_line_values,
)
from cosencfs.config import BucketSettings, build_bucket_settings, load_config_file, split_target
from cosencfs.errors import ConfigError, CosEncFsError, StoreError
from cosencfs.mount.logsetup import setup_logging
from cosencfs.store.cos import CosStore
from cosencfs.tools import bucket
from cosencfs.tools.bucket import open_store

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def err(message: str) -> None:
    print(f"cosencfs: {message}", file=sys.stderr)


#: argparse destination -> settings name (config.SCHEMA)
_CLI_FIELDS = {**COMMON_CLI_FIELDS, "concurrency": "network.concurrency"}


def add_bucket_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "target",
        nargs="?",
        metavar="BUCKET[/PREFIX]",
        help="the bucket, or a prefix of it (may also come from the config file)",
    )
    p.add_argument("--config", metavar="FILE", help="TOML settings file (as for mount)")
    add_endpoint_arguments(p)
    p.add_argument(
        "--concurrency", type=int, metavar="N", help="requests in flight at once (default 16)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar, even on a terminal")
    p.add_argument("--log-level", choices=LOG_LEVELS)
    p.add_argument(
        "--debug", action="append", metavar="SUBSYSTEM", help="debug logging (store, all, ...)"
    )


def add_key_arguments(p: argparse.ArgumentParser, *, what: str) -> None:
    p.add_argument("--key-file", metavar="FILE", help=f"AES master key file {what}")
    p.add_argument("--rsa-public-key", metavar="FILE", help=f"RSA public key (PEM) {what}")
    p.add_argument("--rsa-private-key", metavar="FILE", help=f"RSA private key (PEM) {what}")


def settings_from_args(args: argparse.Namespace) -> BucketSettings:
    """Bucket, prefix, endpoint, credentials and keys, from the file ``mount`` reads too."""
    values = load_config_file(args.config) if args.config else {}
    cli: dict[str, Any] = {}
    if args.target:
        cli["bucket"], cli["prefix"] = split_target(args.target)
    values.update(command_line_values(args, cli, _CLI_FIELDS))
    return build_bucket_settings(values)


class _Unusable(CosEncFsError):
    """The bucket cannot be used at all (exit status 2)."""


async def check_bucket(store: CosStore, settings: BucketSettings) -> None:
    await bucket.check_bucket(store, settings, unusable=_Unusable, unreachable=StoreError)


def run_command(
    args: argparse.Namespace,
    prepare: Callable[[argparse.Namespace, BucketSettings], Any],
    main: Callable[[CosStore, BucketSettings, Any], Any],
) -> int:
    """Settings, keys, logging, store; then ``main`` under trio; exit status."""
    try:
        settings = settings_from_args(args)
        prepared = prepare(args, settings)
        store = open_store(settings)  # checks the endpoint
    except ConfigError as exc:
        err(str(exc))
        return EXIT_USAGE
    setup_logging(settings.log_level, settings.debug)
    try:
        status: int = trio.run(main, store, settings, prepared)
    except _Unusable as exc:
        err(str(exc))
        return EXIT_USAGE
    except ConfigError as exc:
        err(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        store.close()
    return status
