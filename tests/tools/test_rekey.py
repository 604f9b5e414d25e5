"""``cosencfs rekey``: master-key rotation by metadata-only self-copies."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import trio
from qcloud_cos import CosS3Client

import cosencfs.store.cos as cos_module
import cosencfs.tools.walk as walk_module
from cosencfs.crypto.ctr import DataKey, decrypt
from cosencfs.crypto.envelope import (
    KID_FIELD,
    WRAP_FIELD,
    EnvelopeCodec,
    inspect_envelope,
)
from cosencfs.crypto.keyfiles import generate_rsa_key_files, load_aes_key_file, load_rsa_key_files
from cosencfs.crypto.master import AesMasterKey
from cosencfs.errors import PreconditionFailedError, WrongKeyError
from cosencfs.fs.attrs import DIR_CONTENT_TYPE, FILE_CONTENT_TYPE
from cosencfs.server import LocalCosServer
from cosencfs.store.base import LIST_PAGE_MAX, ObjectInfo, ObjectStore
from cosencfs.store.cos import CosStore
from cosencfs.tools.rekey import Rekeyer, RekeyStats
from tests.testlib import (
    BUCKET,
    REGION,
    SECRET_ID,
    SECRET_KEY,
    MountFactory,
    new_key_file,
    sdk_config,
)
from tests.tools._cmd_helpers import (
    ATTRS,
    REPO,
    Sdk,
    cos_env,
    no_secrets,
    put_encrypted,
    read_encrypted,
    run_cli,
    server_args,
)

JAVA_META = {
    "client-side-encryption-key": base64.b64encode(os.urandom(40)).decode(),
    "client-side-encryption-start": base64.b64encode(os.urandom(16)).decode(),
    "client-side-encryption-cek-alg": "AES/CTR/NoPadding",
    "client-side-encryption-wrap-alg": "AES/GCM/NoPadding",
}


async def in_thread(cli: Callable[..., int], *args: str) -> int:
    # The command runs its own trio loop: give it a thread of its own.
    return await trio.to_thread.run_sync(lambda: cli(*args))


def rekey_args(server: LocalCosServer, old: Path, new: Path, *extra: str) -> list[str]:
    return ["rekey", BUCKET, *server_args(server), "--key-file", str(old),
            "--new-key-file", str(new), "--no-progress", *extra]  # fmt: skip


async def kid_of(store: CosStore, key: str) -> str:
    return inspect_envelope((await store.head(key)).metadata).key_id


# ---------------------------------------------------------------------------


async def test_rekey_rewraps_metadata_only_and_sdk_reads_with_new_key(
    store: CosStore,
    codec: EnvelopeCodec,
    new_codec: EnvelopeCodec,
    key_file: Path,
    new_key: Path,
    sdk: Sdk,
) -> None:
    ours = {f"docs/f{n}": os.urandom(n) for n in (0, 1, 15, 16, 1000, 70_000)}
    for k, p in ours.items():
        await put_encrypted(store, codec, k, p)
    old_sdk = sdk.client(aes_key=key_file)
    theirs = {"sdk/a": os.urandom(5000), "sdk/b": b"written by the COS SDK"}
    for k, p in theirs.items():
        Sdk.put(old_sdk, k, p)
    await store.put("docs/", b"", {"mode": "16877"}, content_type=DIR_CONTENT_TYPE)
    await store.put("plain.txt", b"not encrypted", {"mode": "33188"})
    await store.put("java.bin", b"java ciphertext", JAVA_META)
    every = [*ours, *theirs, "docs/", "plain.txt", "java.bin"]
    before = {k: (await store.head(k), await store.get(k)) for k in every}

    snap = store.counters.snapshot()
    stats = await Rekeyer(store, codec, new_codec).run()
    used = store.counters.snapshot().minus(snap)

    assert (stats.rewrapped, stats.already, stats.failed) == (8, 0, 0)
    assert (stats.markers, stats.plain, stats.foreign) == (1, 1, 1)
    assert stats.unverified == 2  # the SDK's aes-ctr envelopes carry no key check
    # Metadata only: 1 LIST, a HEAD per object (markers too: their attribute
    # tags are under the old key), a COPY per re-wrapped object; the marker
    # here has no attribute tag, so it is not copied.
    assert used.requests == {"ListObjects": 1, "HeadObject": 11, "CopyObject": 8}
    assert used.bytes_up == 0
    assert used.bytes_down == 0
    assert not used.failures

    for k in every:
        old_info, old_body = before[k]
        info = await store.head(k)
        assert await store.get(k) == old_body, k  # body untouched
        assert info.etag == old_info.etag, k
        assert info.content_type == old_info.content_type, k
        if k in ours or k in theirs:
            assert info.metadata[KID_FIELD] == new_codec.key_id
            for name in ("mode", "uid", "gid", "mtime"):
                assert info.metadata.get(name) == old_info.metadata.get(name)
        else:
            assert dict(info.metadata) == dict(old_info.metadata), k

    new_sdk = sdk.client(aes_key=new_key)
    for k, p in {**ours, **theirs}.items():
        assert Sdk.get(new_sdk, k) == p, k  # the real SDK, new key
        assert await read_encrypted(store, new_codec, k) == p
        with pytest.raises(WrongKeyError):
            codec.open((await store.head(k)).metadata, key=k)
        if len(p) >= 16:
            assert Sdk.get(old_sdk, k) != p, k  # the SDK with the old key: garbage

    # A second run finds everything done and writes nothing.
    snap = store.counters.snapshot()
    again = await Rekeyer(store, codec, new_codec).run()
    used = store.counters.snapshot().minus(snap)
    assert (again.rewrapped, again.already, again.failed) == (0, 8, 0)
    assert "CopyObject" not in used.requests


def test_rekey_killed_halfway_then_resumed(
    server: LocalCosServer, key_file: Path, new_key: Path, tmp_path: Path
) -> None:
    n = 40
    codec = EnvelopeCodec(load_aes_key_file(key_file))
    new_codec = EnvelopeCodec(load_aes_key_file(new_key))
    plains = {f"k{i:03d}": os.urandom(100 + i) for i in range(n)}

    async def setup() -> None:
        st = cos_module.CosStore(_settings(server))
        try:
            for k, p in plains.items():
                await put_encrypted(st, codec, k, p)
        finally:
            st.close()

    trio.run(setup)
    server.reset_stats()
    server.set_faults(0.0, latency_ms=100)  # slow enough to catch it half-way under load
    log = open(tmp_path / "rekey1.log", "wb")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        [sys.executable, "-m", "cosencfs",
         *rekey_args(server, key_file, new_key, "--concurrency", "2")],
        stdout=log, stderr=log, env=cos_env(), cwd=REPO, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    log.close()
    try:
        deadline = time.monotonic() + 120
        while server.stats().get("CopyObject", 0) < 10:
            assert proc.poll() is None, (tmp_path / "rekey1.log").read_text()
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    server.set_faults(0.0, latency_ms=0)

    async def kids() -> dict[str, str]:
        st = cos_module.CosStore(_settings(server))
        try:
            return {k: await kid_of(st, k) for k in plains}
        finally:
            st.close()

    # Copies the killed process had sent still finish on the server (after the
    # injected latency): wait until nothing changes any more.
    halfway = trio.run(kids)
    for _ in range(50):
        time.sleep(0.2)
        again_seen = trio.run(kids)
        if again_seen == halfway:
            break
        halfway = again_seen
    done = sum(1 for kid in halfway.values() if kid == new_codec.key_id)
    assert 0 < done < n, done
    assert all(kid in (codec.key_id, new_codec.key_id) for kid in halfway.values())

    server.reset_stats()
    again = run_cli(*rekey_args(server, key_file, new_key, "--json"))
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert report["already_done"] == done
    assert report["rewrapped"] == n - done
    assert report["failed"] == 0
    assert server.stats()["CopyObject"] == n - done
    no_secrets(again.stdout + again.stderr, key_file, new_key)

    async def check() -> None:
        st = cos_module.CosStore(_settings(server))
        try:
            for k, p in plains.items():
                assert await read_encrypted(st, new_codec, k) == p
        finally:
            st.close()

    trio.run(check)


def _settings(server: LocalCosServer) -> cos_module.CosSettings:
    return cos_module.CosSettings(
        bucket=BUCKET,
        region=REGION,
        endpoint=server.url,
        secret_id=SECRET_ID,
        secret_key=SECRET_KEY,
    )


async def test_rekey_aes_to_rsa_with_public_key_only(
    store: CosStore,
    codec: EnvelopeCodec,
    key_file: Path,
    tmp_path: Path,
    sdk: Sdk,
    server: LocalCosServer,
) -> None:
    rsa_dir = tmp_path / "rsa"
    generate_rsa_key_files(rsa_dir, 2048)
    pub, priv = rsa_dir / "public_key.pem", rsa_dir / "private_key.pem"
    plains = {"a": os.urandom(3000), "b/c": b"", "b/d": b"tiny"}
    for k, p in plains.items():
        await put_encrypted(store, codec, k, p)
    Sdk.put(sdk.client(aes_key=key_file), "sdk", b"sdk written " * 50)
    plains["sdk"] = b"sdk written " * 50
    # 1500 bytes of other metadata leave no room for an RSA-2048 envelope.
    await put_encrypted(store, codec, "fat", b"fat", extra={"note": "x" * 1500})
    fat_before = await store.head("fat")

    args = ["rekey", BUCKET, *server_args(server), "--key-file", str(key_file),
            "--new-rsa-public-key", str(pub), "--json", "--no-progress"]  # fmt: skip
    done = await trio.to_thread.run_sync(lambda: run_cli(*args))
    assert done.returncode == 1, done.stderr  # "fat" failed
    report = json.loads(done.stdout)
    assert report["rewrapped"] == 4
    assert report["failed"] == 1
    assert report["failure_kinds"] == {"metadata-too-large": 1}
    assert report["failures"][0]["key"] == "fat"
    assert "2048" in report["failures"][0]["reason"]
    assert "fat" in done.stderr  # logged, naming the object
    assert dict((await store.head("fat")).metadata) == dict(fat_before.metadata)

    rsa_codec = EnvelopeCodec(load_rsa_key_files(pub, priv))
    rsa_sdk = sdk.client(rsa_pub=pub, rsa_priv=priv)
    for k, p in plains.items():
        info = await store.head(k)
        assert info.metadata[WRAP_FIELD] == "rsa-oaep"
        assert await read_encrypted(store, rsa_codec, k) == p
        assert Sdk.get(rsa_sdk, k) == p  # the SDK's RSAProvider reads the OAEP wrap
        with pytest.raises(WrongKeyError):
            codec.open(info.metadata, key=k)

    # Public key only, run again: recognised by key id, nothing rewritten.
    again = await trio.to_thread.run_sync(lambda: run_cli(*args))
    report = json.loads(again.stdout)
    assert (report["rewrapped"], report["already_done"], report["failed"]) == (0, 4, 1)
    assert report["requests"]["requests"].get("CopyObject", 0) == 0


@pytest.mark.mount
def test_mount_reads_after_rotation(
    mounts: MountFactory, key_file: Path, new_key: Path, server: LocalCosServer, cli: Any
) -> None:
    # Both mounts share one cache directory, as a remount after a rotation would.
    m = mounts(cache="cache")
    root = m.mountpoint
    (root / "dir" / "sub").mkdir(parents=True)
    files = {
        "top.txt": b"top level\n",
        "dir/big.bin": os.urandom(3 * 1024 * 1024 + 5),
        "dir/sub/empty": b"",
    }
    for rel, data in files.items():
        (root / rel).write_bytes(data)
    os.chmod(root / "top.txt", 0o600)
    os.chmod(root / "dir", 0o750)  # the marker's attribute tag is re-tagged too
    os.setxattr(root / "top.txt", "user.note", b"file")  # re-sealed under the new key
    os.setxattr(root / "dir", "user.note", b"dir")
    (root / "dir" / "link").symlink_to("sub/empty")
    assert m.umount() == 0
    m = mounts(cache="cache")
    for rel, data in files.items():  # fill the cache (ciphertext, wrapped keys, attributes)
        assert (m.mountpoint / rel).read_bytes() == data
    assert m.umount() == 0

    assert cli(*rekey_args(server, key_file, new_key)) == 0

    m2 = mounts(key_file=new_key, cache="cache")
    root = m2.mountpoint
    for rel, data in files.items():
        assert (root / rel).read_bytes() == data, rel
    assert (root / "top.txt").stat().st_mode & 0o777 == 0o600
    assert (root / "dir").stat().st_mode & 0o777 == 0o750
    assert os.readlink(root / "dir" / "link") == "sub/empty"
    assert "default attributes apply" not in m2.log()
    assert m2.umount() == 0
    # Without the old key: every tag, the markers' too, is under the new one.
    m3 = mounts(key_file=new_key)
    assert (m3.mountpoint / "dir").stat().st_mode & 0o777 == 0o750
    assert os.getxattr(m3.mountpoint / "top.txt", "user.note") == b"file"
    assert os.getxattr(m3.mountpoint / "dir", "user.note") == b"dir"
    assert (m3.mountpoint / "dir" / "big.bin").read_bytes() == files["dir/big.bin"]
    assert "default attributes apply" not in m3.log()


async def test_rekey_large_object_goes_through_part_copies(
    store: CosStore,
    codec: EnvelopeCodec,
    new_codec: EnvelopeCodec,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plain = os.urandom(2 * 1024 * 1024 + 100)
    await put_encrypted(store, codec, "huge", plain, extra={"note": "kept"})
    body_before = await store.get("huge")
    # Pretend 5 GB is 1 MiB: the copy takes store.copy's part-copy path.
    monkeypatch.setattr(cos_module, "MAX_PUT_BYTES", 1024 * 1024)
    monkeypatch.setattr(cos_module, "COPY_PART_BYTES", 1024 * 1024)
    snap = store.counters.snapshot()
    stats = await Rekeyer(store, codec, new_codec).run()
    used = store.counters.snapshot().minus(snap)
    assert (stats.rewrapped, stats.failed) == (1, 0)
    # rekey's HEAD, store.copy's own HEAD (size over the limit), then the part copies.
    assert used.requests == {
        "ListObjects": 1,
        "HeadObject": 2,
        "InitiateMultipartUpload": 1,
        "UploadPartCopy": 3,
        "CompleteMultipartUpload": 1,
    }
    assert used.bytes_up == 0
    assert used.bytes_down == 0
    info = await store.head("huge")
    assert info.metadata[KID_FIELD] == new_codec.key_id
    assert info.metadata["note"] == "kept"
    assert info.metadata["mode"] == ATTRS["mode"]
    assert info.content_type == FILE_CONTENT_TYPE
    assert await store.get("huge") == body_before
    assert await read_encrypted(store, new_codec, "huge") == plain
    assert await store.list_uploads() == []


async def test_rekey_failures_are_reported_and_left_alone(
    store: CosStore,
    codec: EnvelopeCodec,
    new_codec: EnvelopeCodec,
    key_file: Path,
    new_key: Path,
    tmp_path: Path,
    server: LocalCosServer,
) -> None:
    third = EnvelopeCodec(load_aes_key_file(new_key_file(tmp_path / "third.key")))
    await put_encrypted(store, codec, "good", b"good data")
    await put_encrypted(store, third, "third", b"someone else's key")
    damaged = {**ATTRS, **codec.seal(DataKey.generate())}
    damaged["client-side-encryption-key"] = "!!not base64!!"
    await store.put("damaged", b"xx", damaged)
    before = {k: dict((await store.head(k)).metadata) for k in ("third", "damaged")}

    done = await trio.to_thread.run_sync(lambda: run_cli(*rekey_args(server, key_file, new_key)))
    assert done.returncode == 1
    out = done.stdout
    assert "re-wrapped:             1" in out
    assert "failed:                 2" in out
    assert "third: written with master key id" in out
    assert "damaged: damaged envelope" in out
    assert "cosencfs fsck" in out
    for k, meta in before.items():
        assert dict((await store.head(k)).metadata) == meta
    assert await read_encrypted(store, new_codec, "good") == b"good data"
    no_secrets(done.stdout + done.stderr, key_file, new_key)


async def test_rekey_dry_run_writes_nothing(
    store: CosStore, codec: EnvelopeCodec, key_file: Path, new_key: Path, server: LocalCosServer
) -> None:
    for i in range(5):
        await put_encrypted(store, codec, f"f{i}", b"data %d" % i)
    server.reset_stats()
    done = await trio.to_thread.run_sync(
        lambda: run_cli(*rekey_args(server, key_file, new_key, "--dry-run"))
    )
    assert done.returncode == 0, done.stderr
    assert "would re-wrap:          5" in done.stdout
    assert "dry run" in done.stdout
    stats = server.stats()
    assert "CopyObject" not in stats
    assert stats["HeadObject"] == 5
    for i in range(5):
        assert await kid_of(store, f"f{i}") == codec.key_id


async def test_rekey_prefix_only(
    store: CosStore,
    codec: EnvelopeCodec,
    new_codec: EnvelopeCodec,
    key_file: Path,
    new_key: Path,
    server: LocalCosServer,
    cli: Any,
) -> None:
    for k in ("a/x", "a/y/z", "ab/x", "b/x", "a"):
        await put_encrypted(store, codec, k, b"data")
    args = rekey_args(server, key_file, new_key)
    args[1] = f"{BUCKET}/a/"
    assert await in_thread(cli, *args) == 0
    kids = {k: await kid_of(store, k) for k in ("a/x", "a/y/z", "ab/x", "b/x", "a")}
    assert kids == {
        "a/x": new_codec.key_id,
        "a/y/z": new_codec.key_id,
        "ab/x": codec.key_id,
        "b/x": codec.key_id,
        "a": codec.key_id,
    }


class ChangesOnFirstCopy:
    """A store whose object changes between rekey's HEAD and its first COPY."""

    def __init__(self, store: CosStore, codec: EnvelopeCodec, plain: bytes) -> None:
        self._store = store
        self._codec = codec
        self._plain = plain
        self.copies = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def copy(self, src: str, dst: str, **kw: Any) -> str:
        self.copies += 1
        if self.copies == 1:
            await put_encrypted(self._store, self._codec, src, self._plain)
        return await self._store.copy(src, dst, **kw)


async def test_rekey_object_changed_during_rotation_is_looked_at_again(
    store: CosStore, codec: EnvelopeCodec, new_codec: EnvelopeCodec
) -> None:
    await put_encrypted(store, codec, "busy", b"first version")
    racing = ChangesOnFirstCopy(store, codec, b"second version, written meanwhile")
    stats = await Rekeyer(cast(ObjectStore, racing), codec, new_codec).run()
    assert (stats.rewrapped, stats.retried, stats.failed) == (1, 1, 0)
    assert racing.copies == 2
    # The copy did not overwrite the new version with the old envelope.
    assert await read_encrypted(store, new_codec, "busy") == b"second version, written meanwhile"
    with pytest.raises(PreconditionFailedError):
        await store.copy("busy", "busy", metadata={}, if_match="0" * 32, size=10)


async def test_rekey_same_key_to_hardened_wrap(
    store: CosStore, codec: EnvelopeCodec, key_file: Path, server: LocalCosServer, cli: Any
) -> None:
    await put_encrypted(store, codec, "f", b"wrap me harder")
    base = ["rekey", BUCKET, *server_args(server), "--key-file", str(key_file),
            "--new-key-file", str(key_file), "--no-progress"]  # fmt: skip
    # Same key, same wrap: nothing to do, a usage error.
    assert await in_thread(cli, *base) == 2
    assert await in_thread(cli, *base, "--new-aes-wrap", "kw") == 0
    info = await store.head("f")
    assert info.metadata[WRAP_FIELD] == "aes-kw"
    hard = EnvelopeCodec(AesMasterKey(_raw(key_file), hardened=True))
    assert await read_encrypted(store, hard, "f") == b"wrap me harder"
    snap = store.counters.snapshot()
    assert await in_thread(cli, *base, "--new-aes-wrap", "kw") == 0
    assert "CopyObject" not in store.counters.snapshot().minus(snap).requests


def _raw(path: Path) -> bytes:
    return base64.b64decode(path.read_text().strip())


class WatchesPaging:
    """Records, at every LIST, how many listed objects have not been started yet."""

    def __init__(self, store: CosStore) -> None:
        self._store = store
        self.listed = 0
        self.started = 0
        self.running = 0
        self.max_running = 0
        self.backlog_at_list: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def list_objects(self, *args: Any, **kw: Any) -> Any:
        self.backlog_at_list.append(self.listed - self.started)
        page = await self._store.list_objects(*args, **kw)
        self.listed += len(page.objects)
        return page

    async def head(self, key: str) -> ObjectInfo:
        self.started += 1
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            return await self._store.head(key)
        finally:
            self.running -= 1


async def test_rekey_lists_one_page_at_a_time(
    store: CosStore,
    codec: EnvelopeCodec,
    new_codec: EnvelopeCodec,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert LIST_PAGE_MAX == 1000  # the real page size: 1 LIST per 1000 keys
    monkeypatch.setattr(walk_module, "LIST_PAGE_MAX", 10)
    n = 25
    for i in range(n):
        await put_encrypted(store, codec, f"many/{i:03d}", b"")
    watched = WatchesPaging(store)
    snap = store.counters.snapshot()
    stats = await Rekeyer(watched, codec, new_codec, concurrency=3).run()
    used = store.counters.snapshot().minus(snap)
    assert (stats.listed, stats.rewrapped) == (n, n)
    # ceil(25 / 10) LISTs, then one HEAD and one COPY per object, no body bytes.
    assert used.requests == {"ListObjects": 3, "HeadObject": n, "CopyObject": n}
    assert used.bytes_up == used.bytes_down == 0
    # A page is only fetched once all but `concurrency` objects of the previous
    # ones have been handed to a task, and never more than `concurrency` are in
    # flight: memory holds one page plus `concurrency` objects.
    assert len(watched.backlog_at_list) == 3
    assert max(watched.backlog_at_list) <= 3
    assert watched.max_running <= 3


def test_rekey_config_file_and_usage_errors(
    server: LocalCosServer,
    key_file: Path,
    new_key: Path,
    tmp_path: Path,
    cli: Any,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def setup() -> None:
        st = cos_module.CosStore(_settings(server))
        try:
            await put_encrypted(st, EnvelopeCodec(load_aes_key_file(key_file)), "p/f", b"x")
        finally:
            st.close()

    trio.run(setup)
    cfg = tmp_path / "cosencfs.toml"
    cfg.write_text(
        f'bucket = "{BUCKET}"\nprefix = "p"\nendpoint = "{server.url}"\nregion = "{REGION}"\n'
        f'mountpoint = "/mnt/unused"\n[keys]\nkey_file = "{key_file}"\n'
    )
    done = run_cli("rekey", "--config", str(cfg), "--new-key-file", str(new_key))
    assert done.returncode == 0, done.stderr
    assert f"rekey {BUCKET}/p done" in done.stdout
    assert "re-wrapped:             1" in done.stdout
    assert "1 COPY" in done.stdout
    assert "0 bytes up, 0 bytes down" in done.stdout
    no_secrets(done.stdout + done.stderr, key_file, new_key)

    def fails(*args: str) -> str:
        assert cli(*args) == 2, args
        out, err = capsys.readouterr()
        no_secrets(out + err, key_file, new_key)
        return err

    assert "no new master key" in fails("rekey", "--config", str(cfg))
    assert "does not exist" in fails(
        "rekey", "--config", str(cfg), "--new-key-file", str(tmp_path / "missing.key")
    )
    assert "nothing to rotate" in fails(
        "rekey", "--config", str(cfg), "--new-key-file", str(key_file)
    )
    assert "no bucket" in fails(
        "rekey", "--new-key-file", str(new_key), "--key-file", str(key_file)
    )
    assert "does not exist" in fails(
        "rekey", "nosuchbucket-1250000000", *server_args(server),
        "--key-file", str(key_file), "--new-key-file", str(new_key),
    )  # fmt: skip
    assert "must be at least 1" in fails(
        "rekey", "--config", str(cfg), "--new-key-file", str(new_key), "--concurrency", "0"
    )
    monkeypatch.setenv("COS_SECRET_KEY", "wrong")
    assert "denied" in fails("rekey", "--config", str(cfg), "--new-key-file", str(new_key))


# ---------------------------------------------------------------------------
# Metadata other tools set survives the rewrite


async def test_rekey_keeps_non_ascii_metadata(
    store: CosStore, codec: EnvelopeCodec, new_codec: EnvelopeCodec
) -> None:
    await put_encrypted(store, codec, "f", b"x", extra={"note": "h\u00e9llo \u4e16\u754c"})
    stats = await Rekeyer(store, codec, new_codec).run()
    assert stats.rewrapped == 1
    assert (await store.head("f")).metadata["note"] == "h\u00e9llo \u4e16\u754c"


@pytest.fixture
def raw_client(server: LocalCosServer) -> Iterator[Any]:
    import requests

    session = requests.Session()
    conf = sdk_config(server.port)
    yield CosS3Client(conf, session=session)
    session.close()


async def test_rekey_keeps_standard_headers(
    store: CosStore, codec: EnvelopeCodec, new_codec: EnvelopeCodec, raw_client: Any
) -> None:
    dk = DataKey.generate()
    raw_client.put_object(
        Bucket=BUCKET,
        Key="web/page.html",
        Body=decrypt(dk, 0, b"<html></html>"),
        ContentType="text/html",
        CacheControl="max-age=60",
        ContentDisposition="attachment",
        Metadata={f"x-cos-meta-{k}": v for k, v in codec.seal(dk).items()},
    )
    stats = await Rekeyer(store, codec, new_codec).run()
    assert stats.rewrapped == 1
    head = raw_client.head_object(Bucket=BUCKET, Key="web/page.html")
    assert head["Content-Type"] == "text/html"
    assert head.get("Cache-Control") == "max-age=60"
    assert head.get("Content-Disposition") == "attachment"


def test_listing_info_is_what_triage_sees() -> None:
    # Markers are recognised from the listing alone: key and size (they are
    # HEADed all the same, for their attribute tags).
    r = Rekeyer.__new__(Rekeyer)
    r.stats = RekeyStats()
    assert r._triage(ObjectInfo("d/", 0, "", 0.0, has_metadata=False))
    assert r._triage(ObjectInfo("d/", 3, "", 0.0, has_metadata=False))
    assert r._triage(ObjectInfo("f", 0, "", 0.0, has_metadata=False))
    assert r.stats.markers == 1
