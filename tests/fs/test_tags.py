"""Integrity tags in the filesystem layer: what each operation writes, what reads check.

The construction is tested in tests/crypto/test_integrity.py and tampering
through real mounts in tests/security/test_tamper.py; here, without FUSE:
every object an operation leaves verifies under its own key, renames and
chmods re-tag from metadata alone, and the policies of format.md 12.10.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import trio

from cosencfs.crypto.ctr import DataKey, decrypt
from cosencfs.crypto.envelope import KID_FIELD, EnvelopeCodec
from cosencfs.crypto.integrity import (
    ATTR_TAG_FIELD,
    CHUNK_SIZE,
    CHUNKS_FIELD,
    OBJECT_TAG_FIELD,
    TAGS_REF_FIELD,
    ChunkKey,
    TagKey,
    attribute_tag,
    open_tags,
    tag_body,
)
from cosencfs.crypto.keyfiles import generate_rsa_key_files, load_rsa_key_files
from cosencfs.errors import ConfigError, FsError, IntegrityError
from cosencfs.fs import tagcheck
from cosencfs.fs.attrs import META_MODE
from cosencfs.fs.core import Filesystem
from cosencfs.fs.inode import ROOT_INO
from cosencfs.fs.tagcheck import COMPANION_DIR, attr_set
from cosencfs.fs.tagparts import tag_ciphertext
from cosencfs.fs.tags import INLINE_TAG, MountTags
from cosencfs.store.base import Body, FileRange
from cosencfs.store.cos import CosStore
from tests.fs.test_filesystem import read_file, write_file
from tests.testlib import FsFactory

MIB = 1024 * 1024


async def verified(store: CosStore, codec: EnvelopeCodec, key: str) -> None:
    """The object at ``key`` carries tags that verify, attribute tag included."""
    info = await store.head(key)
    meta = dict(info.metadata)
    tk = TagKey.for_object(meta, codec.masters, key=key)
    companion = None
    ref = meta.get(TAGS_REF_FIELD)
    if ref is not None:
        companion = await store.get(f"{COMPANION_DIR}/{ref}")
    content = open_tags(tk, key=key, size=info.size, metadata=meta, companion=companion)
    content.verify_attributes(tk, attr_set(meta), meta)


async def test_writes_tag_inline_or_in_a_companion(
    fsys: Filesystem, store: CosStore, codec: EnvelopeCodec
) -> None:
    await write_file(fsys, ROOT_INO, "small", os.urandom(100_000))
    await write_file(fsys, ROOT_INO, "big", os.urandom(3 * MIB))
    small = (await store.head("small")).metadata
    big = (await store.head("big")).metadata
    assert CHUNKS_FIELD in small
    assert TAGS_REF_FIELD not in small
    assert TAGS_REF_FIELD in big
    assert CHUNKS_FIELD not in big
    await verified(store, codec, "small")
    await verified(store, codec, "big")


async def test_rename_and_chmod_retag_without_reading_the_body(
    fsys: Filesystem, store: CosStore, codec: EnvelopeCodec
) -> None:
    data = os.urandom(3 * MIB)
    await write_file(fsys, ROOT_INO, "f", data)
    d = await fsys.mkdir(ROOT_INO, b"d", 0o755, 0, 0)
    await write_file(fsys, d.ino, "inner", b"inner bytes")
    await fsys.sync_all()
    before = store.counters.snapshot()
    await fsys.rename(ROOT_INO, b"f", ROOT_INO, b"g", 0)
    await fsys.rename(ROOT_INO, b"d", ROOT_INO, b"e", 0)
    spent = store.counters.snapshot().minus(before)
    assert spent.requests.get("GetObject", 0) == 0  # no body, no companion
    assert spent.bytes_down == 0
    for key in ("g", "e/inner"):
        await verified(store, codec, key)
    marker = (await store.head("e/")).metadata
    assert ATTR_TAG_FIELD in marker
    entry = await fsys.lookup(ROOT_INO, b"g")
    await fsys.setattr(entry.ino, mode=0o600)
    await fsys.sync_all()
    await verified(store, codec, "g")
    assert int((await store.head("g")).metadata["mode"]) & 0o777 == 0o600
    assert await read_file(fsys, entry.ino) == data


async def test_renamed_then_read_by_another_mount(make_fs: FsFactory, store: CosStore) -> None:
    fs1 = await make_fs()
    data = os.urandom(2 * MIB + 5)
    await write_file(fs1, ROOT_INO, "a", data)
    await fs1.rename(ROOT_INO, b"a", ROOT_INO, b"b", 0)
    fs2 = await make_fs()
    entry = await fs2.lookup(ROOT_INO, b"b")
    assert await read_file(fs2, entry.ino) == data
    integrity = fs2.stats()["integrity"]
    assert isinstance(integrity, dict)
    assert integrity["objects_verified"] == 1


async def test_altered_tags_refuse_the_rename(
    fsys: Filesystem, store: CosStore, make_fs: FsFactory
) -> None:
    await write_file(fsys, ROOT_INO, "x", b"x" * 1000)
    meta = dict((await store.head("x")).metadata)
    meta[OBJECT_TAG_FIELD] = "A" * 22
    await store.copy("x", "x", metadata=meta)
    fs2 = await make_fs()
    with pytest.raises(IntegrityError, match="object tag"):
        await fs2.rename(ROOT_INO, b"x", ROOT_INO, b"y", 0)
    assert (await store.head("x")).metadata[OBJECT_TAG_FIELD] == "A" * 22  # not laundered


async def test_untagged_switch_and_public_only_key_write_untagged(
    make_fs: FsFactory, store: CosStore, tmp_path: Path
) -> None:
    fs = await make_fs(write_tags=False)
    await write_file(fs, ROOT_INO, "plain-tags", b"untagged")
    assert OBJECT_TAG_FIELD not in (await store.head("plain-tags")).metadata
    generate_rsa_key_files(tmp_path / "rsa")
    public = load_rsa_key_files(tmp_path / "rsa" / "public_key.pem", None)
    tags = MountTags(
        store,
        EnvelopeCodec(public),
        fs.ctx.journal,
        fs.ctx.deleter,
        prefix="",
        require=False,
    )
    assert not tags.writing
    with pytest.raises(ConfigError, match="require-integrity"):
        MountTags(
            store,
            EnvelopeCodec(public),
            fs.ctx.journal,
            fs.ctx.deleter,
            prefix="",
            require=True,
        )


async def test_require_integrity_refuses_untagged(make_fs: FsFactory, store: CosStore) -> None:
    fs1 = await make_fs(write_tags=False)
    await write_file(fs1, ROOT_INO, "old", b"written before tags existed")
    strict = await make_fs(require_integrity=True)
    entry = await strict.lookup(ROOT_INO, b"old")
    fh, _ = await strict.open(entry.ino, os.O_RDONLY)
    with pytest.raises(IntegrityError, match="require-integrity"):
        await strict.read(fh, 0, 100)
    await strict.release(fh)
    lenient = await make_fs()
    entry = await lenient.lookup(ROOT_INO, b"old")
    assert await read_file(lenient, entry.ino) == b"written before tags existed"


async def test_reserved_name(fsys: Filesystem) -> None:
    for call in (
        fsys.mkdir(ROOT_INO, COMPANION_DIR.encode(), 0o755, 0, 0),
        fsys.create(ROOT_INO, COMPANION_DIR.encode(), 0o644, os.O_WRONLY, 0, 0),
    ):
        with pytest.raises(FsError) as err:
            await call
        assert err.value.errno == errno.EPERM
    with pytest.raises(FsError) as err:
        await fsys.lookup(ROOT_INO, COMPANION_DIR.encode())
    assert err.value.errno == errno.ENOENT


async def test_file_unlinked_while_open_is_no_rollback(fsys: Filesystem, store: CosStore) -> None:
    """The old handle of a replaced name reads and writes its own, older object."""
    await write_file(fsys, ROOT_INO, "f", b"version one")
    entry = await fsys.lookup(ROOT_INO, b"f")
    fh, _ = await fsys.open(entry.ino, os.O_RDWR)
    await fsys.unlink(ROOT_INO, b"f")
    await write_file(fsys, ROOT_INO, "f", b"version two, in COS now")
    # The journal now remembers version one as replaced at "f" ...
    assert await fsys.read(fh, 0, 100) == b"version one"
    assert await fsys.write(fh, 0, b"V") == 1
    assert await fsys.read(fh, 0, 100) == b"Version one"
    await fsys.release(fh)
    # ... and the name holds version two.
    again = await fsys.lookup(ROOT_INO, b"f")
    assert await read_file(fsys, again.ino) == b"version two, in COS now"


def test_tagging_an_upload_copy_matches_the_body_tags(tmp_path: Path) -> None:
    """``tag_ciphertext`` reads the copy in pieces into one reused buffer: the
    tags are still those of the whole body, for ranges of every shape, and a
    copy shorter than the range fails instead of tagging what is missing."""
    dk = DataKey.generate()
    ck = ChunkKey(dk)
    body = os.urandom(3 * MIB + 12_345)
    path = tmp_path / "copy"
    path.write_bytes(body)
    want = tag_body(ck, body).tags
    c = CHUNK_SIZE
    for start, end in [(0, len(body)), (0, MIB), (MIB, len(body)), (5 * c, 7 * c), (c, c)]:
        got = tag_ciphertext(str(path), ck, start, end)
        assert got == list(want[start // c : -(-end // c)]), (start, end)
    with pytest.raises(OSError, match="short"):
        tag_ciphertext(str(path), ck, 2 * MIB, len(body) + 1)
    with pytest.raises(ValueError, match="chunk boundary"):
        tag_ciphertext(str(path), ck, 100, MIB)


async def test_streamed_file_and_a_flipped_chunk_never_stored(
    make_fs: FsFactory, store: CosStore, codec: EnvelopeCodec
) -> None:
    """A streamed (multipart) file's tags verify (its companion was stored beside
    the completion, before the copy naming it); a chunk altered in COS fails each
    time it is read: the fetch that brought it stored none of its bytes."""
    fs1 = await make_fs()
    data = os.urandom(20 * MIB + 777)
    await write_file(fs1, ROOT_INO, "big", data)
    meta = dict((await store.head("big")).metadata)
    assert TAGS_REF_FIELD in meta
    await verified(store, codec, "big")
    body = bytearray(await store.get("big"))
    bad = 100
    body[bad * CHUNK_SIZE + 5] ^= 1
    await store.put("big", bytes(body), meta)
    fs2 = await make_fs()
    entry = await fs2.lookup(ROOT_INO, b"big")
    fh, _ = await fs2.open(entry.ino, os.O_RDONLY)
    try:
        assert await fs2.read(fh, 0, 4096) == data[:4096]
    finally:
        await fs2.release(fh)
    for failures in (1, 2):
        # A handle each: two jumps on one would make it a random reader,
        # whose whole-object fetch meets (and counts) the bad chunk too.
        fh, _ = await fs2.open(entry.ino, os.O_RDONLY)
        try:
            with pytest.raises(IntegrityError, match="does not verify") as exc:
                await fs2.read(fh, bad * CHUNK_SIZE, 4096)
        finally:
            await fs2.release(fh)
        assert exc.value.chunk == bad
        integrity = fs2.stats()["integrity"]
        assert isinstance(integrity, dict)
        assert integrity["chunk_failures"] == failures
    fh, _ = await fs2.open(entry.ino, os.O_RDONLY)
    try:
        after = (bad + 1) * CHUNK_SIZE
        assert await fs2.read(fh, after, 4096) == data[after : after + 4096]
    finally:
        await fs2.release(fh)


async def test_small_copies_are_tagged_without_a_thread_hop(
    fsys: Filesystem, store: CosStore, codec: EnvelopeCodec, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file of at most one chunk is tagged on the loop; larger ones in a worker thread."""
    hops: list[object] = []
    run_sync = trio.to_thread.run_sync

    async def counting(fn: object, *args: object, **kw: object) -> object:
        hops.append(fn)
        return await run_sync(fn, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(trio.to_thread, "run_sync", counting)
    await write_file(fsys, ROOT_INO, "small", os.urandom(4096))
    await verified(store, codec, "small")
    assert tag_ciphertext not in hops
    await write_file(fsys, ROOT_INO, "bigger", os.urandom(200_000))
    await verified(store, codec, "bigger")
    assert tag_ciphertext in hops


async def test_a_commit_does_not_open_the_tags_it_just_sealed(
    fsys: Filesystem, store: CosStore, codec: EnvelopeCodec, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The clean copy's verified content comes from sealing (``seal_own``), not from
    ``open_tags`` on the metadata just made, and is what opening it would give."""

    def no_open(*a: object, **kw: object) -> None:
        raise AssertionError("the commit opened the tags it sealed")

    monkeypatch.setattr(MountTags, "own", no_open)
    for name, size in (("one", 3000), ("companion", 40 * CHUNK_SIZE + 1)):
        await write_file(fsys, ROOT_INO, name, os.urandom(size))
        await verified(store, codec, name)
        node = fsys.ns.inode((await fsys.lookup(ROOT_INO, name.encode())).ino)
        clean = node.as_file.clean
        assert clean is not None
        assert clean.source is not None
        own = clean.source.verified
        assert own is not None
        info = await store.head(name)
        meta = dict(info.metadata)
        ref = meta.get(TAGS_REF_FIELD)
        companion = None if ref is None else await store.get(f"{COMPANION_DIR}/{ref}")
        tk = TagKey.for_object(meta, codec.masters, key=name)
        opened = open_tags(tk, key=name, size=info.size, metadata=meta, companion=companion)
        assert (own.key, own.size, own.object_tag) == (opened.key, opened.size, opened.object_tag)
        assert own.chunk_tags == opened.chunk_tags


async def test_own_attribute_tags_are_not_checked_again_but_anything_else_is(
    make_fs: FsFactory, store: CosStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``attrs_authentic`` of metadata this mount sealed skips the MAC (a directory
    index rewritten after new files); altered metadata and other keys are checked."""
    fs1 = await make_fs()
    await write_file(fs1, ROOT_INO, "f", os.urandom(3000))
    meta = dict((await store.head("f")).metadata)
    tags = fs1.ctx.tags
    checked: list[str] = []
    real = attribute_tag

    def counting(tk: TagKey, *, key: str, object_tag: bytes, attrs: object) -> bytes:
        checked.append(key)
        return real(tk, key=key, object_tag=object_tag, attrs=attrs)  # type: ignore[arg-type]

    monkeypatch.setattr(tagcheck, "attribute_tag", counting)
    assert tags.attrs_authentic("f", meta)
    assert checked == []  # sealed here: no MAC
    assert not tags.attrs_authentic("f", {**meta, META_MODE: str(0o104755)})
    assert checked == ["f"]  # altered: checked in full, and fails
    assert not tags.attrs_authentic("g", meta)  # another key: checked, fails
    assert checked == ["f", "g"]
    kid = {**meta, KID_FIELD: "0" * 16}
    assert not tags.attrs_authentic("f", kid)  # another key id: not this mount's answer
    # Another mount never sealed it: the full check, which passes.
    fs2 = await make_fs()
    checked.clear()
    assert fs2.ctx.tags.attrs_authentic("f", meta)
    assert checked == ["f"]


async def test_a_small_copy_is_read_once_tagged_and_sent_from_memory(
    fsys: Filesystem, store: CosStore, codec: EnvelopeCodec, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Up to INLINE_TAG bytes the commit reads the copy once: the PUT's body is those
    bytes; a larger copy is sent from the file (a FileRange)."""
    bodies: dict[str, object] = {}
    real = store.put

    async def put(key: str, body: Body, meta: Mapping[str, str], **kw: Any) -> str:
        bodies[key] = body
        return await real(key, body, meta, **kw)

    monkeypatch.setattr(store, "put", put)
    small, large = os.urandom(INLINE_TAG), os.urandom(INLINE_TAG + 1)
    await write_file(fsys, ROOT_INO, "small", small)
    await write_file(fsys, ROOT_INO, "large", large)
    assert isinstance(bodies["small"], bytes)
    assert isinstance(bodies["large"], FileRange)
    for name, data in (("small", small), ("large", large)):
        await verified(store, codec, name)
        info = await store.head(name)
        assert decrypt(codec.open(info.metadata), 0, await store.get(name)) == data
