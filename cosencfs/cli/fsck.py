"""``cosencfs fsck``: check every object of a bucket (or prefix) opens and can be shown.

The checks are ``cosencfs.tools.fsck`` (integrity tags: ``cosencfs.tools.verify``,
all bodies with ``--verify``); this module runs them and prints the findings
as they come and the summary.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TextIO

from cosencfs.cli.bucket import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PROBLEMS,
    add_bucket_arguments,
    add_key_arguments,
    check_bucket,
    run_command,
)
from cosencfs.config import BucketSettings
from cosencfs.crypto.envelope import EnvelopeCodec
from cosencfs.crypto.keyfiles import load_codec
from cosencfs.errors import ConfigError
from cosencfs.fs.names import normalize_prefix
from cosencfs.store.cos import CosStore
from cosencfs.store.counters import CounterSnapshot
from cosencfs.tools.fsck import Category, Finding, Fsck, FsckStats
from cosencfs.tools.progress import Progress, display_key, requests_line
from cosencfs.tools.walk import STOP_INTERRUPTED, until_stopped


def configure(p: argparse.ArgumentParser) -> None:
    add_bucket_arguments(p)
    add_key_arguments(p, what="(reading needs the private key)")
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
        help="a multipart upload, or with --verify an unreferenced companion, older than "
        "this is orphaned (default 24)",
    )
    p.add_argument(
        "--verify",
        action="store_true",
        help="also fetch every object and verify its integrity tags chunk by chunk "
        "(downloads the whole prefix; reports untagged objects and orphaned companions)",
    )
    p.add_argument(
        "--delete-orphans",
        action="store_true",
        help="with --verify, delete the orphaned companion objects found (run it only when "
        "no mount is writing to the bucket)",
    )
    p.add_argument("--json", action="store_true", help="print a machine-readable report")


def _prepare_fsck(args: argparse.Namespace, settings: BucketSettings) -> EnvelopeCodec:
    if args.orphan_age < 0:
        raise ConfigError("--orphan-age must not be negative")
    if args.delete_orphans and not args.verify:
        raise ConfigError("--delete-orphans needs --verify (orphaned companions are found by it)")
    codec = load_codec(settings.keys)
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


def run(args: argparse.Namespace) -> int:
    async def main(store: CosStore, settings: BucketSettings, codec: EnvelopeCodec) -> int:
        printer = _FindingPrinter(args.json, sys.stdout)
        fsck = Fsck(
            store,
            codec,
            report=printer,
            prefix=normalize_prefix(settings.prefix),
            concurrency=settings.concurrency,
            orphan_age=args.orphan_age * 3600.0,
            abort_orphans=args.abort_orphans,
            verify=args.verify,
            delete_orphans=args.delete_orphans,
        )
        before = store.counters.snapshot()
        started = time.monotonic()
        await check_bucket(store, settings)
        printer.start(
            {
                "target": settings.target(),
                "key_id": codec.key_id,
                "key_kind": codec.master.kind,
                "verify": args.verify,
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
            _print_fsck(settings, codec, fsck.stats, used, elapsed, stop, verify=args.verify)
        if stop == STOP_INTERRUPTED:
            return EXIT_INTERRUPTED
        return EXIT_OK if fsck.stats.clean and not stop else EXIT_PROBLEMS

    return run_command(args, _prepare_fsck, main)


def _print_fsck(
    settings: BucketSettings,
    codec: EnvelopeCodec,
    s: FsckStats,
    used: CounterSnapshot,
    elapsed: float,
    stop: str,
    *,
    verify: bool = False,
) -> None:
    ok = sum(s.ok.values())
    by_format = ", ".join(f"{fmt} {n}" for fmt, n in sorted(s.ok.items()))
    lines = [
        f"fsck {settings.target()}{f' ({stop})' if stop else ''} with master key "
        f"{codec.key_id} ({codec.master.kind}): {s.objects} objects ({s.bytes} bytes), "
        f"{s.markers} directory markers, {s.uploads} multipart uploads, in {elapsed:.1f} s",
        f"  {'ok:':<19}{ok}" + (f" ({by_format})" if by_format else ""),
    ]
    for cat in Category:
        n = s.findings[cat]
        if n:
            lines.append(f"  {cat.value + ':':<19}{n}")
    t = s.tags
    if verify:
        lines.append(
            f"  {'tags:':<19}{t.verified} objects verified ({t.bytes_verified} bytes), "
            f"{t.untagged} untagged, {t.failed} failed, {t.companions} companions"
        )
    elif t.metadata_checked or t.untagged or t.failed:
        lines.append(
            f"  {'tags:':<19}{t.metadata_checked} objects checked from metadata, "
            f"{t.untagged} untagged, {t.failed} failed (bodies not read: --verify reads them)"
        )
    if s.orphans_aborted:
        lines.append(f"  {'uploads aborted:':<19}{s.orphans_aborted}")
    if t.companions_deleted:
        lines.append(f"  {'orphans deleted:':<19}{t.companions_deleted}")
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
