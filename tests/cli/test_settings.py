"""The settings schema read off the dataclasses: its names, what each command keeps, its imports."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cosencfs.config import (
    SCHEMA,
    BucketSettings,
    MountSettings,
    build_bucket_settings,
    build_mount_settings,
)
from cosencfs.errors import ConfigError
from cosencfs.mount.lifecycle import fs_options

#: Every setting of the TOML file as it was before the schema came from the
#: dataclasses (issue 13); a name may be added here, never dropped or renamed.
SETTINGS = [
    "bucket",
    "prefix",
    "mountpoint",
    "region",
    "endpoint",
    "local_dir",
    "metrics_addr",
    "credentials.secret_id",
    "credentials.secret_key",
    "credentials.token",
    "credentials.file",
    "keys.key_file",
    "keys.rsa_public_key",
    "keys.rsa_private_key",
    "keys.rsa_passphrase",
    "keys.aes_wrap",
    "keys.also_read",
    "cache.dir",
    "cache.size",
    "fs.writeback_delay",
    "fs.max_dirty_age",
    "fs.dir_ttl",
    "fs.entry_timeout",
    "fs.attr_timeout",
    "fs.open_revalidate",
    "fs.upload_workers",
    "fs.part_concurrency",
    "fs.stream_uploads",
    "fs.single_put_max",
    "fs.readahead_max",
    "fs.allow_plaintext",
    "fs.trust_metadata_modes",
    "fs.require_integrity",
    "fs.write_tags",
    "fs.uid",
    "fs.gid",
    "fs.file_mode",
    "fs.dir_mode",
    "network.concurrency",
    "network.timeout",
    "network.request_deadline",
    "network.ca_file",
    "fuse.options",
    "fuse.foreground",
    "log.level",
    "log.debug",
]


def test_the_file_format_is_unchanged() -> None:
    assert sorted(SCHEMA) == sorted(SETTINGS)
    secret = sorted(name for name, spec in SCHEMA.items() if spec.secret)
    assert secret == ["credentials.secret_key", "credentials.token", "keys.rsa_passphrase"]


def test_defaults_live_in_the_dataclasses() -> None:
    s = build_mount_settings({"bucket": "b-1", "mountpoint": "/m"})
    assert (s.region, s.cache_size, s.concurrency, s.log_level) == (
        "ap-guangzhou",
        1024**3,
        16,
        "INFO",
    )
    # [fs] settings left out keep the filesystem's own defaults.
    assert fs_options(s).dir_ttl == 60.0
    assert fs_options(s).defaults.file_mode == 0o644


def test_bucket_commands_keep_only_bucket_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COS_SECRET_ID", raising=False)
    values = {
        "bucket": "b-1",
        "prefix": "/p/",
        "mountpoint": "/m",
        "cache.size": 5,
        "fs.dir_ttl": 1.0,
        "network.concurrency": 4,
    }
    s = build_bucket_settings(values)
    assert type(s) is BucketSettings
    assert (s.bucket, s.prefix, s.concurrency, s.target()) == ("b-1", "p", 4, "b-1/p")
    with pytest.raises(ConfigError, match="local_dir is for mounts"):
        build_bucket_settings({**values, "local_dir": "/d"})
    with pytest.raises(ConfigError, match="no bucket given"):
        build_bucket_settings({})
    with pytest.raises(ConfigError, match="no mountpoint given"):
        build_mount_settings({"bucket": "b-1"})
    assert isinstance(build_mount_settings(values), MountSettings)


def test_config_imports_nothing_else_of_the_project() -> None:
    code = (
        "import sys, cosencfs.config; "
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('cosencfs'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout.split()
    others = [m for m in out if m not in ("cosencfs", "cosencfs.errors")]
    assert all(m.startswith("cosencfs.config") for m in others), others
