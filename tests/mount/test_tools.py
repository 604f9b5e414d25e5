"""Real mounts used with ordinary tools; everything compared after a cold remount."""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import stat
import subprocess
from pathlib import Path

import pytest

from cosencfs.server import LocalCosServer
from tests.testlib import Mount, MountFactory, have, sdk_config

pytestmark = pytest.mark.mount


def sh(cmd: str, cwd: Path) -> str:
    done = subprocess.run(
        cmd, shell=True, cwd=cwd, capture_output=True, text=True, check=False, timeout=120
    )
    assert done.returncode == 0, (
        f"{cmd!r} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    )
    return done.stdout


def snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    """Everything a remount must preserve, by relative path."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            rel = str(p.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode))
            else:
                out[rel] = (
                    "file",
                    stat.S_IMODE(st.st_mode),
                    st.st_size,
                    st.st_mtime_ns,
                    p.read_bytes(),
                )
    return out


def plaintext_chunks(data: bytes, size: int = 32) -> set[bytes]:
    chunks = {data[i : i + size] for i in range(0, len(data) - size + 1, size)}
    return {c for c in chunks if len(set(c)) > 4}  # skip runs that zeros/holes could match


def assert_no_plaintext(cache_dir: Path, plaintexts: list[bytes]) -> None:
    """No 64-byte window of any plaintext appears in any cache file.

    Every 64-byte window of a plaintext contains one of its 32-byte chunks at
    a multiple of 32, so looking for those chunks at every offset suffices.
    """
    wanted: set[bytes] = set()
    for p in plaintexts:
        wanted |= plaintext_chunks(p)
    assert wanted
    checked = 0
    for path in cache_dir.rglob("*"):
        if not path.is_file():
            continue
        blob = path.read_bytes()
        checked += 1
        for i in range(len(blob) - 31):
            assert blob[i : i + 32] not in wanted, f"plaintext found in {path} at {i}"
    assert checked


@pytest.fixture
def mnt(mounts: MountFactory) -> Mount:
    return mounts()


def test_ordinary_tools_survive_a_cold_remount(mounts: MountFactory, tmp_path: Path) -> None:
    m = mounts()
    root = m.mountpoint
    src = tmp_path / "src"
    (src / "deep" / "er").mkdir(parents=True)
    payload = os.urandom(3 * 1024 * 1024 + 17)
    (src / "big.bin").write_bytes(payload)
    (src / "deep" / "er" / "small.txt").write_text("small\n")

    sh(f"cp -r {src} copied && cp {src}/big.bin big.bin && cmp big.bin {src}/big.bin", root)
    assert sh("cat copied/deep/er/small.txt", root) == "small\n"
    sh("mkdir -p a/b/c a/empty && touch a/b/c/t && chmod 600 a/b/c/t && chmod 700 a/b", root)
    sh("mv big.bin a/moved.bin && mv copied renamed", root)
    sh("ln -s a/moved.bin link && ln -s /nonexistent/target dangling", root)
    assert sh("readlink link", root).strip() == "a/moved.bin"
    sh("cmp link renamed/big.bin", root)
    sh("printf 'abcdefghij' > t.txt && truncate -s 4 t.txt && truncate -s 8 t.txt", root)
    assert (root / "t.txt").read_bytes() == b"abcd\0\0\0\0"
    sh("printf 'line1\\n' > log && printf 'line2\\n' >> log", root)
    assert (root / "log").read_text() == "line1\nline2\n"
    sh("dd if=/dev/zero of=dd.bin bs=4096 count=4 status=none", root)
    sh("printf 'XY' | dd of=dd.bin bs=1 seek=5000 conv=notrunc status=none", root)
    want = bytearray(16384)
    want[5000:5002] = b"XY"
    assert (root / "dd.bin").read_bytes() == bytes(want)
    sh("touch -d '2020-02-03 04:05:06.123456789' renamed/deep/er/small.txt", root)
    sh(
        f"tar cf {tmp_path}/t.tar renamed a && mkdir untar && tar xf {tmp_path}/t.tar -C untar",
        root,
    )
    sh("diff -r renamed untar/renamed && cmp a/moved.bin untar/a/moved.bin", root)
    sh("mkdir gone && touch gone/x gone/y && rm -r gone", root)
    assert not (root / "gone").exists()

    before = snapshot(root)
    assert before["a/b"] == ("dir", 0o700)
    assert before["a/empty"] == ("dir", 0o755)
    assert before["renamed/deep/er/small.txt"][3] == 1580702706123456789
    assert m.umount() == 0
    m2 = mounts(cache="fresh-cache")
    after = snapshot(m2.mountpoint)
    assert after == before
    plaintexts = [payload, b"abcdefghij", (src / "deep" / "er" / "small.txt").read_bytes()]
    for cache in (m.cache_dir, m2.cache_dir):
        assert_no_plaintext(cache, [payload])
    assert plaintexts


def test_rsync_second_run_transfers_nothing(
    mounts: MountFactory, server: LocalCosServer, tmp_path: Path
) -> None:
    if not have("rsync"):
        pytest.skip("rsync not installed")
    m = mounts()
    src = tmp_path / "tree"
    for i in range(40):
        d = src / f"d{i % 5}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}.txt").write_bytes(os.urandom(100 + i))
    sh(f"rsync -a {src}/ {m.mountpoint}/tree/", tmp_path)
    os.setxattr(m.mountpoint, b"user.cosencfs.sync", b"1")
    server.reset_stats()
    out = sh(f"rsync -a --stats {src}/ {m.mountpoint}/tree/", tmp_path)
    assert "Number of regular files transferred: 0" in out
    os.setxattr(m.mountpoint, b"user.cosencfs.sync", b"1")
    stats = server.stats()
    assert stats.get("PutObject", 0) == 0, stats
    assert stats.get("CopyObject", 0) == 0, stats
    sh(f"diff -r {src} {m.mountpoint}/tree", tmp_path)


def test_git_in_the_mount(mnt: Mount) -> None:
    if not have("git"):
        pytest.skip("git not installed")
    root = mnt.mountpoint
    git = "git -c user.name=t -c user.email=t@example.com -c init.defaultBranch=main"
    sh(f"{git} init -q repo", root)
    repo = root / "repo"
    (repo / "README").write_text("hello\n")
    (repo / "src").mkdir()
    (repo / "src" / "main.py").write_text("print('hi')\n")
    sh(f"{git} add -A && {git} commit -q -m first", repo)
    (repo / "README").write_text("hello again\n")
    sh(f"{git} commit -q -am second", repo)
    assert sh(f"{git} status --porcelain", repo) == ""
    log = sh(f"{git} log --format=%s", repo)
    assert log.split() == ["second", "first"]
    sh(f"{git} fsck --no-progress", repo)


def test_editor_style_save(mnt: Mount) -> None:
    root = mnt.mountpoint
    target = root / "doc.txt"
    target.write_text("draft 1\n")
    for i in range(2, 5):
        tmp = root / f".doc.txt.swp{i}"
        with open(tmp, "w") as f:
            f.write(f"draft {i}\n")
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, target)
    assert target.read_text() == "draft 4\n"
    assert sorted(p.name for p in root.iterdir()) == ["doc.txt"]


def test_sqlite_in_the_mount(mounts: MountFactory) -> None:
    m = mounts()
    db = m.mountpoint / "app.db"
    con = sqlite3.connect(db)
    con.execute("create table t (k integer primary key, v text)")
    with con:
        con.executemany("insert into t(v) values (?)", [(f"row{i}",) for i in range(500)])
    with con:
        con.execute("update t set v = 'changed' where k % 7 = 0")
    assert con.execute("select count(*) from t where v = 'changed'").fetchone()[0] == 71
    con.close()
    if have("sqlite3"):
        out = sh("sqlite3 app.db 'select count(*) from t'", m.mountpoint)
        assert out.strip() == "500"
    assert m.umount() == 0
    m2 = mounts(cache="cold")
    con = sqlite3.connect(m2.mountpoint / "app.db")
    assert con.execute("select count(*), sum(v = 'changed') from t").fetchone() == (500, 71)
    assert con.execute("pragma integrity_check").fetchone()[0] == "ok"
    con.close()


def test_fusermount_u_uploads_dirty_files(mounts: MountFactory, server: LocalCosServer) -> None:
    m = mounts(extra=["--writeback-delay", "3600"])
    data = os.urandom(200_000)
    (m.mountpoint / "late.bin").write_bytes(data)
    subprocess.run(["fusermount3", "-u", str(m.mountpoint)], check=True)
    assert m.proc is not None
    assert m.proc.wait(60) == 0
    m2 = mounts(cache="other")
    assert (m2.mountpoint / "late.bin").read_bytes() == data


def test_mount_refuses_bad_setups(
    mounts: MountFactory, server: LocalCosServer, tmp_path: Path, key_file: Path
) -> None:
    import sys

    def try_mount(
        *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        mp = tmp_path / "mp"
        mp.mkdir(exist_ok=True)
        e = dict(os.environ)
        e.update({"COS_SECRET_ID": "AKIDtestsecretid", "COS_SECRET_KEY": "testsecretkey0123456789"})
        e.update(env or {})
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "cosencfs",
                "mount",
                *args,
                "--endpoint",
                server.url,
                "--cache-dir",
                str(tmp_path / "c"),
            ],
            capture_output=True,
            text=True,
            env=e,
            timeout=60,
            check=False,
        )

    mp = str(tmp_path / "mp")
    r = try_mount(
        "test-1250000000", mp, "--key-file", str(key_file), env={"COS_SECRET_KEY": "wrong"}
    )
    assert r.returncode != 0
    assert "denied" in r.stderr
    r = try_mount("nosuch-1250000000", mp, "--key-file", str(key_file))
    assert r.returncode != 0
    assert "does not exist" in r.stderr
    r = try_mount("test-1250000000", mp, "--key-file", str(tmp_path / "missing.key"))
    assert r.returncode != 0
    assert "missing.key" in r.stderr
    bad = tmp_path / "bad.key"
    bad.write_text("not base64 at all!")
    bad.chmod(0o600)
    r = try_mount("test-1250000000", mp, "--key-file", str(bad))
    assert r.returncode != 0
    assert "base64" in r.stderr
    m = mounts()
    r = try_mount("test-1250000000", str(m.mountpoint), "--key-file", str(key_file))
    assert r.returncode != 0
    assert "busy" in r.stderr
    assert not any(p for p in Path(mp).iterdir())


def test_local_mode_daemon(tmp_path: Path) -> None:
    import sys

    mp = tmp_path / "mp"
    mp.mkdir()
    data_dir = tmp_path / "data"
    cmd = [sys.executable, "-m", "cosencfs"]
    try:
        r = subprocess.run(
            [*cmd, "mount", "--local", str(data_dir), str(mp)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert r.returncode == 0, r.stderr
        assert "created a new master key" in r.stderr
        (mp / "hello.txt").write_text("hello\n")
        r = subprocess.run(
            [*cmd, "umount", str(mp)], capture_output=True, text=True, timeout=60, check=False
        )
        assert r.returncode == 0, r.stderr
        r = subprocess.run(
            [*cmd, "mount", "--local", str(data_dir), str(mp)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert r.returncode == 0, r.stderr
        assert "created" not in r.stderr
        assert (mp / "hello.txt").read_text() == "hello\n"
    finally:
        subprocess.run([*cmd, "umount", str(mp)], capture_output=True, timeout=60, check=False)
        subprocess.run(["fusermount3", "-uz", str(mp)], capture_output=True, check=False)
    assert shutil.which("fusermount3")


def test_data_closed_before_kill9_is_uploaded_by_the_next_mount(
    mounts: MountFactory, server: LocalCosServer
) -> None:
    m = mounts(extra=["--writeback-delay", "3600"])
    data = os.urandom(300_000)
    (m.mountpoint / "precious.bin").write_bytes(data)  # closed, not uploaded
    (m.mountpoint / "sub").mkdir()
    (m.mountpoint / "sub" / "small").write_bytes(b"tiny")
    assert server.stats().get("PutObject", 0) == 1  # only the directory marker
    m.kill()
    m2 = mounts(cache=m.cache_dir.name)  # same cache directory: recovery
    assert (m2.mountpoint / "precious.bin").read_bytes() == data
    assert (m2.mountpoint / "sub" / "small").read_bytes() == b"tiny"
    m3 = mounts(cache="cold")
    assert (m3.mountpoint / "precious.bin").read_bytes() == data


def test_mount_reads_old_and_new_keys_during_a_rotation(
    mounts: MountFactory, tmp_path: Path, key_file: Path
) -> None:
    from tests.testlib import new_key_file

    m = mounts()
    (m.mountpoint / "old.txt").write_text("under the old key\n")
    assert m.umount() == 0
    new = new_key_file(tmp_path / "new.key")
    m2 = mounts(key_file=new, cache="c2", extra=["--also-read-key-file", str(key_file)])
    assert (m2.mountpoint / "old.txt").read_text() == "under the old key\n"
    (m2.mountpoint / "new.txt").write_text("under the new key\n")
    assert m2.umount() == 0
    m3 = mounts(key_file=new, cache="c3")
    assert (m3.mountpoint / "new.txt").read_text() == "under the new key\n"
    with pytest.raises(OSError) as e:  # no key for its envelope
        (m3.mountpoint / "old.txt").read_bytes()
    assert e.value.errno == errno.EIO


def test_rsa_mount_objects_read_by_the_sdk(
    mounts: MountFactory, server: LocalCosServer, tmp_path: Path
) -> None:
    import requests
    from qcloud_cos.cos_encryption_client import CosEncryptionClient
    from qcloud_cos.crypto import AESCTRCipher, RSAProvider

    from cosencfs.crypto.keyfiles import generate_rsa_key_files
    from tests.testlib import BUCKET

    keydir = tmp_path / "rsa"
    generate_rsa_key_files(keydir)
    pub, priv = keydir / "public_key.pem", keydir / "private_key.pem"
    m = mounts(key_file=None, extra=["--rsa-public-key", str(pub), "--rsa-private-key", str(priv)])
    data = os.urandom(3 * 1024 * 1024 + 77)
    (m.mountpoint / "rsa.bin").write_bytes(data)
    assert m.umount() == 0
    session = requests.Session()
    conf = sdk_config(server.port)
    provider = RSAProvider(
        RSAProvider.get_rsa_key_pair_path(str(pub), str(priv)), cipher=AESCTRCipher()
    )
    client = CosEncryptionClient(conf, provider, session=session)
    try:
        whole = client.get_object(Bucket=BUCKET, Key="rsa.bin")["Body"]
        got = b""
        while chunk := whole.read(1 << 20):
            got += chunk
        assert got == data
        ranged = client.get_object(Bucket=BUCKET, Key="rsa.bin", Range="bytes=1048576-2097151")
        part = b""
        while chunk := ranged["Body"].read(1 << 20):
            part += chunk
        assert part == data[1048576:2097152]
    finally:
        session.close()
