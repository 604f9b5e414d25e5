"""``cosencfs rekey``: rotate the master key of a bucket (or prefix), metadata only.

The walk and the re-wrapping are ``cosencfs.tools.rekey``; this module reads
the new key, runs it and prints the summary.
"""

from __future__ import annotations

import argparse
import json
import time

from cosencfs.cli.bucket import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PROBLEMS,
    add_bucket_arguments,
    add_key_arguments,
    check_bucket,
    run_command,
)
from cosencfs.cli.options import AES_WRAPS
from cosencfs.config import BucketSettings, KeySettings
from cosencfs.crypto.envelope import EnvelopeCodec
from cosencfs.crypto.keyfiles import load_codec
from cosencfs.errors import ConfigError
from cosencfs.fs.names import normalize_prefix
from cosencfs.store.cos import CosStore
from cosencfs.store.counters import CounterSnapshot
from cosencfs.tools.progress import Progress, display_key, requests_line
from cosencfs.tools.rekey import Rekeyer, RekeyStats
from cosencfs.tools.walk import STOP_INTERRUPTED, until_stopped


def configure(p: argparse.ArgumentParser) -> None:
    add_bucket_arguments(p)
    add_key_arguments(p, what="(the current key)")
    p.add_argument(
        "--aes-wrap",
        choices=AES_WRAPS,
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
        choices=AES_WRAPS,
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
    args: argparse.Namespace, settings: BucketSettings
) -> tuple[EnvelopeCodec, EnvelopeCodec]:
    if not (args.new_key_file or args.new_rsa_public_key or args.new_rsa_private_key):
        raise ConfigError(
            "no new master key: give --new-key-file FILE or --new-rsa-public-key FILE "
            "(create one with `cosencfs keygen`)"
        )
    old = load_codec(settings.keys)
    new_keys = KeySettings(
        key_file=args.new_key_file,
        rsa_public_key=args.new_rsa_public_key,
        rsa_private_key=args.new_rsa_private_key,
        aes_wrap=args.new_aes_wrap or settings.keys.aes_wrap,
    )
    return old, load_codec(new_keys)


def run(args: argparse.Namespace) -> int:
    async def main(
        store: CosStore, settings: BucketSettings, codecs: tuple[EnvelopeCodec, EnvelopeCodec]
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
        await check_bucket(store, settings)
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

    return run_command(args, _prepare_rekey, main)


def _print_rekey(
    args: argparse.Namespace,
    settings: BucketSettings,
    rekeyer: Rekeyer,
    used: CounterSnapshot,
    elapsed: float,
    stop: str,
) -> None:
    s: RekeyStats = rekeyer.stats
    new = rekeyer.new.master
    if args.json:
        report = {
            "target": settings.target(),
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
        f"rekey {settings.target()} {head}: {s.listed} objects listed in {elapsed:.1f} s; "
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
