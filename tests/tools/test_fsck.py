"""``cosencfs fsck``: every finding category, crafted through the store."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import stat
from pathlib import Path
from typing import Any

import pytest
import trio

import cosencfs.tools.walk as walk_module
from cosencfs.cli import bucket as cli_bucket
from cosencfs.crypto.ctr import DataKey
from cosencfs.crypto.envelope import COSENCFS_FIELDS, KCV_FIELD, KEY_FIELD, EnvelopeCodec
from cosencfs.crypto.keyfiles import generate_rsa_key_files, load_aes_key_file
from cosencfs.errors import TransientError
from cosencfs.fs.attrs import DIR_CONTENT_TYPE
from cosencfs.server import LocalCosServer
from cosencfs.store.cos import CosStore
from cosencfs.tools import bucket as tools_bucket
from cosencfs.tools.fsck import Category, Finding, Fsck, name_problem
from cosencfs.tools.progress import Progress
from tests.testlib import BUCKET, new_key_file
from tests.tools._cmd_helpers import ATTRS, no_secrets, put_encrypted, run_cli, server_args

JAVA_META = {
    "client-side-encryption-key": base64.b64encode(os.urandom(40)).decode(),
    "client-side-encryption-start": base64.b64encode(os.urandom(16)).decode(),
    "client-side-encryption-cek-alg": "AES/CTR/NoPadding",
    "client-side-encryption-wrap-alg": "AES/GCM/NoPadding",
}
LONG = "n" * 256


def fsck_args(server: LocalCosServer, key_file: Path, *extra: str) -> list[str]:
    return ["fsck", BUCKET, *server_args(server), "--key-file", str(key_file), *extra]


async def craft_everything(
    store: CosStore, codec: EnvelopeCodec, tmp_path: Path
) -> set[tuple[str, str]]:
    """One object (or upload) per finding, plus healthy ones; returns the expected findings."""
    # Healthy: a cosencfs file, an empty file with an envelope, an SDK
    # envelope, a directory marker, a symlink with a sane target.
    await put_encrypted(store, codec, "ok/file", b"fine")
    await put_encrypted(store, codec, "ok/empty", b"")
    sdk_meta = {k: v for k, v in codec.seal(DataKey.generate()).items() if k not in COSENCFS_FIELDS}
    await store.put("ok/sdk", b"sdk body", sdk_meta)
    await store.put("ok/", b"", {"mode": "16877"}, content_type=DIR_CONTENT_TYPE)
    link_mode = {"mode": str(stat.S_IFLNK | 0o777)}
    await put_encrypted(store, codec, "ok/link", b"file", extra=link_mode)

    await store.put("plain.txt", b"in the clear", {"mode": "33188"})
    await store.put("java.bin", b"java ciphertext", JAVA_META)
    bad = {**ATTRS, **codec.seal(DataKey.generate())}
    bad[KEY_FIELD] = "!!not base64!!"
    await store.put("damaged-b64", b"xx", bad)
    tampered = {**ATTRS, **codec.seal(DataKey.generate())}
    tampered[KCV_FIELD] = base64.b64encode(bytes(16)).decode()
    await store.put("tampered", b"xx", tampered)
    third = EnvelopeCodec(load_aes_key_file(new_key_file(tmp_path / "third.key")))
    await put_encrypted(store, third, "wrong-key", b"other key")
    await put_encrypted(store, codec, "a//b", b"empty component")
    await put_encrypted(store, codec, "tab\tname", b"control character")
    await put_encrypted(store, codec, f"long/{LONG}", b"component too long")
    await put_encrypted(store, codec, "x", b"hidden by x/")
    await put_encrypted(store, codec, "x-1", b"between x and x/")
    await put_encrypted(store, codec, "x/y", b"makes x a directory")
    await put_encrypted(store, codec, "m", b"hidden by the marker m/")
    await store.put("m/", b"", {}, content_type=DIR_CONTENT_TYPE)
    await store.put("mk/", b"abc", {}, content_type=DIR_CONTENT_TYPE)
    await put_encrypted(store, codec, "emptylink", b"", extra=link_mode)
    await store.create_multipart("upload/x", codec.seal(DataKey.generate()))
    return {
        ("plain", "plain.txt"),
        ("foreign", "java.bin"),
        ("damaged", "damaged-b64"),
        ("damaged", "tampered"),
        ("wrong-key", "wrong-key"),
        ("unreachable-name", "a//b"),
        ("unreachable-name", "tab\tname"),
        ("unreachable-name", f"long/{LONG}"),
        ("name-clash", "x"),
        ("name-clash", "m"),
        ("size", "mk/"),
        ("size", "emptylink"),
        ("orphan-upload", "upload/x"),
    }


async def test_fsck_finds_each_category(
    store: CosStore, codec: EnvelopeCodec, tmp_path: Path
) -> None:
    expected = await craft_everything(store, codec, tmp_path)
    found: list[Finding] = []
    snap = store.counters.snapshot()
    stats = await Fsck(store, codec, report=found.append, orphan_age=0.0).run()
    used = store.counters.snapshot().minus(snap)
    assert {(f.category.value, f.key) for f in found} == expected
    assert len(found) == len(expected)  # each problem reported once
    assert stats.findings[Category.UNREACHABLE_NAME] == 3
    assert stats.ok == {"cosencfs": 11, "sdk": 1}
    assert stats.unverified == 1  # the SDK envelope: no key check possible
    assert stats.markers == 2  # ok/ and m/
    assert not stats.clean
    # 1 LIST, a HEAD per object but the markers, 1 LIST of uploads; no bodies.
    n_objects = stats.objects
    assert used.requests == {
        "ListObjects": 1,
        "HeadObject": n_objects - 3,  # ok/, m/, mk/ need none
        "ListMultipartUploads": 1,
    }
    assert used.bytes_down == 0
    assert used.bytes_up == 0
    details = {f.key: f.detail for f in found}
    assert "written with master key id" in details["wrong-key"]
    assert "altered" in details["tampered"]
    assert "cek-alg=AES/CTR/NoPadding" in details["java.bin"]
    assert "stored unencrypted" in details["plain.txt"]
    # Not aborted without --abort-orphans; the default age spares a fresh upload.
    assert len(await store.list_uploads()) == 1
    found.clear()
    await Fsck(store, codec, report=found.append).run()
    assert ("orphan-upload", "upload/x") not in {(f.category.value, f.key) for f in found}


async def test_fsck_json_subprocess_and_abort_orphans(
    store: CosStore, codec: EnvelopeCodec, tmp_path: Path, server: LocalCosServer, key_file: Path
) -> None:
    expected = await craft_everything(store, codec, tmp_path)
    args = fsck_args(server, key_file, "--json", "--orphan-age", "0", "--abort-orphans")
    done = await trio.to_thread.run_sync(lambda: run_cli(*args))
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    assert {(f["category"], f["key"]) for f in report["findings"]} == expected
    orphan = next(f for f in report["findings"] if f["category"] == "orphan-upload")
    assert orphan["action"] == "aborted"
    assert orphan["upload_id"]
    assert report["summary"]["orphans_aborted"] == 1
    assert report["summary"]["clean"] is False
    assert report["summary"]["findings"]["name-clash"] == 2
    assert report["key_id"] == codec.key_id
    assert report["requests"]["bytes_down"] == 0
    assert await store.list_uploads() == []
    no_secrets(done.stdout + done.stderr, key_file)


async def test_fsck_text_report(
    store: CosStore,
    codec: EnvelopeCodec,
    tmp_path: Path,
    server: LocalCosServer,
    key_file: Path,
    cli: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await craft_everything(store, codec, tmp_path)
    rc = await trio.to_thread.run_sync(
        lambda: cli(*fsck_args(server, key_file, "--orphan-age", "0", "--no-progress"))
    )
    assert rc == 1
    out = capsys.readouterr().out
    for line in (
        "plain             plain.txt: no client-side-encryption envelope",
        "name-clash        x: a file and a directory (x/)",
        "unreachable-name  tab\\tname: control character",
        "orphan-upload     upload/x (upload ",
        "13 problems found",
        "note: 1 SDK envelopes",
    ):
        assert line in out, line


async def test_fsck_clean_bucket_exits_zero(
    store: CosStore, codec: EnvelopeCodec, server: LocalCosServer, key_file: Path
) -> None:
    await put_encrypted(store, codec, "p/a", b"a")
    await put_encrypted(store, codec, "p/d/b", b"b")
    await store.put("p/d/", b"", {}, content_type=DIR_CONTENT_TYPE)
    await store.put("p/", b"", {}, content_type=DIR_CONTENT_TYPE)
    await store.create_multipart("p/fresh", {})  # younger than the default 24 h
    # Problems outside the prefix are not looked at.
    await store.put("q/plain", b"plain", {})
    args = fsck_args(server, key_file, "--json")
    args[1] = f"{BUCKET}/p"
    done = await trio.to_thread.run_sync(lambda: run_cli(*args))
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["findings"] == []
    assert report["summary"]["clean"] is True
    assert report["summary"]["objects"] == 4
    assert report["summary"]["directory_markers"] == 2
    assert report["summary"]["multipart_uploads"] == 1


async def test_fsck_prefix_clash_with_marker(
    store: CosStore, codec: EnvelopeCodec, cli: Any, server: LocalCosServer, key_file: Path
) -> None:
    await put_encrypted(store, codec, "p/x", b"file")
    await put_encrypted(store, codec, "p/x.txt", b"between")
    await store.put("p/x/", b"", {}, content_type=DIR_CONTENT_TYPE)
    await put_encrypted(store, codec, "p/y", b"no clash")
    await put_encrypted(store, codec, "p/y0/z", b"no clash either")
    found: list[Finding] = []
    await Fsck(store, codec, report=found.append, prefix="p/").run()
    assert [(f.category, f.key) for f in found] == [(Category.NAME_CLASH, "p/x")]


def test_fsck_usage_errors(
    server: LocalCosServer,
    key_file: Path,
    tmp_path: Path,
    cli: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    r = run_cli(*fsck_args(server, tmp_path / "missing.key"))
    assert r.returncode == 2
    assert "does not exist" in r.stderr

    def fails(*args: str) -> str:
        assert cli(*args) == 2, args
        return capsys.readouterr().err

    assert "negative" in fails(*fsck_args(server, key_file, "--orphan-age", "-1"))
    generate_rsa_key_files(tmp_path / "rsa")
    pub_only = ["fsck", BUCKET, *server_args(server), "--rsa-public-key",
                str(tmp_path / "rsa" / "public_key.pem")]  # fmt: skip
    assert "private key" in fails(*pub_only)
    args = fsck_args(server, key_file)
    args[1] = "nosuchbucket-1250000000"
    assert "does not exist" in fails(*args)
    args = fsck_args(server, key_file)
    args[args.index("--endpoint") + 1] = "ftp://127.0.0.1"
    assert "expected http://HOST:PORT" in fails(*args)
    os.chmod(key_file, 0o644)
    assert "chmod 600" in fails(*fsck_args(server, key_file))


@pytest.mark.parametrize(
    ("rel", "ok"),
    [
        ("a/b/c", True),
        ("a/b/", True),
        ("caf\u00e9/\u4e16\u754c", True),
        ("a//b", False),
        ("a//", False),
        ("/a", False),
        ("a/./b", False),
        ("../a", False),
        ("a/\x7f", False),
        ("\ud800bad", False),  # not valid UTF-8 (a lone surrogate)
        ("e" * 255, True),
        ("\u00e9" * 128, False),  # 256 bytes of UTF-8
        ("a/.cosencfs-tags", False),  # reserved: the mount hides it
        ("a/.cosencfs-tags.txt", True),
    ],
)
def test_name_problem(rel: str, ok: bool) -> None:
    assert (name_problem(rel) is None) is ok


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_on_a_tty_and_log_lines_otherwise(caplog: pytest.LogCaptureFixture) -> None:
    tty = FakeTty()
    with Progress("fsck", stream=tty) as p:
        assert p.is_bar
        p.add_total(3)
        p.set_status({"ok": 2, "problems": 0})
        p.advance(3)
    drawn = tty.getvalue()
    assert "fsck" in drawn
    assert "3/3" in drawn
    assert "ok 2" in drawn

    pipe = io.StringIO()
    with (
        caplog.at_level(logging.INFO, logger="cosencfs.tools.progress"),
        Progress("rekey", stream=pipe, log_interval=0.0) as p,
    ):
        assert not p.is_bar
        p.add_total(2)
        p.set_status({"rewrapped": 1})
        p.advance()
    assert pipe.getvalue() == ""  # no carriage-return noise in a log file
    assert "rekey: 1 of 2 objects" in caplog.text
    assert "rewrapped 1" in caplog.text


class ListFailsAfterFirstPage:
    """A store whose second LIST fails for good (after the store's own retries)."""

    def __init__(self, store: CosStore) -> None:
        self._store = store
        self.lists = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def list_objects(self, *args: Any, **kw: Any) -> Any:
        self.lists += 1
        if self.lists > 1:
            raise TransientError("connection failed: ConnectionError", op="ListObjects")
        return await self._store.list_objects(*args, **kw)


async def test_fsck_listing_failure_stops_with_a_report(
    store: CosStore,
    codec: EnvelopeCodec,
    server: LocalCosServer,
    key_file: Path,
    cli: Any,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(walk_module, "LIST_PAGE_MAX", 2)
    for i in range(5):
        await put_encrypted(store, codec, f"f{i}", b"x")
    # The engine raises the store's error itself, not an exception group.
    with pytest.raises(TransientError):
        await Fsck(ListFailsAfterFirstPage(store), codec, report=print).run()
    real_open = tools_bucket.open_store
    monkeypatch.setattr(
        cli_bucket, "open_store", lambda settings: ListFailsAfterFirstPage(real_open(settings))
    )
    rc = await trio.to_thread.run_sync(lambda: cli(*fsck_args(server, key_file, "--json")))
    assert rc == 1
    report = json.loads(capsys.readouterr().out)  # still one valid document
    assert report["complete"] is False
    assert "stopped early" in report["stopped"]
    assert report["summary"]["objects"] == 2
    assert report["findings"] == []
