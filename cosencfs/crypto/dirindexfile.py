"""A directory index read from a file in chunks (the daemon's copy, cosencfs/fs/indexbuf.py).

The same checks as :func:`cosencfs.crypto.dirindex.decode_index`, in the
same order and with the same messages, over an index that lies in a file
rather than in memory: the whole body is never held by the process, only
one reused buffer (``buf``) of it at a time.  :func:`verify_file` checks
the header, the MAC and the entry count before any entry is trusted;
:func:`file_entries` then decodes the entry lines chunk by chunk, carrying
a line cut by a chunk's end over to the next.

The file is the daemon's own (unlinked, mode 0600, opened only by it), so
the bytes read by the second pass are the bytes the first one verified.
"""

from __future__ import annotations

import hashlib
import hmac
import mmap
import os
from collections.abc import Iterator, Mapping

from cosencfs.crypto.dirindex import (
    _HEADER_MAX,
    _MAC_PREFIX,
    MAGIC,
    IndexEntry,
    _mac,
    open_header,
    parse_entry,
)
from cosencfs.crypto.objecttags import TagKey
from cosencfs.crypto.tagcodec import TAG_SIZE, b64url_decode
from cosencfs.errors import IntegrityError

#: Bytes read per step while looking for the MAC line from the end (it is
#: in the last step of any index a writer made).
_TAIL_STEP = 4096
#: A MAC line longer than this cannot hold a tag (refused as a wrong tag).
_MAC_LINE_MAX = 4 * TAG_SIZE


def _pread_into(fd: int, buf: mmap.mmap, n: int, at: int, offset: int = 0) -> int:
    """Read ``n`` bytes at ``at`` into ``buf[offset:offset + n]``; raise if the file is shorter."""
    with memoryview(buf) as whole, whole[offset : offset + n] as part:
        got = os.preadv(fd, [part], at)
    if got != n:
        raise OSError(f"index file shorter than received ({got} < {n} at {at})")
    return got


def _rfind_mac(fd: int, size: int) -> int:
    """Where the last ``\\nmac `` of the file starts, or -1 (``bytes.rfind``)."""
    pat = b"\n" + _MAC_PREFIX
    hi = size
    while hi > 0:
        lo = max(0, hi - _TAIL_STEP)
        # (Overlapping the step after it, so a match across the boundary is seen.)
        data = os.pread(fd, min(size, hi + len(pat) - 1) - lo, lo)
        i = data.rfind(pat)
        if i >= 0:
            return lo + i
        hi = lo
    return -1


def verify_file(
    keys: Mapping[str, TagKey], *, prefix: str, fd: int, size: int, buf: mmap.mmap
) -> tuple[int, int]:
    """Where the entry lines of the index in ``fd[0:size]`` start and end, after its MAC verified.

    Raises IntegrityError as :func:`decode_index` does for the same bytes.
    Worker thread (cosencfs/fs/indexbuf.py): holds no lock; ``buf`` and the
    file are the caller's alone while it runs.
    """
    key = prefix + ".cosencfs-index"
    first = os.pread(fd, min(size, len(MAGIC) + _HEADER_MAX + 1), 0)
    if first[: len(MAGIC)] != MAGIC:
        raise IntegrityError("not a directory index (magic)", key=key)
    end = _rfind_mac(fd, size)
    if end < 0 or os.pread(fd, 1, size - 1) != b"\n":
        raise IntegrityError("directory index without its MAC (truncated)", key=key)
    signed = end + 1  # (the signed bytes are the file's [0, signed))
    mac_len = size - 1 - (signed + len(_MAC_PREFIX))
    mac_line = b"" if mac_len > _MAC_LINE_MAX else os.pread(fd, mac_len, signed + len(_MAC_PREFIX))
    nl, kid, n, tk = open_header(first, signed, keys, prefix=prefix, key=key)
    tag = None if mac_len > _MAC_LINE_MAX else b64url_decode(mac_line.decode("ascii", "replace"))
    digest, lines = _digest_and_lines(fd, signed, nl + 1, buf)
    expected = _mac(tk, prefix, kid, n, digest)
    if tag is None or len(tag) != TAG_SIZE or not hmac.compare_digest(tag, expected):
        raise IntegrityError("directory index MAC does not verify", key=key)
    if lines != n:
        raise IntegrityError("directory index entry count does not match", key=key)
    return nl + 1, signed


def _digest_and_lines(fd: int, signed: int, start: int, buf: mmap.mmap) -> tuple[bytes, int]:
    """SHA-256 of the file's ``[0, signed)``, and the newlines of ``[start, signed)``."""
    digest = hashlib.sha256()
    lines = 0
    at = 0
    while at < signed:
        got = _pread_into(fd, buf, min(len(buf), signed - at), at)
        with memoryview(buf) as whole, whole[:got] as part:
            digest.update(part)
        # (A mapping has no ``count``; one ``find`` per line, in C.)
        pos = buf.find(b"\n", max(0, start - at), got)
        while pos >= 0:
            lines += 1
            pos = buf.find(b"\n", pos + 1, got)
        at += got
    return digest.digest(), lines


def file_entries(fd: int, start: int, end: int, key: str, buf: mmap.mmap) -> Iterator[IndexEntry]:
    """The entries of the verified lines ``fd[start:end]``, read into ``buf`` a chunk at a time.

    A line cut by the chunk's end is moved to the buffer's front and
    completed by the next read; a line longer than the buffer (none a
    writer of ours makes: names and fields are bounded) gets a larger
    buffer of its own.  Event loop: each read is one chunk from the page
    cache (~100 us for 1 MiB), small against decoding its ~7,000 lines.
    """
    grown: mmap.mmap | None = None
    try:
        pos = filled = 0
        at = start
        while True:
            nl = buf.find(b"\n", pos, filled)
            if nl >= 0:
                line, pos = buf[pos:nl], nl + 1
                yield parse_entry(line, key)
                continue
            if at >= end:
                if pos < filled:  # (verified: the signed bytes end with a newline)
                    raise IntegrityError("directory index entry malformed", key=key)
                return
            tail = filled - pos
            if tail == len(buf):
                bigger = mmap.mmap(-1, 2 * len(buf), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
                bigger[:tail] = buf[pos:filled]
                if grown is not None:
                    grown.close()
                buf = grown = bigger
            elif tail:
                buf.move(0, pos, tail)
            pos, filled = 0, tail
            filled += _pread_into(fd, buf, min(len(buf) - filled, end - at), at, filled)
            at += filled - tail
    finally:
        if grown is not None:
            grown.close()
