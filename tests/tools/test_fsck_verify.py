"""``cosencfs fsck --verify``: files written through a Filesystem (real tags), then tampered with.

Every tamper goes straight to the store, as someone who can write to the
bucket without the key would: a body altered with its metadata kept, a
metadata-only copy, a deleted or replaced companion, stripped tags.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from cosencfs.crypto.ctr import DataKey
from cosencfs.crypto.envelope import COSENCFS_FIELDS, EnvelopeCodec
from cosencfs.crypto.integrity import (
    ATTR_TAG_FIELD,
    CHUNK_SIZE,
    CHUNKS_FIELD,
    OBJECT_TAG_FIELD,
    TAG_FIELDS,
    TAGS_REF_FIELD,
    b64url_encode,
)
from cosencfs.crypto.xattrseal import XATTR_FIELD
from cosencfs.fs.core import Filesystem
from cosencfs.fs.tagcheck import COMPANION_DIR
from cosencfs.server import LocalCosServer
from cosencfs.store.cos import CosStore
from cosencfs.tools.fsck import Finding, Fsck, FsckStats
from cosencfs.tools.verify import VERIFY_RANGE
from tests.testlib import BUCKET, FsFactory
from tests.tools._cmd_helpers import no_secrets, put_encrypted, server_args

ROOT = 1
SMALL = os.urandom(100_000)  # 2 chunks: tags inline
BIG = os.urandom(2 * 1024 * 1024 + 300_000)  # 37 chunks: tags in a companion
N_BIG = -(-len(BIG) // CHUNK_SIZE)


async def write_file(fs: Filesystem, name: str, data: bytes, parent: int = ROOT) -> None:
    fh, _ = await fs.create(parent, name.encode(), 0o640, os.O_WRONLY | os.O_CREAT, 1000, 1000)
    step = 128 * 1024
    for off in range(0, len(data), step):
        await fs.write(fh, off, data[off : off + step])
    await fs.flush(fh)
    await fs.fsync(fh, False)
    await fs.release(fh)


@dataclass(slots=True)
class Bucket:
    store: CosStore
    companion: str

    async def meta(self, key: str) -> dict[str, str]:
        return dict((await self.store.head(key)).metadata)

    async def put_body(self, key: str, body: bytes) -> None:
        """A new body under the object's own metadata (and Content-Type)."""
        info = await self.store.head(key)
        await self.store.put(key, body, dict(info.metadata), content_type=info.content_type)

    async def set_meta(self, key: str, meta: Mapping[str, str]) -> None:
        """A metadata-only copy of the object onto itself."""
        info = await self.store.head(key)
        await self.store.copy(key, key, metadata=meta, content_type=info.content_type)


@pytest.fixture
async def bucket(make_fs: FsFactory, store: CosStore) -> Bucket:
    """small.txt (inline tags), big.bin (companion), empty, dir/ and dir/inner.txt."""
    fs = await make_fs()
    await write_file(fs, "small.txt", SMALL)
    await write_file(fs, "big.bin", BIG)
    await write_file(fs, "empty", b"")
    d = await fs.mkdir(ROOT, b"dir", 0o750, 1000, 1000)
    await write_file(fs, "inner.txt", b"inner", parent=d.ino)
    big = await store.head("big.bin")
    small = await store.head("small.txt")
    marker = await store.head("dir/")
    assert TAGS_REF_FIELD in big.metadata
    assert CHUNKS_FIELD in small.metadata
    assert ATTR_TAG_FIELD in marker.metadata
    companion = f"{COMPANION_DIR}/{big.metadata[TAGS_REF_FIELD]}"
    await store.head(companion)  # it is there
    return Bucket(store, companion)


async def fsck(
    store: CosStore, codec: EnvelopeCodec, *, verify: bool = True
) -> tuple[set[tuple[str, str, int | None]], FsckStats, list[Finding]]:
    found: list[Finding] = []
    stats = await Fsck(store, codec, report=found.append, verify=verify, orphan_age=0.0).run()
    return {(f.category.value, f.key, f.chunk) for f in found}, stats, found


def fsck_args(server: LocalCosServer, key_file: Path, *extra: str) -> list[str]:
    return ["fsck", BUCKET, *server_args(server), "--key-file", str(key_file), *extra]


async def run_cli(cli: Any, *args: str) -> int:
    rc: int = await trio.to_thread.run_sync(lambda: cli(*args))
    return rc


async def test_clean_tagged_bucket_verifies(
    bucket: Bucket,
    store: CosStore,
    codec: EnvelopeCodec,
    server: LocalCosServer,
    key_file: Path,
    cli: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    before = store.counters.snapshot()
    found, stats, _ = await fsck(store, codec)
    used = store.counters.snapshot().minus(before).requests
    assert found == set()
    assert stats.clean
    t = stats.tags
    assert t.verified == 4  # small.txt, big.bin, empty, dir/inner.txt
    assert t.bytes_verified == len(SMALL) + len(BIG) + len(b"inner")
    assert (t.untagged, t.failed, t.companions) == (0, 0, 1)
    # A HEAD per object (the marker included, the companion not), the companion
    # once, the bodies in whole-chunk ranges; the empty file needs no GET.
    assert used["HeadObject"] == 5
    assert used["GetObject"] == 1 + -(-len(BIG) // VERIFY_RANGE) + 2

    # Without --verify: the same tags checked from metadata, no GET.
    before = store.counters.snapshot()
    found, stats, _ = await fsck(store, codec, verify=False)
    used = store.counters.snapshot().minus(before).requests
    assert found == set()
    assert stats.tags.metadata_checked == 4
    assert stats.tags.verified == 0
    assert "GetObject" not in used
    assert used["HeadObject"] == 4  # markers and companions need none

    assert await run_cli(cli, *fsck_args(server, key_file, "--verify", "--no-progress")) == 0
    out = capsys.readouterr().out
    assert "tags:              4 objects verified" in out
    assert out.rstrip().endswith("clean")


async def test_flipped_body_byte_names_the_chunk(
    bucket: Bucket,
    store: CosStore,
    codec: EnvelopeCodec,
    server: LocalCosServer,
    key_file: Path,
    cli: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    body = bytearray(await store.get("big.bin"))
    body[35 * CHUNK_SIZE + 10] ^= 0x01
    body[36 * CHUNK_SIZE + 1] ^= 0x80
    await bucket.put_body("big.bin", bytes(body))
    body = bytearray(await store.get("small.txt"))
    body[5] ^= 0xFF
    await bucket.put_body("small.txt", bytes(body))

    found, stats, findings = await fsck(store, codec)
    assert found == {("integrity", "big.bin", 35), ("integrity", "small.txt", 0)}
    detail = next(f.detail for f in findings if f.key == "big.bin")
    assert f"2 of {N_BIG} chunks fail" in detail
    assert stats.tags.failed == 2
    assert stats.tags.verified == 2  # empty, dir/inner.txt

    # Metadata alone cannot see it: without --verify the check is clean.
    assert (await fsck(store, codec, verify=False))[0] == set()
    assert await run_cli(cli, *fsck_args(server, key_file, "--no-progress")) == 0
    capsys.readouterr()

    args = fsck_args(server, key_file, "--verify", "--json")
    assert await run_cli(cli, *args) == 1
    text = capsys.readouterr().out
    report = json.loads(text)
    assert report["verify"] is True
    big = next(f for f in report["findings"] if f["key"] == "big.bin")
    assert big["category"] == "integrity"
    assert big["chunk"] == 35
    assert report["summary"]["findings"]["integrity"] == 2
    assert report["summary"]["tags"]["failed"] == 2
    assert report["summary"]["clean"] is False
    no_secrets(text, key_file)


async def test_truncated_extended_and_swapped_bodies(
    bucket: Bucket, store: CosStore, codec: EnvelopeCodec
) -> None:
    body = await store.get("small.txt")
    await bucket.put_body("small.txt", body[:60_000])  # one chunk fewer
    await bucket.put_body("dir/inner.txt", (await store.get("dir/inner.txt")) + b"!")
    found, _, findings = await fsck(store, codec)
    assert found == {("integrity", "small.txt", None), ("integrity", "dir/inner.txt", None)}
    details = {f.key: f.detail for f in findings}
    assert "2 chunk tags for 60000 bytes: body truncated, extended" in details["small.txt"]
    assert "object tag does not verify (body size" in details["dir/inner.txt"]
    # Sizes are bound into the object tag: metadata alone shows it too.
    assert (await fsck(store, codec, verify=False))[0] == found


async def test_swapped_objects_fail_their_object_tags(
    bucket: Bucket, store: CosStore, codec: EnvelopeCodec
) -> None:
    a, b = await store.head("small.txt"), await store.head("dir/inner.txt")
    body_a, body_b = await store.get("small.txt"), await store.get("dir/inner.txt")
    await store.put("small.txt", body_b, dict(b.metadata), content_type=b.content_type)
    await store.put("dir/inner.txt", body_a, dict(a.metadata), content_type=a.content_type)
    found, _, findings = await fsck(store, codec)
    assert found == {("integrity", "small.txt", None), ("integrity", "dir/inner.txt", None)}
    assert all("object tag does not verify" in f.detail for f in findings)


async def test_companion_deleted_or_replaced(
    bucket: Bucket,
    store: CosStore,
    codec: EnvelopeCodec,
    server: LocalCosServer,
    key_file: Path,
    cli: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await store.delete(bucket.companion)
    found, _, findings = await fsck(store, codec)
    assert found == {("integrity", "big.bin", None)}
    assert "companion object holding the chunk tags" in findings[0].detail
    assert "missing" in findings[0].detail
    assert (await fsck(store, codec, verify=False))[0] == set()  # no request for it
    assert await run_cli(cli, *fsck_args(server, key_file, "--verify", "--no-progress")) == 1
    out = capsys.readouterr().out
    assert "integrity         big.bin: the companion object" in out
    assert "1 problems found" in out

    await store.put(bucket.companion, b"CEFT\x01" + bytes(15), {})
    found, _, findings = await fsck(store, codec)
    assert found == {("integrity", "big.bin", None)}
    assert "companion" in findings[0].detail


async def test_attributes_changed_by_a_metadata_copy(
    bucket: Bucket, store: CosStore, codec: EnvelopeCodec, server: LocalCosServer, key_file: Path
) -> None:
    meta = await bucket.meta("small.txt")
    await bucket.set_meta("small.txt", {**meta, "mode": "35309", "uid": "0"})  # setuid 0755
    marker = await bucket.meta("dir/")
    await bucket.set_meta("dir/", {**marker, "uid": "0"})
    found, stats, findings = await fsck(store, codec)
    assert found == {
        ("attributes", "small.txt", None),
        ("attributes", "dir/", None),
        ("mode", "small.txt", None),
    }
    assert stats.tags.verified == 4  # the content still verifies
    attrs = [f for f in findings if f.category.value == "attributes"]
    assert all("default attributes" in f.detail for f in attrs)
    # Metadata alone shows the file's; markers get a HEAD only with --verify.
    assert (await fsck(store, codec, verify=False))[0] == {
        ("attributes", "small.txt", None),
        ("mode", "small.txt", None),
    }


async def test_stripped_tags_are_untagged(
    bucket: Bucket,
    store: CosStore,
    codec: EnvelopeCodec,
    server: LocalCosServer,
    key_file: Path,
    cli: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for key in ("small.txt", "big.bin"):
        meta = await bucket.meta(key)
        await bucket.set_meta(key, {k: v for k, v in meta.items() if k not in TAG_FIELDS})
    meta = await bucket.meta("empty")
    await bucket.set_meta("empty", {k: v for k, v in meta.items() if k != OBJECT_TAG_FIELD})
    marker = await bucket.meta("dir/")
    await bucket.set_meta("dir/", {k: v for k, v in marker.items() if k != ATTR_TAG_FIELD})
    found, stats, findings = await fsck(store, codec)
    assert found == {
        ("untagged", "small.txt", None),
        ("untagged", "big.bin", None),
        ("untagged", "empty", None),
        ("untagged", "dir/", None),
        # Nothing names big.bin's companion any more.
        ("orphan-companion", bucket.companion, None),
    }
    details = {f.key: f.detail for f in findings}
    assert "strip tags" in details["small.txt"]
    assert "--require-integrity" in details["small.txt"]
    assert "no object tag" in details["empty"]
    assert "safe once no mount is writing" in details[bucket.companion]
    assert stats.tags.untagged == 4

    # Without --verify: counted in the summary, not a finding (exit 0).
    found, stats, _ = await fsck(store, codec, verify=False)
    assert found == set()
    assert stats.tags.untagged == 3  # markers are not HEADed without --verify
    assert await run_cli(cli, *fsck_args(server, key_file, "--no-progress")) == 0
    assert "3 untagged" in capsys.readouterr().out
    args = fsck_args(server, key_file, "--no-progress", "--verify")
    assert await run_cli(cli, *args) == 1
    # A fresh companion is spared by the default --orphan-age (a mount may be
    # about to store its object).
    assert "4 problems found" in capsys.readouterr().out
    assert await run_cli(cli, *args, "--orphan-age", "0") == 1
    assert "5 problems found" in capsys.readouterr().out


async def test_sdk_old_and_plain_objects(
    bucket: Bucket, store: CosStore, codec: EnvelopeCodec
) -> None:
    """Untagged only for what a mount would serve unauthenticated; plain stays plain."""
    await put_encrypted(store, codec, "old", b"written before tags")
    sdk_meta = {k: v for k, v in codec.seal(DataKey.generate()).items() if k not in COSENCFS_FIELDS}
    await store.put("sdk", b"sdk body", sdk_meta)
    await store.put("plain", b"clear", {})
    # Tag fields on an SDK envelope: the mount refuses it (tagged, no cosencfs envelope).
    await store.put("sdk-tagged", b"x", {**sdk_meta, OBJECT_TAG_FIELD: "A" * 22})
    found, _, findings = await fsck(store, codec)
    assert found == {
        ("untagged", "old", None),
        ("untagged", "sdk", None),
        ("plain", "plain", None),
        ("integrity", "sdk-tagged", None),
    }
    assert "SDK envelope" in next(f.detail for f in findings if f.key == "sdk")


async def test_companion_area_is_not_files(
    bucket: Bucket, store: CosStore, codec: EnvelopeCodec
) -> None:
    stray = f"{COMPANION_DIR}/{b64url_encode(os.urandom(32))}"
    await store.put(stray, b"CEFT", {})
    await store.put(f"{COMPANION_DIR}/notes.txt", b"junk", {})
    await store.put(f"{COMPANION_DIR}/", b"", {})  # a marker of the directory itself
    await put_encrypted(store, codec, f"dir/{COMPANION_DIR}", b"a file the mount hides")
    found, stats, findings = await fsck(store, codec)
    assert found == {
        ("orphan-companion", stray, None),
        ("orphan-companion", f"{COMPANION_DIR}/notes.txt", None),
        ("unreachable-name", f"dir/{COMPANION_DIR}", None),
        ("untagged", f"dir/{COMPANION_DIR}", None),
    }
    assert "not a companion" in {f.key: f.detail for f in findings}[f"{COMPANION_DIR}/notes.txt"]
    assert stats.tags.companions == 4  # the real one, two strays, the marker
    # Without --verify: no plain or name finding for the companions, no orphans.
    found, _, _ = await fsck(store, codec, verify=False)
    assert found == {("unreachable-name", f"dir/{COMPANION_DIR}", None)}


async def test_companion_found_from_a_sub_prefix(
    make_fs: FsFactory, store: CosStore, codec: EnvelopeCodec
) -> None:
    """fsck of bucket/p/sub finds the companion a mount of bucket/p/ wrote under p/."""
    fs = await make_fs(prefix="p/")
    d = await fs.mkdir(ROOT, b"sub", 0o755, 1000, 1000)
    await write_file(fs, "big", BIG, parent=d.ino)
    ref = (await store.head("p/sub/big")).metadata[TAGS_REF_FIELD]
    await store.head(f"p/{COMPANION_DIR}/{ref}")
    found: list[Finding] = []
    stats = await Fsck(store, codec, report=found.append, prefix="p/sub/", verify=True).run()
    assert found == []
    assert stats.tags.verified == 1
    assert stats.tags.bytes_verified == len(BIG)


async def test_delete_orphans(
    bucket: Bucket,
    store: CosStore,
    codec: EnvelopeCodec,
    server: LocalCosServer,
    key_file: Path,
    cli: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    stray = f"{COMPANION_DIR}/{b64url_encode(os.urandom(32))}"
    junk = f"{COMPANION_DIR}/notes.txt"
    await store.put(stray, b"CEFT", {})
    await store.put(junk, b"junk", {})
    assert await run_cli(cli, *fsck_args(server, key_file, "--delete-orphans")) == 2
    assert "needs --verify" in capsys.readouterr().err

    # Younger than --orphan-age: neither reported nor deleted.
    args = fsck_args(server, key_file, "--verify", "--delete-orphans", "--json")
    assert await run_cli(cli, *args) == 0
    assert json.loads(capsys.readouterr().out)["findings"] == []
    await store.head(stray)

    assert await run_cli(cli, *args, "--orphan-age", "0") == 1
    report = json.loads(capsys.readouterr().out)
    actions = {f["key"]: f.get("action", "") for f in report["findings"]}
    assert actions == {stray: "deleted", junk: ""}  # only real companions are deleted
    assert report["summary"]["tags"]["companions_deleted"] == 1
    listed = {o.key for o in (await store.list_objects(COMPANION_DIR + "/")).objects}
    assert listed == {bucket.companion, junk}  # the companion in use stays

    found, stats, _ = await fsck(store, codec)
    assert found == {("orphan-companion", junk, None)}
    assert stats.tags.verified == 4


async def test_special_files_and_xattrs_are_checked_not_plain(
    make_fs: FsFactory, store: CosStore, codec: EnvelopeCodec
) -> None:
    fs = await make_fs()
    await fs.mknod(ROOT, b"fifo", stat.S_IFIFO | 0o640, 0, 0, 0)
    await fs.mknod(ROOT, b"chr", stat.S_IFCHR | 0o600, os.makedev(1, 3), 0, 0)
    await write_file(fs, "a", b"a")
    await write_file(fs, "b", b"b")
    a = await fs.lookup(ROOT, b"a")
    b = await fs.lookup(ROOT, b"b")
    await fs.setxattr(a.ino, b"user.x", b"1")
    await fs.setxattr(b.ino, b"user.x", b"2")
    d = await fs.mkdir(ROOT, b"d", 0o755, 0, 0)
    await fs.setxattr(d.ino, b"user.x", b"3")
    await fs.sync_all()
    found, stats, _ = await fsck(store, codec)
    # Special files are neither plain nor findings; a device node is a mode note.
    assert found == {("mode", "chr", None)}
    assert stats.special == 2
    assert stats.tags.verified == 2
    # A special file whose rdev changed, and a's field swapped for b's: attributes.
    bucket = Bucket(store, "")
    chr_meta = await bucket.meta("chr")
    await store.put("chr", b"", {**chr_meta, "rdev": str(os.makedev(8, 0))})
    ma, mb = await bucket.meta("a"), await bucket.meta("b")
    await bucket.set_meta("a", {**ma, XATTR_FIELD: mb[XATTR_FIELD]})
    found, _, _ = await fsck(store, codec, verify=False)
    assert ("attributes", "chr", None) in found
    assert ("attributes", "a", None) in found
    assert ("plain", "fifo", None) not in found
