"""Mount settings: where the bucket is, which key, which cache, which tunables.

Built from the command line today (``cosencfs mount ...``); every field has a
sane default.  Credentials come from ``COS_SECRET_ID``/``COS_SECRET_KEY``
(and ``COS_TOKEN``), as in the COS SDK samples.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from cosencfs.crypto.envelope import EnvelopeCodec
from cosencfs.crypto.keyfiles import (
    generate_aes_key_file,
    load_aes_key_file,
    load_rsa_key_files,
)
from cosencfs.crypto.master import MasterKey
from cosencfs.errors import ConfigError
from cosencfs.fs.context import FsOptions

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
        return EnvelopeCodec(self.load())


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

    def cache_root(self) -> Path:
        """The cache subdirectory of this bucket and prefix (one per mount)."""
        base = Path(self.cache_dir).expanduser() if self.cache_dir else cache_home()
        ident = f"{self.endpoint or self.region}|{self.bucket}|{self.prefix}"
        digest = hashlib.sha256(ident.encode()).hexdigest()[:16]
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", self.bucket)
        return base / f"{safe}-{digest}"
