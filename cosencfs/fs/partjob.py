"""A streamed part's ciphertext, tagged and held in memory for its PUT: one pass, one job.

A part of a streamed upload (cosencfs/fs/stream.py) is produced into the
upload copy on disk first (the copy is what a retry, a resume after a crash
and the journal rely on).  Sending it straight from that file would cost two
more passes over its bytes: one read for its chunk tags and one for the PUT,
in 1 MiB pieces, each a hop to a worker thread and back.  Instead one worker
job reads the part into a buffer, piece by piece, and feeds each piece to the
chunk tagger while it is still in the CPU's cache; the PUT then sends that
buffer.  The tags are computed over exactly the bytes the PUT sends.

Buffers are part-sized (8 MiB) and count against a mount-wide budget
(:class:`PartBuffers`, ``PART_BUFFERS`` at once): a part that finds none free
goes from the file as before, so memory stays bounded however many files are
streamed and however slow the network is.  The write that starts a part
first waits a little for one of its stream's buffers to come back from a
PUT (``StreamUpload.wait_hold``, cosencfs/fs/stream.py): a part through the
page cache and read back costs two more copies of each byte.  A stream reuses its buffers from
part to part (a fresh 8 MiB buffer costs ~2000 page faults) and gives them
back when it ends.  Buffers start on a page (:func:`aligned_buffer`): the
writes' ciphertext goes from there to the copy with O_DIRECT as it lies.
Cut from a plain ``bytearray`` (16-byte aligned) it went through the
direct writer's aligned buffers, one more copy of every byte written
(4.6 % of a 256 MiB write's daemon CPU in perf, branch seqcpu).
"""

from __future__ import annotations

import logging
import os

import trio

from cosencfs.cache.direct import aligned_buffer
from cosencfs.crypto.integrity import CHUNK_SIZE, ChunkKey, ChunkTagger

log = logging.getLogger(__name__)

#: Part buffers held by all streamed uploads of a mount at once (8 MiB each).
#: 4 let the writer wait for a PUT 0.3-0.8 s per 256 MiB on the benchmark
#: machine and capped a stream at 3 parts in PUTs (docs/performance.md, seqw2).
PART_BUFFERS = 8

#: Read per step into the part's buffer, then tagged at once: small enough to
#: stay in the CPU's cache between the read and the MAC.
_STEP = 256 * 1024


class PartBuffers:
    """The mount-wide budget of part buffers (event loop only: no lock needed)."""

    def __init__(self, limit: int = PART_BUFFERS) -> None:
        self.limit = limit
        #: Buffers held by streams now (in use or kept for their next part).
        self.held = 0
        #: Buffers asked for (by a part's writes or its PUT) while the budget was spent.
        self.misses = 0
        #: Parts sent, by where their bytes came from: the buffer their writes
        #: filled, the copy read back into a buffer, or the copy (no buffer).
        self.sent_held = 0
        self.sent_loaded = 0
        self.sent_file = 0
        #: Writes that waited for a buffer to come back from a PUT, the
        #: seconds they waited, and the waits that timed out.
        self.waits = 0
        self.wait_s = 0.0
        self.wait_timeouts = 0

    def stats(self) -> dict[str, float]:
        """Where streamed parts came from, and the writes' waits (``cosencfs stats``)."""
        return {
            "sent_held": self.sent_held,
            "sent_loaded": self.sent_loaded,
            "sent_file": self.sent_file,
            "misses": self.misses,
            "waits": self.waits,
            "wait_s": round(self.wait_s, 3),
            "wait_timeouts": self.wait_timeouts,
        }

    def acquire(self) -> bool:
        if self.held >= self.limit:
            self.misses += 1
            return False
        self.held += 1
        return True

    def release(self, n: int = 1) -> None:
        self.held -= n
        if self.held < 0:
            raise RuntimeError("part buffers released twice")


class StreamBuffers:
    """One stream's part buffers: taken from the budget on first need, reused, given back."""

    def __init__(self, budget: PartBuffers, size: int) -> None:
        self.budget = budget
        self.size = size
        self._free: list[memoryview] = []
        self._out = 0
        self._closed = False
        #: Set (and replaced) whenever a buffer comes back: a write waiting
        #: for one (:meth:`wait_given`) wakes.
        self._given = trio.Event()

    @property
    def out(self) -> int:
        """Buffers of this stream in use now (filled by writes, tagged or sent)."""
        return self._out

    def available(self) -> bool:
        """Whether :meth:`take` would give a buffer now (event loop, no await before it)."""
        return not self._closed and (bool(self._free) or self.budget.held < self.budget.limit)

    async def wait_given(self) -> None:
        """Wait until one of this stream's buffers comes back."""
        await self._given.wait()

    def take(self) -> memoryview | None:
        """A page-aligned buffer for one part, or None (the budget is spent: send from the file)."""
        if self._closed:
            return None
        if self._free:
            buf = self._free.pop()
        elif self.budget.acquire():
            buf = aligned_buffer(self.size)
        else:
            return None
        self._out += 1
        return buf

    def give(self, buf: memoryview) -> None:
        """Back after its PUT ended (sent, failed or cancelled: nothing refers to it)."""
        self._out -= 1
        if self._closed:
            self.budget.release()
        else:
            self._free.append(buf)
        self._given.set()
        self._given = trio.Event()

    def close(self) -> None:
        """The stream ended: kept buffers go back now, ones in use when given back."""
        if self._closed:
            return
        self._closed = True
        self.budget.release(len(self._free))
        self._free.clear()


def load_part(
    path: str, ck: ChunkKey | None, start: int, end: int, buf: bytearray | memoryview
) -> list[bytes]:
    """Read ``[start, end)`` of an upload copy into ``buf``; the chunk tags of those bytes.

    Runs in a worker thread; it holds no lock: the range was produced from
    sealed bytes before and nothing writes it again, and ``buf`` belongs to
    this part alone until its PUT ends.  ``start`` is a multiple of the chunk
    size (parts start on multiples of 8 MiB).  ``ck`` None: not tagging.
    """
    n = end - start
    if n > len(buf):
        raise ValueError(f"a part of {n} bytes does not fit a buffer of {len(buf)}")
    if start % CHUNK_SIZE:
        raise ValueError(f"a part must start on a chunk boundary, not {start}")
    tagger = None if ck is None else ChunkTagger(ck, first_chunk=start // CHUNK_SIZE)
    view = memoryview(buf)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        pos = 0
        while pos < n:
            piece = view[pos : min(n, pos + _STEP)]
            got = os.preadv(fd, [piece], start + pos)
            if not got:
                raise OSError(f"cache file {path} is short at {start + pos} (part up to {end})")
            if tagger is not None:
                tagger.update(piece[:got])
            pos += got
    finally:
        os.close(fd)
    return [] if tagger is None else tagger.finish()


def tag_part(ck: ChunkKey, start: int, buf: bytearray | memoryview, n: int) -> list[bytes]:
    """The chunk tags of the first ``n`` bytes of ``buf``, a part at ``start`` held in memory.

    Runs in a worker thread; it holds no lock: the part is sealed, nothing
    writes its buffer any more, and the buffer is this part's alone until
    its PUT ends.
    """
    if start % CHUNK_SIZE:
        raise ValueError(f"a part must start on a chunk boundary, not {start}")
    tagger = ChunkTagger(ck, first_chunk=start // CHUNK_SIZE)
    view = memoryview(buf)
    for pos in range(0, n, _STEP):
        tagger.update(view[pos : min(n, pos + _STEP)])
    return tagger.finish()
