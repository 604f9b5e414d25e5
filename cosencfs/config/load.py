"""Settings from a TOML file and the command line, the command line winning.

Both sources are first turned into dotted names (``fs.writeback_delay``)
checked against the schema, so every error names the setting and where it
came from.  Credentials come from the environment (``COS_SECRET_ID`` /
``COS_SECRET_KEY`` / ``COS_TOKEN``, as in the COS SDK samples), a credentials
file, or the config file; a file holding secrets must not be readable by
group or others.
"""

from __future__ import annotations

import os
import stat
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cosencfs.config.schema import Field, flatten, validate
from cosencfs.config.settings import (
    BUCKET_SCHEMA,
    LOCAL_BUCKET,
    SCHEMA,
    BucketSettings,
    MountSettings,
    config_home,
)
from cosencfs.errors import ConfigError

_NO_BUCKET = "no bucket given (BUCKET[/PREFIX] or 'bucket' in the config file)"


def split_target(target: str) -> tuple[str, str]:
    """``"bucket-125/some/prefix"`` -> ``("bucket-125", "some/prefix")``."""
    bucket, _, prefix = target.partition("/")
    if not bucket:
        raise ConfigError(f"no bucket in {target!r}; expected BUCKET[/PREFIX]")
    return bucket, prefix.strip("/")


def check_private_file(path: Path, what: str) -> None:
    """Refuse a secret-bearing file that group or others can read."""
    mode = path.stat().st_mode
    if stat.S_IMODE(mode) & 0o077:
        raise ConfigError(
            f"{what} {path} holds secrets but is accessible by group or others "
            f"(mode {stat.S_IMODE(mode):04o}); run: chmod 600 {path}"
        )


def _read_toml(p: Path, what: str) -> dict[str, Any]:
    try:
        with open(p, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{what} {p} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{what} {p}: not valid TOML: {exc}") from None


def load_config_file(path: str | Path) -> dict[str, Any]:
    """A settings file -> checked dotted names."""
    p = Path(path).expanduser()
    values = validate(SCHEMA, flatten(_read_toml(p, "config file")), f"config file {p}")
    if any(SCHEMA[name].secret for name in values):
        check_private_file(p, "config file")
    return values


def load_credentials_file(path: str | Path) -> dict[str, str]:
    """A TOML file with ``secret_id``, ``secret_key`` and optionally ``token``."""
    p = Path(path).expanduser()
    try:
        check_private_file(p, "credentials file")
    except FileNotFoundError:
        raise ConfigError(f"credentials file {p} does not exist") from None
    raw = _read_toml(p, "credentials file")
    allowed = {"secret_id", "secret_key", "token"}
    unknown = set(raw) - allowed
    if unknown:
        raise ConfigError(f"credentials file {p}: unknown setting {sorted(unknown)[0]!r}")
    if not isinstance(raw.get("secret_id"), str) or not isinstance(raw.get("secret_key"), str):
        raise ConfigError(f"credentials file {p}: needs secret_id and secret_key (strings)")
    return {k: str(v) for k, v in raw.items()}


def _fill(settings: BucketSettings, schema: Mapping[str, Field], values: Mapping[str, Any]) -> None:
    for name, value in values.items():
        spec = schema.get(name)
        if spec is None:
            continue  # a mount's setting, meaningless to a bucket command
        *parents, attr = spec.path
        target: Any = settings
        for parent in parents:
            target = getattr(target, parent)
        setattr(target, attr, value)


def _credentials(settings: BucketSettings, values: Mapping[str, Any]) -> None:
    """A credentials file, under the config file's own credentials settings, completed
    from the environment."""
    if settings.credentials_file:
        creds = load_credentials_file(settings.credentials_file)
        if "credentials.secret_id" not in values:
            settings.secret_id = creds["secret_id"]
        if "credentials.secret_key" not in values:
            settings.secret_key = creds["secret_key"]
        if "credentials.token" not in values:
            settings.token = creds.get("token")
    settings.credentials_from_env()


def build_bucket_settings(values: Mapping[str, Any]) -> BucketSettings:
    """What ``rekey`` and ``fsck`` use, from checked dotted names."""
    if values.get("local_dir"):
        raise ConfigError(
            "local_dir is for mounts; run `cosencfs local-server` and give its --endpoint"
        )
    settings = BucketSettings()
    _fill(settings, BUCKET_SCHEMA, values)
    if not settings.bucket:
        raise ConfigError(_NO_BUCKET)
    settings.prefix = settings.prefix.strip("/")
    _credentials(settings, values)
    return settings


def build_mount_settings(values: Mapping[str, Any]) -> MountSettings:
    """A mount's settings from checked dotted names."""
    settings = MountSettings()
    _fill(settings, SCHEMA, values)
    local = settings.local_dir
    settings.bucket = settings.bucket or (LOCAL_BUCKET if local else "")
    if not settings.bucket:
        raise ConfigError(_NO_BUCKET)
    if not settings.mountpoint:
        raise ConfigError("no mountpoint given")
    settings.prefix = settings.prefix.strip("/")
    keys = settings.keys
    if local and not (keys.key_file or keys.rsa_public_key or keys.rsa_private_key):
        keys.key_file = str(config_home() / "local.key")
        keys.create_if_missing = True
    settings.local_dir = os.path.abspath(local) if local else None
    if not local:
        _credentials(settings, values)
    return settings
