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

from cosencfs.config import (
    COMMON_CLI_FIELDS,
    MountSettings,
    build_settings,
    load_config_file,
    split_target,
    validate,
)
from cosencfs.errors import (
    AccessDeniedError,
    ConfigError,
    CosEncFsError,
    NoSuchBucketError,
    StoreError,
)
from cosencfs.mount.logsetup import setup_logging
from cosencfs.store.cos import CosStore

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def err(message: str) -> None:
    print(f"cosencfs: {message}", file=sys.stderr)


#: argparse destination -> settings name (config.FIELDS)
_CLI_FIELDS = {**COMMON_CLI_FIELDS, "concurrency": "network.concurrency"}


def add_bucket_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "target",
        nargs="?",
        metavar="BUCKET[/PREFIX]",
        help="the bucket, or a prefix of it (may also come from the config file)",
    )
    p.add_argument("--config", metavar="FILE", help="TOML settings file (as for mount)")
    p.add_argument("--endpoint", help="http://HOST:PORT of a COS-compatible server, or a domain")
    p.add_argument("--region", help="COS region (default: ap-guangzhou)")
    p.add_argument(
        "--concurrency", type=int, metavar="N", help="requests in flight at once (default 16)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar, even on a terminal")
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument(
        "--debug", action="append", metavar="SUBSYSTEM", help="debug logging (store, all, ...)"
    )


def add_key_arguments(p: argparse.ArgumentParser, *, what: str) -> None:
    p.add_argument("--key-file", metavar="FILE", help=f"AES master key file {what}")
    p.add_argument("--rsa-public-key", metavar="FILE", help=f"RSA public key (PEM) {what}")
    p.add_argument("--rsa-private-key", metavar="FILE", help=f"RSA private key (PEM) {what}")


def settings_from_args(args: argparse.Namespace) -> MountSettings:
    """Bucket, prefix, endpoint, credentials, keys and tunables, as ``mount`` reads them."""
    values: dict[str, Any] = {}
    if args.config:
        values.update(load_config_file(args.config))
    cli: dict[str, Any] = {}
    if args.target:
        cli["bucket"], cli["prefix"] = split_target(args.target)
    for dest, name in _CLI_FIELDS.items():
        value = getattr(args, dest, None)
        if value is not None:
            cli[name] = value
    values.update(validate(cli, "command line"))
    if values.get("local_dir"):
        raise ConfigError(
            "local_dir is for mounts; run `cosencfs local-server` and give its --endpoint"
        )
    if not values.get("bucket"):
        raise ConfigError("no bucket given (BUCKET[/PREFIX] or 'bucket' in the config file)")
    # build_settings is the mount's; the mountpoint it insists on is not used here.
    values.setdefault("mountpoint", "-")
    return build_settings(values)


def open_store(settings: MountSettings) -> CosStore:
    return CosStore(settings.cos_settings())


class _Unusable(CosEncFsError):
    """The bucket cannot be used at all (exit status 2)."""


async def check_bucket(store: CosStore, settings: MountSettings) -> None:
    where = settings.endpoint or f"region {settings.region}"
    try:
        with trio.fail_after(settings.request_deadline + 5):
            await store.head_bucket()
    except NoSuchBucketError:
        raise _Unusable(f"bucket {settings.bucket!r} does not exist at {where}") from None
    except AccessDeniedError as exc:
        raise _Unusable(
            f"access to bucket {settings.bucket!r} denied ({exc.code or 'AccessDenied'}): "
            "check COS_SECRET_ID / COS_SECRET_KEY and the bucket's permissions"
        ) from None
    except (StoreError, trio.TooSlowError) as exc:
        raise _Unusable(f"cannot reach COS at {where}: {exc}") from None


def target(settings: MountSettings) -> str:
    return settings.bucket + (f"/{settings.prefix}" if settings.prefix else "")


def run_command(
    args: argparse.Namespace,
    prepare: Callable[[argparse.Namespace, MountSettings], Any],
    main: Callable[[CosStore, MountSettings, Any], Any],
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
