"""File attributes in object metadata, in the conventions of Tencent's cosfs.

``x-cos-meta-mode``, ``-uid``, ``-gid`` are decimal; ``-mtime`` is seconds,
written as ``sec.nanoseconds`` when the nanoseconds are not zero (cosfs reads
the integer part).  Objects without them get the mount's defaults and the
object's Last-Modified time.
"""

from __future__ import annotations

import stat
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

from cosencfs.fs.policy import is_symlink, permission_bits

NS = 1_000_000_000

META_MODE = "mode"
META_UID = "uid"
META_GID = "gid"
META_MTIME = "mtime"
#: Plaintext size at upload (cosencfs only): catches truncated bodies.
META_SIZE = "cosencfs-size"
ATTR_FIELDS = frozenset({META_MODE, META_UID, META_GID, META_MTIME})

DIR_CONTENT_TYPE = "application/x-directory"
FILE_CONTENT_TYPE = "application/octet-stream"


class Kind(Enum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"

    @property
    def type_bits(self) -> int:
        return {Kind.FILE: stat.S_IFREG, Kind.DIR: stat.S_IFDIR, Kind.SYMLINK: stat.S_IFLNK}[self]


@dataclass(slots=True, frozen=True)
class Defaults:
    """Attributes for objects that carry none (made by other tools)."""

    uid: int
    gid: int
    file_mode: int = 0o644
    dir_mode: int = 0o755


@dataclass(slots=True)
class Attrs:
    """The POSIX attributes cosencfs keeps for an inode."""

    mode: int  # with the S_IF* type bits
    uid: int
    gid: int
    mtime_ns: int
    ctime_ns: int
    atime_ns: int

    @property
    def kind(self) -> Kind:
        if stat.S_ISDIR(self.mode):
            return Kind.DIR
        if stat.S_ISLNK(self.mode):
            return Kind.SYMLINK
        return Kind.FILE


def parse_mtime(value: str) -> int | None:
    """``"1700000000"`` or ``"1700000000.123456789"`` -> nanoseconds."""
    value = value.strip()
    if not value:
        return None
    sec_s, _, frac = value.partition(".")
    try:
        sec = int(sec_s)
        if not frac:
            return sec * NS
        frac = (frac + "000000000")[:9]
        return sec * NS + int(frac)
    except ValueError:
        return None


def format_mtime(ns: int) -> str:
    sec, rem = divmod(ns, NS)
    return str(sec) if rem == 0 else f"{sec}.{rem:09d}"


def _int_field(meta: Mapping[str, str], name: str) -> int | None:
    try:
        return int(meta[name])
    except (KeyError, ValueError):
        return None


def attrs_from_meta(
    meta: Mapping[str, str],
    kind: Kind,
    defaults: Defaults,
    last_modified: float,
    *,
    trust_modes: bool = False,
) -> Attrs:
    """Attributes of an object, from its metadata where present.

    The type bits always follow ``kind`` (decided by the key and, for
    symlinks, by the mode and size); a mode field only supplies the
    permission bits, without setuid/setgid unless ``trust_modes``: anyone
    who can write to the bucket can set them (docs/security.md).
    """
    perm = defaults.dir_mode if kind is Kind.DIR else defaults.file_mode
    mode = _int_field(meta, META_MODE)
    if mode is not None:
        perm = permission_bits(mode, trust_modes=trust_modes)
    if kind is Kind.SYMLINK:
        perm = 0o777
    uid = _int_field(meta, META_UID)
    gid = _int_field(meta, META_GID)
    mtime = parse_mtime(meta.get(META_MTIME, ""))
    if mtime is None:
        mtime = int(last_modified * NS)
    return Attrs(
        mode=kind.type_bits | perm,
        uid=defaults.uid if uid is None else uid,
        gid=defaults.gid if gid is None else gid,
        mtime_ns=mtime,
        ctime_ns=mtime,
        atime_ns=mtime,
    )


def kind_from_meta(meta: Mapping[str, str], size: int) -> Kind:
    """A regular-file key is a symlink when its mode says so (cosfs convention)
    and its size can be a target (``policy.is_symlink``)."""
    return Kind.SYMLINK if is_symlink(meta, size) else Kind.FILE


def attrs_to_meta(attrs: Attrs) -> dict[str, str]:
    return {
        META_MODE: str(attrs.mode),
        META_UID: str(attrs.uid),
        META_GID: str(attrs.gid),
        META_MTIME: format_mtime(attrs.mtime_ns),
    }
