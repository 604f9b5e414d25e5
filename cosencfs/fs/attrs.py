"""File attributes in object metadata, in the conventions of Tencent's cosfs.

``x-cos-meta-mode``, ``-uid``, ``-gid`` are decimal; ``-mtime`` is seconds,
written as ``sec.nanoseconds`` when the nanoseconds are not zero (cosfs reads
the integer part).  Objects without them get the mount's defaults and the
object's Last-Modified time.  Device nodes carry ``x-cos-meta-rdev``
(decimal, the Linux device number as FUSE passes it: s3fs's
``x-amz-meta-rdev`` in COS's namespace; cosfs stores none).
"""

from __future__ import annotations

import stat
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import cast

from cosencfs.fs.policy import is_special, is_symlink, permission_bits

NS = 1_000_000_000

META_MODE = "mode"
META_UID = "uid"
META_GID = "gid"
META_MTIME = "mtime"
#: Device number of a character or block device (s3fs's name, COS's prefix).
META_RDEV = "rdev"
#: Plaintext size at upload (cosencfs only): catches truncated bodies.
META_SIZE = "cosencfs-size"
ATTR_FIELDS = frozenset({META_MODE, META_UID, META_GID, META_MTIME, META_RDEV})

DIR_CONTENT_TYPE = "application/x-directory"
FILE_CONTENT_TYPE = "application/octet-stream"


class Kind(Enum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    #: Special files: an empty object whose mode says the type (cosfs, s3fs).
    FIFO = "fifo"
    SOCKET = "socket"
    CHAR_DEVICE = "chr"
    BLOCK_DEVICE = "blk"

    # (Asked per entry of every listing and stat: identity tests against
    # module globals, not hashing members or looking them up on the class.)
    @property
    def type_bits(self) -> int:
        return _TYPE_BITS[self]

    @property
    def special(self) -> bool:
        """A fifo, socket or device node: no content, the kernel serves opens."""
        return self is _FIFO or self is _SOCKET or self is _CHR or self is _BLK

    @property
    def device(self) -> bool:
        return self is _CHR or self is _BLK

    @staticmethod
    def of_mode(mode: int) -> Kind:
        """The kind a mode's type bits name (regular file for anything else)."""
        return _KIND_OF_BITS.get(stat.S_IFMT(mode), Kind.FILE)


_TYPE_BITS = {
    Kind.FILE: stat.S_IFREG,
    Kind.DIR: stat.S_IFDIR,
    Kind.SYMLINK: stat.S_IFLNK,
    Kind.FIFO: stat.S_IFIFO,
    Kind.SOCKET: stat.S_IFSOCK,
    Kind.CHAR_DEVICE: stat.S_IFCHR,
    Kind.BLOCK_DEVICE: stat.S_IFBLK,
}
_KIND_OF_BITS = {bits: kind for kind, bits in _TYPE_BITS.items()}
_FIFO, _SOCKET, _CHR, _BLK = Kind.FIFO, Kind.SOCKET, Kind.CHAR_DEVICE, Kind.BLOCK_DEVICE


@dataclass(slots=True, frozen=True)
class Defaults:
    """Attributes for objects that carry none (made by other tools)."""

    uid: int
    gid: int
    file_mode: int = 0o644
    dir_mode: int = 0o755


class _NoXattrs(dict[bytes, bytes]):
    """The one empty, unchangeable set of extended attributes every inode
    without any shares (a dict of its own was 64 bytes a file, issue 18)."""

    __slots__ = ()

    def _refuse(self, *args: object, **kwargs: object) -> None:
        raise TypeError("NO_XATTRS is shared: assign a new dict instead")

    __setitem__ = __delitem__ = update = setdefault = pop = popitem = clear = _refuse  # type: ignore[assignment]
    __ior__ = _refuse  # type: ignore[assignment]


#: What ``Attrs.xattrs`` holds for an inode whose object has none.
NO_XATTRS: dict[bytes, bytes] = _NoXattrs()


#: A file's three times when they differ: mtime, ctime, atime (ns, signed 64 bits).
_TIMES = struct.Struct("<qqq")


class Attrs:
    """The POSIX attributes cosencfs keeps for an inode.

    Every inode holds one (issue 18: 100,000 files in a directory), so the
    three times share one slot: one int when they are equal (a listed
    file's, a file HEADed or stat'ed), else one bytes object of the three
    (a file written after its creation: 64 bytes instead of two or three
    48-byte ints); mode, uid and gid are the ints every other inode holds
    (``_shared``).
    """

    __slots__ = ("_times", "gid", "mode", "rdev", "uid", "xattrs")

    def __init__(
        self,
        mode: int,  # with the S_IF* type bits
        uid: int,
        gid: int,
        mtime_ns: int,
        ctime_ns: int,
        atime_ns: int,
        rdev: int = 0,
        xattrs: dict[bytes, bytes] | None = None,
    ) -> None:
        self.mode = _shared(mode)
        self.uid = _shared(uid)
        self.gid = _shared(gid)
        self._times: int | bytes | tuple[int, int, int] = 0
        self._set_times(mtime_ns, ctime_ns, atime_ns)
        #: Device number (device nodes only; 0 otherwise).
        self.rdev = rdev
        #: ``user.*`` extended attributes; None: as the object's metadata has
        #: them, not opened yet (cosencfs/fs/xattrs.py); ``NO_XATTRS`` when none.
        self.xattrs = xattrs

    def times(self) -> tuple[int, int, int]:
        """mtime, ctime and atime (ns) in one call."""
        t = self._times
        return (t, t, t) if type(t) is int else self._get_times()

    def _get_times(self) -> tuple[int, int, int]:
        t = self._times
        if type(t) is int:
            return t, t, t
        if type(t) is bytes:
            m, c, a = _TIMES.unpack(t)
            return m, c, a
        return cast(tuple[int, int, int], t)

    def _set_times(self, m: int, c: int, a: int) -> None:
        if m == c == a:
            self._times = m
            return
        try:
            self._times = _TIMES.pack(m, c, a)
        except struct.error:  # (beyond 64 bits: kept as they are)
            self._times = (m, c, a)

    def _time(self, i: int) -> int:
        t = self._times
        return t if type(t) is int else self._get_times()[i]

    def _set_time(self, i: int, value: int) -> None:
        t = self._times
        if type(t) is int:  # (the three equal: no unpacking)
            if value == t:
                return
            times = [t, t, t]
        else:
            times = list(self._get_times())
        times[i] = value
        self._set_times(*times)

    @property
    def mtime_ns(self) -> int:
        return self._time(0)

    @mtime_ns.setter
    def mtime_ns(self, value: int) -> None:
        self._set_time(0, value)

    @property
    def ctime_ns(self) -> int:
        return self._time(1)

    @ctime_ns.setter
    def ctime_ns(self, value: int) -> None:
        self._set_time(1, value)

    @property
    def atime_ns(self) -> int:
        return self._time(2)

    @atime_ns.setter
    def atime_ns(self, value: int) -> None:
        self._set_time(2, value)

    def _fields(self) -> tuple[object, ...]:
        return (self.mode, self.uid, self.gid, *self._get_times(), self.rdev, self.xattrs)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Attrs):
            return NotImplemented
        return self._fields() == other._fields()

    # (Mutable: unhashable, as the dataclass it was.)
    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        m, c, a = self._get_times()
        return (
            f"Attrs(mode={self.mode:o}, uid={self.uid}, gid={self.gid}, mtime_ns={m},"
            f" ctime_ns={c}, atime_ns={a}, rdev={self.rdev})"
        )

    @property
    def kind(self) -> Kind:
        return Kind.of_mode(self.mode)


#: The ints ``Attrs`` share (modes, uids, gids a mount sees: a few); bounded.
_SHARED: dict[int, int] = {}
_SHARED_MAX = 4096


def _shared(value: int) -> int:
    got = _SHARED.get(value)
    if got is not None:
        return got
    if len(_SHARED) < _SHARED_MAX and type(value) is int:
        _SHARED[value] = value
    return value


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
    if not meta:
        # Every entry of a listing starts here (until the index or a HEAD
        # says more): the defaults without parsing anything.
        lm_ns = int(last_modified * NS)
        return Attrs(
            kind.type_bits | (0o777 if kind is Kind.SYMLINK else perm),
            defaults.uid,
            defaults.gid,
            lm_ns,
            lm_ns,
            lm_ns,
        )
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
    rdev = _int_field(meta, META_RDEV) if kind.device else None
    return Attrs(
        mode=kind.type_bits | perm,
        uid=defaults.uid if uid is None else uid,
        gid=defaults.gid if gid is None else gid,
        mtime_ns=mtime,
        ctime_ns=mtime,
        atime_ns=mtime,
        rdev=rdev if rdev is not None and 0 <= rdev < 2**32 else 0,
    )


def kind_from_meta(meta: Mapping[str, str], size: int, *, devices: bool = True) -> Kind:
    """The kind a regular-file key has, from its mode (cosfs convention) and size.

    A symlink when its size can be a target (``policy.is_symlink``); a fifo,
    socket or device node when it is empty (``policy.is_special``); a device
    node only when ``devices`` (else a regular file that ``open`` refuses:
    unauthenticated device nodes on a ``-o dev`` mount, docs/security.md).
    """
    if is_symlink(meta, size):
        return Kind.SYMLINK
    if is_special(meta, size):
        kind = Kind.of_mode(int(meta[META_MODE]))
        if not kind.device or devices:
            return kind
    return Kind.FILE


def attrs_to_meta(attrs: Attrs) -> dict[str, str]:
    meta = {
        META_MODE: str(attrs.mode),
        META_UID: str(attrs.uid),
        META_GID: str(attrs.gid),
        META_MTIME: format_mtime(attrs.mtime_ns),
    }
    if attrs.kind.device:
        meta[META_RDEV] = str(attrs.rdev)
    return meta
