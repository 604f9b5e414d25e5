"""Mount settings from a TOML file and the command line."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from cosencfs.cli.mount import configure, settings_from_args
from cosencfs.config import parse_size
from cosencfs.errors import ConfigError
from cosencfs.mount.lifecycle import fs_options


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    configure(p)
    return p.parse_args(argv)


def write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_file_then_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COS_SECRET_ID", raising=False)
    monkeypatch.delenv("COS_SECRET_KEY", raising=False)
    cfg = write(
        tmp_path / "m.toml",
        """
bucket = "photos-1250000000"
prefix = "2026/"
region = "ap-beijing"
mountpoint = "/mnt/photos"
[keys]
key_file = "/etc/cosencfs/photos.key"
aes_wrap = "kw"
[cache]
dir = "/var/cache/cosencfs"
size = "10G"
[fs]
writeback_delay = 5
dir_ttl = 120
upload_workers = 4
file_mode = "0600"
[network]
concurrency = 32
[log]
level = "WARNING"
debug = ["store"]
[fuse]
options = ["allow_other"]
""",
        0o644,
    )
    s = settings_from_args(parse("--config", str(cfg), "--dir-ttl", "7", "--region", "ap-shanghai"))
    assert (s.bucket, s.prefix, s.mountpoint) == ("photos-1250000000", "2026", "/mnt/photos")
    assert s.region == "ap-shanghai"  # the command line wins
    fs = fs_options(s)
    assert fs.dir_ttl == 7.0
    assert fs.writeback_delay == 5.0
    assert fs.upload_workers == 4
    assert fs.defaults.file_mode == 0o600
    assert fs.prefix == "2026/"
    assert s.cache_size == 10 * 1024**3
    assert s.concurrency == 32
    assert s.keys.aes_wrap == "kw"
    assert s.fuse_options == ["allow_other"]
    assert s.log_level == "WARNING"
    assert s.debug == ["store"]
    s2 = settings_from_args(parse("--config", str(cfg), "other-1250000000/x", "/mnt/other"))
    assert (s2.bucket, s2.prefix, s2.mountpoint) == ("other-1250000000", "x", "/mnt/other")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("bucket = 3", "setting 'bucket': expected a string"),
        ("[fs]\nwriteback_delay = 'soon'", "setting 'fs.writeback_delay': expected a number"),
        ("[fs]\nupload_workers = 0", "setting 'fs.upload_workers': must be at least 1"),
        ("[cache]\nsize = 'lots'", "setting 'cache.size'"),
        ("[fs]\nwritebak_delay = 1", "unknown setting 'fs.writebak_delay'"),
        ("[keys]\naes_wrap = 'gcm'", "expected one of sdk, kw"),
        ("bucket = [", "not valid TOML"),
    ],
)
def test_errors_name_the_field_and_the_file(tmp_path: Path, text: str, message: str) -> None:
    cfg = write(tmp_path / "bad.toml", text)
    with pytest.raises(ConfigError) as e:
        settings_from_args(parse("--config", str(cfg), "b-1/p", "/mnt"))
    assert message in str(e.value)
    assert str(cfg) in str(e.value)


def test_secrets_only_in_private_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COS_SECRET_ID", "env-id")
    monkeypatch.setenv("COS_SECRET_KEY", "env-key")
    creds = write(
        tmp_path / "creds.toml", 'secret_id = "file-id"\nsecret_key = "file-key"\n', 0o640
    )
    cfg = write(tmp_path / "m.toml", f'[credentials]\nfile = "{creds}"\n', 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        settings_from_args(parse("--config", str(cfg), "b-1", "/mnt"))
    creds.chmod(0o600)
    s = settings_from_args(parse("--config", str(cfg), "b-1", "/mnt"))
    assert (s.secret_id, s.secret_key) == ("file-id", "file-key")
    inline = write(
        tmp_path / "inline.toml", '[credentials]\nsecret_id = "i"\nsecret_key = "k"\n', 0o644
    )
    with pytest.raises(ConfigError, match="accessible by group or others"):
        settings_from_args(parse("--config", str(inline), "b-1", "/mnt"))
    inline.chmod(0o600)
    s = settings_from_args(parse("--config", str(inline), "b-1", "/mnt"))
    assert (s.secret_id, s.secret_key) == ("i", "k")
    s = settings_from_args(parse("b-1", "/mnt"))
    assert (s.secret_id, s.secret_key) == ("env-id", "env-key")
    assert "env-key" not in repr(s)


def test_command_line_errors() -> None:
    with pytest.raises(ConfigError, match="BUCKET"):
        settings_from_args(parse("/mnt"))
    with pytest.raises(ConfigError, match="only the MOUNTPOINT"):
        settings_from_args(parse("--local", "/d", "b-1", "/mnt"))


def test_parse_size() -> None:
    assert parse_size("512M") == 512 * 1024**2
    assert parse_size("2GiB") == 2 * 1024**3
    assert parse_size("1.5k") == 1536
    assert parse_size("100") == 100
    with pytest.raises(ConfigError):
        parse_size("big")
