"""The filesystem layer driven directly, without FUSE, against the local server."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from cosencfs.crypto.ctr import DataKey, decrypt
from cosencfs.crypto.envelope import EnvelopeCodec
from cosencfs.crypto.integrity import CHUNK_SIZE
from cosencfs.crypto.master import AesMasterKey
from cosencfs.errors import CryptoError, FsError, WrongKeyError
from cosencfs.fs.core import Filesystem
from cosencfs.fs.inode import Inode
from cosencfs.store.base import ListPage
from cosencfs.store.cos import CosStore
from tests.testlib import FsFactory

ROOT = 1


async def write_file(
    fs: Filesystem, parent: int, name: str, data: bytes, *, sync: bool = True
) -> int:
    fh, entry = await fs.create(parent, name.encode(), 0o640, os.O_WRONLY | os.O_CREAT, 1000, 1000)
    step = 128 * 1024
    for off in range(0, len(data), step):
        assert await fs.write(fh, off, data[off : off + step]) == len(data[off : off + step])
    await fs.flush(fh)
    if sync:
        await fs.fsync(fh, False)
    await fs.release(fh)
    return entry.ino


async def read_file(fs: Filesystem, ino: int) -> bytes:
    fh, _ = await fs.open(ino, os.O_RDONLY)
    out = bytearray()
    while True:
        chunk = await fs.read(fh, len(out), 128 * 1024)
        if not chunk:
            break
        out += chunk
    await fs.release(fh)
    return bytes(out)


async def names(fs: Filesystem, ino: int) -> list[str]:
    dh = await fs.opendir(ino)
    try:
        return [n.decode() for n, _, _ in fs.readdir(dh, 0)]
    finally:
        await fs.releasedir(dh)


def decrypt_object(codec: EnvelopeCodec, meta: dict[str, str], body: bytes) -> bytes:
    return decrypt(codec.open(meta), 0, body)


async def test_write_fsync_puts_one_sdk_format_object(
    fsys: Filesystem, store: CosStore, codec: EnvelopeCodec
) -> None:
    data = os.urandom(300_000)
    before = store.counters.snapshot()
    await write_file(fsys, ROOT, "a.bin", data)
    spent = store.counters.snapshot().minus(before).requests
    # One LIST of the root (to know the name is free) and one PUT.
    assert spent == {"ListObjects": 1, "PutObject": 1}
    info = await store.head("a.bin")
    body = await store.get("a.bin")
    assert body != data
    assert decrypt_object(codec, dict(info.metadata), body) == data
    assert info.metadata["mode"] == str(stat.S_IFREG | 0o640)
    assert info.metadata["uid"] == "1000"


async def test_remount_reads_what_was_written(make_fs: FsFactory) -> None:
    fs1 = await make_fs()
    data = os.urandom(1_000_003)
    await write_file(fs1, ROOT, "f", data)
    fs2 = await make_fs()  # empty cache: everything comes from COS
    entry = await fs2.lookup(ROOT, b"f")
    assert entry.size == len(data)
    assert entry.attr_timeout == 0  # defaults until HEADed: the kernel will ask
    entry = await fs2.getattr(entry.ino)
    assert stat.S_IMODE(entry.mode) == 0o640
    assert entry.attr_timeout > 0
    assert await read_file(fs2, entry.ino) == data
    fh, _ = await fs2.open(entry.ino, os.O_RDONLY)
    for off, n in [(1, 1), (15, 17), (4095, 4097), (999_990, 100), (len(data) - 1, 5)]:
        assert await fs2.read(fh, off, n) == data[off : off + n]
    await fs2.release(fh)


async def test_partial_overwrite_uses_a_new_key_and_keeps_the_rest(
    make_fs: FsFactory, store: CosStore, codec: EnvelopeCodec
) -> None:
    fs1 = await make_fs()
    data = bytearray(os.urandom(200_000))
    await write_file(fs1, ROOT, "f", bytes(data))
    old_meta = dict((await store.head("f")).metadata)
    fs2 = await make_fs()
    entry = await fs2.lookup(ROOT, b"f")
    fh, _ = await fs2.open(entry.ino, os.O_RDWR)
    await fs2.write(fh, 12345, b"X" * 1000)
    await fs2.fsync(fh, False)
    await fs2.release(fh)
    data[12345:13345] = b"X" * 1000
    new_meta = dict((await store.head("f")).metadata)
    assert new_meta["client-side-encryption-key"] != old_meta["client-side-encryption-key"]
    assert new_meta["client-side-encryption-iv"] != old_meta["client-side-encryption-iv"]
    assert decrypt_object(codec, new_meta, await store.get("f")) == bytes(data)


async def test_truncate_grow_shrink_and_holes(
    fsys: Filesystem, store: CosStore, codec: EnvelopeCodec
) -> None:
    ino = await write_file(fsys, ROOT, "t", b"abcdefghij")
    await fsys.setattr(ino, size=4)
    await fsys.setattr(ino, size=8)
    fh, _ = await fsys.open(ino, os.O_RDWR)
    await fsys.write(fh, 20, b"Z")
    await fsys.fsync(fh, False)
    await fsys.release(fh)
    want = b"abcd" + bytes(16) + b"Z"
    assert await read_file(fsys, ino) == want
    cache = fsys.ctx.cache
    assert cache.usage() == sum(v.present.total for v in cache.versions.values()) > 0
    info = await store.head("t")
    assert decrypt_object(codec, dict(info.metadata), await store.get("t")) == want


async def test_open_trunc_and_append(fsys: Filesystem) -> None:
    ino = await write_file(fsys, ROOT, "log", b"first\n")
    fh, _ = await fsys.open(ino, os.O_WRONLY | os.O_APPEND)
    await fsys.write(fh, 0, b"second\n")
    await fsys.release(fh)
    assert await read_file(fsys, ino) == b"first\nsecond\n"
    fh, _ = await fsys.open(ino, os.O_WRONLY | os.O_TRUNC)
    await fsys.write(fh, 0, b"new")
    await fsys.release(fh)
    assert await read_file(fsys, ino) == b"new"


async def test_rename_of_uploaded_file_is_a_server_side_copy(
    fsys: Filesystem, store: CosStore
) -> None:
    data = os.urandom(50_000)
    ino = await write_file(fsys, ROOT, "old", data)
    await fsys.mkdir(ROOT, b"d", 0o755, 0, 0)
    d = (await fsys.lookup(ROOT, b"d")).ino
    before = store.counters.snapshot()
    await fsys.rename(ROOT, b"old", d, b"new", 0)
    await fsys.ctx.deleter.flush()  # the old key's delete is batched
    spent = store.counters.snapshot().minus(before)
    assert spent.requests == {"CopyObject": 1, "DeleteMultipleObjects": 1}
    assert spent.bytes_up == 0
    assert spent.bytes_down == 0
    assert await names(fsys, ROOT) == ["d"]
    assert await names(fsys, d) == ["new"]
    assert await read_file(fsys, ino) == data
    keys = [o.key async for page in store.list_all() for o in page.objects]
    assert sorted(keys) == ["d/", "d/new"]


async def test_rename_directory_moves_every_object(fsys: Filesystem, store: CosStore) -> None:
    await fsys.mkdir(ROOT, b"a", 0o755, 0, 0)
    a = (await fsys.lookup(ROOT, b"a")).ino
    await fsys.mkdir(a, b"sub", 0o700, 0, 0)
    sub = (await fsys.lookup(a, b"sub")).ino
    await write_file(fsys, a, "x", b"xx")
    await write_file(fsys, sub, "y", b"yy")
    await write_file(fsys, sub, "pending", b"not uploaded yet", sync=False)
    await fsys.rename(ROOT, b"a", ROOT, b"b", 0)
    await fsys.sync_all()
    keys = sorted([o.key async for page in store.list_all() for o in page.objects])
    assert keys == ["b/", "b/sub/", "b/sub/pending", "b/sub/y", "b/x"]
    b = (await fsys.lookup(ROOT, b"b")).ino
    sub2 = await fsys.lookup(b, b"sub")
    assert stat.S_IMODE(sub2.mode) == 0o700
    assert await read_file(fsys, (await fsys.lookup(sub2.ino, b"y")).ino) == b"yy"


async def test_rename_flags(fsys: Filesystem) -> None:
    await write_file(fsys, ROOT, "a", b"1")
    await write_file(fsys, ROOT, "b", b"2")
    with pytest.raises(FsError) as e:
        await fsys.rename(ROOT, b"a", ROOT, b"b", 1)  # RENAME_NOREPLACE
    assert e.value.errno == errno.EEXIST
    with pytest.raises(FsError) as e:
        await fsys.rename(ROOT, b"a", ROOT, b"b", 2)  # RENAME_EXCHANGE
    assert e.value.errno == errno.EINVAL
    await fsys.rename(ROOT, b"a", ROOT, b"b", 0)
    b = await fsys.lookup(ROOT, b"b")
    assert await read_file(fsys, b.ino) == b"1"
    assert await names(fsys, ROOT) == ["b"]


async def test_unlinked_open_file_stays_readable(make_fs: FsFactory, store: CosStore) -> None:
    fs1 = await make_fs()
    data = os.urandom(100_000)
    await write_file(fs1, ROOT, "f", data)
    fs2 = await make_fs()
    ino = (await fs2.lookup(ROOT, b"f")).ino
    fh, _ = await fs2.open(ino, os.O_RDONLY)
    assert await fs2.read(fh, 0, 10) == data[:10]
    await fs2.unlink(ROOT, b"f")
    assert await names(fs2, ROOT) == []
    assert await fs2.read(fh, 50_000, 50_000) == data[50_000:]
    await fs2.release(fh)
    # The delete runs in the background after the last close.
    for _ in range(500):
        if not [o async for p in store.list_all() for o in p.objects]:
            break
        await trio.sleep(0.01)
    else:
        raise AssertionError("the object of the unlinked file was not deleted")


async def test_errors(fsys: Filesystem) -> None:
    async def errno_of(coro: object) -> int:
        with pytest.raises(FsError) as e:
            await coro  # type: ignore[misc]
        return e.value.errno

    await fsys.mkdir(ROOT, b"d", 0o755, 0, 0)
    d = (await fsys.lookup(ROOT, b"d")).ino
    ino = await write_file(fsys, d, "f", b"x")
    assert await errno_of(fsys.lookup(ROOT, b"missing")) == errno.ENOENT
    assert await errno_of(fsys.mkdir(ROOT, b"d", 0o755, 0, 0)) == errno.EEXIST
    assert await errno_of(fsys.rmdir(ROOT, b"d")) == errno.ENOTEMPTY
    assert await errno_of(fsys.unlink(ROOT, b"d")) == errno.EISDIR
    assert await errno_of(fsys.rmdir(d, b"f")) == errno.ENOTDIR
    assert await errno_of(fsys.link(ino, ROOT, b"hard")) == errno.EPERM
    assert await errno_of(fsys.create(ROOT, b"x" * 256, 0o644, 0, 0, 0)) == errno.ENAMETOOLONG
    assert await errno_of(fsys.create(ROOT, b"\xff\xfe", 0o644, 0, 0, 0)) == errno.EINVAL
    assert await errno_of(fsys.create(ROOT, b"a\nb", 0o644, 0, 0, 0)) == errno.EINVAL
    deep = ROOT
    for _ in range(4):  # keys over 850 bytes
        await fsys.mkdir(deep, b"y" * 200, 0o755, 0, 0)
        deep = (await fsys.lookup(deep, b"y" * 200)).ino
    assert await errno_of(fsys.create(deep, b"z" * 60, 0o644, 0, 0, 0)) == errno.ENAMETOOLONG
    assert await errno_of(fsys.rename(ROOT, b"d", d, b"inside", 0)) == errno.EINVAL


async def test_objects_from_other_tools(
    make_fs: FsFactory, store: CosStore, codec: EnvelopeCodec
) -> None:
    # A plain object (cosfs, console): readable when the mount allows plaintext
    # (refused by default: tests/security), default attributes.
    fsys = await make_fs(allow_plaintext=True)
    await store.put("plain.txt", b"clear text", {})
    # An object encrypted by another client with our key, with cosfs attributes.
    dk = DataKey.generate()
    meta = {**codec.seal(dk), "mode": str(stat.S_IFREG | 0o600), "mtime": "1700000000.5"}
    await store.put("dir/enc.bin", decrypt(dk, 0, b"secret"), meta)
    assert await names(fsys, ROOT) == ["dir", "plain.txt"]
    plain = await fsys.lookup(ROOT, b"plain.txt")
    assert stat.S_IMODE(plain.mode) == 0o644
    assert await read_file(fsys, plain.ino) == b"clear text"
    d = await fsys.lookup(ROOT, b"dir")
    assert stat.S_ISDIR(d.mode)
    enc = await fsys.lookup(d.ino, b"enc.bin")
    assert stat.S_IMODE(enc.mode) == 0o600
    assert enc.mtime_ns == 1_700_000_000_500_000_000
    assert await read_file(fsys, enc.ino) == b"secret"


async def test_wrong_key_is_an_error_not_garbage(make_fs: FsFactory, store: CosStore) -> None:
    fs1 = await make_fs()
    await write_file(fs1, ROOT, "f", b"top secret")
    fs2 = await make_fs()
    fs2.ctx.codec = EnvelopeCodec(AesMasterKey(os.urandom(32)))
    ino = (await fs2.lookup(ROOT, b"f")).ino
    fh, _ = await fs2.open(ino, os.O_RDONLY)
    with pytest.raises(WrongKeyError):
        await fs2.read(fh, 0, 100)
    await fs2.release(fh)


async def test_close_to_open_sees_other_writers(
    make_fs: FsFactory, store: CosStore, codec: EnvelopeCodec
) -> None:
    fs1 = await make_fs()
    ino = await write_file(fs1, ROOT, "f", b"version one")
    assert await read_file(fs1, ino) == b"version one"
    # Another mount of the bucket (its own cache and journal) rewrites it.
    fs2 = await make_fs()
    fh, _ = await fs2.open((await fs2.lookup(ROOT, b"f")).ino, os.O_WRONLY | os.O_TRUNC)
    assert await fs2.write(fh, 0, b"version two!") == 12
    await fs2.fsync(fh, False)
    await fs2.release(fh)
    assert await read_file(fs1, ino) == b"version two!"


async def test_cache_holds_no_plaintext(fsys: Filesystem, tmp_path: Path) -> None:
    data = (b"PLAINTEXT-MARKER-" * 4096)[:60_000]
    ino = await write_file(fsys, ROOT, "p", data, sync=False)
    assert await read_file(fsys, ino) == data
    await fsys.sync_all()
    assert await read_file(fsys, ino) == data
    for path in (tmp_path / "fscache1").rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            assert b"PLAINTEXT-MARKER" not in blob, path


async def test_attribute_cache_saves_heads_after_remount(
    make_fs: FsFactory, store: CosStore
) -> None:
    fs1 = await make_fs(cache="shared")
    for i in range(20):
        await write_file(fs1, ROOT, f"f{i:02d}", b"x" * (i + 1), sync=False)
    await fs1.sync_all()
    make_fs.close(fs1)
    fs2 = await make_fs(cache="shared")
    before = store.counters.snapshot()
    assert len(await names(fs2, ROOT)) == 20
    assert store.counters.snapshot().minus(before).requests == {"ListObjects": 1}
    fs3 = await make_fs()  # a cold cache has to HEAD each object once
    before = store.counters.snapshot()
    assert len(await names(fs3, ROOT)) == 20
    assert store.counters.snapshot().minus(before).requests == {"ListObjects": 1, "HeadObject": 20}
    before = store.counters.snapshot()
    assert len(await names(fs3, ROOT)) == 20  # warm: nothing
    for i in range(20):
        await fs3.lookup(ROOT, f"f{i:02d}".encode())
    assert store.counters.snapshot().minus(before).requests == {}


async def test_sequential_read_uses_few_large_gets(make_fs: FsFactory, store: CosStore) -> None:
    fs1 = await make_fs()
    data = os.urandom(24 * 1024 * 1024)
    await write_file(fs1, ROOT, "big", data)
    fs2 = await make_fs()
    ino = (await fs2.lookup(ROOT, b"big")).ino
    before = store.counters.snapshot()
    assert await read_file(fs2, ino) == data
    spent = store.counters.snapshot().minus(before)
    # The window's top-ups are two GETs each (issue 17: their round trips
    # overlap), 8 MiB each once the window is 32 MiB: 14 for 24 MiB.
    assert spent.requests["GetObject"] <= 16
    assert spent.bytes_down <= len(data) * 1.1


async def test_random_reads_fetch_little(make_fs: FsFactory, store: CosStore) -> None:
    fs1 = await make_fs()
    data = os.urandom(8 * 1024 * 1024)
    await write_file(fs1, ROOT, "big", data)
    fs2 = await make_fs()
    # More than half the cache: random access does not fetch it whole
    # (tests/fs/test_random_access.py has the file that fits).
    fs2.ctx.cache.limit_bytes = len(data)
    ino = (await fs2.lookup(ROOT, b"big")).ino
    fh, _ = await fs2.open(ino, os.O_RDONLY)
    before = store.counters.snapshot()
    for off in range(4096 * 7, len(data), 1024 * 1024 + 4096 * 3):
        assert await fs2.read(fh, off, 4096) == data[off : off + 4096]
    await fs2.release(fh)
    spent = store.counters.snapshot().minus(before)
    # Each 4 KiB read fetches the one 64 KiB chunk it lies in (checked against
    # its tag); the chunk tags come once, in the companion (20 + 16 * 128 bytes).
    assert spent.bytes_down <= 8 * CHUNK_SIZE + 20 + 16 * 128


async def test_crypto_errors_surface(fsys: Filesystem, store: CosStore) -> None:
    await store.put(
        "java.bin",
        b"xxxx",
        {
            "client-side-encryption-key": "AAAA",
            "client-side-encryption-start": "AAAA",
            "client-side-encryption-cek-alg": "AES/CTR/NoPadding",
        },
    )
    ino = (await fsys.lookup(ROOT, b"java.bin")).ino
    fh, _ = await fsys.open(ino, os.O_RDONLY)
    with pytest.raises(CryptoError):
        await fsys.read(fh, 0, 4)
    await fsys.release(fh)


async def test_deletes_are_batched_and_journaled(make_fs: FsFactory, store: CosStore) -> None:
    fs1 = await make_fs(cache="c")
    d = (await fs1.mkdir(ROOT, b"d", 0o755, 0, 0)).ino
    for i in range(30):
        await write_file(fs1, d, f"f{i}", b"x", sync=False)
    await fs1.sync_all()
    fs1.ctx.deleter.delay = 3600  # nothing is sent before the "crash" below
    before = store.counters.snapshot()
    for i in range(30):
        await fs1.unlink(d, f"f{i}".encode())
    await fs1.rmdir(ROOT, b"d")
    assert await names(fs1, ROOT) == []
    # Not yet sent: a fresh listing must not bring the names back.
    fs1.ns.directory(ROOT).as_dir.listed_at = None
    assert await names(fs1, ROOT) == []
    # Names re-created before the batch went out keep their new objects.
    d = (await fs1.mkdir(ROOT, b"d", 0o755, 0, 0)).ino
    await write_file(fs1, d, "f0", b"new", sync=True)
    # Re-creating a name sends its queued delete first (the new object must not
    # be deleted later, nor the old one come back after a crash).
    assert store.counters.snapshot().minus(before).requests["DeleteMultipleObjects"] == 2
    make_fs.close(fs1)  # "crash": the other queued deletes are only in the journal
    fs2 = await make_fs(cache="c")
    assert len(fs2.ctx.deleter) == 29  # d/f1..d/f29: d/ and d/f0 were re-created
    await fs2.ctx.deleter.flush()
    spent = store.counters.snapshot().minus(before)
    assert spent.requests.get("DeleteObject", 0) == 0
    assert spent.requests["DeleteMultipleObjects"] == 3
    keys = [o.key async for page in store.list_all() for o in page.objects]
    assert keys == ["d/", "d/f0"]


async def test_attributes_are_fetched_only_when_something_stats(
    make_fs: FsFactory, store: CosStore
) -> None:
    fs1 = await make_fs()
    d = (await fs1.mkdir(ROOT, b"d", 0o700, 0, 0)).ino
    for i in range(10):
        await write_file(fs1, d, f"big{i}", os.urandom(5000), sync=False)
    await write_file(fs1, d, "tiny", b"may be a link", sync=False)
    await fs1.sync_all()
    fs2 = await make_fs()
    before = store.counters.snapshot()
    d2 = (await fs2.lookup(ROOT, b"d")).ino  # a directory: no HEAD for its type
    listed = await names(fs2, d2)  # only "tiny" could be a symlink: one HEAD
    assert len(listed) == 11
    assert store.counters.snapshot().minus(before).requests == {
        "ListObjects": 2,
        "HeadObject": 1,
    }
    for i in range(5):  # unlink (rm -r) needs no attributes at all
        await fs2.unlink(d2, f"big{i}".encode())
    assert store.counters.snapshot().minus(before).requests.get("HeadObject") == 1
    # A stat fetches its entry and, in the background, its siblings' (ls -l).
    e = await fs2.getattr((await fs2.lookup(d2, b"big5")).ino)
    assert stat.S_IMODE(e.mode) == 0o640
    assert e.size == 5000
    for _ in range(200):
        if all(n.attrs_known for n in fs2.ns.directory(d2).as_dir.children.values()):
            break
        await trio.sleep(0.01)
    heads = store.counters.snapshot().minus(before).requests["HeadObject"]
    assert heads == 1 + 5  # tiny, then big5..big9


async def test_large_sequential_write_streams_parts_before_close(
    fsys: Filesystem, store: CosStore, codec: EnvelopeCodec
) -> None:
    data = os.urandom(40 * 1024 * 1024 + 12345)
    fh, _ = await fsys.create(ROOT, b"stream.bin", 0o600, os.O_WRONLY, 0, 0)
    before = store.counters.snapshot()
    step = 1024 * 1024
    for off in range(0, len(data), step):
        await fsys.write(fh, off, data[off : off + step])
    for _ in range(500):  # parts go up in the background while the file is open
        if store.counters.snapshot().minus(before).requests.get("UploadPart", 0) >= 4:
            break
        await trio.sleep(0.01)
    early = store.counters.snapshot().minus(before).requests
    assert early.get("InitiateMultipartUpload") == 1
    assert early.get("UploadPart", 0) >= 4
    await fsys.fsync(fh, False)
    await fsys.release(fh)
    spent = store.counters.snapshot().minus(before).requests
    assert spent["UploadPart"] == 6  # no part sent twice
    assert spent["CompleteMultipartUpload"] == 1
    assert spent["CopyObject"] == 1
    info = await store.head("stream.bin")
    assert info.metadata["cosencfs-size"] == str(len(data))
    assert stat.S_IMODE(int(info.metadata["mode"])) == 0o600
    assert decrypt_object(codec, dict(info.metadata), await store.get("stream.bin")) == data


async def test_rewriting_streamed_bytes_forks_a_new_key(
    fsys: Filesystem, store: CosStore, codec: EnvelopeCodec
) -> None:
    data = bytearray(os.urandom(30 * 1024 * 1024))
    fh, _ = await fsys.create(ROOT, b"s.bin", 0o644, os.O_RDWR, 0, 0)
    step = 1024 * 1024
    for off in range(0, len(data), step):
        await fsys.write(fh, off, bytes(data[off : off + step]))
    for _ in range(500):
        if store.counters.snapshot().requests.get("UploadPart", 0) >= 2:
            break
        await trio.sleep(0.01)
    await fsys.write(fh, 100, b"REWRITTEN")  # below the sealed mark
    data[100:109] = b"REWRITTEN"
    await fsys.fsync(fh, False)
    await fsys.release(fh)
    assert store.counters.snapshot().requests.get("AbortMultipartUpload") == 1
    assert await store.list_uploads() == []
    info = await store.head("s.bin")
    assert decrypt_object(codec, dict(info.metadata), await store.get("s.bin")) == bytes(data)


async def test_cache_limit_evicts_clean_data_only(make_fs: FsFactory, store: CosStore) -> None:
    fs1 = await make_fs()
    files = {f"f{i}": os.urandom(600_000) for i in range(6)}
    for name, data in files.items():
        await write_file(fs1, ROOT, name, data)
    fs2 = await make_fs()
    cache = fs2.ctx.cache
    cache.limit_bytes = 1_500_000
    for name, data in files.items():
        ino = (await fs2.lookup(ROOT, name.encode())).ino
        assert await read_file(fs2, ino) == data
        cache._last_evict = -1e9  # let the next release evict at once
    for _ in range(200):  # readahead still in flight pins the last file for a moment
        cache.evict()
        if cache.usage() <= cache.limit_bytes:
            break
        await trio.sleep(0.01)
    assert cache.usage() <= cache.limit_bytes
    # Dirty data is never evicted, even over the limit.
    pending = os.urandom(2_000_000)
    await write_file(fs2, ROOT, "dirty", pending, sync=False)
    cache._last_evict = -1e9
    cache.evict()
    dirty = list(cache.layers)
    assert len(dirty) == 1
    direct = dirty[0].direct  # written front to back: straight into its upload copy
    assert direct is not None
    assert not direct.discarded
    assert direct.cached_bytes == len(pending)
    await fs2.sync_all()
    for name, data in files.items():  # evicted files read again from COS
        ino = (await fs2.lookup(ROOT, name.encode())).ino
        assert await read_file(fs2, ino) == data


@pytest.mark.parametrize("kind", ["file", "dir"])
async def test_attribute_change_lost_in_a_crash_is_not_revived_by_the_attribute_cache(
    make_fs: FsFactory, store: CosStore, kind: str
) -> None:
    # A chmod of an uploaded file is a copy onto itself and a directory's is
    # its (empty) marker written again: the ETag and size stay as they were.
    # The attribute record written afterwards is flushed lazily; a crash
    # before that flush must not leave the old record matching the object.
    fs1 = await make_fs(cache="c")
    if kind == "file":
        await write_file(fs1, ROOT, "n", b"some bytes", sync=True)
    else:
        await fs1.mkdir(ROOT, b"n", 0o755, 0, 0)
    ino = (await fs1.lookup(ROOT, b"n")).ino
    fs1.ctx.journal.flush_attrs()
    old_mode = stat.S_IMODE((await fs1.getattr(ino)).mode)
    await fs1.setattr(ino, mode=0o600)
    await fs1.sync_all()
    info = await store.head("n/" if kind == "dir" else "n")
    assert stat.S_IMODE(int(info.metadata["mode"])) == 0o600 != old_mode
    fs1.ctx.journal._pending_attrs.clear()  # "crash": pending records are lost
    make_fs.close(fs1)
    fs2 = await make_fs(cache="c")
    # (An entry whose attributes are unknown comes with a zero attribute
    # timeout: the kernel asks getattr before it believes them.)
    ino = (await fs2.lookup(ROOT, b"n")).ino
    assert stat.S_IMODE((await fs2.getattr(ino)).mode) == 0o600


async def test_directory_rename_does_not_revive_names_whose_delete_is_queued(
    make_fs: FsFactory, store: CosStore
) -> None:
    fs = await make_fs()
    d = (await fs.mkdir(ROOT, b"d", 0o755, 0, 0)).ino
    await write_file(fs, d, "gone", b"unlinked before the rename", sync=True)
    await write_file(fs, d, "kept", b"still here", sync=True)
    await fs.mkdir(d, b"sub", 0o755, 0, 0)
    fs.ctx.deleter.delay = 3600  # the deletes stay queued across the rename
    await fs.unlink(d, b"gone")
    await fs.rmdir(d, b"sub")
    await fs.rename(ROOT, b"d", ROOT, b"e", 0)
    # Before the deletes go out, COS still lists d/gone: d/ must not come back.
    fs.ns.directory(ROOT).as_dir.listed_at = None
    assert await names(fs, ROOT) == ["e"]
    await fs.ctx.deleter.flush()
    keys = sorted([o.key async for page in store.list_all() for o in page.objects])
    assert keys == ["e/", "e/kept"]
    e = (await fs.lookup(ROOT, b"e")).ino
    fs.ns.directory(e).as_dir.listed_at = None  # a fresh listing agrees
    assert await names(fs, e) == ["kept"]


@pytest.mark.parametrize("kind", ["file", "dir"])
async def test_listing_that_overlaps_the_delete_does_not_bring_the_name_back(
    make_fs: FsFactory, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    fs = await make_fs(dir_ttl=0.0)
    if kind == "file":
        # Over 4095 bytes: the listing alone tells it is no symlink, no HEAD.
        await write_file(fs, ROOT, "x", b"b" * 5000, sync=True)
    else:
        await fs.mkdir(ROOT, b"x", 0o755, 0, 0)
    fs.ctx.deleter.delay = 3600
    await (fs.unlink if kind == "file" else fs.rmdir)(ROOT, b"x")
    real = fs.ctx.store.list_all

    async def racing(prefix: str = "", delimiter: str = "") -> AsyncIterator[ListPage]:
        async for page in real(prefix, delimiter):
            # The delete lands while this (older) answer is on its way.
            await fs.ctx.deleter.flush()
            yield page

    monkeypatch.setattr(fs.ctx.store, "list_all", racing)
    assert await names(fs, ROOT) == []


async def test_rename_of_a_directory_whose_new_mode_is_not_sent_yet(
    make_fs: FsFactory, store: CosStore
) -> None:
    # Found by the Filesystem model test: a directory with a pending metadata
    # change was handed to the dirty-record code, which took it for a file.
    fsys = await make_fs(writeback_delay=3600.0)
    await fsys.mkdir(ROOT, b"a", 0o755, 0, 0)
    a = (await fsys.lookup(ROOT, b"a")).ino
    await write_file(fsys, a, "f", b"inside", sync=False)
    await fsys.setattr(a, mode=0o700)
    await fsys.rename(ROOT, b"a", ROOT, b"b", 0)
    await fsys.sync_all()
    info = await store.head("b/")
    assert stat.S_IMODE(int(info.metadata["mode"])) == 0o700
    b = (await fsys.lookup(ROOT, b"b")).ino
    assert await read_file(fsys, (await fsys.lookup(b, b"f")).ino) == b"inside"


@pytest.mark.parametrize("then", ["rename", "unlink"])
async def test_a_file_created_over_a_held_delete_answers_for_the_old_object(
    make_fs: FsFactory, store: CosStore, then: str
) -> None:
    """unlink while open holds the delete until the last close; a file created
    at that name before then takes the delete over: if it goes away (renamed
    or unlinked) before its own upload, the old object is deleted, and the old
    file does not come back (the model test's seed 7)."""
    fs1 = await make_fs()
    await write_file(fs1, ROOT, "f", b"old content")
    fs2 = await make_fs()
    ino = (await fs2.lookup(ROOT, b"f")).ino
    fh, _ = await fs2.open(ino, os.O_RDONLY)
    await fs2.unlink(ROOT, b"f")
    new_fh, _ = await fs2.create(ROOT, b"f", 0o644, os.O_WRONLY | os.O_CREAT, 0, 0)
    await fs2.write(new_fh, 0, b"new")
    await fs2.release(new_fh)
    if then == "rename":
        await fs2.rename(ROOT, b"f", ROOT, b"g", 0)
    else:
        await fs2.unlink(ROOT, b"f")
    assert await fs2.read(fh, 0, 100) == b"old content"  # the old reader still reads
    await fs2.release(fh)
    await fs2.sync_all()
    fs3 = await make_fs()
    assert await names(fs3, ROOT) == (["g"] if then == "rename" else [])
    if then == "rename":
        assert await read_file(fs3, (await fs3.lookup(ROOT, b"g")).ino) == b"new"


async def chmod_with_marker_put_held(
    make_fs: FsFactory,
    store: CosStore,
    monkeypatch: pytest.MonkeyPatch,
    name: bytes,
    mode: int,
    until: trio.Event,
) -> tuple[Filesystem, Inode]:
    """A synced directory ``name`` with a chmod to ``mode`` still to upload, its
    marker's PUT held until ``until`` is set (or for a second), and its inode."""
    fs = await make_fs()
    await fs.mkdir(ROOT, name, 0o750, 0, 0)
    await fs.sync_all()
    ino = (await fs.lookup(ROOT, name)).ino
    await fs.setattr(ino, mode=mode)
    node = fs.ctx.table.get(ino)
    assert node is not None
    real_put, marker = store.put, name.decode() + "/"

    async def put(key: str, *args: Any, **kw: Any) -> str:
        if key == marker:
            with trio.move_on_after(1.0):
                await until.wait()
        return await real_put(key, *args, **kw)

    monkeypatch.setattr(store, "put", put)
    return fs, node


async def test_a_directory_chmod_committed_during_its_rename_is_kept(
    make_fs: FsFactory, store: CosStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A directory's marker upload (a chmod going up) racing the rename of that
    directory: the rename waits for it (it takes the upload lock of every node
    it moves, directories too), so the new name carries the new mode instead of
    the old marker's (the model test's seed 4).  The marker's PUT is held until
    the rename has copied the marker, or for a second when the rename waits."""
    copied = trio.Event()
    fs, node = await chmod_with_marker_put_held(make_fs, store, monkeypatch, b"a", 0o40664, copied)
    real_copy = store.copy

    async def copy(src: str, *args: Any, **kw: Any) -> str:
        etag = await real_copy(src, *args, **kw)
        if src == "a/":
            copied.set()
        return etag

    monkeypatch.setattr(store, "copy", copy)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fs.writeback.flush, node)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(fs.rename, ROOT, b"a", ROOT, b"a b", 0)
    monkeypatch.undo()
    await fs.sync_all()
    await fs.ctx.deleter.flush()
    fresh = await make_fs()
    assert await names(fresh, ROOT) == ["a b"]
    entry = await fresh.getattr((await fresh.lookup(ROOT, b"a b")).ino)
    assert oct(entry.mode) == oct(0o40664)
