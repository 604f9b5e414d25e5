"""CPU per small file created through ``Filesystem`` alone: no FUSE, no HTTP.

The same steps as a program creating files through the mount (create, one
write, close, release), then a sync, on the in-memory store
(``cosencfs.store.memory``, no latency): what the filesystem, cache,
journal and integrity layers cost per file, without pyfuse3's dispatch, the
transport or a server process on the same CPUs. ``time.process_time`` over
every thread of this process (spare cache files are made in a worker
thread). Medians of ``--runs``. The same script measures an older checkout::

    python -m benchmarks.fs_create_cpu                      # this checkout
    PYTHONPATH=/path/to/old/checkout python benchmarks/fs_create_cpu.py

``--profile FILE`` writes a cProfile of the last run.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

from cosencfs.cache.manager import CacheManager
from cosencfs.crypto.envelope import EnvelopeCodec
from cosencfs.crypto.keyfiles import generate_aes_key_file, load_aes_key_file
from cosencfs.fs.attrs import Defaults
from cosencfs.fs.context import FsOptions
from cosencfs.fs.core import Filesystem
from cosencfs.store.memory import MemoryStore

SIZE = 2048
WARM = 200


async def _run(root: Path, n: int, profile: Path | None) -> float:
    """CPU seconds per file for ``n`` files (after ``WARM`` not counted)."""
    key = root / "master.key"
    generate_aes_key_file(key)
    codec = EnvelopeCodec(load_aes_key_file(key))
    store = MemoryStore()
    cache = CacheManager(root / "cache", store, limit_bytes=1 << 30)
    opts = FsOptions(defaults=Defaults(uid=os.getuid(), gid=os.getgid()), writeback_delay=0.0)
    data = os.urandom(SIZE)
    try:
        async with trio.open_nursery() as nursery:
            fs = Filesystem(store, codec, cache, opts)
            await fs.start(nursery)
            d = await fs.mkdir(1, b"d", 0o755, os.getuid(), os.getgid())

            async def create(count: int, tag: str) -> None:
                for i in range(count):
                    name = f"{tag}{i:06d}".encode()
                    fh, _ = await fs.create(d.ino, name, 0o644, os.O_WRONLY, 0, 0)
                    await fs.write(fh, 0, data)
                    await fs.flush(fh)
                    await fs.release(fh)
                    await trio.lowlevel.checkpoint()  # as between two FUSE requests
                await fs.sync_all()

            await create(WARM, "w")
            prof = cProfile.Profile() if profile is not None else None
            start = time.process_time()
            if prof is not None:
                prof.enable()
            await create(n, "f")
            if prof is not None:
                prof.disable()
                prof.dump_stats(str(profile))
            used = time.process_time() - start
            nursery.cancel_scope.cancel()
    finally:
        cache.close()
    return used / n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=2000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--profile", type=Path, metavar="FILE", help="cProfile of the last run")
    p.add_argument("--json", type=Path, help="write the results here too")
    args = p.parse_args(argv)
    results = []
    for r in range(args.runs):
        root = Path(tempfile.mkdtemp(prefix="cosencfs-fs-cpu-", dir="/var/tmp"))
        try:
            last = r == args.runs - 1
            us = trio.run(_run, root, args.files, args.profile if last else None) * 1e6
        finally:
            shutil.rmtree(root, ignore_errors=True)
        results.append(us)
        print(f"run {r}: {us:.0f} us CPU per file", flush=True)
    med = statistics.median(results)
    print(f"median of {args.runs}: {med:.0f} us CPU per file ({args.files} files of {SIZE} B)")
    if args.json is not None:
        args.json.write_text(json.dumps({"us_per_file": results, "median": med}))
    return 0


if __name__ == "__main__":
    if __package__ in (None, ""):
        sys.path.append(str(Path(__file__).resolve().parents[1]))
    raise SystemExit(main())
