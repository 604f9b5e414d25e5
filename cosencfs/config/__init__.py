"""Settings: the TOML file's schema, its checks, and the settings of bucket commands and mounts.

This package imports nothing of the project but its exceptions
(``cosencfs.errors``): the layers that use settings (the store, the
filesystem, the key files) are given them by the command line and the mount,
which turn them into their own options.

- ``schema``: kinds of values and their checks; dotted names derived from the dataclasses
- ``settings``: ``BucketSettings``, ``MountSettings``, ``KeySettings``, ``FsSettings``
- ``load``: the TOML file, the credentials file, building the settings
"""

from __future__ import annotations

from cosencfs.config.load import (
    build_bucket_settings,
    build_mount_settings,
    check_private_file,
    load_config_file,
    load_credentials_file,
    split_target,
)
from cosencfs.config.schema import parse_size, validate
from cosencfs.config.settings import (
    DEFAULT_REGION,
    LOCAL_BUCKET,
    SCHEMA,
    AesWrap,
    BucketSettings,
    FsSettings,
    KeySettings,
    LogLevel,
    MountSettings,
    cache_home,
    config_home,
)

__all__ = [
    "DEFAULT_REGION",
    "LOCAL_BUCKET",
    "SCHEMA",
    "AesWrap",
    "BucketSettings",
    "FsSettings",
    "KeySettings",
    "LogLevel",
    "MountSettings",
    "build_bucket_settings",
    "build_mount_settings",
    "cache_home",
    "check_private_file",
    "config_home",
    "load_config_file",
    "load_credentials_file",
    "parse_size",
    "split_target",
    "validate",
]
