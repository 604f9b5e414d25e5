"""The plaintext of a dirty file, and the upload copy produced from it.

A file's dirty content is a stack: its newest layer's records, then what
lies below (an older layer still being uploaded, or the remote object the
file started from) up to each layer's ``limit``, then zeros.  Reading a range
happens in two steps:

1. a *plan*, made in the event loop with no await (so no write can change a
   segment map half-way): which record, which range of a direct copy or of a
   clean copy, or which zeros supply each piece of the range;
2. the *execution*, synchronous and safe in a worker thread: records and
   clean copies are append-only or fill-once, and every layer and copy the
   plan names is pinned until it is done.

Bytes of the remote object that are not cached yet are fetched between the
two steps, and the plan is made again (it may have changed while fetching).

:func:`produce` is how a sealed layer becomes an upload: its plaintext, chunk
by chunk, encrypted once under the new object's data key into a copy at the
object's offsets (:meth:`ObjectContent.produce`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import trio

from cosencfs.cache.content import CHUNK, THREAD_THRESHOLD, ObjectContent, Source
from cosencfs.cache.dirtylog import DirtyLayer
from cosencfs.cache.manager import CacheManager
from cosencfs.cache.segments import RecordRef
from cosencfs.crypto.ctr import encrypt


@dataclass(slots=True, frozen=True)
class _FromLog:
    layer: DirtyLayer
    ref: RecordRef
    start: int
    end: int


@dataclass(slots=True, frozen=True)
class _FromSource:
    source: Source
    start: int
    end: int


@dataclass(slots=True, frozen=True)
class _FromDirect:
    copy: ObjectContent
    start: int
    end: int


@dataclass(slots=True, frozen=True)
class _Zeros:
    start: int
    end: int


_Piece = _FromLog | _FromSource | _FromDirect | _Zeros


def _plan(layer: DirtyLayer, start: int, end: int, out: list[_Piece]) -> None:
    for first, e, ref in layer.segments.pieces(start, end):
        if ref is not None:
            out.append(_FromLog(layer, ref, first, e))
            continue
        s = first
        if layer.direct is not None and s < layer.direct_end:
            # Written front to back before anything else: older than every record.
            s = min(e, layer.direct_end)
            out.append(_FromDirect(layer.direct, first, s))
            if s >= e:
                continue
        lim = layer.limit
        if s < lim:
            below_end = min(e, lim)
            if layer.below is not None:
                _plan(layer.below, s, below_end, out)
            elif layer.source is not None:
                out.append(_FromSource(layer.source, s, below_end))
            else:
                out.append(_Zeros(s, below_end))
        if e > lim:
            out.append(_Zeros(max(s, lim), e))


@dataclass(slots=True)
class _Ready:
    """A plan whose every piece can be read without waiting."""

    pieces: list[tuple[_Piece, ObjectContent | None]]
    layers: list[DirtyLayer]
    copies: list[ObjectContent]
    #: Ranges of clean copies this plan reads (busy until released).
    spans: list[tuple[ObjectContent, tuple[int, int]]]


async def _ready(cache: CacheManager, layer: DirtyLayer, start: int, end: int) -> _Ready:
    """Plan ``[start, end)``, fetching what is missing first; everything it uses is pinned."""
    while True:
        pieces: list[_Piece] = []
        _plan(layer, start, end, pieces)
        resolved: list[tuple[_Piece, ObjectContent | None]] = []
        missing: list[tuple[ObjectContent, int, int]] = []
        for piece in pieces:
            if isinstance(piece, _FromSource):
                copy = cache.clean_for(piece.source)
                resolved.append((piece, copy))
                if not copy.present.contains(piece.start, piece.end):
                    missing.append((copy, piece.start, piece.end))
            elif isinstance(piece, _FromDirect):
                resolved.append((piece, piece.copy))
            else:
                resolved.append((piece, None))
        if not missing:
            # Pinned before any await: the plan stays valid until released.
            layers = layer.chain()
            copies = list({id(c): c for _, c in resolved if c is not None}.values())
            for lay in layers:
                lay.pins += 1
            for c in copies:
                c.pins += 1
            spans = [(c, (p.start, p.end)) for p, c in resolved if isinstance(p, _FromSource) and c]
            for c, span in spans:
                c.busy.append(span)
            return _Ready(resolved, layers, copies, spans)
        for copy, s, e in missing:
            # Busy while fetched, so eviction does not undo it before the plan is made again.
            copy.busy.append((s, e))
            try:
                await cache.fetcher.ensure(copy, s, e)
            finally:
                copy.busy.remove((s, e))


def _release(cache: CacheManager, ready: _Ready) -> None:
    for lay in ready.layers:
        cache.layers.unpin(lay)
    for c in ready.copies:
        c.pins -= 1
        c.touch()
    for c, span in ready.spans:
        c.busy.remove(span)


def _spans(ready: _Ready) -> dict[int, tuple[int, int, bytes]]:
    """Each copy the plan reads in many pieces, read and decrypted once over their span.

    A file rewritten in small random places (a database's pages) plans a
    chunk as hundreds of pieces of its clean copy between the records; one
    read and one decryption of the whole span cost far less than one each
    (a pread, a cipher context), even with the bytes under the records
    decrypted for nothing.  A span more than twice the bytes its pieces need
    is read piece by piece as before.
    """
    bounds: dict[int, list[int]] = {}
    for piece, copy in ready.pieces:
        if isinstance(piece, _FromSource | _FromDirect) and copy is not None:
            b = bounds.get(id(copy))
            if b is None:
                bounds[id(copy)] = [piece.start, piece.end, piece.end - piece.start, 1]
            else:
                b[0], b[1] = min(b[0], piece.start), max(b[1], piece.end)
                b[2] += piece.end - piece.start
                b[3] += 1
    out: dict[int, tuple[int, int, bytes]] = {}
    for _, copy in ready.pieces:
        if copy is None or id(copy) in out:
            continue
        b = bounds.get(id(copy))
        if b is not None and b[3] > 1 and b[1] - b[0] <= 2 * b[2]:
            out[id(copy)] = (b[0], b[1], copy.read_plain(b[0], b[1] - b[0]))
    return out


def _execute(ready: _Ready, start: int, end: int) -> bytes | bytearray:
    """Synchronous: the plaintext of the planned range (runs in a worker thread)."""
    if len(ready.pieces) == 1:
        # One piece (the common case: a range untouched since the upload, or
        # written in one go): its bytes as they come, no copy.
        piece, copy = ready.pieces[0]
        if isinstance(piece, _FromSource | _FromDirect) and copy is not None:
            return copy.read_plain(start, end - start)
        if isinstance(piece, _Zeros):
            return bytes(end - start)
    out = bytearray(end - start)
    spans = _spans(ready)
    last: tuple[DirtyLayer, RecordRef, bytes] | None = None
    for piece, copy in ready.pieces:
        if isinstance(piece, _FromLog):
            if last is None or last[0] is not piece.layer or last[1] != piece.ref:
                last = (piece.layer, piece.ref, piece.layer.read_record(piece.ref))
            data = last[2]
            off = piece.start - piece.ref.offset
            out[piece.start - start : piece.end - start] = data[off : off + piece.end - piece.start]
        elif isinstance(piece, _FromSource | _FromDirect):
            if copy is None:
                raise RuntimeError("plan without its clean copy")
            span = spans.get(id(copy))
            if span is not None:
                at = piece.start - span[0]
                out[piece.start - start : piece.end - start] = memoryview(span[2])[
                    at : at + piece.end - piece.start
                ]
            else:
                out[piece.start - start : piece.end - start] = copy.read_plain(
                    piece.start, piece.end - piece.start
                )
        # _Zeros: the buffer is zeros already
    return out


async def read_plain(cache: CacheManager, layer: DirtyLayer, start: int, end: int) -> bytes:
    """The plaintext of ``[start, end)`` of a file whose newest layer is ``layer``."""
    data = await _read_plain(cache, layer, start, end)
    return data if isinstance(data, bytes) else bytes(data)


async def _read_plain(
    cache: CacheManager, layer: DirtyLayer, start: int, end: int
) -> bytes | bytearray:
    end = min(end, layer.size)
    if end <= start:
        return b""
    ready = await _ready(cache, layer, start, end)
    try:
        if end - start >= THREAD_THRESHOLD:
            return await trio.to_thread.run_sync(
                _execute, ready, start, end, limiter=cache.io_limiter
            )
        return _execute(ready, start, end)
    finally:
        _release(cache, ready)


def _produce_chunk(ready: _Ready, staged: ObjectContent, start: int, end: int) -> None:
    staged.produce(start, _execute(ready, start, end))


async def produce(
    cache: CacheManager, layer: DirtyLayer, staged: ObjectContent, start: int, end: int
) -> None:
    """Encrypt ``[start, end)`` of the sealed ``layer`` into ``staged`` (the upload copy).

    Chunks start on multiples of CHUNK, so producing the same copy again
    after a crash cuts blocks the same way (the keystream ledger compares
    blocks, not byte ranges).
    """
    pos = start
    while pos < end:
        stop = min(end, (pos // CHUNK + 1) * CHUNK)
        missing = staged.present.missing(pos, stop)
        for s, e in missing:
            ready = await _ready(cache, layer, s, e)
            try:
                if e - s >= THREAD_THRESHOLD:
                    await trio.to_thread.run_sync(
                        _produce_chunk, ready, staged, s, e, limiter=cache.io_limiter
                    )
                else:
                    _produce_chunk(ready, staged, s, e)
            finally:
                _release(cache, ready)
        pos = stop


#: Produced per step of :func:`produce_tagged`: small enough that its
#: ciphertext is still in the CPU's cache when the chunk tagger reads it.
_STEP = 1024 * 1024

#: A piece of :func:`produce_tagged`: a plan to produce ``[start, end)``, or
#: None for a range the copy holds already (read back for its tags).
_Step = tuple[_Ready | None, int, int]


def _produce_steps(
    steps: list[_Step], staged: ObjectContent, feed: Callable[[bytes], None]
) -> None:
    """Synchronous, in a worker thread: each step's ciphertext, in order, fed to
    ``feed``: produced (encrypted and written) where missing, read back where present.

    Holds no lock: the caller planned every missing range in the event loop,
    nobody else produces this copy (the commit holds the file's upload lock)
    and nothing writes its present ranges again; the ranges produced here are
    marked present in the event loop afterwards.
    """
    dk = staged.dk
    fd = -1
    try:
        for ready, s, e in steps:
            if ready is None:
                if fd < 0:
                    fd = os.open(staged.path, os.O_RDONLY | os.O_CLOEXEC)
                cipher = os.pread(fd, e - s, s)
                if len(cipher) != e - s:
                    raise OSError(f"cache file {staged.vid} is short at {s}+{e - s}")
                feed(cipher)
                continue
            cipher = encrypt(dk, s, _execute(ready, s, e))
            feed(cipher)
            staged.write_fetched(s, memoryview(cipher))
    finally:
        if fd >= 0:
            os.close(fd)


async def produce_tagged(
    cache: CacheManager,
    layer: DirtyLayer,
    staged: ObjectContent,
    start: int,
    end: int,
    feed: Callable[[bytes], None],
) -> None:
    """:func:`produce` ``[start, end)`` in one worker job, handing the ciphertext
    of the whole range, in order, to ``feed`` (a part's chunk tagger) as it is made.

    The upload's chunk tags then cost no second read of what is produced
    here; what the copy holds already (a direct copy written front to back,
    an earlier attempt) is read back in the same job.  Steps start on
    multiples of 1 MiB (missing ranges where the copy's present ones end),
    each range is encrypted once, and producing again after a crash encrypts
    the same blocks with the same bytes (the keystream ledger's rule).
    Unlike :func:`produce`, no worker thread touches ``staged.present``: the
    pipeline produces several parts of one copy at once.
    """
    steps: list[_Step] = []
    made: list[tuple[int, int]] = []
    try:
        pos = start
        while pos < end:
            stop = min(end, (pos // _STEP + 1) * _STEP)
            at = pos
            for s, e in staged.present.missing(pos, stop):
                if at < s:
                    steps.append((None, at, s))
                steps.append((await _ready(cache, layer, s, e), s, e))
                made.append((s, e))
                at = e
            if at < stop:
                steps.append((None, at, stop))
            pos = stop
        await trio.to_thread.run_sync(_produce_steps, steps, staged, feed, limiter=cache.io_limiter)
    finally:
        for ready, _, _ in steps:
            if ready is not None:
                _release(cache, ready)
    for s, e in made:
        staged.mark(s, e)
