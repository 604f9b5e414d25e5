"""Page-aligned buffers fetched pieces are received into: reused, and few kept idle.

Every GET of a piece (up to 8 MiB) used to be received into a fresh
``bytearray``: zeroed by Python and faulted in page by page (on the
benchmark VM each fresh page is also a fault in the host), about a tenth of
a cold read's CPU, and its bytes were then copied into an aligned buffer to
be written with O_DIRECT.  A buffer here is a private anonymous ``mmap``
(page aligned; not shared, which would make each first touch of a page a
shmem fault): the store receives the answer straight into it
(``ObjectStore.get_into``), the piece's job checks it, writes its aligned
middle to the cache file with O_DIRECT from where it lies
(cosencfs/cache/direct.py) and decrypts it, and the buffer goes back here
for the next GET.

A buffer is reused only when its GET returned normally: a GET that failed or
was cancelled may leave a worker thread still writing into it (an https
body's receiving job is abandoned on cancel, ``store/bodyrecv.py``), so
its buffer is dropped, and freed when the last view of it goes.  At most
``keep`` idle buffers are kept; the ones in use are the pieces received and
not yet stored, as many as before (one buffer each).

Everything here runs in the event loop (no lock): a lease is taken and
released by the fill that owns it, the store calls ``give`` from the loop.

One side effect on glibc's malloc (``heap_blocks``): blocks up to 16 MiB
come from its heaps, not from fresh ``mmap``s.  glibc starts at 128 KiB and
raises that threshold to the size of the largest ``mmap``ed block freed;
the transport's 8 MiB buffer per GET used to raise it, so the 1 MiB blocks
a piece is decrypted into (in worker threads) reused heap memory.  With the
GET buffers reused nothing raised it, and every decrypted block cost fresh
pages, zeroed and faulted in: more CPU than the reuse saved (measured with
perf).  The trim threshold follows (free pages at a heap's top are kept
up to twice that); cosencfs/cache/memtrim.py still gives free pages back
every few seconds.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap

from cosencfs.cache.direct import private_mapping

#: Buffers are this large (one ranged GET fetches at most this much).
SIZE = 8 * 1024 * 1024
#: Idle buffers kept for the next GETs (as many as pieces stored at once).
KEEP = 4
#: glibc's malloc serves blocks up to this size from its heaps (``heap_blocks``).
HEAP_BLOCKS = 16 * 1024 * 1024
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_heap_set: list[bool] = []


def heap_blocks() -> bool:
    """Have glibc serve blocks up to ``HEAP_BLOCKS`` from its heaps (once per
    process; the module docstring says why); whether it took it (not glibc: no)."""
    if not _heap_set:
        try:
            mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
        except (OSError, AttributeError):
            _heap_set.append(False)
        else:
            mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
            mallopt.restype = ctypes.c_int
            took = mallopt(_M_MMAP_THRESHOLD, HEAP_BLOCKS) == 1
            took = took and mallopt(_M_TRIM_THRESHOLD, 2 * HEAP_BLOCKS) == 1
            _heap_set.append(took)
    return _heap_set[0]


class RecvBuffers:
    """The pool: idle buffers, and counts the tests read."""

    __slots__ = ("_idle", "dropped", "keep", "made", "reused", "size")

    def __init__(self, size: int = SIZE, keep: int = KEEP) -> None:
        heap_blocks()
        self.size = size
        self.keep = keep
        self._idle: list[mmap.mmap] = []
        #: Buffers made, taken again from the pool, and dropped (never reused).
        self.made = 0
        self.reused = 0
        self.dropped = 0

    @property
    def idle(self) -> int:
        return len(self._idle)

    def lease(self) -> Lease:
        """A lease for one GET: :meth:`Lease.give` is the store's ``buffer``."""
        return Lease(self)

    def _take(self) -> mmap.mmap:
        if self._idle:
            self.reused += 1
            return self._idle.pop()
        self.made += 1
        return private_mapping(self.size)

    def _put(self, buf: mmap.mmap) -> None:
        if len(self._idle) < self.keep:
            self._idle.append(buf)
        else:
            self.dropped += 1  # (unmapped when its last view goes)


class Lease:
    """The buffer of one GET, from the answer's length until the piece is stored."""

    __slots__ = ("_buf", "_pool")

    def __init__(self, pool: RecvBuffers) -> None:
        self._pool = pool
        self._buf: mmap.mmap | None = None

    def give(self, n: int) -> memoryview:
        """A writable view of ``n`` bytes (``ObjectStore.get_into``'s ``buffer``).

        A body larger than the pool's buffers (a server that ignored the
        Range) gets a buffer of its own.  Called again (a retried GET), it
        gives the same buffer: the attempt before it ended before this one
        began, in the event loop, and a failed attempt's thread job, if any,
        had finished (only a cancelled one is abandoned, and then the whole
        GET ends).
        """
        if n > self._pool.size:
            return memoryview(bytearray(n))
        if self._buf is None:
            self._buf = self._pool._take()
        return memoryview(self._buf)[:n]

    def release(self, *, reuse: bool) -> None:
        """The piece is stored (or failed): ``reuse`` only when its GET returned normally."""
        buf, self._buf = self._buf, None
        if buf is None:
            return
        if reuse:
            self._pool._put(buf)
        else:
            self._pool.dropped += 1
