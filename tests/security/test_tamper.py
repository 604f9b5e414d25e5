"""Whoever can write to the bucket without the key: every tamper class, through real mounts.

Files are written through a mount; the plain COS SDK (``CosS3Client``, no
key) then alters the bucket the way an attacker with write access can; a
second mount with a cold cache (its own, empty cache directory) reads each
file back, whole and ranged.  The documented results (docs/format.md, 12.10):
content that does not verify is EIO plus one log line naming the object
(and the chunk); attributes whose tag fails give the mount's defaults, the
content still readable; stripped or rolled-back objects are refused by a
mount that remembers them (warm cache), and by ``--require-integrity``.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import trio
from qcloud_cos import CosS3Client

from cosencfs.crypto.integrity import CHUNK_SIZE, TAG_FIELDS, TAGS_REF_FIELD
from cosencfs.fs.tagcheck import COMPANION_DIR
from cosencfs.server import LocalCosServer
from cosencfs.store.cos import CosStore
from tests.security._sec_helpers import count_lines, wait_for
from tests.testlib import BUCKET, REGION, Mount, MountFactory, sdk_config

pytestmark = pytest.mark.mount

MIB = 1024 * 1024
#: Four chunks: tags inline in the metadata.
SMALL = 4 * CHUNK_SIZE - 1000
#: 49 chunks: tags in a companion object.
BIG = 3 * MIB + 12_345
META = "x-cos-meta-"


class Attacker:
    """The plain SDK with the bucket's credentials and no encryption key."""

    def __init__(self, server: LocalCosServer) -> None:
        self.session = requests.Session()
        conf = sdk_config(server.port)
        self.client = CosS3Client(conf, retry=0, session=self.session)

    def get(self, key: str) -> tuple[bytes, dict[str, str]]:
        rt = self.client.get_object(Bucket=BUCKET, Key=key)
        body: bytes = rt["Body"].get_raw_stream().read()
        meta = {k.lower(): v for k, v in rt.items() if k.lower().startswith(META)}
        return body, meta

    def put(self, key: str, body: bytes, meta: dict[str, str]) -> None:
        self.client.put_object(Bucket=BUCKET, Key=key, Body=body, Metadata=meta)

    def set_meta(self, key: str, meta: dict[str, str]) -> None:
        """A metadata-only copy onto itself (the body is not touched)."""
        source = {"Bucket": BUCKET, "Key": key, "Region": REGION}
        self.client.copy_object(
            Bucket=BUCKET, Key=key, CopySource=source, CopyStatus="Replaced", Metadata=meta
        )

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=BUCKET, Key=key)

    def companion_of(self, key: str) -> str:
        _, meta = self.get(key)
        return f"{COMPANION_DIR}/{meta[META + TAGS_REF_FIELD]}"


@pytest.fixture
def attacker(server: LocalCosServer) -> Iterator[Attacker]:
    a = Attacker(server)
    yield a
    a.session.close()


def data(name: str, size: int) -> bytes:
    return (name.encode() * (size // len(name) + 1))[:size]


def write_files(m: Mount, files: dict[str, bytes]) -> None:
    for name, body in files.items():
        (m.mountpoint / name).write_bytes(body)
    os.sync()
    assert m.umount() == 0


def read_error(path: Path, offset: int = 0, length: int | None = None) -> int | None:
    """errno of reading ``path`` (all of it, or ``length`` bytes at ``offset``), None if it read."""
    try:
        with path.open("rb") as f:
            f.seek(offset)
            f.read() if length is None else f.read(length)
    except OSError as exc:
        return exc.errno
    return None


def write_synced(path: Path, body: bytes) -> None:
    """Write and fsync: the object is in the bucket when this returns."""
    with path.open("wb") as f:
        f.write(body)
        f.flush()
        os.fsync(f.fileno())


def ranged(path: Path, offset: int, length: int) -> bytes:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read(length)


def flip(body: bytes, at: int) -> bytes:
    return body[:at] + bytes([body[at] ^ 0x01]) + body[at + 1 :]


def test_content_tampering_is_eio_whole_and_ranged(
    mounts: MountFactory, attacker: Attacker, store: CosStore
) -> None:
    files = {
        "flip-small": data("flip-small", SMALL),
        "flip-big": data("flip-big", BIG),
        "envelope": data("envelope", SMALL),
        "swap-a": data("swap-a", SMALL),
        "swap-b": data("swap-b", SMALL + 7),
        "truncated": data("truncated", SMALL),
        "extended": data("extended", SMALL),
        "no-companion": data("no-companion", BIG),
        "bad-companion": data("bad-companion", BIG),
        "untouched": data("untouched", BIG),
    }
    write_files(mounts(), files)

    small_at = 2 * CHUNK_SIZE + 5  # in chunk 2
    body, meta = attacker.get("flip-small")
    attacker.put("flip-small", flip(body, small_at), meta)
    big_at = 40 * CHUNK_SIZE + 99  # in chunk 40
    body, meta = attacker.get("flip-big")
    attacker.put("flip-big", flip(body, big_at), meta)

    body, meta = attacker.get("envelope")
    iv = meta[META + "client-side-encryption-iv"]
    meta[META + "client-side-encryption-iv"] = ("B" if iv[0] != "B" else "C") + iv[1:]
    attacker.set_meta("envelope", meta)

    a, b = attacker.get("swap-a"), attacker.get("swap-b")
    attacker.put("swap-a", *b)
    attacker.put("swap-b", *a)

    body, meta = attacker.get("truncated")
    attacker.put("truncated", body[:-100], meta)
    body, meta = attacker.get("extended")
    attacker.put("extended", body + b"\0" * 100, meta)

    attacker.delete(attacker.companion_of("no-companion"))
    bad = attacker.companion_of("bad-companion")
    other = attacker.companion_of("untouched")
    attacker.put(bad, attacker.get(other)[0], {})

    cold = mounts()
    root = cold.mountpoint
    # One flipped byte: its chunk fails, whole or ranged; other chunks read.
    assert read_error(root / "flip-small") == errno.EIO
    assert read_error(root / "flip-small", small_at - 10, 4096) == errno.EIO
    assert ranged(root / "flip-small", 0, 4096) == files["flip-small"][:4096]
    assert read_error(root / "flip-big") == errno.EIO
    assert read_error(root / "flip-big", big_at, 1) == errno.EIO
    assert (
        ranged(root / "flip-big", 3 * CHUNK_SIZE, 4096)
        == files["flip-big"][3 * CHUNK_SIZE : 3 * CHUNK_SIZE + 4096]
    )
    for name in (
        "envelope",
        "swap-a",
        "swap-b",
        "truncated",
        "extended",
        "no-companion",
        "bad-companion",
    ):
        assert read_error(root / name) == errno.EIO, name
        assert read_error(root / name, CHUNK_SIZE, 4096) == errno.EIO, name
    assert (root / "untouched").read_bytes() == files["untouched"]

    wait_for(lambda: "chunk=40 key='flip-big'" in cold.log(), what="the chunk failure logged")
    log = cold.log()
    assert count_lines(log, "chunk=2 key='flip-small'") == 1, log
    assert count_lines(log, "chunk=40 key='flip-big'") == 1, log
    for needle in (
        "key='swap-a'",
        "object 'truncated' is 261044 bytes but was written with 261144",
        "object 'extended' is 261244 bytes",
        "the envelope was altered or damaged key='envelope'",
        "companion object holding the chunk tags is missing",
        "does not match the digest",
    ):
        assert needle in log, needle
    stats = mount_stats(cold)
    assert stats["chunk_failures"] >= 2
    # swap-a, swap-b, no-companion, bad-companion (the size and the envelope
    # are refused before the tags are looked at).
    assert stats["objects_refused"] >= 4


def mount_stats(m: Mount) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "cosencfs", "stats", "--json", str(m.mountpoint)],
        capture_output=True,
        check=True,
    )
    out: dict[str, Any] = json.loads(done.stdout)["integrity"]
    return out


def test_attribute_tampering_gives_defaults_and_readable_content(
    mounts: MountFactory, attacker: Attacker
) -> None:
    m = mounts()
    f = m.mountpoint / "attrs"
    f.write_bytes(b"content stays readable")
    os.chmod(f, 0o600)
    os.chown(f, 1234, 1234)
    keep = m.mountpoint / "kept"
    keep.write_bytes(b"x")
    os.chmod(keep, 0o640)
    os.sync()
    assert m.umount() == 0

    _, meta = attacker.get("attrs")
    meta[META + "mode"] = str(stat.S_IFREG | 0o4777)
    meta[META + "uid"] = "0"
    attacker.set_meta("attrs", meta)

    cold = mounts()
    st = (cold.mountpoint / "attrs").stat()
    # The mount's defaults (0644, the mounting user), not the altered values.
    assert stat.S_IMODE(st.st_mode) == 0o644
    assert st.st_uid == os.getuid()
    assert (cold.mountpoint / "attrs").read_bytes() == b"content stays readable"
    assert stat.S_IMODE((cold.mountpoint / "kept").stat().st_mode) == 0o640
    wait_for(lambda: "'attrs': attribute tag" in cold.log(), what="the attribute log line")
    assert count_lines(cold.log(), "default attributes apply") == 1


def strip(attacker: Attacker, key: str, flip_at: int | None = None) -> None:
    body, meta = attacker.get(key)
    meta = {k: v for k, v in meta.items() if k[len(META) :] not in TAG_FIELDS}
    attacker.put(key, body if flip_at is None else flip(body, flip_at), meta)


def test_stripped_tags_refused_by_a_warm_cache_and_by_require_integrity(
    mounts: MountFactory, attacker: Attacker
) -> None:
    m = mounts(cache="warm")
    body = data("stripped", SMALL)
    (m.mountpoint / "stripped").write_bytes(body)
    os.sync()
    assert m.umount() == 0
    strip(attacker, "stripped", flip_at=100)

    # The mount that wrote it remembers it tagged: refused (downgrade).
    warm = mounts(cache="warm")
    assert read_error(warm.mountpoint / "stripped") == errno.EIO
    wait_for(lambda: "tags stripped" in warm.log(), what="the downgrade log line")
    assert warm.umount() == 0
    # --require-integrity refuses every untagged object, cold cache or not.
    strict = mounts(extra=["--require-integrity"])
    assert read_error(strict.mountpoint / "stripped") == errno.EIO
    assert strict.umount() == 0
    # The documented limit: a cold cache without it reads an untagged object
    # as it reads SDK-written ones, bit flip included.
    cold = mounts()
    assert (cold.mountpoint / "stripped").read_bytes() == flip(body, 100)
    assert cold.umount() == 0
    # When another tool really rewrote it, a writer of the file accepts it.
    again = mounts(cache="warm")
    path = again.mountpoint / "stripped"
    assert read_error(path) == errno.EIO
    os.setxattr(path, "user.cosencfs.accept-untagged", b"1")
    assert path.read_bytes() == flip(body, 100)


def test_rollback_refused_by_the_mount_that_saw_it_replaced(
    mounts: MountFactory, attacker: Attacker
) -> None:
    m = mounts(cache="warm")
    f = m.mountpoint / "versioned"
    write_synced(f, b"version one")
    old = attacker.get("versioned")
    write_synced(f, b"version two, newer")
    assert m.umount() == 0
    attacker.put("versioned", *old)  # an older version it really had

    warm = mounts(cache="warm")
    assert read_error(warm.mountpoint / "versioned") == errno.EIO
    wait_for(lambda: "rollback" in warm.log(), what="the rollback log line")
    assert warm.umount() == 0
    # A mount that never saw version two cannot tell: it verifies.
    cold = mounts()
    assert (cold.mountpoint / "versioned").read_bytes() == b"version one"


def test_companions_hidden_and_reserved(mounts: MountFactory, store: CosStore) -> None:
    m = mounts()
    write_synced(m.mountpoint / "big", data("big", BIG))
    listed = trio.run(lambda: store.list_objects(f"{COMPANION_DIR}/"))
    assert len(listed.objects) == 1
    assert os.listdir(m.mountpoint) == ["big"]
    assert not (m.mountpoint / COMPANION_DIR).exists()
    for make in (
        lambda p: p.write_bytes(b"x"),
        lambda p: p.mkdir(),
        lambda p: p.symlink_to("big"),
        lambda p: os.rename(m.mountpoint / "big", p),
    ):
        with pytest.raises(OSError) as err:
            make(m.mountpoint / COMPANION_DIR)
        assert err.value.errno == errno.EPERM
    os.unlink(m.mountpoint / "big")
    os.sync()

    def gone() -> bool:
        return not trio.run(lambda: store.list_objects(f"{COMPANION_DIR}/")).objects

    wait_for(gone, what="the companion deleted with its file")
