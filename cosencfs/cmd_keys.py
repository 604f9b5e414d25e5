"""``cosencfs keygen``, ``cosencfs rekey`` and ``cosencfs fsck``.

keygen writes master key files in the COS Python SDK's formats; rekey and
fsck walk a bucket (or a prefix of one) with the engines of
``cosencfs.tools.rekey`` and ``cosencfs.tools.fsck``.  Bucket, endpoint, region,
credentials and key files come from ``--config FILE`` (the mount's TOML
format) and the command line, the command line winning; credentials also
from ``COS_SECRET_ID`` / ``COS_SECRET_KEY`` / ``COS_TOKEN``.  Nothing here
prints a secret or key material (key ids are public fingerprints).

Exit status: 0 done / clean, 1 something failed / problems found, 2 usage,
configuration, key or bucket errors, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

import trio

from cosencfs.config import (
    COMMON_CLI_FIELDS,
    KeySettings,
    MountSettings,
    build_settings,
    load_config_file,
    split_target,
    validate,
)
from cosencfs.crypto.envelope import EnvelopeCodec
from cosencfs.crypto.keyfiles import (
    PRIVATE_KEY_FILENAME,
    PUBLIC_KEY_FILENAME,
    generate_aes_key_file,
    generate_rsa_key_files,
)
from cosencfs.errors import (
    AccessDeniedError,
    ConfigError,
    CosEncFsError,
    NoSuchBucketError,
    StoreError,
)
from cosencfs.fs.names import normalize_prefix
from cosencfs.mount.logsetup import setup_logging
from cosencfs.store.cos import CosStore
from cosencfs.store.counters import CounterSnapshot
from cosencfs.tools.fsck import Category, Finding, Fsck, FsckStats
from cosencfs.tools.progress import Progress, display_key, requests_line
from cosencfs.tools.rekey import Rekeyer, RekeyStats
from cosencfs.tools.walk import STOP_INTERRUPTED, until_stopped

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

_BACKUP_REMINDER = (
    "Back up the key now, somewhere other than the bucket: without it the data cannot be "
    "decrypted, by cosencfs or by the COS SDK."
)


def _err(message: str) -> None:
    print(f"cosencfs: {message}", file=sys.stderr)


# ---------------------------------------------------------------------------
# keygen


def configure_keygen(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="kind", metavar="KIND", required=True)
    aes = sub.add_parser(
        "aes",
        help="an AES-256 master key file (base64, read by the SDK's AESProvider)",
        description="Create an AES-256 master key file (mode 0600), in the format of the "
        "COS SDK's AESProvider(aes_key_path=FILE). Never overwrites a file.",
    )
    aes.add_argument("file", metavar="FILE", help="the key file to create")
    aes.add_argument(
        "--hardened",
        action="store_true",
        help="say how to use the key with AES key wrap (--aes-wrap kw): every object's data "
        "key wrapped independently, but not readable by the COS SDK",
    )
    rsa = sub.add_parser(
        "rsa",
        help="an RSA key pair (PEM, read by the SDK's RSAProvider)",
        description=f"Create {PUBLIC_KEY_FILENAME} (0644) and {PRIVATE_KEY_FILENAME} (0600) in "
        "DIR, loadable by the COS SDK's RSAProvider.get_rsa_key_pair_path. Never overwrites.",
    )
    rsa.add_argument("directory", metavar="DIR", help="directory for the two files")
    rsa.add_argument(
        "--bits",
        type=int,
        choices=[2048, 3072, 4096],
        default=2048,
        help="key size (default 2048; larger keys leave less of COS's 2 KB metadata for "
        "file attributes)",
    )


def run_keygen(args: argparse.Namespace) -> int:
    try:
        if args.kind == "aes":
            _keygen_aes(args.file, hardened=args.hardened)
        else:
            _keygen_rsa(args.directory, args.bits)
    except ConfigError as exc:
        _err(str(exc))
        return EXIT_PROBLEMS
    except OSError as exc:
        _err(f"cannot create the key: {exc.strerror or exc}")
        return EXIT_PROBLEMS
    print(_BACKUP_REMINDER)
    return EXIT_OK


def _keygen_aes(path: str, *, hardened: bool) -> None:
    key = generate_aes_key_file(path, hardened=hardened)
    print(
        f"created AES-{key.bits} master key file {os.path.abspath(path)} (mode 0600), "
        f"key id {key.key_id}"
    )
    if hardened:
        print(
            "Use it with AES key wrap: mount and rekey with --aes-wrap kw (config: "
            'keys.aes_wrap = "kw"). The key file is the same either way; objects wrapped '
            "that way cannot be read by the COS SDK."
        )


def _keygen_rsa(directory: str, bits: int) -> None:
    key = generate_rsa_key_files(directory, bits)
    where = os.path.abspath(directory)
    print(f"created RSA-{key.bits} key pair, key id {key.key_id}:")
    print(f"  {os.path.join(where, PRIVATE_KEY_FILENAME)} (private, mode 0600)")
    print(f"  {os.path.join(where, PUBLIC_KEY_FILENAME)} (public, mode 0644)")
    print("The public key alone can write (and be rotated to); reading needs the private key.")


# ---------------------------------------------------------------------------
# settings shared by rekey and fsck

#: argparse destination -> settings name (config.FIELDS)
_CLI_FIELDS = {**COMMON_CLI_FIELDS, "concurrency": "network.concurrency"}


def _add_bucket_arguments(p: argparse.ArgumentParser) -> None:
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


def _add_key_arguments(p: argparse.ArgumentParser, *, what: str) -> None:
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


async def _check_bucket(store: CosStore, settings: MountSettings) -> None:
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


def _target(settings: MountSettings) -> str:
    return settings.bucket + (f"/{settings.prefix}" if settings.prefix else "")


def _run_command(
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
        _err(str(exc))
        return EXIT_USAGE
    setup_logging(settings.log_level, settings.debug)
    try:
        status: int = trio.run(main, store, settings, prepared)
    except _Unusable as exc:
        _err(str(exc))
        return EXIT_USAGE
    except ConfigError as exc:
        _err(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        store.close()
    return status


# ---------------------------------------------------------------------------
# rekey


def configure_rekey(p: argparse.ArgumentParser) -> None:
    _add_bucket_arguments(p)
    _add_key_arguments(p, what="(the current key)")
    p.add_argument(
        "--aes-wrap",
        choices=["sdk", "kw"],
        help="the current AES wrap (reading accepts both; the default for --new-aes-wrap)",
    )
    new = p.add_argument_group("the new master key (one of)")
    new.add_argument("--new-key-file", metavar="FILE", help="new AES master key file")
    new.add_argument("--new-rsa-public-key", metavar="FILE", help="new RSA public key (PEM)")
    new.add_argument(
        "--new-rsa-private-key",
        metavar="FILE",
        help="new RSA private key (optional: lets rekey recognise SDK objects already "
        "under the new key)",
    )
    new.add_argument(
        "--new-aes-wrap",
        choices=["sdk", "kw"],
        help="how the new AES key wraps: sdk (readable by the COS SDK) or kw (AES key wrap); "
        "default: --aes-wrap, else sdk",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="check every object (LIST + HEAD) and count what would be re-wrapped; write nothing",
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def _prepare_rekey(
    args: argparse.Namespace, settings: MountSettings
) -> tuple[EnvelopeCodec, EnvelopeCodec]:
    if not (args.new_key_file or args.new_rsa_public_key or args.new_rsa_private_key):
        raise ConfigError(
            "no new master key: give --new-key-file FILE or --new-rsa-public-key FILE "
            "(create one with `cosencfs keygen`)"
        )
    old = settings.keys.codec()
    new_keys = KeySettings(
        key_file=args.new_key_file,
        rsa_public_key=args.new_rsa_public_key,
        rsa_private_key=args.new_rsa_private_key,
        aes_wrap=args.new_aes_wrap or settings.keys.aes_wrap,
    )
    return old, new_keys.codec()


def run_rekey(args: argparse.Namespace) -> int:
    async def main(
        store: CosStore, settings: MountSettings, codecs: tuple[EnvelopeCodec, EnvelopeCodec]
    ) -> int:
        old, new = codecs
        rekeyer = Rekeyer(
            store,
            old,
            new,
            prefix=normalize_prefix(settings.prefix),
            concurrency=settings.concurrency,
            dry_run=args.dry_run,
        )
        before = store.counters.snapshot()
        started = time.monotonic()
        await _check_bucket(store, settings)
        with Progress(
            "rekey (dry run)" if args.dry_run else "rekey", enabled=not args.no_progress
        ) as progress:
            rekeyer.progress = progress
            stop = await until_stopped(rekeyer.run)
        used = store.counters.snapshot().minus(before)
        _print_rekey(args, settings, rekeyer, used, time.monotonic() - started, stop)
        if stop == STOP_INTERRUPTED:
            return EXIT_INTERRUPTED
        return EXIT_PROBLEMS if rekeyer.stats.failed or stop else EXIT_OK

    return _run_command(args, _prepare_rekey, main)


def _print_rekey(
    args: argparse.Namespace,
    settings: MountSettings,
    rekeyer: Rekeyer,
    used: CounterSnapshot,
    elapsed: float,
    stop: str,
) -> None:
    s: RekeyStats = rekeyer.stats
    new = rekeyer.new.master
    if args.json:
        report = {
            "target": _target(settings),
            "old_key_id": rekeyer.old.key_id,
            "new_key_id": new.key_id,
            "new_wrap": new.wrap_alg.value,
            "complete": not stop,
            "stopped": stop,
            "seconds": round(elapsed, 3),
            **s.as_dict(),
            "requests": used.as_dict(),
        }
        print(json.dumps(report, indent=2))
        return
    verb = "would re-wrap" if s.dry_run else "re-wrapped"
    head = stop or "done"
    lines = [
        f"rekey {_target(settings)} {head}: {s.listed} objects listed in {elapsed:.1f} s; "
        f"master key {rekeyer.old.key_id} -> {new.key_id} ({new.wrap_alg.value})"
        + (" [dry run: nothing written]" if s.dry_run else ""),
        f"  {verb + ':':<24}{s.rewrapped}",
        f"  {'already done:':<24}{s.already}",
        f"  {'skipped:':<24}{s.markers + s.plain + s.foreign} "
        f"({s.markers} directory markers, {s.plain} plain, {s.foreign} foreign)",
    ]
    if s.vanished:
        lines.append(f"  {'deleted meanwhile:':<24}{s.vanished}")
    lines.append(f"  {'failed:':<24}{s.failed}")
    for key, reason in s.failures:
        lines.append(f"    {display_key(key)}: {reason}")
    if s.failed > len(s.failures):
        lines.append(f"    ... and {s.failed - len(s.failures)} more (see the log)")
    if s.unverified:
        lines.append(
            f"  note: {s.unverified} SDK envelopes with the aes-ctr wrap have no key check; "
            "they were assumed to be under the old key"
        )
    lines.append(requests_line(used))
    retry_helps = {"changed", "store-error"}
    if stop or retry_helps & s.failure_kinds.keys():
        lines.append("Run the same command again to finish: objects already done are skipped.")
    if (s.failure_kinds.keys() - retry_helps) and not s.dry_run:
        lines.append(
            "Failures other than changed objects and network errors will fail again: look at "
            "them first (`cosencfs fsck` lists wrong-key and damaged objects; "
            "docs/keys-and-fsck.md says what to do)."
        )
    print("\n".join(lines))


# ---------------------------------------------------------------------------
# fsck


def configure_fsck(p: argparse.ArgumentParser) -> None:
    _add_bucket_arguments(p)
    _add_key_arguments(p, what="(reading needs the private key)")
    p.add_argument(
        "--abort-orphans",
        action="store_true",
        help="abort the orphaned multipart uploads found",
    )
    p.add_argument(
        "--orphan-age",
        type=float,
        default=24.0,
        metavar="HOURS",
        help="a multipart upload older than this is orphaned (default 24)",
    )
    p.add_argument("--json", action="store_true", help="print a machine-readable report")


def _prepare_fsck(args: argparse.Namespace, settings: MountSettings) -> EnvelopeCodec:
    if args.orphan_age < 0:
        raise ConfigError("--orphan-age must not be negative")
    codec = settings.keys.codec()
    if not codec.master.can_unwrap:
        raise ConfigError("fsck opens every envelope: give the RSA private key (--rsa-private-key)")
    return codec


class _FindingPrinter:
    """Findings as they come: text lines, or a JSON document streamed to stdout."""

    def __init__(self, as_json: bool, out: TextIO) -> None:
        self.as_json = as_json
        self.out = out
        self.progress: Progress | None = None
        self.n = 0

    def _write(self, line: str) -> None:
        if self.progress is not None:
            self.progress.write(line, file=self.out)
        else:
            print(line, file=self.out, flush=True)

    def start(self, header: dict[str, object]) -> None:
        if self.as_json:
            self._write(json.dumps(header)[:-1] + ', "findings": [')

    def __call__(self, f: Finding) -> None:
        if self.as_json:
            self._write(("  " if self.n == 0 else ", ") + json.dumps(f.as_dict()))
        else:
            action = f" [{f.action}]" if f.action else ""
            upload = f" (upload {f.upload_id})" if f.upload_id else ""
            self._write(f"{f.category.value:<17} {display_key(f.key)}{upload}: {f.detail}{action}")
        self.n += 1

    def finish(self, trailer: dict[str, object]) -> None:
        if self.as_json:
            self._write("], " + json.dumps(trailer)[1:])


def run_fsck(args: argparse.Namespace) -> int:
    async def main(store: CosStore, settings: MountSettings, codec: EnvelopeCodec) -> int:
        printer = _FindingPrinter(args.json, sys.stdout)
        fsck = Fsck(
            store,
            codec,
            report=printer,
            prefix=normalize_prefix(settings.prefix),
            concurrency=settings.concurrency,
            orphan_age=args.orphan_age * 3600.0,
            abort_orphans=args.abort_orphans,
        )
        before = store.counters.snapshot()
        started = time.monotonic()
        await _check_bucket(store, settings)
        printer.start(
            {
                "target": _target(settings),
                "key_id": codec.key_id,
                "key_kind": codec.master.kind,
            }
        )
        with Progress("fsck", enabled=not args.no_progress) as progress:
            fsck.progress = progress
            printer.progress = progress
            stop = await until_stopped(fsck.run)
        printer.progress = None
        used = store.counters.snapshot().minus(before)
        elapsed = time.monotonic() - started
        if args.json:
            printer.finish(
                {
                    "summary": fsck.stats.as_dict(),
                    "complete": not stop,
                    "stopped": stop,
                    "seconds": round(elapsed, 3),
                    "requests": used.as_dict(),
                }
            )
        else:
            _print_fsck(settings, codec, fsck.stats, used, elapsed, stop)
        if stop == STOP_INTERRUPTED:
            return EXIT_INTERRUPTED
        return EXIT_OK if fsck.stats.clean and not stop else EXIT_PROBLEMS

    return _run_command(args, _prepare_fsck, main)


def _print_fsck(
    settings: MountSettings,
    codec: EnvelopeCodec,
    s: FsckStats,
    used: CounterSnapshot,
    elapsed: float,
    stop: str,
) -> None:
    ok = sum(s.ok.values())
    by_format = ", ".join(f"{fmt} {n}" for fmt, n in sorted(s.ok.items()))
    lines = [
        f"fsck {_target(settings)}{f' ({stop})' if stop else ''} with master key "
        f"{codec.key_id} ({codec.master.kind}): {s.objects} objects ({s.bytes} bytes), "
        f"{s.markers} directory markers, {s.uploads} multipart uploads, in {elapsed:.1f} s",
        f"  {'ok:':<19}{ok}" + (f" ({by_format})" if by_format else ""),
    ]
    for cat in Category:
        n = s.findings[cat]
        if n:
            lines.append(f"  {cat.value + ':':<19}{n}")
    if s.orphans_aborted:
        lines.append(f"  {'uploads aborted:':<19}{s.orphans_aborted}")
    if s.unverified:
        lines.append(
            f"  note: {s.unverified} SDK envelopes use the SDK's aes-ctr wrap, which has no key "
            "check: they open with any AES key and could not be verified"
        )
    lines.append(requests_line(used))
    problems = sum(s.findings.values())
    if problems:
        lines.append(f"{problems} problems found")
    elif stop:
        lines.append("incomplete: no problems found in what was checked")
    else:
        lines.append("clean")
    print("\n".join(lines))
