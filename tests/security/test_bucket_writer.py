"""Whoever can write to the bucket without the key (items 8-10 of issue 12).

Objects are put straight into the bucket, as such a writer would, then met
through the filesystem layer (every rule, cheaply) and through a real mount
(the review's reproductions: EIO, one log line, the name still listed).
"""

from __future__ import annotations

import errno
import functools
import os
import stat
import subprocess
from pathlib import Path

import pytest
import trio

from cosencfs.crypto.ctr import DataKey, encrypt
from cosencfs.crypto.envelope import EnvelopeCodec
from cosencfs.errors import FsError, RefusedError
from cosencfs.fs.core import Filesystem
from cosencfs.server import LocalCosServer
from cosencfs.server.admin import admin_request
from cosencfs.store.cos import CosStore
from cosencfs.tools.fsck import Category, Finding, Fsck
from tests.security._sec_helpers import ROOT_INO, count_lines, fs_names, fs_read, wait_for
from tests.testlib import SECRET_ID, SECRET_KEY, FsFactory, MountFactory

MIB = 1024 * 1024
SCRIPT = b"#!/bin/sh\necho owned\n"


async def put_encrypted(
    store: CosStore, codec: EnvelopeCodec, key: str, plain: bytes, mode: int
) -> None:
    """An object under our key with attributes of the writer's choosing."""
    dk = DataKey.generate()
    await store.put(key, encrypt(dk, 0, plain), {**codec.seal(dk), "mode": str(mode)})


async def lookup(fs: Filesystem, path: str) -> int:
    ino = ROOT_INO
    for part in path.split("/"):
        ino = (await fs.lookup(ino, part.encode())).ino
    return ino


async def open_refused(fs: Filesystem, path: str) -> RefusedError:
    ino = await lookup(fs, path)
    with pytest.raises(RefusedError) as err:
        await fs.open(ino, os.O_RDONLY)
    return err.value


# ---------------------------------------------------------------- item 8: plaintext


async def test_plaintext_object_is_listed_but_not_served(
    make_fs: FsFactory, store: CosStore
) -> None:
    await store.put("docs/run.sh", SCRIPT, {"mode": str(stat.S_IFREG | 0o755)})
    await store.put("docs/empty.txt", b"", {})  # cosfs's empty file: nothing to refuse
    await store.put("docs/replace.me", SCRIPT, {})
    fs = await make_fs()
    assert await fs_names(fs, await lookup(fs, "docs")) == ["empty.txt", "replace.me", "run.sh"]
    entry = await fs.getattr(await lookup(fs, "docs/run.sh"))
    assert stat.S_ISREG(entry.mode)
    assert entry.size == len(SCRIPT)
    refused = await open_refused(fs, "docs/run.sh")
    assert "docs/run.sh" in str(refused)
    assert "without an encryption envelope" in str(refused)
    assert "--allow-plaintext" in str(refused)
    for flags in (os.O_RDWR, os.O_WRONLY | os.O_APPEND):
        with pytest.raises(RefusedError):
            await fs.open(await lookup(fs, "docs/run.sh"), flags)
    # truncate(2) would re-encrypt the writer's bytes under our key: refused too.
    with pytest.raises(RefusedError):
        await fs.setattr(await lookup(fs, "docs/run.sh"), size=5)
    assert await fs_read(fs, await lookup(fs, "docs/empty.txt")) == b""
    # O_TRUNC replaces it with new, encrypted content without reading it.
    fh, _ = await fs.open(await lookup(fs, "docs/replace.me"), os.O_WRONLY | os.O_TRUNC)
    await fs.write(fh, 0, b"mine now")
    await fs.release(fh)
    assert await fs_read(fs, await lookup(fs, "docs/replace.me")) == b"mine now"
    await fs.unlink(await lookup(fs, "docs"), b"replace.me")
    # The owner can still move it away and delete it.
    docs = await lookup(fs, "docs")
    await fs.rename(docs, b"run.sh", ROOT_INO, b"quarantined.sh", 0)
    await fs.unlink(ROOT_INO, b"quarantined.sh")
    assert await fs_names(fs, docs) == ["empty.txt"]


async def test_plaintext_objects_are_served_when_allowed(
    make_fs: FsFactory, store: CosStore
) -> None:
    await store.put("cosfs.txt", b"written by cosfs", {})
    await store.put("link", b"cosfs.txt", {"mode": str(stat.S_IFLNK | 0o777)})
    fs = await make_fs(allow_plaintext=True)
    assert await fs_read(fs, await lookup(fs, "cosfs.txt")) == b"written by cosfs"
    assert await fs.readlink(await lookup(fs, "link")) == b"cosfs.txt"


async def test_plaintext_symlink_is_refused_without_a_get(
    make_fs: FsFactory, store: CosStore
) -> None:
    await store.put("link", b"/etc/shadow", {"mode": str(stat.S_IFLNK | 0o777)})
    fs = await make_fs()
    ino = await lookup(fs, "link")
    assert stat.S_ISLNK((await fs.getattr(ino)).mode)  # listed, as a symlink
    before = store.counters.snapshot()
    with pytest.raises(RefusedError, match="symlink target without an encryption envelope"):
        await fs.readlink(ino)
    assert "GetObject" not in store.counters.snapshot().minus(before).requests


# ---------------------------------------------------------------- item 9: modes and types


async def test_setuid_and_setgid_from_metadata_are_dropped(
    make_fs: FsFactory, store: CosStore, codec: EnvelopeCodec
) -> None:
    await put_encrypted(store, codec, "suid", b"#!/bin/sh\n", stat.S_IFREG | 0o6755)
    await store.put("d/", b"", {"mode": str(stat.S_IFDIR | 0o2775)})
    fs = await make_fs()
    assert stat.S_IMODE((await fs.getattr(await lookup(fs, "suid"))).mode) == 0o755
    assert stat.S_IMODE((await fs.getattr(await lookup(fs, "d"))).mode) == 0o775
    trusting = await make_fs(trust_metadata_modes=True)
    assert stat.S_IMODE((await trusting.getattr(await lookup(trusting, "suid"))).mode) == 0o6755
    assert stat.S_IMODE((await trusting.getattr(await lookup(trusting, "d"))).mode) == 0o2775


async def test_file_types_from_metadata(
    make_fs: FsFactory, store: CosStore, codec: EnvelopeCodec
) -> None:
    kinds = {
        "fifo": stat.S_IFIFO | 0o644,
        "sock": stat.S_IFSOCK | 0o644,
        "sda": stat.S_IFBLK | 0o666,
        "tty": stat.S_IFCHR | 0o666,
        "odd": 0o150000 | 0o644,  # no such type
    }
    for name, mode in kinds.items():
        await store.put(name, b"", {"mode": str(mode)})
    await put_encrypted(store, codec, "mem", b"\0" * 100, stat.S_IFCHR | 0o666)
    nodev = await make_fs()
    assert await fs_names(nodev) == sorted([*kinds, "mem"])
    shown = {"fifo": stat.S_IFIFO, "sock": stat.S_IFSOCK, "sda": stat.S_IFBLK, "tty": stat.S_IFCHR}
    for name, ftype in shown.items():
        # The types the cosfs way; device nodes are inert on a nodev mount,
        # and the kernel opens them all itself (the mount serves no content).
        entry = await nodev.getattr(await lookup(nodev, name))
        assert stat.S_IFMT(entry.mode) == ftype, name
        assert entry.size == 0
        with pytest.raises(FsError) as info:
            await nodev.open(entry.ino, os.O_RDONLY)
        assert info.value.errno == errno.ENXIO
    # A "device" with content is a regular file whose content is refused.
    assert stat.S_ISREG((await nodev.getattr(await lookup(nodev, "mem"))).mode)
    assert "no content" in str(await open_refused(nodev, "mem"))
    await open_refused(nodev, "odd")
    # -o dev: device nodes would be live; these carry no attribute tag of
    # this key, so they are regular files to the kernel, and refused.
    dev = await make_fs(devices=True)
    for name in ("sda", "tty"):
        assert stat.S_ISREG((await dev.getattr(await lookup(dev, name))).mode)
        refused = await open_refused(dev, name)
        assert "-o dev" in str(refused), name
    for name in ("fifo", "sock"):
        assert not stat.S_ISREG((await dev.getattr(await lookup(dev, name))).mode)


# ---------------------------------------------------------------- item 10: symlink size


async def test_oversized_symlink_is_refused_from_its_size(
    make_fs: FsFactory, store: CosStore, codec: EnvelopeCodec
) -> None:
    await put_encrypted(store, codec, "big", os.urandom(8 * MIB), stat.S_IFLNK | 0o777)
    fs = await make_fs()
    before = store.counters.snapshot()
    assert await fs_names(fs) == ["big"]
    entry = await fs.getattr(await lookup(fs, "big"))
    # Not a symlink (a target has at most 4095 bytes): a file that open refuses.
    assert stat.S_ISREG(entry.mode)
    refused = await open_refused(fs, "big")
    assert "cannot be a symlink target" in str(refused)
    spent = store.counters.snapshot().minus(before)
    assert spent.bytes_down == 0, spent


async def test_readlink_is_one_ranged_get_of_at_most_4096_bytes(
    make_fs: FsFactory, store: CosStore, codec: EnvelopeCodec, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = "a/" * 2047 + "z"  # 4095 bytes: the longest target there is
    fs1 = await make_fs()
    await fs1.symlink(ROOT_INO, b"long", target.encode(), 0, 0)
    await fs1.symlink(ROOT_INO, b"short", b"x", 0, 0)
    fs = await make_fs()
    gets: list[tuple[object, ...]] = []
    real_get = store.get

    async def spy(key: str, start: int = 0, end: int | None = None, **kw: object) -> bytes:
        gets.append((key, start, end))
        return await real_get(key, start, end, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "get", spy)
    for name, want in (("long", target), ("short", "x")):
        ino = await lookup(fs, name)
        before = store.counters.snapshot()
        assert await fs.readlink(ino) == want.encode()
        spent = store.counters.snapshot().minus(before)
        # One GET, as before the bound: it replaces the whole-object GET.
        assert {k: v for k, v in spent.requests.items() if v} == {"GetObject": 1}
    assert gets == [("long", 0, 4096), ("short", 0, 4096)]


async def test_symlink_body_beyond_the_bound_is_refused(
    make_fs: FsFactory, store: CosStore, codec: EnvelopeCodec, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The size seen (listing, HEAD) said a target; the body says more: refused."""
    await put_encrypted(store, codec, "link", b"t" * 100, stat.S_IFLNK | 0o777)
    fs = await make_fs()
    ino = await lookup(fs, "link")
    real_get = store.get

    async def longer(key: str, start: int = 0, end: int | None = None, **kw: object) -> bytes:
        body = await real_get(key, start, end, **kw)  # type: ignore[arg-type]
        return body + b"t" * (4096 - len(body))

    monkeypatch.setattr(store, "get", longer)
    with pytest.raises(RefusedError, match="4096 bytes"):
        await fs.readlink(ino)


# ---------------------------------------------------------------- fsck


async def test_fsck_reports_what_the_mount_refuses(store: CosStore, codec: EnvelopeCodec) -> None:
    await store.put("docs/run.sh", SCRIPT, {"mode": str(stat.S_IFREG | 0o755)})
    await store.put("plain-link", b"/etc/shadow", {"mode": str(stat.S_IFLNK | 0o777)})
    await put_encrypted(store, codec, "suid", b"x", stat.S_IFREG | 0o4755)
    await store.put("sda", b"", {"mode": str(stat.S_IFBLK | 0o660)})
    await store.put("odd", b"", {"mode": str(0o150644)})
    await put_encrypted(store, codec, "big-link", b"t" * 5000, stat.S_IFLNK | 0o777)
    found: list[Finding] = []
    await Fsck(store, codec, report=found.append).run()
    by_key = {(f.key, f.category) for f in found}
    assert ("docs/run.sh", Category.PLAIN) in by_key
    assert ("plain-link", Category.PLAIN) in by_key
    assert ("suid", Category.MODE) in by_key
    assert ("sda", Category.MODE) in by_key
    assert ("odd", Category.MODE) in by_key
    assert ("big-link", Category.SIZE) in by_key


# ---------------------------------------------------------------- real mounts


def eio(path: Path) -> bool:
    try:
        path.read_bytes()
    except OSError as exc:
        return exc.errno == errno.EIO
    return False


@pytest.mark.mount
def test_mount_refuses_a_plaintext_object_with_one_log_line(
    mounts: MountFactory, store: CosStore
) -> None:
    """The review's plaintext docs/run.sh (mode 0755) meets a mount."""
    trio.run(store.put, "docs/run.sh", SCRIPT, {"mode": str(stat.S_IFREG | 0o755)})
    m = mounts()
    run_sh = m.mountpoint / "docs" / "run.sh"
    assert os.listdir(m.mountpoint / "docs") == ["run.sh"]
    assert stat.S_IMODE(run_sh.stat().st_mode) == 0o755
    for _ in range(3):
        assert eio(run_sh)
    with pytest.raises(OSError) as err:  # exec opens it too
        subprocess.run([str(run_sh)], capture_output=True, check=False)
    assert err.value.errno == errno.EIO
    wait_for(lambda: "refused 'docs/run.sh'" in m.log(), what="the refusal in the log")
    assert count_lines(m.log(), "refused 'docs/run.sh'") == 1
    assert "without an encryption envelope" in m.log()
    # The owner moves it out of the way; it is still the same (refused) object.
    os.rename(run_sh, m.mountpoint / "quarantine.sh")
    assert eio(m.mountpoint / "quarantine.sh")
    allowing = mounts(extra=["--allow-plaintext"])
    assert (allowing.mountpoint / "quarantine.sh").read_bytes() == SCRIPT


@pytest.mark.mount
def test_mount_with_dev_refuses_device_nodes(
    mounts: MountFactory, store: CosStore, codec: EnvelopeCodec
) -> None:
    trio.run(store.put, "sda", b"", {"mode": str(stat.S_IFBLK | 0o666), "rdev": str(8 << 8)})
    trio.run(put_encrypted, store, codec, "suid", b"#!/bin/sh\n", stat.S_IFREG | 0o4755)
    nodev = mounts()
    st = (nodev.mountpoint / "sda").stat()
    # A block device to stat, inert: the kernel refuses to open it on a nodev mount.
    assert stat.S_ISBLK(st.st_mode)
    assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == (8, 0)
    with pytest.raises(PermissionError):
        (nodev.mountpoint / "sda").read_bytes()
    assert stat.S_IMODE((nodev.mountpoint / "suid").stat().st_mode) == 0o755
    dev = mounts(extra=["-o", "dev"])
    assert "sda" in os.listdir(dev.mountpoint)
    # Written without the key (no attribute tag): not a device there, refused.
    assert stat.S_ISREG((dev.mountpoint / "sda").stat().st_mode)
    assert eio(dev.mountpoint / "sda")
    wait_for(lambda: "refused 'sda'" in dev.log(), what="the refusal in the log")
    assert "-o dev" in dev.log()
    # A device node this key wrote (mknod, as root) is live on a -o dev mount.
    os.mknod(dev.mountpoint / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    dev.umount()
    cold = mounts(extra=["-o", "dev"])
    st = (cold.mountpoint / "null").stat()
    assert stat.S_ISCHR(st.st_mode)
    assert st.st_rdev == os.makedev(1, 3)
    (cold.mountpoint / "null").write_bytes(b"gone")
    assert (cold.mountpoint / "null").read_bytes() == b""


@pytest.mark.mount
def test_ls_la_of_a_huge_symlink_downloads_nothing(
    mounts: MountFactory, store: CosStore, codec: EnvelopeCodec, server: LocalCosServer
) -> None:
    big = os.urandom(32 * MIB)
    trio.run(put_encrypted, store, codec, "links/big", big, stat.S_IFLNK | 0o777)
    m = mounts()
    os.symlink("../elsewhere", m.mountpoint / "links" / "normal")
    admin = functools.partial(admin_request, secret_id=SECRET_ID, secret_key=SECRET_KEY)
    remount = mounts()
    assert admin(server.url, "POST", "/_cosencfs/reset-stats")[0] == 200
    listing = subprocess.run(
        ["ls", "-la", str(remount.mountpoint / "links")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert listing.returncode == 0, listing.stderr
    assert "normal -> ../elsewhere" in listing.stdout
    status, stats = admin(server.url, "GET", "/_cosencfs/stats")
    assert status == 200, stats
    assert stats["bytes_out"] < 64 * 1024, stats
    assert eio(remount.mountpoint / "links" / "big")
    wait_for(lambda: "refused 'links/big'" in remount.log(), what="the refusal in the log")
