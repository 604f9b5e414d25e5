"""Writes racing uploads, at the Filesystem level (no FUSE): many iterations, fast.

Every test keeps a reference copy of the file (what each acknowledged
write left) and asserts at the end, over everything it saw:

* no EIO: every write, fsync and sync call succeeded;
* no lost write: the object in COS, decrypted, equals the reference (and
  so do reads through the filesystem);
* one body per envelope: of all object versions sampled (after each
  sync/fsync, or periodically), none has the data key and IV of another
  with a different body;
* the keystream ledger records of the test show no block reused.
"""

from __future__ import annotations

import os
import random
from collections.abc import Awaitable, Callable

import pytest
import trio

from cosencfs.crypto.ctr import decrypt
from cosencfs.crypto.envelope import EnvelopeCodec
from cosencfs.fs.core import Filesystem
from cosencfs.store.cos import CosStore
from tests.keystream._helpers import MIB, Findings, LedgerSlice, Reference, Versions, sample
from tests.testlib import FsFactory

ROOT = 1
KIB = 1024


class Race:
    """One file under test, its reference copy and what was found."""

    def __init__(self, fs: Filesystem, store: CosStore, codec: EnvelopeCodec, name: str) -> None:
        self.fs, self.store, self.codec = fs, store, codec
        self.name = name
        self.ino = 0
        self.ref = Reference()
        self.found = Findings()
        self.versions = Versions()
        self.etags: set[str] = set()
        self.writes = 0

    async def create(self, size: int, rng: random.Random) -> None:
        """The file with ``size`` random bytes, uploaded (clean) before the race."""
        fh, entry = await self.fs.create(ROOT, self.name.encode(), 0o644, os.O_RDWR, 0, 0)
        self.ino = entry.ino
        for off in range(0, size, MIB):
            await self.write(fh, off, rng.randbytes(min(MIB, size - off)))
        await self.fsync(fh, "initial fsync")
        await self.fs.release(fh)

    async def write(self, fh: int, off: int, data: bytes) -> None:
        self.writes += 1
        try:
            n = await self.fs.write(fh, off, data)
        except Exception as exc:  # the application would see EIO
            self.found.add("write failed", f"{off}+{len(data)}: {type(exc).__name__}: {exc}")
            self.ref.failed(off, len(data))
            return
        if n != len(data):
            self.found.add("short write", f"{off}+{len(data)} wrote {n}")
            self.ref.failed(off, len(data))
            return
        self.ref.write(off, data)

    async def sample(self) -> None:
        got = await sample(self.store, self.name, self.etags)
        if got is not None:
            self.versions.record(self.name, *got)

    async def fsync(self, fh: int, what: str = "fsync") -> None:
        try:
            await self.fs.fsync(fh, False)
        except Exception as exc:
            self.found.add("fsync failed", f"{what}: {type(exc).__name__}: {exc}")
            return
        await self.sample()

    async def sync(self) -> None:
        try:
            await self.fs.sync_all()
        except Exception as exc:
            self.found.add("sync failed", f"{type(exc).__name__}: {exc}")
            return
        await self.sample()

    async def finish(self, ledger: LedgerSlice, min_versions: int = 3) -> None:
        """Upload everything, then compare COS and the filesystem with the reference."""
        await self.sync()
        got = await sample(self.store, self.name)
        assert got is not None
        meta, body = got
        plain = decrypt(self.codec.open(meta, key=self.name), 0, body)
        self.found.extend("lost in COS", self.ref.lost(plain))
        fh, _ = await self.fs.open(self.ino, os.O_RDONLY)
        out = bytearray()
        while chunk := await self.fs.read(fh, len(out), 4 * MIB):
            out += chunk
        await self.fs.release(fh)
        self.found.extend("lost in reads", self.ref.lost(bytes(out)))
        self.found.extend("envelope with two bodies", self.versions.reused())
        self.found.extend("keystream ledger", ledger.violations())
        assert self.writes, "nothing raced"
        assert self.versions.samples >= min_versions, "nothing raced"
        self.found.check()


async def race(writer: Callable[[], Awaitable[None]], other: Callable[[], Awaitable[None]]) -> None:
    """Run ``writer`` to its end with ``other`` looping beside it."""
    done = trio.Event()

    async def write_then_stop() -> None:
        try:
            await writer()
        finally:
            done.set()

    async def loop() -> None:
        while not done.is_set():
            await other()
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(write_then_stop)
        nursery.start_soon(loop)


#: (write size, writes, file size): 1 MiB writes go through a worker thread, 4 KiB
#: ones inline. Small files: every upload is followed by a copy of the whole file
#: under a new key.
SIZES = [
    pytest.param(MIB, 40, 2 * MIB, id="1MiB"),
    pytest.param(4 * KIB, 200, MIB, id="4KiB"),
]


def _offset(rng: random.Random, size: int, n: int, cap: int = 4 * MIB) -> int:
    """Mostly in place (block-aligned; half of them in the first 32 blocks, as a
    database rewrites its header pages), one write in five an append (up to ``cap``)."""
    if rng.randrange(5) == 0 and size + n <= cap:
        return size
    blocks = max(1, size // n)
    return rng.randrange(min(blocks, 32) if rng.randrange(2) else blocks) * n


@pytest.mark.parametrize(("n", "count", "size"), SIZES)
async def test_writes_racing_sync_all(
    make_fs: FsFactory,
    store: CosStore,
    codec: EnvelopeCodec,
    ledger_slice: LedgerSlice,
    n: int,
    count: int,
    size: int,
) -> None:
    """(a) writes in place and appends while ``cosencfs sync`` (sync_all) loops."""
    fs = await make_fs(writeback_delay=0.05)
    rng = random.Random(11)
    r = Race(fs, store, codec, "a.bin")
    await r.create(size, rng)
    fh, _ = await fs.open(r.ino, os.O_RDWR)

    async def writer() -> None:
        for _ in range(count):
            await r.write(fh, _offset(rng, len(r.ref), n, size + 2 * MIB), rng.randbytes(n))
            await trio.lowlevel.checkpoint()

    await race(writer, r.sync)
    await fs.flush(fh)
    await fs.release(fh)
    await r.finish(ledger_slice)


@pytest.mark.parametrize(("n", "count", "size"), SIZES)
async def test_writes_racing_fsync_of_another_descriptor(
    make_fs: FsFactory,
    store: CosStore,
    codec: EnvelopeCodec,
    ledger_slice: LedgerSlice,
    n: int,
    count: int,
    size: int,
) -> None:
    """(b) one descriptor writes, a second one of the same file fsyncs in a loop."""
    fs = await make_fs(writeback_delay=0.05)
    rng = random.Random(12)
    r = Race(fs, store, codec, "b.bin")
    await r.create(size, rng)
    fh, _ = await fs.open(r.ino, os.O_RDWR)
    other, _ = await fs.open(r.ino, os.O_RDONLY)

    async def writer() -> None:
        for _ in range(count):
            await r.write(fh, _offset(rng, len(r.ref), n, size + 2 * MIB), rng.randbytes(n))
            await trio.lowlevel.checkpoint()

    await race(writer, lambda: r.fsync(other))
    await fs.release(other)
    await fs.flush(fh)
    await fs.release(fh)
    await r.finish(ledger_slice)


@pytest.mark.parametrize(("n", "count", "size"), SIZES)
async def test_open_file_uploaded_by_max_dirty_age(
    make_fs: FsFactory,
    store: CosStore,
    codec: EnvelopeCodec,
    ledger_slice: LedgerSlice,
    n: int,
    count: int,
    size: int,
) -> None:
    """(c) a file held open and written is uploaded every 0.1 s (max_dirty_age)."""
    fs = await make_fs(writeback_delay=0.05, max_dirty_age=0.1)
    rng = random.Random(13)
    r = Race(fs, store, codec, "c.bin")
    await r.create(size, rng)
    fh, _ = await fs.open(r.ino, os.O_RDWR)
    pause = 2.0 / count  # the writes span a couple of seconds: 20 or so uploads

    async def writer() -> None:
        for _ in range(count):
            await r.write(fh, _offset(rng, len(r.ref), n, size + 2 * MIB), rng.randbytes(n))
            await trio.sleep(pause)

    async def watch() -> None:
        await r.sample()  # whatever version is in COS now
        await trio.sleep(0.03)

    await race(writer, watch)
    await fs.flush(fh)
    await fs.release(fh)
    await r.finish(ledger_slice)


@pytest.mark.slow
async def test_streamed_parts_while_writes_land_below_part_boundaries(
    make_fs: FsFactory, store: CosStore, codec: EnvelopeCodec, ledger_slice: LedgerSlice
) -> None:
    """(d) a sequential writer past single_put_max streams 8 MiB parts; another
    descriptor writes just below part boundaries (and anywhere before the end)."""
    fs = await make_fs(writeback_delay=0.05, single_put_max=8 * MIB)
    rng = random.Random(14)
    r = Race(fs, store, codec, "d.bin")
    fh, entry = await fs.create(ROOT, b"d.bin", 0o644, os.O_RDWR, 0, 0)
    r.ino = entry.ino
    other, _ = await fs.open(r.ino, os.O_RDWR)
    total = 34 * MIB
    part = 8 * MIB

    async def sequential() -> None:
        for off in range(0, total, MIB):
            await r.write(fh, off, rng.randbytes(MIB))
            await trio.lowlevel.checkpoint()

    async def below() -> None:
        end = len(r.ref)
        if end < part + 64 * KIB:
            await trio.sleep(0.005)
            return
        boundary = rng.randrange(1, end // part + 1) * part
        size = rng.choice([4 * KIB, 64 * KIB, MIB])
        off = max(0, boundary - rng.choice([size, size // 2, 16]))
        if rng.randrange(3) == 0:
            off = rng.randrange(max(1, end - size))
        await r.write(other, off, rng.randbytes(size))
        await trio.sleep(0.02)

    await race(sequential, below)
    await r.fsync(other, "fsync of the second descriptor")
    await fs.release(other)
    await fs.flush(fh)
    await fs.release(fh)
    await r.finish(ledger_slice, min_versions=1)


async def test_sync_right_after_the_last_close(
    make_fs: FsFactory, store: CosStore, codec: EnvelopeCodec, ledger_slice: LedgerSlice
) -> None:
    """(e) what umount does: sync_all just after the last release, while the
    write-back of that close (no delay) is already under way; many times."""
    fs = await make_fs(writeback_delay=0.0)
    rng = random.Random(15)
    r = Race(fs, store, codec, "e.bin")
    await r.create(2 * MIB, rng)
    for i in range(25):
        fh, _ = await fs.open(r.ino, os.O_RDWR)
        for _ in range(rng.randrange(1, 6)):
            n = rng.choice([4 * KIB, 100 * KIB, MIB])
            await r.write(fh, _offset(rng, len(r.ref), n), rng.randbytes(n))
        await fs.flush(fh)
        await fs.release(fh)
        if i % 2:
            await trio.lowlevel.checkpoint()  # let the write-back task start its upload first
        await r.sync()
    await r.finish(ledger_slice)


def _cache_usage(fs: Filesystem) -> int:
    """Bytes allocated under the cache directory."""
    return sum(p.lstat().st_blocks * 512 for p in fs.ctx.cache.root.rglob("*") if p.is_file())


async def test_random_writes_into_an_uploaded_large_file_keep_the_cache_bounded(
    make_fs: FsFactory, store: CosStore, codec: EnvelopeCodec, ledger_slice: LedgerSlice
) -> None:
    """The sqlite case: 4 KiB writes in place into a file larger than a single
    PUT that went up (streamed) before. The cache must not hold a copy of the
    whole file per write."""
    fs = await make_fs(writeback_delay=0.05, single_put_max=8 * MIB)
    rng = random.Random(16)
    r = Race(fs, store, codec, "f.bin")
    size = 9 * MIB  # one 8 MiB part and a tail
    await r.create(size, rng)
    fh, _ = await fs.open(r.ino, os.O_RDWR)
    usage = []
    for _ in range(16):
        await r.write(fh, rng.randrange(size // (4 * KIB)) * 4 * KIB, rng.randbytes(4 * KIB))
        usage.append(_cache_usage(fs))
    await r.fsync(fh)
    await fs.release(fh)
    if max(usage) > 3 * size + 8 * MIB:
        r.found.add(
            "cache usage",
            f"{max(usage) // MIB} MiB for a {size // MIB} MiB file after "
            f"{usage.index(max(usage)) + 1} writes (first writes: "
            f"{', '.join(str(u // MIB) for u in usage[:6])} MiB)",
        )
    await r.finish(ledger_slice, min_versions=2)
