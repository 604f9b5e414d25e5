"""A cache directory with dirty data left by the previous release (format 1) is
finished by today's recovery: every file reaches the bucket with the right bytes.

tests/fixtures/legacy-cache-v1.tar.gz was made by
tests/fixtures/make_legacy_cache_v1.py.txt (cosencfs at 8effdc9): a local
server root (``cos``), a master key and a cache dir whose journal holds
three dirty files that were never uploaded (the daemon "crashed").
"""

from __future__ import annotations

import os
import random
import stat
import tarfile
from pathlib import Path

import trio

from cosencfs.cache.manager import CacheManager
from cosencfs.crypto.ctr import decrypt
from cosencfs.crypto.envelope import EnvelopeCodec
from cosencfs.crypto.keyfiles import load_aes_key_file
from cosencfs.fs.core import Filesystem
from tests.testlib import FsFactory, fs_options, make_store, start_server

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "legacy-cache-v1.tar.gz"
ROOT = 1


def data(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


def expected() -> dict[str, tuple[bytes, int]]:
    """Object key -> (content, permission bits), as the fixture script wrote them."""
    base = bytearray(data(1, 300_000))
    base[100_000:105_000] = data(3, 5000)  # a partial overwrite of an uploaded file
    new = bytearray(data(4, 70_000))
    new[10:110] = data(5, 100)  # rewritten in place before the close
    # trunc.bin was truncated to 1000 bytes, then written at 60_000. POSIX says
    # bytes 1000-60_000 read as zeros, but the release that made the fixture
    # lost the truncation when the file was not cached (see the test below):
    # its journal record says bytes below 50_000 still come from the old
    # object. Recovery can only do what the record says.
    trunc = data(2, 50_000) + bytes(10_000) + data(6, 3000)
    return {"base.bin": (bytes(base), 0o640), "new.txt": (bytes(new), 0o600),
            "trunc.bin": (trunc, 0o640)}  # fmt: skip


async def test_recovery_uploads_a_legacy_v1_cache(tmp_path: Path) -> None:
    with tarfile.open(FIXTURE) as tar:
        tar.extractall(tmp_path, filter="data")
    server = start_server(tmp_path / "cos")
    store = make_store(server.url)
    codec = EnvelopeCodec(load_aes_key_file(tmp_path / "master.key"))
    want = expected()
    try:
        # As FsFactory (and the mount) build it: recovery runs before the start.
        cache = CacheManager(tmp_path / "cache", store, limit_bytes=1 << 30)
        fs = Filesystem(store, codec, cache, fs_options())
        try:
            report = await fs.recover()
            assert sorted(report.uploaded) == sorted(want), report
            assert report.failed == {}
            async with trio.open_nursery() as nursery:
                await fs.start(nursery)
                for key, (content, mode) in want.items():
                    info = await store.head(key)
                    body = await store.get(key)
                    plain = decrypt(codec.open(dict(info.metadata), key=key), 0, body)
                    assert len(plain) == len(content), key
                    assert plain == content, f"{key} differs from what was written"
                    assert stat.S_IMODE(int(info.metadata["mode"])) == mode, key
                    # and through the filesystem
                    entry = await fs.lookup(ROOT, key.encode())
                    fh, _ = await fs.open(entry.ino, os.O_RDONLY)
                    assert await fs.read(fh, 0, len(content) + 1) == content, key
                    await fs.release(fh)
                dirty = fs.stats()["dirty"]
                assert isinstance(dirty, dict)
                assert dirty["files"] == 0, dirty
                assert dirty["journal_records"] == 0, dirty
                nursery.cancel_scope.cancel()
        finally:
            cache.close()
        # The journal kept nothing to do: a second recovery over the same cache
        # directory uploads nothing and sends no write request.
        before = store.counters.snapshot()
        cache = CacheManager(tmp_path / "cache", store, limit_bytes=1 << 30)
        try:
            again = await Filesystem(store, codec, cache, fs_options()).recover()
        finally:
            cache.close()
        assert again.uploaded == []
        assert again.failed == {}
        spent = store.counters.snapshot().minus(before).requests
        assert not {"PutObject", "UploadPart", "CopyObject"} & set(spent), spent
        keys = sorted([o.key async for page in store.list_all() for o in page.objects])
        assert keys == sorted(want)
    finally:
        store.close()
        server.stop()


async def test_truncate_then_extend_of_an_uncached_file_reads_zeros(make_fs: FsFactory) -> None:
    """The bug the fixture captured: truncating an uploaded file that is not in
    the cache, then writing past its old end, must not bring old bytes back."""
    fs1 = await make_fs()
    fh, _ = await fs1.create(ROOT, b"t", 0o644, os.O_RDWR, 0, 0)
    await fs1.write(fh, 0, data(2, 50_000))
    await fs1.fsync(fh, False)
    await fs1.release(fh)
    fs2 = await make_fs()  # another cache: nothing of "t" is cached
    entry = await fs2.lookup(ROOT, b"t")
    await fs2.setattr(entry.ino, size=1000)
    fh, _ = await fs2.open(entry.ino, os.O_RDWR)
    await fs2.write(fh, 60_000, b"B")
    await fs2.fsync(fh, False)
    got = await fs2.read(fh, 0, 70_000)
    await fs2.release(fh)
    want = data(2, 50_000)[:1000] + bytes(59_000) + b"B"
    assert got[:1000] == want[:1000]
    assert got == want, "bytes cut off by the truncate came back"
