"""The directory attribute index's encoding and MAC (docs/format.md, section 14).

An index holds, per file of one directory, what a listing shows of its
object (ETag, size, Last-Modified) and the cosfs attribute fields its
metadata held, so a cold ``ls -l`` needs the listing and one GET instead of
a HEAD per file.  It is a trust input, so the whole body is authenticated
under the tag key ``K`` (section 12.1) of the master that wrote it, with the
directory's key prefix bound: an index forged, truncated, extended, or
copied to another directory fails as a whole.  It is not encrypted: it
holds nothing a LIST and HEADs do not show to the same reader of the bucket.

Layout (UTF-8 text, one record a line)::

    cosencfs-dirindex 1
    {"kid": <key id>, "dir": <directory prefix>, "n": <entries>}
    [name, etag, size, last_modified, mode, uid, gid, mtime, rdev, state, atag]   (n lines)
    mac <base64url(T)>

    T = HMAC-SHA256(K, preamble("cosencfs directory index") || lp(prefix)
                       || lp(kid) || u64(n) || SHA-256(every byte before "mac"))[:16]
"""

from __future__ import annotations

import hashlib
import hmac
import json
import mmap
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import Enum

from cosencfs.crypto.objecttags import TagKey
from cosencfs.crypto.tagcodec import TAG_SIZE, _lp, _preamble, _u64, b64url_decode, b64url_encode
from cosencfs.errors import IntegrityError

MAGIC = b"cosencfs-dirindex 1\n"
_LABEL = b"cosencfs directory index"
_MAC_PREFIX = b"mac "
#: The largest header line read (key id and prefix: an object key is <= 850 bytes).
_HEADER_MAX = 4096


class AttrState(Enum):
    """What the writer found of the entry's attribute tag (format.md, 14.2)."""

    #: The attribute tag verified: the fields are what a key of ours wrote.
    AUTHENTIC = "a"
    #: No tags at all (cosfs, the SDK): the fields are applied as a HEAD's would be.
    UNTAGGED = "u"
    #: The tag failed: the fields are left out, the defaults apply.
    FAILED = "f"


@dataclass(slots=True, frozen=True)
class IndexEntry:
    name: str
    etag: str
    size: int
    last_modified: float
    #: cosfs attribute fields (mode, uid, gid, mtime, rdev) as the metadata spelt them.
    fields: tuple[str | None, str | None, str | None, str | None, str | None]
    state: AttrState
    #: The object's attribute tag (base64url), when it had one.
    atag: str | None = None

    def matches(self, etag: str, size: int, last_modified: float) -> bool:
        return self.etag == etag and self.size == size and self.last_modified == last_modified

    def _line(self) -> bytes:
        row = [self.name, self.etag, self.size, self.last_modified, *self.fields]
        row += [self.state.value, self.atag]
        return json.dumps(row, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


def _mac(tk: TagKey, prefix: str, kid: str, n: int, digest: bytes) -> bytes:
    message = _preamble(_LABEL) + _lp(prefix.encode("utf-8")) + _lp(kid.encode("ascii"))
    return tk._mac(message + _u64(n) + digest)


def encode_index(tk: TagKey, *, kid: str, prefix: str, entries: list[IndexEntry]) -> bytes:
    rows = bytearray().join([e._line() for e in entries])
    return bytes(encode_rows(tk, kid=kid, prefix=prefix, n=len(entries), rows=rows))


def entry_line(e: IndexEntry) -> bytes:
    """``e`` as its line of an index body (for :func:`encode_rows`)."""
    return e._line()


def encode_rows(tk: TagKey, *, kid: str, prefix: str, n: int, rows: bytearray) -> bytearray:
    """The index of the ``n`` entry lines ``rows`` (``entry_line``, sorted by name).

    Made in ``rows`` itself (the header put in front, the MAC line after):
    a writer of a large directory holds the body once, in one buffer, not
    an object per entry nor a second copy (cosencfs/fs/dirindex.py, issue 18).
    """
    head = _head(kid, prefix, n)
    line = _mac_line(tk, kid, prefix, n, head, rows)
    rows[0:0] = head
    rows += line
    return rows


def encode_around(
    tk: TagKey, *, kid: str, prefix: str, n: int, buf: bytearray | mmap.mmap, start: int, end: int
) -> tuple[int, int]:
    """The index of the ``n`` entry lines at ``buf[start:end]``, made where they lie.

    The header goes just before ``start`` and the MAC line just after
    ``end`` (the caller leaves room for both: :data:`HEAD_ROOM`,
    :data:`TAIL_ROOM`); returns where the body starts and ends in ``buf``.
    The lines are neither moved nor copied (cosencfs/fs/indexbuf.py).
    """
    head = _head(kid, prefix, n)
    if len(head) > start or end + TAIL_ROOM > len(buf):
        raise ValueError("no room around the index's entry lines")
    with memoryview(buf) as view:
        line = _mac_line(tk, kid, prefix, n, head, view[start:end])
        view[start - len(head) : start] = head
        view[end : end + len(line)] = line
    return start - len(head), end + len(line)


#: Room before the entry lines that holds any header a reader accepts.
HEAD_ROOM = len(MAGIC) + _HEADER_MAX + 1
#: Room after them for the MAC line.
TAIL_ROOM = len(_MAC_PREFIX) + 2 * TAG_SIZE + 1


def _head(kid: str, prefix: str, n: int) -> bytes:
    header = json.dumps({"kid": kid, "dir": prefix, "n": n}, ensure_ascii=False)
    return b"".join([MAGIC, header.encode("utf-8"), b"\n"])


def _mac_line(
    tk: TagKey, kid: str, prefix: str, n: int, head: bytes, rows: bytes | bytearray | memoryview
) -> bytes:
    digest = hashlib.sha256(head)
    digest.update(rows)
    return mac_line_of(tk, kid=kid, prefix=prefix, n=n, digest=digest.digest())


def head_line(kid: str, prefix: str, n: int) -> bytes:
    """The magic and header lines of an index of ``n`` entries (cosencfs/fs/indexbuf.py)."""
    return _head(kid, prefix, n)


def mac_line_of(tk: TagKey, *, kid: str, prefix: str, n: int, digest: bytes) -> bytes:
    """The MAC line of an index whose signed bytes (header and entry lines) have
    SHA-256 ``digest``: for a writer that hashes its body in chunks."""
    tag = _mac(tk, prefix, kid, n, digest)
    return _MAC_PREFIX + b64url_encode(tag).encode("ascii") + b"\n"


def open_header(
    first: bytes | mmap.mmap, signed: int, keys: Mapping[str, TagKey], *, prefix: str, key: str
) -> tuple[int, str, int, TagKey]:
    """The header line of an index whose signed bytes end at ``signed`` (``first``
    holds its start): where the line ends, its key id and entry count, and our
    key of that id; IntegrityError unless a key of ours wrote it for ``prefix``
    (the MAC is the caller's to check; crypto/dirindexfile.py reads a file)."""
    nl = first.find(b"\n", len(MAGIC), signed)
    if nl < 0 or nl - len(MAGIC) > _HEADER_MAX:
        raise IntegrityError("directory index header malformed", key=key)
    try:
        header = json.loads(first[len(MAGIC) : nl])
        kid, bound, n = str(header["kid"]), str(header["dir"]), int(header["n"])
        kid.encode("ascii")
    except (ValueError, KeyError, TypeError):
        raise IntegrityError("directory index header malformed", key=key) from None
    if bound != prefix:
        raise IntegrityError("directory index of another directory", key=key)
    tk = keys.get(kid)
    if tk is None:
        raise IntegrityError(f"directory index under master key id {kid} (not ours)", key=key)
    return nl, kid, n, tk


def decode_index(
    keys: Mapping[str, TagKey], *, prefix: str, body: bytes | mmap.mmap
) -> Iterator[IndexEntry]:
    """The entries of an index of the directory ``prefix``, after its MAC verified.

    Raises IntegrityError (before yielding anything) when the index is not
    one a key of ours wrote for this directory, or is truncated or altered.
    ``body`` may be a mapping (cosencfs/fs/dirindex.py receives a large index
    into one): it is read where it lies, never copied whole.
    """
    key = prefix + ".cosencfs-index"
    size = len(body)
    if body[: len(MAGIC)] != MAGIC:
        raise IntegrityError("not a directory index (magic)", key=key)
    end = body.rfind(b"\n" + _MAC_PREFIX)
    if end < 0 or body[size - 1 : size] != b"\n":
        raise IntegrityError("directory index without its MAC (truncated)", key=key)
    signed = end + 1  # (the signed bytes are body[:signed])
    mac_line = body[signed + len(_MAC_PREFIX) : size - 1]
    nl, kid, n, tk = open_header(body, signed, keys, prefix=prefix, key=key)
    tag = b64url_decode(mac_line.decode("ascii", "replace"))
    with memoryview(body) as view:
        digest = hashlib.sha256(view[:signed]).digest()
    expected = _mac(tk, prefix, kid, n, digest)
    if tag is None or len(tag) != TAG_SIZE or not hmac.compare_digest(tag, expected):
        raise IntegrityError("directory index MAC does not verify", key=key)
    if _lines(body, nl + 1, signed) != n:
        raise IntegrityError("directory index entry count does not match", key=key)
    return _entries(body, nl + 1, signed, key)


def _lines(body: bytes | mmap.mmap, start: int, end: int) -> int:
    """Newlines in ``body[start:end]`` (a mapping has no ``count``)."""
    if isinstance(body, bytes):
        return body.count(b"\n", start, end)
    n = 0
    pos = body.find(b"\n", start, end)
    while pos >= 0:
        n += 1
        pos = body.find(b"\n", pos + 1, end)
    return n


def _entries(body: bytes | mmap.mmap, pos: int, end: int, key: str) -> Iterator[IndexEntry]:
    # One line at a time: a large index is never held twice in memory.
    while pos < end:
        nl = body.find(b"\n", pos, end)
        if nl < 0:
            raise IntegrityError("directory index entry malformed", key=key)
        line, pos = body[pos:nl], nl + 1
        yield parse_entry(line, key)


def parse_entry(line: bytes, key: str) -> IndexEntry:
    """The entry of one line of a verified index (without its newline)."""
    try:
        name, etag, size, lm, mode, uid, gid, mtime, rdev, state, atag = json.loads(line)
        fields = (mode, uid, gid, mtime, rdev)
        if not all(f is None or isinstance(f, str) for f in fields):
            raise TypeError("fields")
        return IndexEntry(
            str(name), str(etag), int(size), float(lm), fields, AttrState(state), atag
        )
    except (ValueError, TypeError):
        # Authentic yet unreadable (a newer writer's format?): the caller
        # keeps what it applied so far and HEADs the rest.
        raise IntegrityError("directory index entry malformed", key=key) from None
