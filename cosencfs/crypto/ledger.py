"""The keystream ledger: a test-only record of every keystream block used.

cosencfs promises that a (data key, 16-byte counter block) pair encrypts at
most one plaintext block, ever: in COS, in the cache, in the journal, across
crashes.  Tests prove it with this ledger instead of trusting care: when the
environment variable ``COSENCFS_KEYSTREAM_LEDGER`` names a file, every
encryption made through :mod:`cosencfs.crypto.ctr` appends one record to it
(key fingerprint, first counter block, and a short digest of each plaintext
block), from every process a test starts, so the record spans remounts and
crashes.  :func:`check` reads the file and reports every counter block that
was used for two different plaintexts.

Off in production: without the variable, ``ctr`` holds ``None`` and pays one
``is None`` test per call.  The file holds no key and no plaintext, only
8-byte key fingerprints and 4-byte digests of 16-byte blocks; it is still
meant for test machines only.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

ENV = "COSENCFS_KEYSTREAM_LEDGER"
BLOCK = 16
DIGEST = 4
_COUNTER_MOD = 1 << 128
_MAGIC = b"KL"
#: magic, key fingerprint (8), first counter block (16), bytes skipped in the
#: first block (1), plaintext length (8); then one digest per block touched.
_HEADER = struct.Struct(">2s8s16sBQ")


def fingerprint(key: bytes) -> bytes:
    """8 bytes that tell keys apart without revealing them."""
    return hashlib.sha256(b"cosencfs-ledger-v1" + key).digest()[:8]


def _digest(part: bytes, start: int) -> bytes:
    # The position inside the block is part of the digest: the same bytes at
    # another place within the block are another plaintext block.
    return hashlib.blake2b(bytes((start, len(part))) + part, digest_size=DIGEST).digest()


class Ledger:
    """Appends records to one file; safe across processes (O_APPEND, one write each)."""

    __slots__ = ("_fd", "path")

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def record(
        self, key: bytes, counter: bytes, skip: int, plain: bytes | bytearray | memoryview
    ) -> None:
        """``plain`` was encrypted under ``key`` starting ``skip`` bytes into block ``counter``."""
        data = bytes(plain)
        if not data:
            return
        digests = bytearray()
        pos = 0
        start = skip
        while pos < len(data):
            take = min(BLOCK - start, len(data) - pos)
            digests += _digest(data[pos : pos + take], start)
            pos += take
            start = 0
        header = _HEADER.pack(_MAGIC, fingerprint(key), counter, skip, len(data))
        buf = header + bytes(digests)
        view = memoryview(buf)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]


def from_environment() -> Ledger | None:
    path = os.environ.get(ENV)
    return Ledger(path) if path else None


# -- checking (tests) ------------------------------------------------------------


@dataclass(slots=True)
class Violation:
    key_fp: str
    counter: int
    detail: str


@dataclass(slots=True)
class Report:
    records: int = 0
    blocks: int = 0
    keys: int = 0
    violations: list[Violation] = field(default_factory=list)

    def __str__(self) -> str:
        head = (
            f"keystream ledger: {self.records} encryptions, {self.blocks} blocks "
            f"under {self.keys} keys, {len(self.violations)} reused with other plaintext"
        )
        lines = [head]
        for v in self.violations[:20]:
            lines.append(f"  key {v.key_fp} counter {v.counter:032x}: {v.detail}")
        return "\n".join(lines)


def _span(counter: int, skip: int, length: int) -> int:
    return -(-(skip + length) // BLOCK)


def _block_at(rec: tuple[int, int, int, bytes], ctr: int) -> tuple[int, int, bytes]:
    """(start, end, digest) of counter block ``ctr`` within record ``rec``."""
    counter, skip, length, digests = rec
    i = ctr - counter
    first = BLOCK - skip  # plaintext bytes in block 0
    start = skip if i == 0 else 0
    pos = 0 if i == 0 else first + (i - 1) * BLOCK
    end = start + min(BLOCK - start, length - pos)
    return start, end, digests[i * DIGEST : (i + 1) * DIGEST]


def read_records(path: Path) -> list[tuple[bytes, int, int, int, bytes]]:
    data = path.read_bytes() if path.exists() else b""
    out = []
    pos = 0
    while pos < len(data):
        if len(data) - pos < _HEADER.size:
            raise ValueError(f"{path}: truncated record at {pos}")
        magic, fp, counter, skip, length = _HEADER.unpack_from(data, pos)
        if magic != _MAGIC:
            raise ValueError(f"{path}: bad record at {pos}")
        pos += _HEADER.size
        n = _span(0, skip, length)
        digests = data[pos : pos + n * DIGEST]
        pos += n * DIGEST
        out.append((fp, int.from_bytes(counter, "big"), skip, length, digests))
    return out


def check(path: Path) -> Report:
    """Every counter block of every key: at most one plaintext block.

    Two encryptions of the same bytes at the same place of the same block
    agree (a retry re-encrypting identical data is allowed); different
    bytes, or overlapping but different byte ranges of one block, are a
    violation.  Disjoint parts of one block use different keystream bytes
    and are allowed.  The same bytes of a block under other edges (a sub-range
    re-encrypted) cannot be compared by digest and count as a violation:
    cosencfs never re-encrypts that way.  Only records whose counter ranges overlap are compared
    block by block, so a large file costs memory for its digests only.
    """
    report = Report()
    by_key: dict[bytes, list[tuple[int, int, int, bytes]]] = defaultdict(list)
    for fp, counter, skip, length, digests in read_records(path):
        report.records += 1
        n = _span(counter, skip, length)
        report.blocks += n
        if counter + n > _COUNTER_MOD:  # wraps at 2**128: two pieces
            head = _COUNTER_MOD - counter
            first = head * BLOCK - skip
            by_key[fp].append((counter, skip, first, digests[: head * DIGEST]))
            by_key[fp].append((0, 0, length - first, digests[head * DIGEST :]))
        else:
            by_key[fp].append((counter, skip, length, digests))
    report.keys = len(by_key)
    for fp, records in by_key.items():
        records.sort(key=lambda r: r[0])
        active: list[tuple[int, int, int, bytes]] = []
        for rec in records:
            start = rec[0]
            active = [a for a in active if a[0] + _span(*a[:3]) > start]
            end = start + _span(*rec[:3])
            for old in active:
                overlap_end = min(end, old[0] + _span(*old[:3]))
                for ctr in range(start, overlap_end):
                    a, b = _block_at(old, ctr), _block_at(rec, ctr)
                    if a[1] <= b[0] or b[1] <= a[0] or a == b:
                        continue
                    report.violations.append(
                        Violation(
                            fp.hex(),
                            ctr,
                            f"bytes {a[0]}-{a[1]} then {b[0]}-{b[1]}, different plaintext",
                        )
                    )
            active.append(rec)
    return report
