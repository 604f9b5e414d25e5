"""Mount settings: where the bucket is, which key, which cache, which tunables.

Settings come from a TOML file (``--config``) and the command line, the
command line winning; both are first turned into a flat mapping of dotted
names (``fs.writeback_delay``) checked against ``FIELDS``, so every error
names the field and where it came from.  Credentials come from the
environment (``COS_SECRET_ID``/``COS_SECRET_KEY``/``COS_TOKEN``, as in the COS
SDK samples), a credentials file, or the config file; a file holding secrets
must not be readable by group or others.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import sys
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cosencfs.crypto.envelope import EnvelopeCodec
from cosencfs.crypto.keyfiles import (
    generate_aes_key_file,
    load_aes_key_file,
    load_rsa_key_files,
)
from cosencfs.crypto.master import MasterKey
from cosencfs.errors import ConfigError
from cosencfs.fs.attrs import Defaults
from cosencfs.fs.context import FsOptions
from cosencfs.store.cos import CosSettings
from cosencfs.store.retry import RetryPolicy

LOCAL_BUCKET = "local-1250000000"

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(i?[bB])?\s*$")


def parse_size(text: str) -> int:
    """``"512M"``, ``"2GiB"``, ``"1048576"`` -> bytes."""
    m = _SIZE_RE.match(text)
    if not m:
        raise ConfigError(f"not a size: {text!r} (use e.g. 512M or 10G)")
    number = float(m.group(1))
    unit = m.group(2).upper()
    mult = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}[unit]
    return int(number * mult)


def config_home() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "cosencfs"


def cache_home() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cosencfs"


def split_target(target: str) -> tuple[str, str]:
    """``"bucket-125/some/prefix"`` -> ``("bucket-125", "some/prefix")``."""
    bucket, _, prefix = target.partition("/")
    if not bucket:
        raise ConfigError(f"no bucket in {target!r}; expected BUCKET[/PREFIX]")
    return bucket, prefix.strip("/")


@dataclass(slots=True)
class KeySettings:
    key_file: str | None = None
    rsa_public_key: str | None = None
    rsa_private_key: str | None = None
    rsa_passphrase: str | None = field(default=None, repr=False)
    #: "sdk": the COS SDK's AES wrap (readable by the SDK); "kw": AES key wrap.
    aes_wrap: str = "sdk"
    #: Create the AES key file when it does not exist (``--local`` only).
    create_if_missing: bool = False
    #: Older AES key files that may still open objects (during a rotation);
    #: new objects always use the main key.
    also_read: list[str] = field(default_factory=list)

    def load(self) -> MasterKey:
        hardened = self.aes_wrap == "kw"
        if self.aes_wrap not in ("sdk", "kw"):
            raise ConfigError(f"aes_wrap must be 'sdk' or 'kw', not {self.aes_wrap!r}")
        if self.rsa_public_key or self.rsa_private_key:
            if self.key_file:
                raise ConfigError("give either an AES key file or an RSA key pair, not both")
            return load_rsa_key_files(
                self.rsa_public_key, self.rsa_private_key, passphrase=self.rsa_passphrase
            )
        if not self.key_file:
            raise ConfigError(
                "no master key: give --key-file FILE (AES) or "
                "--rsa-public-key/--rsa-private-key (RSA); create one with `cosencfs keygen`"
            )
        if self.create_if_missing and not os.path.exists(self.key_file):
            key = generate_aes_key_file(self.key_file, hardened=hardened)
            print(
                f"cosencfs: created a new master key in {self.key_file}; back it up: "
                "without it the data cannot be read",
                file=sys.stderr,
            )
            return key
        return load_aes_key_file(self.key_file, hardened=hardened)

    def codec(self) -> EnvelopeCodec:
        hardened = self.aes_wrap == "kw"
        old = [load_aes_key_file(path, hardened=hardened) for path in self.also_read]
        return EnvelopeCodec(self.load(), also_read=old)


@dataclass(slots=True)
class MountSettings:
    bucket: str
    mountpoint: str
    prefix: str = ""
    endpoint: str | None = None
    region: str = "ap-guangzhou"
    secret_id: str = field(default="", repr=False)
    secret_key: str = field(default="", repr=False)
    token: str | None = field(default=None, repr=False)
    keys: KeySettings = field(default_factory=KeySettings)
    cache_dir: str = ""
    cache_size: int = 1024**3
    foreground: bool = False
    fuse_options: list[str] = field(default_factory=list)
    concurrency: int = 16
    timeout: float = 30.0
    #: Give up on a foreground request (read, listing) after this many seconds.
    request_deadline: float = 30.0
    fs: FsOptions = field(default_factory=FsOptions)
    #: ``--local DIR``: serve DIR with an in-process local COS server.
    local_dir: str | None = None
    log_level: str = "INFO"
    debug: list[str] = field(default_factory=list)

    def credentials_from_env(self) -> None:
        self.secret_id = self.secret_id or os.environ.get("COS_SECRET_ID", "")
        self.secret_key = self.secret_key or os.environ.get("COS_SECRET_KEY", "")
        self.token = self.token or os.environ.get("COS_TOKEN") or None

    def cos_settings(self) -> CosSettings:
        """How the store reaches the bucket (shared by mount, rekey and fsck)."""
        return CosSettings(
            bucket=self.bucket,
            region=self.region,
            endpoint=self.endpoint,
            secret_id=self.secret_id,
            secret_key=self.secret_key,
            token=self.token,
            concurrency=self.concurrency,
            timeout=self.timeout,
            retry=RetryPolicy(deadline=self.request_deadline),
        )

    def cache_root(self) -> Path:
        """The cache subdirectory of this bucket and prefix (one per mount)."""
        base = Path(self.cache_dir).expanduser() if self.cache_dir else cache_home()
        # --local: named by its directory, not by the embedded server's port
        # (a new one every mount), or a crashed mount's dirty data would
        # never be found again.
        where = (
            f"local:{os.path.realpath(self.local_dir)}"
            if self.local_dir
            else self.endpoint or self.region
        )
        ident = f"{where}|{self.bucket}|{self.prefix}"
        digest = hashlib.sha256(ident.encode()).hexdigest()[:16]
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", self.bucket)
        return base / f"{safe}-{digest}"


# ---------------------------------------------------------------------------
# The settings schema: dotted name -> (converter, description)


def _str(v: object) -> str:
    if not isinstance(v, str):
        raise ValueError("expected a string")
    return v


def _num(v: object) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ValueError("expected a number")
    if v < 0:
        raise ValueError("must not be negative")
    return float(v)


def _int(v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError("expected a whole number")
    if v < 0:
        raise ValueError("must not be negative")
    return v


def _pos_int(v: object) -> int:
    n = _int(v)
    if n < 1:
        raise ValueError("must be at least 1")
    return n


def _size(v: object) -> int:
    if isinstance(v, int) and not isinstance(v, bool):
        return _int(v)
    if isinstance(v, str):
        try:
            return parse_size(v)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
    raise ValueError("expected a size such as 512M or 10G")


def _mode(v: object) -> int:
    if isinstance(v, str):
        try:
            return int(v, 8) & 0o7777
        except ValueError:
            raise ValueError('expected an octal mode such as "0644"') from None
    return _int(v) & 0o7777


def _strlist(v: object) -> list[str]:
    if isinstance(v, str):
        return [v]
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ValueError("expected a list of strings")
    return list(v)


def _choice(*choices: str) -> Callable[[object], str]:
    def conv(v: object) -> str:
        if v not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return str(v)

    return conv


FIELDS: dict[str, Callable[[object], Any]] = {
    "bucket": _str,
    "prefix": _str,
    "mountpoint": _str,
    "region": _str,
    "endpoint": _str,
    "local_dir": _str,
    "credentials.secret_id": _str,
    "credentials.secret_key": _str,
    "credentials.token": _str,
    "credentials.file": _str,
    "keys.key_file": _str,
    "keys.rsa_public_key": _str,
    "keys.rsa_private_key": _str,
    "keys.rsa_passphrase": _str,
    "keys.aes_wrap": _choice("sdk", "kw"),
    "keys.also_read": _strlist,
    "cache.dir": _str,
    "cache.size": _size,
    "fs.writeback_delay": _num,
    "fs.max_dirty_age": _num,
    "fs.dir_ttl": _num,
    "fs.entry_timeout": _num,
    "fs.attr_timeout": _num,
    "fs.open_revalidate": _num,
    "fs.upload_workers": _pos_int,
    "fs.part_concurrency": _pos_int,
    "fs.stream_uploads": bool,
    "fs.single_put_max": _size,
    "fs.readahead_max": _size,
    "fs.allow_plaintext": bool,
    "fs.trust_metadata_modes": bool,
    "fs.uid": _int,
    "fs.gid": _int,
    "fs.file_mode": _mode,
    "fs.dir_mode": _mode,
    "network.concurrency": _pos_int,
    "network.timeout": _num,
    "network.request_deadline": _num,
    "fuse.options": _strlist,
    "fuse.foreground": bool,
    "log.level": _choice("DEBUG", "INFO", "WARNING", "ERROR"),
    "log.debug": _strlist,
}

#: Command-line destinations -> settings names, for the options every command
#: that reaches a bucket shares (mount, rekey, fsck).
COMMON_CLI_FIELDS = {
    "endpoint": "endpoint",
    "region": "region",
    "key_file": "keys.key_file",
    "rsa_public_key": "keys.rsa_public_key",
    "rsa_private_key": "keys.rsa_private_key",
    "aes_wrap": "keys.aes_wrap",
    "log_level": "log.level",
    "debug": "log.debug",
}

#: Names whose presence in a file makes that file secret.
SECRET_FIELDS = {"credentials.secret_key", "credentials.token", "keys.rsa_passphrase"}


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in table.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, name + "."))
        else:
            out[name] = v
    return out


def check_private_file(path: Path, what: str) -> None:
    """Refuse a secret-bearing file that group or others can read."""
    mode = path.stat().st_mode
    if stat.S_IMODE(mode) & 0o077:
        raise ConfigError(
            f"{what} {path} holds secrets but is accessible by group or others "
            f"(mode {stat.S_IMODE(mode):04o}); run: chmod 600 {path}"
        )


def validate(values: Mapping[str, Any], source: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in values.items():
        conv = FIELDS.get(name)
        if conv is None:
            raise ConfigError(f"{source}: unknown setting {name!r}")
        try:
            out[name] = conv(value)
        except ValueError as exc:
            raise ConfigError(f"{source}: setting {name!r}: {exc}") from None
    return out


def load_config_file(path: str | Path) -> dict[str, Any]:
    p = Path(path).expanduser()
    try:
        with open(p, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {p} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {p}: not valid TOML: {exc}") from None
    values = validate(_flatten(raw), f"config file {p}")
    if SECRET_FIELDS & values.keys():
        check_private_file(p, "config file")
    return values


def load_credentials_file(path: str | Path) -> dict[str, str]:
    """A TOML file with ``secret_id``, ``secret_key`` and optionally ``token``."""
    p = Path(path).expanduser()
    try:
        check_private_file(p, "credentials file")
        with open(p, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"credentials file {p} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"credentials file {p}: not valid TOML: {exc}") from None
    allowed = {"secret_id", "secret_key", "token"}
    unknown = set(raw) - allowed
    if unknown:
        raise ConfigError(f"credentials file {p}: unknown setting {sorted(unknown)[0]!r}")
    if not isinstance(raw.get("secret_id"), str) or not isinstance(raw.get("secret_key"), str):
        raise ConfigError(f"credentials file {p}: needs secret_id and secret_key (strings)")
    return {k: str(v) for k, v in raw.items()}


def device_nodes_live(fuse_options: list[str]) -> bool:
    """Whether ``-o dev`` makes device nodes usable (the last of dev/nodev wins;
    FUSE mounts are nodev unless told otherwise)."""
    live = False
    for item in fuse_options:
        for opt in item.split(","):
            if opt.strip() in ("dev", "nodev"):
                live = opt.strip() == "dev"
    return live


def build_settings(values: Mapping[str, Any]) -> MountSettings:
    """MountSettings from validated dotted names (file values overlaid by the CLI's)."""
    v = dict(values)
    local = v.get("local_dir")
    bucket = v.get("bucket") or (LOCAL_BUCKET if local else "")
    if not bucket:
        raise ConfigError("no bucket given (BUCKET[/PREFIX] or 'bucket' in the config file)")
    mountpoint = v.get("mountpoint")
    if not mountpoint:
        raise ConfigError("no mountpoint given")
    prefix = str(v.get("prefix", "")).strip("/")
    keys = KeySettings(
        key_file=v.get("keys.key_file"),
        rsa_public_key=v.get("keys.rsa_public_key"),
        rsa_private_key=v.get("keys.rsa_private_key"),
        rsa_passphrase=v.get("keys.rsa_passphrase"),
        aes_wrap=v.get("keys.aes_wrap", "sdk"),
        also_read=v.get("keys.also_read", []),
    )
    if local and not (keys.key_file or keys.rsa_public_key or keys.rsa_private_key):
        keys.key_file = str(config_home() / "local.key")
        keys.create_if_missing = True
    defaults = FsOptions()
    fs_kw: dict[str, Any] = {
        name[3:]: v[name]
        for name in v
        if name.startswith("fs.") and name[3:] in FsOptions.__dataclass_fields__
    }
    fuse_opts = v.get("fuse.options", [])
    fs = FsOptions(
        prefix=prefix,
        devices=device_nodes_live(fuse_opts),
        defaults=Defaults(
            uid=v.get("fs.uid", os.getuid()),
            gid=v.get("fs.gid", os.getgid()),
            file_mode=v.get("fs.file_mode", 0o644),
            dir_mode=v.get("fs.dir_mode", 0o755),
        ),
        **{k: type(getattr(defaults, k))(val) for k, val in fs_kw.items()},
    )
    settings = MountSettings(
        bucket=bucket,
        prefix=prefix,
        mountpoint=str(mountpoint),
        endpoint=v.get("endpoint"),
        region=v.get("region", "ap-guangzhou"),
        keys=keys,
        cache_dir=v.get("cache.dir", ""),
        cache_size=v.get("cache.size", 1024**3),
        foreground=bool(v.get("fuse.foreground", False)),
        fuse_options=fuse_opts,
        concurrency=v.get("network.concurrency", 16),
        timeout=v.get("network.timeout", 30.0),
        request_deadline=v.get("network.request_deadline", 30.0),
        fs=fs,
        local_dir=os.path.abspath(local) if local else None,
        log_level=v.get("log.level", "INFO"),
        debug=v.get("log.debug", []),
    )
    if not local:
        creds_file = v.get("credentials.file")
        if creds_file:
            creds = load_credentials_file(creds_file)
            settings.secret_id = creds["secret_id"]
            settings.secret_key = creds["secret_key"]
            settings.token = creds.get("token")
        settings.secret_id = v.get("credentials.secret_id", settings.secret_id)
        settings.secret_key = v.get("credentials.secret_key", settings.secret_key)
        settings.token = v.get("credentials.token", settings.token)
        settings.credentials_from_env()
    return settings
