"""Reused buffers a sequential reader's pieces are decrypted into (branch seqr2).

Each piece of a sequential window is decrypted in its worker-thread job and
held for the reader (cosencfs/cache/plainhold.py) in 1 MiB blocks.  Those
blocks used to be new ``bytes`` from ``cryptography``'s ``update``: a
fresh allocation, zero-filled, per MiB.  Measured on the benchmark VM,
AES-CTR of 256 MiB into new 1 MiB ``bytes`` took twice the CPU of the
same decryption into a reused buffer (``update_into``: 0.16 s against
0.08 s; docs/performance.md).  ``cryptography`` refuses to decrypt in place
(input and output must not overlap), and the receive buffer is reused for
the next GET, so the plaintext goes into a buffer of its own from here, and
the blocks held are views of it.

A buffer is reused only once no view of it is alive anywhere: the blocks
still held, the one a FUSE reply is being made from, a slice of one a
caller kept.  A ``bytearray`` says so itself: it refuses to change its size
while a view of it exists (``BufferError``), so :meth:`PlainBuffers.lease`
probes with one byte appended and removed.  No bookkeeping can forget a
view, and a buffer still read from is never written.

A piece that finds no idle buffer gets a new one, made in its worker-thread
job (zero-filling 8 MiB of fresh memory is not the event loop's work: it
replies to the reader), and the pool adopts it afterwards while it holds
fewer than ``limit``; past that the buffer is freed once its blocks are
read, so the memory the pool keeps stays bounded.  Idle buffers beyond
``keep`` go when :meth:`PlainBuffers.trim` is called (a reader closed).
Everything here runs in the event loop, except :func:`decrypt_cells`.
"""

from __future__ import annotations

from cosencfs.cache.plainhold import Block, cells
from cosencfs.crypto.ctr import DataKey, decrypt_into

#: A piece is at most this large (``fetch.FETCH_CHUNK``).
SIZE = 8 * 1024 * 1024
#: Buffers at most (in use or idle): two windows of 32 MiB held, and the
#: pieces being decrypted meanwhile.
LIMIT = 12
#: Idle buffers kept by :meth:`PlainBuffers.trim` (the next reader's first
#: pieces; the rest is memory an idle mount need not hold).
KEEP = 2


def _in_use(buf: bytearray) -> bool:
    """Whether a view of ``buf`` is alive (a ``bytearray`` cannot be resized then)."""
    try:
        buf.append(0)
    except BufferError:
        return True
    del buf[-1]
    return False


class PlainBuffers:
    """The pool: every buffer kept (in use or idle), and counts the tests read."""

    __slots__ = ("_all", "keep", "limit", "made", "reused", "size", "spilled")

    def __init__(self, size: int = SIZE, limit: int = LIMIT, keep: int = KEEP) -> None:
        self.size = size
        self.limit = limit
        self.keep = keep
        self._all: list[bytearray] = []
        #: Buffers adopted, leased again, and made but not kept (the pool full).
        self.made = 0
        self.reused = 0
        self.spilled = 0

    @property
    def count(self) -> int:
        return len(self._all)

    def lease(self, n: int) -> memoryview | None:
        """A view of ``n`` bytes of a buffer no other view of which is alive
        (None: none is idle, the job makes one, :func:`decrypt_cells`).

        The view itself marks the buffer in use from here on, so no other
        piece leases it before this one's job has begun.
        """
        if n <= self.size:
            for buf in self._all:
                if not _in_use(buf):
                    self.reused += 1
                    return memoryview(buf)[:n]
        return None

    def adopt(self, blocks: list[tuple[int, Block]]) -> None:
        """Keep the buffer a job made for ``blocks`` (if any) for the next pieces."""
        if not blocks:
            return
        block = blocks[0][1]
        buf = block.obj if isinstance(block, memoryview) else None
        if not isinstance(buf, bytearray) or any(b is buf for b in self._all):
            return
        if len(self._all) < self.limit and len(buf) == self.size:
            self._all.append(buf)
            self.made += 1
        else:
            self.spilled += 1

    def trim(self) -> None:
        """Let go of idle buffers beyond ``keep`` (freed when nothing refers to them)."""
        idle = [b for b in self._all if not _in_use(b)]
        gone = {id(b) for b in idle[self.keep :]}
        # (By identity: ``==`` between bytearrays compares their contents.)
        self._all = [b for b in self._all if id(b) not in gone]


def new_buffer(size: int) -> bytearray:
    """A zeroed buffer of ``size`` bytes with room for the probe's byte, so no
    probe reallocates it (the first append to a bytearray of exactly its
    size copied all of it; py-spy: 2 % of a cold read's samples)."""
    buf = bytearray(size + 1)
    del buf[-1]
    return buf


def decrypt_cells(
    dk: DataKey, start: int, cipher: memoryview, out: memoryview | None, size: int = SIZE
) -> list[tuple[int, Block]]:
    """``cipher`` (at ``start`` of the object) decrypted into ``out``, or into a
    new buffer of at least ``size`` bytes without it, in read-only views that
    never cross a multiple of ``plainhold.CELL``.  Runs in a worker thread (or
    inline), holding no lock: ``out`` was leased for this piece alone
    (:meth:`PlainBuffers.lease`), a new buffer is this job's."""
    stop = start + len(cipher)
    if out is None:
        out = memoryview(new_buffer(max(size, len(cipher))))
    plain = out[: len(cipher)]
    decrypt_into(dk, start, cipher, plain)
    # Read-only views: whoever takes a block cannot change what another may read.
    return [(s, plain[s - start : e - start].toreadonly()) for s, e in cells(start, stop)]
