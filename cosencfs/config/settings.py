"""The settings dataclasses: what every bucket command needs, what only a mount needs.

``BucketSettings`` is what ``rekey`` and ``fsck`` (and a mount) need to reach
a bucket and open its objects: where it is, the credentials, the master key,
the network and logging.  ``MountSettings`` adds what only a mount has: the
mountpoint, the cache, FUSE options and the filesystem's tunables.  Each
field says its name in the TOML file (:func:`~cosencfs.config.schema.toml`)
and its default, the only place either is written down; the ``[fs]`` tunables
left unset keep the filesystem's own defaults (``FsOptions``).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from cosencfs.config.schema import (
    AtLeastOne,
    Count,
    HostPort,
    Mode,
    Seconds,
    Size,
    schema_of,
    toml,
)

#: COS's region when neither the file nor the command line names one.
DEFAULT_REGION = "ap-guangzhou"
#: The bucket a ``--local DIR`` mount serves.
LOCAL_BUCKET = "local-1250000000"

AesWrap = Literal["sdk", "kw"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]


def config_home() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "cosencfs"


def cache_home() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cosencfs"


@dataclass(slots=True, kw_only=True)
class KeySettings:
    """Which master key: an AES key file or an RSA key pair (loaded by crypto.keyfiles)."""

    key_file: str | None = field(default=None, metadata=toml("keys.key_file"))
    rsa_public_key: str | None = field(default=None, metadata=toml("keys.rsa_public_key"))
    rsa_private_key: str | None = field(default=None, metadata=toml("keys.rsa_private_key"))
    rsa_passphrase: str | None = field(
        default=None, repr=False, metadata=toml("keys.rsa_passphrase", secret=True)
    )
    #: "sdk": the COS SDK's AES wrap (readable by the SDK); "kw": AES key wrap.
    aes_wrap: AesWrap = field(default="sdk", metadata=toml("keys.aes_wrap"))
    #: Create the AES key file when it does not exist (``--local`` only).
    create_if_missing: bool = False
    #: Older AES key files that may still open objects (during a rotation);
    #: new objects always use the main key.
    also_read: list[str] = field(default_factory=list, metadata=toml("keys.also_read"))


@dataclass(slots=True, kw_only=True)
class BucketSettings:
    """Where the bucket is, how to reach it, and which key opens its objects."""

    bucket: str = field(default="", metadata=toml("bucket"))
    prefix: str = field(default="", metadata=toml("prefix"))
    endpoint: str | None = field(default=None, metadata=toml("endpoint"))
    region: str = field(default=DEFAULT_REGION, metadata=toml("region"))
    secret_id: str = field(default="", repr=False, metadata=toml("credentials.secret_id"))
    secret_key: str = field(
        default="", repr=False, metadata=toml("credentials.secret_key", secret=True)
    )
    token: str | None = field(
        default=None, repr=False, metadata=toml("credentials.token", secret=True)
    )
    #: A TOML file with secret_id, secret_key and optionally token.
    credentials_file: str | None = field(default=None, metadata=toml("credentials.file"))
    keys: KeySettings = field(default_factory=KeySettings)
    concurrency: AtLeastOne = field(default=16, metadata=toml("network.concurrency"))
    timeout: Seconds = field(default=30.0, metadata=toml("network.timeout"))
    #: Give up on a foreground request (read, listing) after this many seconds.
    request_deadline: Seconds = field(default=30.0, metadata=toml("network.request_deadline"))
    #: PEM CA certificates an https endpoint must chain to (a private endpoint,
    #: the local server); None: the system's trust store.
    ca_file: str | None = field(default=None, metadata=toml("network.ca_file"))
    log_level: LogLevel = field(default="INFO", metadata=toml("log.level"))
    debug: list[str] = field(default_factory=list, metadata=toml("log.debug"))

    def credentials_from_env(self) -> None:
        self.secret_id = self.secret_id or os.environ.get("COS_SECRET_ID", "")
        self.secret_key = self.secret_key or os.environ.get("COS_SECRET_KEY", "")
        self.token = self.token or os.environ.get("COS_TOKEN") or None

    def target(self) -> str:
        """``BUCKET[/PREFIX]``, as people write it."""
        return self.bucket + (f"/{self.prefix}" if self.prefix else "")


@dataclass(slots=True, kw_only=True)
class FsSettings:
    """The ``[fs]`` table; None leaves the filesystem's own default (``FsOptions``,
    and for ``uid``/``gid`` the mounting user)."""

    writeback_delay: Seconds | None = field(default=None, metadata=toml("fs.writeback_delay"))
    max_dirty_age: Seconds | None = field(default=None, metadata=toml("fs.max_dirty_age"))
    dir_ttl: Seconds | None = field(default=None, metadata=toml("fs.dir_ttl"))
    entry_timeout: Seconds | None = field(default=None, metadata=toml("fs.entry_timeout"))
    attr_timeout: Seconds | None = field(default=None, metadata=toml("fs.attr_timeout"))
    open_revalidate: Seconds | None = field(default=None, metadata=toml("fs.open_revalidate"))
    upload_workers: AtLeastOne | None = field(default=None, metadata=toml("fs.upload_workers"))
    part_concurrency: AtLeastOne | None = field(default=None, metadata=toml("fs.part_concurrency"))
    stream_uploads: bool | None = field(default=None, metadata=toml("fs.stream_uploads"))
    single_put_max: Size | None = field(default=None, metadata=toml("fs.single_put_max"))
    readahead_max: Size | None = field(default=None, metadata=toml("fs.readahead_max"))
    allow_plaintext: bool | None = field(default=None, metadata=toml("fs.allow_plaintext"))
    trust_metadata_modes: bool | None = field(
        default=None, metadata=toml("fs.trust_metadata_modes")
    )
    require_integrity: bool | None = field(default=None, metadata=toml("fs.require_integrity"))
    #: Off only in the benchmark that measures what the tags cost (docs/format.md, 12.11).
    write_tags: bool | None = field(default=None, metadata=toml("fs.write_tags"))
    #: Owner, group and modes of objects that carry none.
    uid: Count | None = field(default=None, metadata=toml("fs.uid"))
    gid: Count | None = field(default=None, metadata=toml("fs.gid"))
    file_mode: Mode | None = field(default=None, metadata=toml("fs.file_mode"))
    dir_mode: Mode | None = field(default=None, metadata=toml("fs.dir_mode"))

    def given(self) -> dict[str, Any]:
        """The settings that were set, by field name."""
        return {
            f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None
        }


@dataclass(slots=True, kw_only=True)
class MountSettings(BucketSettings):
    """A bucket's settings plus the mount's own: mountpoint, cache, FUSE, tunables."""

    mountpoint: str = field(default="", metadata=toml("mountpoint"))
    #: ``--local DIR``: serve DIR with an in-process local COS server.
    local_dir: str | None = field(default=None, metadata=toml("local_dir"))
    cache_dir: str = field(default="", metadata=toml("cache.dir"))
    cache_size: Size = field(default=1024**3, metadata=toml("cache.size"))
    foreground: bool = field(default=False, metadata=toml("fuse.foreground"))
    fuse_options: list[str] = field(default_factory=list, metadata=toml("fuse.options"))
    #: ``HOST:PORT`` of the Prometheus endpoint (a port alone: 127.0.0.1); None: off.
    metrics_addr: HostPort | None = field(default=None, metadata=toml("metrics_addr"))
    fs: FsSettings = field(default_factory=FsSettings)

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

    def devices_live(self) -> bool:
        """Whether ``-o dev`` makes device nodes usable (the last of dev/nodev wins;
        FUSE mounts are nodev unless told otherwise)."""
        live = False
        for item in self.fuse_options:
            for opt in item.split(","):
                if opt.strip() in ("dev", "nodev"):
                    live = opt.strip() == "dev"
        return live


#: Every setting of the TOML file (one format for mount, rekey and fsck).
SCHEMA = schema_of(MountSettings)
#: The settings a bucket command uses; the file's other settings are checked
#: but mean nothing to it.
BUCKET_SCHEMA = schema_of(BucketSettings)
