"""Fetching clean copies: ranged GETs of exactly the missing bytes, shared by readers.

Missing ranges of a clean copy (:class:`~cosencfs.cache.content.ObjectContent`)
are fetched with 16-byte aligned ranged GETs, ``If-Match`` the object's
ETag, at most ``FETCH_CHUNK`` each (larger gaps become parallel GETs).  A
fetch is registered (``Inflight``) before its first await, so a concurrent
reader of the same bytes waits for it instead of fetching them again.
Fetched bytes are stored as they come, each range once.

An object with verified integrity tags (``Source.verified``) is fetched in
whole 64 KiB chunks, and each chunk's ciphertext is checked against its tag
before any of it is stored: no byte of a chunk that fails reaches the cache
or a reader (IntegrityError, counted in ``chunk_failures``).

Fetches started ahead of a reader (:meth:`Fetcher.prefetch`) are
speculative: each belongs to the read-ahead that asked for it
(``Inflight.owner``) and runs in a cancel scope of its own, so when that
reader moves away its GETs still waiting or in flight are cancelled
(:meth:`Fetcher.cancel_ahead`) instead of downloading bytes nobody reads.
A fetch stops being speculative, and is never cancelled this way, once a
reader waits for it, another read-ahead asks for the same bytes, or its
bytes have arrived.

A sequential reader's window (``prefetch(serve=True)``) costs one
worker-thread job per piece: its chunks are checked, it is written into the
cache file past the page cache and decrypted into a reused buffer
(cache/plainbuf.py), held for the reader (cache/plainhold.py).  Jobs of
several pieces of one copy run at once, each writing only the ranges
claimed for it in the event loop (``_claim``).  A large piece is received
into a reused page-aligned buffer (cache/recvbuf.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from cosencfs.cache.content import THREAD_THRESHOLD, Inflight, ObjectContent, Source
from cosencfs.cache.extents import Extents
from cosencfs.cache.plainbuf import PlainBuffers, decrypt_cells
from cosencfs.cache.plainhold import Block, PlainHold
from cosencfs.cache.recvbuf import RecvBuffers
from cosencfs.crypto.integrity import CHUNK_SIZE
from cosencfs.errors import CosEncFsError, DamagedObjectError, IntegrityError
from cosencfs.store.base import ObjectStore
from cosencfs.util import open_nursery

log = logging.getLogger(__name__)

ALIGN = 16
#: One ranged GET fetches at most this much; larger gaps become parallel GETs.
FETCH_CHUNK = 8 * 1024 * 1024


def align_down(n: int) -> int:
    return n - n % ALIGN


def align_up(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


class Fetcher:
    def __init__(self, store: ObjectStore, io_limiter: trio.CapacityLimiter) -> None:
        self.store = store
        self.io_limiter = io_limiter
        self.hits = 0
        self.misses = 0
        self.fetched_bytes = 0
        self.chunks_verified = 0
        self.chunk_failures = 0
        #: Bytes of speculative fetches cancelled because their reader moved away.
        self.ahead_cancelled = 0
        #: Jobs handed to worker threads (storing fetched pieces, reading the cache file).
        self.thread_jobs = 0
        #: Decrypted read-ahead waiting for its readers.
        self.hold = PlainHold()
        #: Page-aligned buffers large pieces are received into, reused.
        self.buffers = RecvBuffers()
        #: Reused buffers pieces are decrypted into for the hold.
        self.plainbufs = PlainBuffers()
        #: Ranges being written by a fill right now, by copy (``_claim``).
        self._storing: dict[ObjectContent, Extents] = {}
        #: Called after fetched bytes are stored (the cache may be over its limit now).
        self.on_stored: Callable[[], object] = lambda: None

    async def read(self, v: ObjectContent, offset: int, length: int) -> Block:
        """The plaintext of ``[offset, offset+length)`` of ``v``, fetched first if missing."""
        end = min(offset + length, v.size)
        if end <= offset:
            return b""
        held = self.hold.take(v, offset, end)
        if held is not None:
            # Read ahead, decrypted when it was stored: no second read of it.
            self.hits += 1
            v.touch()
            return held
        # Busy before the first await: eviction leaves these bytes alone until read.
        span = (offset, end)
        v.busy.append(span)
        try:
            if v.present.contains(offset, end):
                self.hits += 1
            else:
                self.misses += 1
                await self.ensure(v, offset, end)
                held = self.hold.take(v, offset, end)
                if held is not None:
                    v.touch()
                    return held
            v.touch()
            if end - offset >= THREAD_THRESHOLD:
                self.thread_jobs += 1
                return await trio.to_thread.run_sync(
                    v.read_plain, offset, end - offset, limiter=self.io_limiter
                )
            return v.read_plain(offset, end - offset)
        finally:
            v.busy.remove(span)

    async def ensure(self, v: ObjectContent, start: int, end: int) -> None:
        """Make ``[start, end)`` present: fetch it from the source."""
        end = min(end, v.size)
        if end > v.limit:
            raise CosEncFsError(f"cache copy {v.vid} has no source for bytes {v.limit}-{end}")
        v.pins += 1
        try:
            while True:
                gaps = v.present.missing(start, end)
                if not gaps:
                    return
                waits: list[trio.Event] = []
                todo: list[tuple[int, int]] = []
                for s, e in gaps:
                    pos = s
                    for inf in sorted(v.inflight, key=lambda i: i.start):
                        if inf.end <= pos or inf.start >= e:
                            continue
                        if inf.start > pos:
                            todo.append((pos, inf.start))
                        inf.owner = None  # a reader needs it now: not speculative any more
                        waits.append(inf.done)
                        pos = max(pos, inf.end)
                    if pos < e:
                        todo.append((pos, e))
                if todo:
                    async with open_nursery() as nursery:
                        for s, e in todo:
                            for inf in self._begin(v, s, e):
                                nursery.start_soon(self._fill, v, inf)
                for ev in waits:
                    await ev.wait()
        finally:
            v.pins -= 1

    def prefetch(
        self,
        nursery: trio.Nursery,
        v: ObjectContent,
        start: int,
        end: int,
        *,
        owner: object | None = None,
        piece: int = FETCH_CHUNK,
        first: int | None = None,
        serve: bool = False,
        direct: bool = False,
    ) -> int:
        """Start fetching ``[start, end)`` in the background; the bytes asked for.

        GETs of at most ``piece`` bytes run in parallel, the one holding
        ``first`` (where the reader is) started first.  With an ``owner``
        they are speculative: :meth:`cancel_ahead` with the same owner
        cancels them.  ``serve``: a sequential reader reads them next, from
        memory (:class:`PlainHold`).  ``direct``: written past the page
        cache (``serve`` implies it): for bytes read back rarely or a little
        at a time, where filling the page cache would cost more CPU than
        fetching them did (docs/performance.md).
        """
        end = min(end, v.limit)
        if end <= start:
            return 0
        asked = 0
        gaps = v.present.missing(start, end)
        if first is not None:
            n = sum(1 for _, e in gaps if e <= first)
            gaps = gaps[n:] + gaps[:n]
        todo: list[Inflight] = []
        for s, e in gaps:
            for inf in self._begin(v, s, e, only_new=True, owner=owner, piece=piece, first=first):
                inf.owner = owner
                inf.scope = trio.CancelScope()
                inf.serve = serve and not v.plaintext_source
                inf.direct = direct or inf.serve
                asked += inf.end - inf.start
                v.pins += 1
                todo.append(inf)
        if todo:
            nursery.start_soon(self._feed, nursery, v, todo)
        return asked

    async def _feed(self, nursery: trio.Nursery, v: ObjectContent, todo: list[Inflight]) -> None:
        """Start the fetches of ``todo`` in its order.

        Each starts once the one before has asked the store for a connection
        (trio runs tasks started together in any order): with more pieces
        than connections, the first ones go first.
        """
        spawned = 0
        try:
            for inf in todo:
                spawned += 1
                await nursery.start(self._background_fill, v, inf)
        finally:
            for inf in todo[spawned:]:
                # Never started (the mount is stopping): nobody must wait for it.
                if inf in v.inflight:
                    v.inflight.remove(inf)
                inf.done.set()
                v.pins -= 1

    def cancel_ahead(
        self, v: ObjectContent, owner: object, keep: tuple[int, int], *, forget: bool = True
    ) -> int:
        """Cancel ``owner``'s speculative fetches of ``v`` outside ``keep``; the bytes.

        Runs in the event loop with no await: a fetch a reader starts waiting
        for is no longer ``owner``'s, so it is never cancelled under it.
        ``forget``: the decrypted read-ahead of ``v`` outside ``keep`` goes too.
        """
        cancelled = 0
        for inf in v.inflight:
            if inf.owner is not owner or inf.scope is None:
                continue
            if inf.start < keep[1] and keep[0] < inf.end:
                continue
            inf.owner = None
            inf.scope.cancel()
            cancelled += inf.end - inf.start
        self.ahead_cancelled += cancelled
        if forget:
            # What arrived ahead of it and was decrypted: the reader left it.
            self.hold.forget(v, keep)
            self.plainbufs.trim()
        return cancelled

    def _begin(
        self,
        v: ObjectContent,
        start: int,
        end: int,
        *,
        only_new: bool = False,
        owner: object | None = None,
        piece: int = FETCH_CHUNK,
        first: int | None = None,
    ) -> list[Inflight]:
        """Register the fetches that cover ``[start, end)``, split into pieces.

        Registration happens before any await, so a concurrent reader sees them
        and waits instead of fetching the same bytes again.  With ``only_new``
        ranges already in flight are skipped; one another read-ahead (not
        ``owner``) started is shared from then on, so neither cancels it.
        """
        # Whole integrity chunks per piece, so each GET can be verified alone.
        piece = max(CHUNK_SIZE, min(piece, FETCH_CHUNK) // CHUNK_SIZE * CHUNK_SIZE)
        out: list[Inflight] = []
        limit = v.limit
        ranges: list[tuple[int, int]] = []
        verified = v.source.verified if v.source is not None else None
        if start < limit and verified is not None:
            # Whole chunks, so each can be checked against its tag; the last
            # chunk of the object may be short.
            s0 = start - start % CHUNK_SIZE
            e0 = min(-(-min(end, limit) // CHUNK_SIZE) * CHUNK_SIZE, verified.size)
            ranges.append((s0, e0))
        elif start < limit:
            # Aligned to the cipher block; clipped to the object's bytes.
            ranges.append((align_down(start), min(align_up(min(end, limit)), limit)))
        for s, e in ranges:
            segs = [(pos, min(e, pos + piece)) for pos in range(s, e, piece)]
            if first is not None:
                # The reader waits for the piece holding its range: that one
                # goes first, then the pieces after it, then those before.
                n = sum(1 for _, se in segs if se <= first)
                segs = segs[n:] + segs[:n]
            for seg in segs:
                if only_new:
                    overlap = [i for i in v.inflight if i.start < seg[1] and seg[0] < i.end]
                    for i in overlap:
                        if i.owner is not owner:
                            i.owner = None
                    if overlap:
                        continue
                inf = Inflight(*seg)
                v.inflight.append(inf)
                out.append(inf)
        return out

    def _checker(self, src: Source, start: int) -> Callable[[bytes | memoryview], None] | None:
        """What checks a fetch at ``start`` of ``src`` against its tags (None: untagged)."""
        verified, ck = src.verified, src.chunk_key
        if verified is None:
            return None
        if ck is None:
            raise CosEncFsError(f"{src.key!r}: verified source without its chunk key")
        if start % CHUNK_SIZE:
            raise CosEncFsError(f"{src.key!r}: fetch at {start} is not on a chunk boundary")
        first = start // CHUNK_SIZE
        return lambda data: verified.verify_range(ck, first, data)

    async def _background_fill(
        self,
        v: ObjectContent,
        inf: Inflight,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        try:
            # No await before the store's request takes its connection.
            task_status.started()
            if inf.scope is not None and inf.scope.cancel_called:
                # Cancelled before it began: no request at all.
                v.inflight.remove(inf)
                inf.done.set()
                return
            with inf.scope or trio.CancelScope():
                await self._fill(v, inf)
        except (CosEncFsError, OSError) as exc:
            # A foreground read of these bytes will try again and report it.
            log.debug("readahead of %s failed: %s", v.vid, exc)
        finally:
            v.pins -= 1

    async def _fill(self, v: ObjectContent, inf: Inflight) -> None:
        lease = self.buffers.lease()
        received = False
        try:
            start, end = inf.start, inf.end
            src = v.source
            if src is None:
                raise CosEncFsError(f"cache copy {v.vid} has no source to fetch from")
            etag = src.etag or None
            data = await self.store.get_into(src.key, start, end, lease.give, if_match=etag)
            received = True
            inf.owner = None  # arrived: a reader moving away no longer cancels it
            if len(data) != end - start:
                raise DamagedObjectError(
                    f"object {src.key!r} is shorter than expected "
                    f"({start + len(data)} < {end} bytes)"
                )
            self.fetched_bytes += len(data)
            check = self._checker(src, start)
            # Claimed before the job, no await in between: the ranges this
            # fill writes, missing and no other fill's, so fills of one copy
            # run in parallel worker threads and never write a range twice.
            claims = self._claim(v, start, min(end, v.size))
            out = self.plainbufs.lease(min(end, v.limit) - start) if inf.serve else None
            try:
                if len(data) >= THREAD_THRESHOLD:
                    # One worker-thread job checks the chunks, writes the
                    # claimed ranges and (for a sequential reader) decrypts.
                    self.thread_jobs += 1
                    stored, blocks = await trio.to_thread.run_sync(
                        _check_and_store, v, check, start, data, claims, inf.serve, inf.direct,
                        out, limiter=self.io_limiter,
                    )  # fmt: skip
                else:
                    stored, blocks = _check_and_store(
                        v, check, start, data, claims, inf.serve, inf.direct, out
                    )
                if stored and not v.discarded:
                    # Present once written; marked in the loop, never by two threads.
                    for s, e in claims:
                        v.mark(s, e)
            except IntegrityError:
                self.chunk_failures += 1
                raise
            finally:
                self._unclaim(v, claims)
            if check is not None:
                self.chunks_verified += -(-len(data) // CHUNK_SIZE)
            if blocks:  # (before ``done``: a reader waiting for them finds them here)
                self.hold.put(v, blocks)
                self.plainbufs.adopt(blocks)
        finally:
            lease.release(reuse=received)  # (``blocks`` are not of the receive buffer)
            v.inflight.remove(inf)
            inf.done.set()
        self.on_stored()

    def _claim(self, v: ObjectContent, start: int, end: int) -> list[tuple[int, int]]:
        """The ranges of ``[start, end)`` missing in ``v`` and no other fill's; now this one's.

        Runs in the event loop; the caller marks them present or unclaims them.
        """
        claimed = self._storing.get(v)
        if claimed is None:
            claimed = self._storing[v] = Extents()
        out: list[tuple[int, int]] = []
        for s, e in v.present.missing(start, end):
            out.extend(claimed.missing(s, e))
        for s, e in out:
            claimed.add(s, e)
        return out

    def _unclaim(self, v: ObjectContent, claims: list[tuple[int, int]]) -> None:
        claimed = self._storing.get(v)
        if claimed is None:
            return
        for s, e in claims:
            claimed.remove(s, e)
        if not claimed:
            del self._storing[v]


def _check_and_store(
    v: ObjectContent,
    check: Callable[[bytes | memoryview], None] | None,
    start: int,
    data: bytes | memoryview,
    claims: list[tuple[int, int]],
    serve: bool,
    direct: bool,
    out: memoryview | None = None,
) -> tuple[bool, list[tuple[int, Block]] | None]:
    """Check fetched bytes against their chunk tags, then write the ``claims`` of them.

    Runs in a worker thread (or inline for small pieces) holding no lock:
    the claimed ranges are this job's alone (``Fetcher._claim``), and it
    reads nothing of ``v`` but its key and descriptor.  Every chunk is
    checked before any byte is written or decrypted: one that fails
    (IntegrityError) leaves nothing in the cache and nothing for a reader.
    A copy discarded meanwhile stores nothing, but still reports a failure.
    ``direct``: written past the page cache.  Returns whether the claims
    were written, and for ``serve`` the bytes decrypted, in blocks for
    :class:`PlainHold` (into ``out`` when given: cache/plainbuf.py).
    """
    if check is not None:
        check(data)
    if v.discarded:
        return False, None
    view = memoryview(data)
    for s, e in claims:
        v.write_fetched(s, view[s - start : e - start], direct=direct)
    if not serve:
        return True, None
    stop = min(start + len(data), v.limit)  # (whole chunks may run past it)
    return True, decrypt_cells(v.dk, start, view[: stop - start], out)
