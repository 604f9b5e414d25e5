"""File names and object keys: what COS can store, and how paths map to keys."""

from __future__ import annotations

import errno

from cosencfs.errors import FsError
from cosencfs.store.base import MAX_KEY_BYTES

#: NAME_MAX, as statfs reports it.
MAX_NAME_BYTES = 255
#: Names the mount keeps for itself, in every directory: hidden from
#: listings and lookups, refused (EPERM) as the name of anything created.
#: ``.cosencfs-tags`` holds the companions of integrity tags (format.md, 12.7),
#: ``.cosencfs-index`` a directory's attribute index (format.md, 14).
INDEX_NAME = ".cosencfs-index"
RESERVED_NAMES = frozenset({".cosencfs-tags", INDEX_NAME})


def decode_name(raw: bytes) -> str:
    """Validate a name from the kernel and return it as text.

    COS keys are UTF-8 text, so names that are not valid UTF-8 cannot be
    stored (EINVAL); control characters are refused too, since COS listings
    cannot carry some of them and other tools choke on them.
    """
    if len(raw) > MAX_NAME_BYTES:
        raise FsError(errno.ENAMETOOLONG)
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise FsError(errno.EINVAL, "file name is not valid UTF-8") from None
    if not name or name in (".", "..") or "/" in name:
        raise FsError(errno.EINVAL)
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise FsError(errno.EINVAL, "control characters cannot be stored in COS keys")
    return name


def new_name(raw: bytes) -> str:
    """A name for something to create (or rename to): EPERM for a reserved one."""
    name = decode_name(raw)
    if name in RESERVED_NAMES:
        raise FsError(errno.EPERM, f"{name!r} is reserved by cosencfs")
    return name


def existing_name(raw: bytes) -> str:
    """A name to look up: a reserved one is never there (ENOENT)."""
    name = decode_name(raw)
    if name in RESERVED_NAMES:
        raise FsError(errno.ENOENT)
    return name


def valid_listed_name(name: str) -> bool:
    """Whether a name found in a listing can be shown (others are skipped)."""
    if not name or name in (".", "..") or "/" in name or name in RESERVED_NAMES:
        return False
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        return False
    return not any(ord(c) < 0x20 or ord(c) == 0x7F for c in name)


def check_key(key: str) -> str:
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise FsError(errno.ENAMETOOLONG, "object key longer than 850 bytes")
    return key


def normalize_prefix(prefix: str) -> str:
    """``"a/b"`` -> ``"a/b/"``; ``""`` and ``"/"`` -> ``""``."""
    prefix = prefix.strip("/")
    return prefix + "/" if prefix else ""
