"""Bytes the filesystem layer holds per file of a large directory (issue 18's RSS target).

Without FUSE and without HTTP: a ``Filesystem`` over ``MemoryStore`` creates
N files of 2 KiB in one directory (as benchmarks/scale.py does through a
mount: create, write, release, nothing synced), waits until they are in
the bucket, lists the directory as ``ls -l`` does (readdir, a lookup of
every entry), then a second filesystem with an empty cache lists it cold
and warm.  After each phase it reports what ``tracemalloc`` says is held,
per file, by the line that allocated it (and the largest object types by
``gc`` count).  Run it at two sizes: the difference is the slope per file,
free of fixed costs.

    .venv/bin/python -m benchmarks.memory_per_file 10000 20000
"""

from __future__ import annotations

import argparse
import collections
import gc
import os
import sys
import tempfile
import tracemalloc
from collections.abc import Mapping
from pathlib import Path

import trio

from cosencfs.cache.manager import CacheManager
from cosencfs.crypto.envelope import EnvelopeCodec
from cosencfs.crypto.keyfiles import generate_aes_key_file, load_aes_key_file
from cosencfs.fs.attrs import Defaults
from cosencfs.fs.context import FsOptions
from cosencfs.fs.core import Filesystem
from cosencfs.fs.inode import ROOT_INO
from cosencfs.store.base import Body
from cosencfs.store.memory import MemoryStore

FILE_SIZE = 2048
#: Not the bucket (it lives in this process), nor this script, nor tracemalloc.
_FILTERS = [
    tracemalloc.Filter(False, "*/cosencfs/store/memory.py", all_frames=True),
    tracemalloc.Filter(False, "*/cosencfs/store/membucket.py", all_frames=True),
    tracemalloc.Filter(False, tracemalloc.__file__),
    tracemalloc.Filter(False, __file__),
    tracemalloc.Filter(False, "<unknown>"),
]


class _Bucket(MemoryStore):
    """A MemoryStore that keeps copies of the metadata strings and bodies it is given.

    The real bucket is in another process; this one, in this process, would
    otherwise keep the mount's own value strings alive, and tracemalloc would
    count them as the mount's (allocated there).
    """

    async def put(
        self,
        key: str,
        body: Body,
        metadata: Mapping[str, str],
        *,
        content_type: str = "",
        if_none_match: bool = False,
    ) -> str:
        own = {k: "".join(list(v)) for k, v in metadata.items()}
        if isinstance(body, bytes | bytearray | memoryview):
            # (A small file's body is the bytes the commit read and tagged:
            # the bucket's copy, not the mount's, once it is in COS.)
            body = bytes(bytearray(body))
        return await super().put(
            key, body, own, content_type=content_type, if_none_match=if_none_match
        )


def _snapshot(fs: Filesystem | None = None) -> tracemalloc.Snapshot:
    if fs is not None:
        # Attribute records wait in memory for a batch of 1,000 (or a second):
        # bounded, not per file held; written out to see what stays.
        fs.ctx.journal.flush_attrs()
    gc.collect()
    return tracemalloc.take_snapshot().filter_traces(_FILTERS)


def _report(
    title: str, base: tracemalloc.Snapshot, n: int, top: int, fs: Filesystem | None = None
) -> float:
    now = _snapshot(fs)
    stats = now.compare_to(base, "lineno")
    held = sum(s.size_diff for s in stats)
    # How far above what it ends with the phase went (all traced memory, the
    # in-process bucket too: it only grows, so it is not in the difference).
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    print(f"\n== {title}: {held / n:,.0f} bytes per file ({held / 2**20:.1f} MiB for {n:,});"
          f" transient peak {(peak - current) / n:,.0f} bytes per file above that")  # fmt: skip
    for s in sorted(stats, key=lambda s: -s.size_diff)[:top]:
        if s.size_diff < n * 8:
            break
        frame = s.traceback[0]
        where = f"{Path(frame.filename).name}:{frame.lineno}"
        print(f"  {s.size_diff / n:8.0f} B/file  {s.count_diff / n:5.2f} blocks/file  {where}")
    return held / n


def _types(n: int, top: int) -> None:
    counts = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
    print("  objects per file by type (gc-tracked):")
    for name, c in counts.most_common(top):
        if c < n // 2:
            break
        print(f"    {c / n:6.2f}  {name}")


def _fs(store: MemoryStore, codec: EnvelopeCodec, root: Path) -> Filesystem:
    cache = CacheManager(root, store, limit_bytes=1 << 34)
    options = FsOptions(defaults=Defaults(uid=os.getuid(), gid=os.getgid()), writeback_delay=0.05)
    return Filesystem(store, codec, cache, options)


async def _ls_l(fs: Filesystem, d: int) -> int:
    dh = await fs.opendir(d)
    try:
        listed = [name for name, _, _ in fs.readdir(dh, 0)]
    finally:
        await fs.releasedir(dh)
    for name in listed:
        await fs.lookup(d, name)
        await fs.getattr((await fs.lookup(d, name)).ino)
    return len(listed)


async def measure(n: int, top: int, max_unread: int | None = None) -> dict[str, float]:
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="cosencfs-mem-") as tmp:
        key = Path(tmp) / "key"
        generate_aes_key_file(key)
        codec = EnvelopeCodec(load_aes_key_file(key))
        store = _Bucket()
        async with trio.open_nursery() as nursery:
            fs = _fs(store, codec, Path(tmp) / "cache1")
            if max_unread is not None:
                # (What 100,000 files are in: all but the newest copies evicted.)
                fs.ctx.cache.max_unread = max_unread
            await fs.start(nursery)
            d = (await fs.mkdir(ROOT_INO, b"d", 0o755, 0, 0)).ino
            data = os.urandom(FILE_SIZE)
            base = _snapshot()
            tracemalloc.reset_peak()
            for i in range(n):
                fh, _ = await fs.create(d, b"f%06d" % i, 0o644, os.O_WRONLY | os.O_CREAT, 0, 0)
                await fs.write(fh, 0, data)
                await fs.flush(fh)
                await fs.release(fh)
            out["created, dirty"] = _report("created, not yet uploaded", base, n, top, fs)
            await fs.sync_all()
            # Uploads the background had started (or queued at the window) end
            # too: their tasks are not what a file holds once uploaded.
            for _ in range(1200):
                if not fs.writeback.queued:
                    break
                await trio.sleep(0.05)
            fs.ctx.cache.evict()
            out["uploaded"] = _report("uploaded (write-back done, index written)", base, n, top, fs)
            print(f"  clean copies held: {len(fs.ctx.cache.versions):,}")
            meta = getattr(fs.ns, "meta", None)  # (fs/metastore.py; not on older code)
            if meta is not None:
                print(f"  metadata left to the journal: {meta.stats}")
            _types(n, top)
            if await _ls_l(fs, d) != n:
                raise RuntimeError("listing lost files")
            out["after ls -l"] = _report("after ls -l on the creating mount", base, n, top, fs)
            fs.ctx.cache.close()
            del fs
            gc.collect()
            base = _snapshot()
            tracemalloc.reset_peak()
            fs2 = _fs(store, codec, Path(tmp) / "cache2")
            await fs2.start(nursery)
            d2 = (await fs2.lookup(ROOT_INO, b"d")).ino
            await _ls_l(fs2, d2)
            out["cold ls -l"] = _report("second mount, cold ls -l", base, n, top, fs2)
            await _ls_l(fs2, d2)
            out["warm ls -l"] = _report("second mount, warm ls -l", base, n, top, fs2)
            _types(n, top)
            fs2.ctx.cache.close()
            nursery.cancel_scope.cancel()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sizes", nargs="*", type=int, default=[10_000, 20_000])
    parser.add_argument("--top", type=int, default=25, help="lines shown per phase")
    parser.add_argument("--frames", type=int, default=12, help="tracemalloc frames kept")
    parser.add_argument(
        "--max-unread",
        type=int,
        default=None,
        help="the cache's bound on unread upload copies (default: its own, 2,048)",
    )
    args = parser.parse_args(argv)
    tracemalloc.start(args.frames)
    results = {n: trio.run(measure, n, args.top, args.max_unread) for n in args.sizes}
    print("\nbytes per file held, by phase:")
    for phase in next(iter(results.values())):
        row = "  ".join(f"{n:>7,}: {r[phase]:7,.0f}" for n, r in results.items())
        print(f"  {phase:16s} {row}")
    if len(args.sizes) >= 2:
        (a, ra), (b, rb) = sorted(results.items())[:2]
        print("slope (bytes per extra file, from the two smallest sizes):")
        for phase in ra:
            slope = (rb[phase] * b - ra[phase] * a) / (b - a)
            print(f"  {phase:16s} {slope:7,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
