"""What the mount believes of an object written by someone without the key.

Anyone who can write to the bucket can set any metadata and any body, and
(today) nothing authenticates an object.  So what the bucket says is
checked before it becomes a file:

* a body without an encryption envelope is refused unless
  ``allow_plaintext`` (buckets shared with cosfs): it would be served as
  the file's content, and a symlink's target, as if this key had written it;
* setuid/setgid bits from ``x-cos-meta-mode`` are dropped unless
  ``trust_metadata_modes``;
* file types: regular files, directories, symlinks, fifos and sockets are
  fine; device nodes are inert on a ``nodev`` mount (the default) and, on a
  ``dev`` mount, shown as devices only when their attribute tag (which
  covers mode and rdev) verifies under this key, else refused; a fifo,
  socket or device "with content" (a non-empty object) is refused; unknown
  types are refused;
* a symlink's target is at most 4095 bytes (PATH_MAX less the NUL): a larger
  "symlink" is refused from its size alone, and its body is read with a
  ranged GET that cannot return more.

"Refused" means listed (so the owner can see, move or delete it) but not
served: ``RefusedError``, which the FUSE layer turns into EIO with one log
line a minute naming the object.  ``cosencfs fsck`` reports the same
objects (docs/security.md).
"""

from __future__ import annotations

import stat
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from cosencfs.crypto.envelope import ObjectFormat, classify
from cosencfs.errors import RefusedError

#: Longest symlink target: PATH_MAX less the terminating NUL.
MAX_SYMLINK_TARGET = 4095
META_MODE = "mode"
_PLAINTEXT_HINT = "--allow-plaintext serves objects without an envelope"


class PolicyOptions(Protocol):
    """The mount options the policy reads (``FsOptions`` has them)."""

    @property
    def allow_plaintext(self) -> bool: ...

    @property
    def devices(self) -> bool: ...


@dataclass(slots=True, frozen=True)
class Refusal:
    """Why an object is not served, and what would serve it (for the log line)."""

    reason: str
    hint: str = ""

    def error(self, key: str) -> RefusedError:
        return RefusedError(self.reason, key=key, hint=self.hint)


class FileType(Enum):
    """The file type a metadata mode claims (``S_IFMT``)."""

    REGULAR = "regular file"
    DIRECTORY = "directory"
    SYMLINK = "symlink"
    FIFO = "fifo"
    SOCKET = "socket"
    CHAR_DEVICE = "character device"
    BLOCK_DEVICE = "block device"
    UNKNOWN = "unknown file type"


_TYPES = {
    0: FileType.REGULAR,  # a mode with permission bits only
    stat.S_IFREG: FileType.REGULAR,
    stat.S_IFDIR: FileType.DIRECTORY,
    stat.S_IFLNK: FileType.SYMLINK,
    stat.S_IFIFO: FileType.FIFO,
    stat.S_IFSOCK: FileType.SOCKET,
    stat.S_IFCHR: FileType.CHAR_DEVICE,
    stat.S_IFBLK: FileType.BLOCK_DEVICE,
}
DEVICES = frozenset({FileType.CHAR_DEVICE, FileType.BLOCK_DEVICE})
SPECIALS = DEVICES | {FileType.FIFO, FileType.SOCKET}


def meta_mode(meta: Mapping[str, str]) -> int | None:
    """``x-cos-meta-mode`` as a number, or None when missing or malformed."""
    try:
        return int(meta[META_MODE])
    except (KeyError, ValueError):
        return None


def file_type(mode: int | None) -> FileType:
    if mode is None:
        return FileType.REGULAR
    return _TYPES.get(stat.S_IFMT(mode), FileType.UNKNOWN)


def permission_bits(mode: int, *, trust_modes: bool) -> int:
    """The permission bits of a metadata mode that the mount shows."""
    perm = stat.S_IMODE(mode)
    return perm if trust_modes else perm & ~(stat.S_ISUID | stat.S_ISGID)


def is_symlink(meta: Mapping[str, str], size: int) -> bool:
    """A file key is a symlink when its mode says so and its size can be a target.

    A "symlink" of 0 or more than 4095 bytes is shown as a regular file (that
    ``open`` refuses): the listing, which has sizes but no metadata, then
    tells the type of every object of such a size without a HEAD, and the
    kernel never sees an inode change type.
    """
    return file_type(meta_mode(meta)) is FileType.SYMLINK and 0 < size <= MAX_SYMLINK_TARGET


def is_special(meta: Mapping[str, str], size: int) -> bool:
    """A file key is a fifo, socket or device node when its mode says so and it is empty.

    Special files are metadata-only objects (cosfs, s3fs); a non-empty one is
    shown as a regular file that ``open`` refuses, like an oversized symlink.
    """
    return size == 0 and file_type(meta_mode(meta)) in SPECIALS


def refusal(
    meta: Mapping[str, str],
    size: int,
    *,
    allow_plaintext: bool,
    devices: bool,
    symlink: bool = False,
) -> Refusal | None:
    """Why the object's content (or, with ``symlink``, its target) must not be served."""
    ftype = file_type(meta_mode(meta))
    if ftype is FileType.SYMLINK and not symlink:
        return Refusal(
            f"mode says symlink, but {size} bytes cannot be a symlink target "
            f"(1 to {MAX_SYMLINK_TARGET})"
        )
    if symlink and not 0 < size <= MAX_SYMLINK_TARGET:
        return Refusal(f"symlink target of {size} bytes (at most {MAX_SYMLINK_TARGET})")
    if ftype is FileType.UNKNOWN:
        return Refusal(f"unknown file type in mode {meta_mode(meta):#o}")
    if ftype in SPECIALS and size > 0:
        return Refusal(
            f"mode says {ftype.value}, which has no content, but the object has {size} bytes"
        )
    if ftype in DEVICES and devices:
        return Refusal(
            f"{ftype.value} on a mount with -o dev without a valid attribute tag from this "
            "key: only device nodes this key wrote are live there",
            "mount without -o dev",
        )
    if size > 0 and not allow_plaintext and classify(meta) is ObjectFormat.PLAIN:
        what = "symlink target" if symlink else "body"
        return Refusal(f"{what} without an encryption envelope (plaintext object)", _PLAINTEXT_HINT)
    return None


def check_servable(opts: PolicyOptions, key: str, meta: Mapping[str, str], size: int) -> None:
    """Raise RefusedError unless the content of file ``key`` may be served."""
    why = refusal(meta, size, allow_plaintext=opts.allow_plaintext, devices=opts.devices)
    if why is not None:
        raise why.error(key)


def check_symlink(opts: PolicyOptions, key: str, meta: Mapping[str, str], size: int) -> None:
    """Raise RefusedError unless symlink ``key``'s target may be read (size, envelope)."""
    why = refusal(
        meta, size, allow_plaintext=opts.allow_plaintext, devices=opts.devices, symlink=True
    )
    if why is not None:
        raise why.error(key)
