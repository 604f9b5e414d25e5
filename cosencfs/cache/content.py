"""One encrypted version of a file's content in the cache directory.

A version is a sparse cache file holding ciphertext at the same offsets as in
the object, under one data key (``dk``).  ``present`` says which bytes are
valid.  Bytes that are not present come from ``source`` (the remote object
the version started from, under the source's own key), or are zeros at and
beyond ``source.limit``.

Plaintext never reaches the disk: writes are encrypted before ``pwrite``,
reads decrypted after ``pread``, and a version that must change key is
re-encrypted in memory, chunk by chunk (``transcode_into``).

Once any byte of a version has been sent to COS (``sealed``), the version
must not change: writing it again would encrypt different data under the
same key and counter, which CTR forbids.  The filesystem forks a new version
(new key) instead.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Protocol

import trio

from cosencfs.cache.extents import Extents
from cosencfs.crypto.ctr import DataKey, decrypt, encrypt

#: Transcoding and zero-filling work in chunks this big (memory bound).
CHUNK = 4 * 1024 * 1024


class Abandonable(Protocol):
    def abandon(self) -> None: ...


@dataclass(slots=True, eq=False)
class Source:
    """Where the bytes a version does not hold yet come from."""

    key: str
    etag: str
    #: The object's data key; None for a plaintext object (no envelope).
    dk: DataKey | None
    #: Bytes at or beyond ``limit`` are zeros (the file was truncated below it).
    limit: int
    #: The object's envelope metadata, to recover the key after a restart.
    envelope: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True, eq=False)
class Inflight:
    start: int
    end: int
    done: trio.Event = field(default_factory=trio.Event)


class ContentVersion:
    """The cache file of one version and what is known about its bytes."""

    __slots__ = (
        "account",
        "dirty",
        "discarded",
        "dk",
        "envelope",
        "fd",
        "inflight",
        "last_access",
        "lock",
        "owner",
        "path",
        "pins",
        "present",
        "sealed",
        "sealed_upto",
        "size",
        "source",
        "stream",
        "vid",
    )

    def __init__(
        self,
        vid: str,
        path: str,
        dk: DataKey,
        envelope: dict[str, str],
        size: int,
        source: Source | None,
        *,
        dirty: bool,
        sealed: bool,
        present: Extents | None = None,
        create: bool = True,
    ) -> None:
        self.vid = vid
        self.path = path
        self.dk = dk
        self.envelope = envelope
        self.size = size
        self.source = source
        self.dirty = dirty
        self.sealed = sealed
        self.present = present if present is not None else Extents()
        flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT | os.O_EXCL if create else 0)
        self.fd = os.open(path, flags, 0o600)
        self.pins = 0
        self.lock = trio.Lock()
        self.inflight: list[Inflight] = []
        self.last_access = trio.current_time()
        self.discarded = False
        #: The inode whose content this is (so eviction can tell it).
        self.owner: object | None = None
        #: The cache's running total of present bytes, kept exact by mark().
        self.account = [0]
        #: Bytes below this were sent to COS in parts of a streamed upload:
        #: like ``sealed``, but only for the front of the file.
        self.sealed_upto = 0
        #: The streamed multipart upload feeding on this version, if any.
        self.stream: Abandonable | None = None

    def __repr__(self) -> str:
        return (
            f"ContentVersion({self.vid}, size={self.size}, dirty={self.dirty}, "
            f"sealed={self.sealed}, present={self.present.total})"
        )

    # -- bookkeeping -----------------------------------------------------------

    @property
    def limit(self) -> int:
        """Below this, missing bytes come from the source; above, they are zeros."""
        return min(self.source.limit, self.size) if self.source is not None else 0

    @property
    def complete(self) -> bool:
        return self.present.contains(0, self.size)

    @property
    def cached_bytes(self) -> int:
        return self.present.total

    def mark(self, start: int, end: int) -> None:
        """``[start, end)`` now holds valid ciphertext."""
        before = self.present.total
        self.present.add(start, end)
        self.account[0] += self.present.total - before

    def close(self) -> None:
        if not self.discarded:
            self.discarded = True
            os.close(self.fd)

    # -- data (synchronous: callers decide whether to run them in a thread) ------

    def write_plain(self, offset: int, data: bytes | memoryview) -> None:
        """Encrypt ``data`` at ``offset`` into the cache file."""
        assert not self.sealed and offset >= self.sealed_upto, "write to sealed bytes"
        cipher = encrypt(self.dk, offset, data)
        _pwrite_all(self.fd, cipher, offset)
        end = offset + len(data)
        self.mark(offset, end)
        self.size = max(self.size, end)
        self.dirty = True

    def read_plain(self, offset: int, length: int) -> bytes:
        """Decrypt ``[offset, offset+length)``; the range must be present."""
        cipher = os.pread(self.fd, length, offset)
        if len(cipher) != length:
            raise OSError(f"cache file {self.vid} is short at {offset}+{length}")
        return decrypt(self.dk, offset, cipher)

    def store_cipher(self, offset: int, cipher: bytes | memoryview) -> None:
        """Put ciphertext (under ``dk``) where bytes are still missing.

        Bytes written meanwhile by the user are newer than fetched ones, so
        only the gaps are filled.
        """
        end = offset + len(cipher)
        view = memoryview(cipher)
        for s, e in self.present.missing(offset, min(end, self.size)):
            _pwrite_all(self.fd, view[s - offset : e - offset], s)
            self.mark(s, e)

    def zero_cipher(self, offset: int, length: int) -> bytes:
        return encrypt(self.dk, offset, bytes(length))

    def truncate(self, size: int) -> None:
        assert not self.sealed and size >= self.sealed_upto, "truncate of sealed bytes"
        if size < self.size:
            before = self.present.total
            self.present.truncate(size)
            self.account[0] += self.present.total - before
            os.ftruncate(self.fd, size)
            if self.source is not None and self.source.limit > size:
                self.source.limit = size
        self.size = size
        self.dirty = True

    def fsync(self) -> None:
        os.fdatasync(self.fd)


def transcode(src_dk: DataKey | None, dst_dk: DataKey, offset: int, data: bytes) -> bytes:
    """Ciphertext under ``src_dk`` (plaintext when None) -> ciphertext under ``dst_dk``.

    The plaintext exists only in memory, for one chunk.
    """
    plain = data if src_dk is None else decrypt(src_dk, offset, data)
    return encrypt(dst_dk, offset, plain)


def transcode_into(old: ContentVersion, new: ContentVersion, upto: int) -> None:
    """Copy every present byte of ``old`` below ``upto`` into ``new``, re-keyed."""
    for s, e in old.present.intersection(0, upto):
        for pos in range(s, e, CHUNK):
            n = min(CHUNK, e - pos)
            data = os.pread(old.fd, n, pos)
            if len(data) != n:
                raise OSError(f"cache file {old.vid} is short at {pos}+{n}")
            _pwrite_all(new.fd, transcode(old.dk, new.dk, pos, data), pos)
        new.mark(s, e)


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n
