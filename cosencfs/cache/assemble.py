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

from dataclasses import dataclass

import trio

from cosencfs.cache.content import CHUNK, THREAD_THRESHOLD, ObjectContent, Source
from cosencfs.cache.dirtylog import DirtyLayer
from cosencfs.cache.manager import CacheManager
from cosencfs.cache.segments import RecordRef


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
