"""Nothing lost: faults, outages, a full cache disk, bad input, and secrets kept out of logs."""

from __future__ import annotations

import base64
import errno
import os
import subprocess
import time
from pathlib import Path

import pytest
import trio

from cosencfs.crypto.ctr import DataKey, decrypt
from cosencfs.crypto.envelope import EnvelopeCodec
from cosencfs.crypto.keyfiles import load_aes_key_file
from cosencfs.server import LocalCosServer
from cosencfs.store.cos import CosStore
from tests.testlib import (
    SECRET_KEY,
    MountFactory,
    new_key_file,
    start_server,
)

pytestmark = pytest.mark.mount


def tree_workload(root: Path, src: Path) -> None:
    """Ordinary tools through the mount: copies, renames, deletes, overwrites."""

    def sh(cmd: str) -> None:
        done = subprocess.run(
            cmd, shell=True, cwd=root, capture_output=True, text=True, timeout=300, check=False
        )
        assert done.returncode == 0, f"{cmd}: {done.stderr}"

    sh(f"cp -r {src} a && cp -r {src} b && mv b/big.bin b/big2.bin && mv a c")
    sh("rm -r c/sub && printf 'tail' >> b/small.txt && truncate -s 1000 b/big2.bin")
    sh(
        f"cp {src}/big.bin overwrite.bin && dd if={src}/small.txt of=overwrite.bin "
        "bs=1 seek=70000 conv=notrunc status=none"
    )


def make_src(tmp: Path) -> Path:
    src = tmp / "src"
    (src / "sub").mkdir(parents=True)
    (src / "big.bin").write_bytes(os.urandom(300_000))
    (src / "small.txt").write_text("small\n")
    (src / "sub" / "x").write_bytes(os.urandom(5000))
    return src


def read_tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_workload_is_byte_identical_with_10_percent_faults(
    mounts: MountFactory, server: LocalCosServer, tmp_path: Path
) -> None:
    src = make_src(tmp_path)
    clean = mounts(name="clean")
    tree_workload(clean.mountpoint, src)
    want = read_tree(clean.mountpoint)
    assert clean.umount() == 0
    # Same workload under a prefix-less second bucket state: wipe and redo with faults.
    server.set_faults(0.10, latency_ms=5)
    faulty = mounts(name="faulty", prefix="under-faults")
    tree_workload(faulty.mountpoint, src)
    assert read_tree(faulty.mountpoint) == want
    assert faulty.umount() == 0
    failed = server.stats()
    server.set_faults(0.0)
    check = mounts(name="check", prefix="under-faults", cache="cold")
    assert read_tree(check.mountpoint) == want
    assert sum(failed.values()) > 0


def test_server_down_for_30_seconds(
    mounts: MountFactory, server: LocalCosServer, tmp_path: Path
) -> None:
    deadline = 3.0
    other = mounts(name="other")
    uncached = os.urandom(100_000)
    (other.mountpoint / "uncached.bin").write_bytes(uncached)
    assert other.umount() == 0
    m = mounts(extra=["--request-deadline", str(deadline), "--dir-ttl", "3600"])
    assert "uncached.bin" in os.listdir(m.mountpoint)
    cached = os.urandom(300_000)
    (m.mountpoint / "cached.bin").write_bytes(cached)
    os.setxattr(m.mountpoint, b"user.cosencfs.sync", b"1")
    assert (m.mountpoint / "cached.bin").read_bytes() == cached

    root, port = server.root, server.port
    server.stop()
    down_at = time.monotonic()
    restarted = None
    try:
        fresh = os.urandom(200_000)
        (m.mountpoint / "written-while-down.bin").write_bytes(fresh)  # into the cache
        assert (m.mountpoint / "cached.bin").read_bytes() == cached
        t0 = time.monotonic()
        with pytest.raises(OSError) as e:
            (m.mountpoint / "uncached.bin").read_bytes()
        assert e.value.errno == errno.EIO
        # open() revalidation and the fetch each give up after the deadline.
        assert time.monotonic() - t0 < 2 * deadline + 5
        time.sleep(max(0.0, 30 - (time.monotonic() - down_at)))
        restarted = start_server(root, port=port)
        os.setxattr(m.mountpoint, b"user.cosencfs.sync", b"1")
        assert (m.mountpoint / "uncached.bin").read_bytes() == uncached
        assert m.umount() == 0
        check = mounts(name="check", cache="cold")
        assert (check.mountpoint / "written-while-down.bin").read_bytes() == fresh
        assert (check.mountpoint / "cached.bin").read_bytes() == cached
        assert check.umount() == 0
    finally:
        for mm in mounts.mounts:
            mm.cleanup()
        if restarted is not None:
            restarted.stop()


def test_disk_full_in_the_cache_gives_enospc(
    mounts: MountFactory, server: LocalCosServer, tmp_path: Path
) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs")
    cache = tmp_path / "smallcache"
    cache.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(cache)], check=True)
    try:
        m = mounts(cache="smallcache", extra=["--writeback-delay", "3600"])
        first = os.urandom(1_000_000)
        (m.mountpoint / "first.bin").write_bytes(first)

        def fill() -> None:
            with open(m.mountpoint / "huge.bin", "wb") as f:
                for _ in range(20):
                    f.write(os.urandom(1_000_000))

        with pytest.raises(OSError) as e:
            fill()
        assert e.value.errno == errno.ENOSPC
        assert (m.mountpoint / "first.bin").read_bytes() == first
        (m.mountpoint / "huge.bin").unlink()
        assert m.umount() == 0
    finally:
        for mm in mounts.mounts:
            mm.cleanup()
        subprocess.run(["umount", "-l", str(cache)], check=False)
    m2 = mounts(cache="after")
    assert (m2.mountpoint / "first.bin").read_bytes() == first
    assert not (m2.mountpoint / "huge.bin").exists()


def _mount_log_lines(log: str, needle: str) -> list[str]:
    return [line for line in log.splitlines() if needle in line]


def test_bad_objects_give_eio_and_one_log_line(
    mounts: MountFactory, store: CosStore, codec: EnvelopeCodec, tmp_path: Path
) -> None:
    async def setup() -> None:
        dk = DataKey.generate()
        good = b"good data " * 100
        await store.put("ok.bin", decrypt(dk, 0, good), codec.seal(dk))
        await store.put("plain.txt", b"written by cosfs\n", {})
        await store.put(
            "java.bin",
            b"\0" * 32,
            {
                "client-side-encryption-key": base64.b64encode(b"k" * 32).decode(),
                "client-side-encryption-start": base64.b64encode(b"i" * 16).decode(),
                "client-side-encryption-cek-alg": "AES/CTR/NoPadding",
            },
        )
        meta = codec.seal(dk)
        meta["client-side-encryption-iv"] = "!!not base64!!"
        await store.put("damaged.bin", decrypt(dk, 0, good), meta)
        meta = {**codec.seal(dk), "cosencfs-size": str(len(good))}
        await store.put("truncated.bin", decrypt(dk, 0, good)[:500], meta)

    trio.run(setup)
    m = mounts()
    root = m.mountpoint
    assert (root / "ok.bin").read_bytes() == b"good data " * 100
    # A plain object is refused unless --allow-plaintext (tests/security).
    assert os.getxattr(root / "plain.txt", b"user.cosencfs.format") == b"plain"
    assert os.getxattr(root / "ok.bin", b"user.cosencfs.format") == b"cosencfs"
    assert os.getxattr(root / "java.bin", b"user.cosencfs.format") == b"foreign"
    for name in ("java.bin", "damaged.bin", "truncated.bin", "plain.txt"):
        for _ in range(3):
            with pytest.raises(OSError) as e:
                (root / name).read_bytes()
            assert e.value.errno == errno.EIO
    log = m.log()
    for name, why in (
        ("java.bin", "Java"),
        ("damaged.bin", "iv"),
        ("truncated.bin", "500 bytes"),
        ("plain.txt", "without an encryption envelope"),
    ):
        lines = _mount_log_lines(log, name)
        assert len(lines) == 1, (name, lines)
        assert why in lines[0], lines[0]


def test_wrong_master_key(mounts: MountFactory, tmp_path: Path) -> None:
    m = mounts()
    (m.mountpoint / "secret.txt").write_text("top secret\n")
    assert m.umount() == 0
    other = new_key_file(tmp_path / "other.key")
    m2 = mounts(key_file=other, cache="other")
    with pytest.raises(OSError) as e:
        (m2.mountpoint / "secret.txt").read_bytes()
    assert e.value.errno == errno.EIO
    lines = _mount_log_lines(m2.log(), "secret.txt")
    assert len(lines) == 1, lines
    assert "key" in lines[0], lines


def test_key_file_readable_by_others_is_refused(
    mounts: MountFactory, tmp_path: Path, server: LocalCosServer
) -> None:
    key = new_key_file(tmp_path / "open.key")
    key.chmod(0o644)
    m = mounts(key_file=key, start=False)
    with pytest.raises(RuntimeError, match="chmod 600"):
        m.start()


def test_no_secret_plaintext_or_key_in_cache_or_debug_log(
    mounts: MountFactory, store: CosStore, key_file: Path, tmp_path: Path
) -> None:
    m = mounts(extra=["--debug", "all"])
    # The directories cosencfs creates are private (the base given by the user stays as is).
    made = [p for p in m.cache_dir.rglob("*") if p.is_dir()]
    assert made
    assert all(p.stat().st_mode & 0o777 == 0o700 for p in made)
    opts = next(
        line for line in Path("/proc/mounts").read_text().splitlines() if str(m.mountpoint) in line
    )
    assert "default_permissions" in opts
    assert "allow_other" not in opts
    plain = os.urandom(200_000)
    marker = b"MARKER-" + os.urandom(8).hex().encode()
    (m.mountpoint / "a.bin").write_bytes(plain)
    (m.mountpoint / "b.txt").write_bytes(marker * 50)
    assert (m.mountpoint / "a.bin").read_bytes() == plain
    os.setxattr(m.mountpoint, b"user.cosencfs.sync", b"1")
    (m.mountpoint / "a.bin").rename(m.mountpoint / "c.bin")
    assert m.umount() == 0
    codec = EnvelopeCodec(load_aes_key_file(key_file))

    async def data_keys() -> list[bytes]:
        out = []
        for key in ("c.bin", "b.txt"):
            dk = codec.open(dict((await store.head(key)).metadata))
            out += [dk.key, dk.iv]
        return out

    secrets = trio.run(data_keys)
    needles = [
        SECRET_KEY.encode(),
        key_file.read_bytes().strip(),
        base64.b64decode(key_file.read_bytes()),
        marker,
        plain[1000:1064],
    ]
    for k in secrets:
        needles += [k, k.hex().encode(), base64.b64encode(k)]
    blobs = [p.read_bytes() for p in m.cache_dir.rglob("*") if p.is_file()]
    log = m.log().encode()
    assert b"DEBUG" in log
    for needle in needles:
        for blob in blobs:
            assert needle not in blob
        assert needle not in log
    for word in (b"q-signature", b"q-sign-time", b"Authorization", b"sign="):
        assert word not in log


def test_concurrent_writers_and_readers(mounts: MountFactory, tmp_path: Path) -> None:
    m = mounts()
    root = m.mountpoint
    script = tmp_path / "writer.py"
    script.write_text(
        "import os, sys\n"
        "root, n = sys.argv[1], int(sys.argv[2])\n"
        "own = os.path.join(root, f'own{n}.txt')\n"
        "shared = os.open(os.path.join(root, 'shared.bin'), os.O_RDWR | os.O_CREAT, 0o644)\n"
        "for i in range(200):\n"
        "    with open(own, 'a') as f:\n"
        "        f.write(f'{n}:{i}\\n')\n"
        "    os.pwrite(shared, bytes([65 + n]) * 100, (i * 4 + n) * 100)\n"
        "os.fsync(shared)\n"
        "os.close(shared)\n"
    )
    procs = [subprocess.Popen(["python3", str(script), str(root), str(n)]) for n in range(4)]
    assert [p.wait(120) for p in procs] == [0, 0, 0, 0]
    shared = (root / "shared.bin").read_bytes()
    assert len(shared) == 800 * 100
    for i in range(200):
        for n in range(4):
            off = (i * 4 + n) * 100
            assert shared[off : off + 100] == bytes([65 + n]) * 100
    for n in range(4):
        lines = (root / f"own{n}.txt").read_text().splitlines()
        assert lines == [f"{n}:{i}" for i in range(200)]

    # Rename and unlink while a file is open for writing.
    with open(root / "moving.txt", "w") as f:
        f.write("before ")
        f.flush()
        os.rename(root / "moving.txt", root / "moved.txt")
        f.write("after")
    assert (root / "moved.txt").read_text() == "before after"
    with open(root / "doomed.txt", "w") as f:
        f.write("x" * 1000)
        f.flush()
        os.unlink(root / "doomed.txt")
        f.write("y" * 1000)
    assert not (root / "doomed.txt").exists()

    # Readers while a large file is being uploaded.
    big = os.urandom(40 * 1024 * 1024)
    (root / "big.bin").write_bytes(big)
    os.sync()
    for _ in range(3):
        assert (root / "big.bin").read_bytes() == big
    assert m.umount() == 0
    m2 = mounts(cache="cold")
    assert (m2.mountpoint / "big.bin").read_bytes() == big
    assert (m2.mountpoint / "moved.txt").read_text() == "before after"
    assert sorted(p.name for p in m2.mountpoint.iterdir()) == sorted(
        ["big.bin", "moved.txt", "shared.bin"] + [f"own{n}.txt" for n in range(4)]
    )


def test_interrupted_multipart_upload_resumes_from_its_missing_parts(
    mounts: MountFactory, server: LocalCosServer, tmp_path: Path
) -> None:
    import threading

    cfg = tmp_path / "serial.toml"
    cfg.write_text("[fs]\nstream_uploads = false\npart_concurrency = 1\n")
    m = mounts(extra=["--writeback-delay", "3600", "--config", str(cfg)])
    data = os.urandom(40 * 1024 * 1024)  # five 8 MiB parts
    (m.mountpoint / "big.bin").write_bytes(data)  # closed: journaled, not uploaded
    server.set_faults(0.0, latency_ms=300)

    def sync() -> None:
        try:
            os.setxattr(m.mountpoint, b"user.cosencfs.sync", b"1")
        except OSError:
            pass  # the daemon is killed under it

    t = threading.Thread(target=sync, daemon=True)
    t.start()
    deadline = time.monotonic() + 60
    while server.stats().get("UploadPart", 0) < 3:  # two done, the third in flight
        assert time.monotonic() < deadline
        time.sleep(0.02)
    m.kill()
    t.join(10)
    time.sleep(1.0)  # let the server finish what it was sent
    server.set_faults(0.0, latency_ms=0)
    server.reset_stats()
    m2 = mounts(cache=m.cache_dir.name)  # recovery before the mount goes live
    stats = server.stats()
    assert stats.get("ListParts") == 1
    assert stats.get("CompleteMultipartUpload") == 1
    assert 1 <= stats.get("UploadPart", 0) <= 3, stats  # not all five again
    assert m2.umount() == 0
    check = mounts(cache="cold")
    assert (check.mountpoint / "big.bin").read_bytes() == data


def test_umount_with_uploads_failing_keeps_the_data(
    mounts: MountFactory, server: LocalCosServer
) -> None:
    import subprocess as sp
    import sys

    m = mounts(extra=["--writeback-delay", "3600", "--request-deadline", "2"])
    (m.mountpoint / "kept.txt").write_text("not lost\n")
    root, port = server.root, server.port
    server.stop()
    restarted = None
    try:
        done = sp.run(
            [sys.executable, "-m", "cosencfs", "umount", str(m.mountpoint)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 1
        assert "stay in the cache journal" in done.stderr
        assert m.proc is not None
        assert m.proc.wait(60) == 3
        assert "could not be uploaded" in m.log()
        restarted = start_server(root, port=port)
        m2 = mounts(cache=m.cache_dir.name)
        assert (m2.mountpoint / "kept.txt").read_text() == "not lost\n"
        assert m2.umount() == 0
        check = mounts(cache="cold")
        assert (check.mountpoint / "kept.txt").read_text() == "not lost\n"
    finally:
        for mm in mounts.mounts:
            mm.cleanup()
        if restarted is not None:
            restarted.stop()
