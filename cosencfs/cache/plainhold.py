"""Decrypted read-ahead held in memory until its reader takes it (bounded).

A sequential reader's window is fetched ahead in pieces of up to 8 MiB
(cosencfs/cache/fetch.py).  Each piece is verified, stored into the clean
copy's cache file and decrypted in one worker-thread job; the plaintext
stays here, in blocks that never cross a multiple of :data:`CELL`, so the
reader's requests (the kernel asks for 1 MiB at a time, at multiples of
1 MiB) are answered with the block itself: no second read of the cache file,
no second decryption, no thread hop, no copy.

A block goes when a read reaches its end (a sequential reader does not come
back; if it does, the cache file still has the bytes), when its copy is
closed, and, oldest first, when the blocks held exceed ``budget`` bytes.
Plaintext is only ever in memory here: nothing of it is written anywhere.
Everything runs in the event loop, with no await.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import TYPE_CHECKING

#: A block held: new bytes, or a view of a reused buffer (cosencfs/cache/plainbuf.py).
Block = bytes | memoryview

if TYPE_CHECKING:
    from cosencfs.cache.content import ObjectContent

#: Blocks never cross a multiple of this (the size of the kernel's reads).
CELL = 1 << 20
#: Plaintext held at most, by default (two read-ahead windows of 32 MiB).
BUDGET = 64 << 20


def cells(start: int, end: int) -> list[tuple[int, int]]:
    """``[start, end)`` cut at the multiples of :data:`CELL`."""
    out = []
    pos = start
    while pos < end:
        stop = min(end, (pos // CELL + 1) * CELL)
        out.append((pos, stop))
        pos = stop
    return out


class PlainHold:
    """The decrypted blocks of every clean copy, within one budget."""

    __slots__ = ("_order", "budget", "dropped", "held", "served")

    def __init__(self, budget: int = BUDGET) -> None:
        self.budget = budget
        #: Bytes held now (blocks of closed copies count until their turn comes).
        self.held = 0
        #: Bytes handed to readers from here, and bytes dropped before anyone read them.
        self.served = 0
        self.dropped = 0
        #: Every block held, oldest first: (id of its copy, start) -> (copy, length).
        self._order: OrderedDict[tuple[int, int], tuple[ObjectContent, int]] = OrderedDict()

    def put(self, v: ObjectContent, blocks: Iterable[tuple[int, Block]]) -> None:
        """Hold ``blocks`` (start, plaintext) of ``v``; the oldest go beyond the budget."""
        if v.discarded:
            return
        plain = v.plain
        if plain is None:
            plain = v.plain = {}
        for start, data in blocks:
            if start in plain:
                continue
            plain[start] = data
            self._order[(id(v), start)] = (v, len(data))
            self.held += len(data)
        while self.held > self.budget and self._order:
            (_, start), (old, n) = self._order.popitem(last=False)
            self.held -= n
            if old.plain is not None and old.plain.pop(start, None) is not None:
                self.dropped += n

    def take(self, v: ObjectContent, start: int, end: int) -> Block | None:
        """The plaintext of ``[start, end)`` if held whole (else None, nothing taken).

        A block the read reaches the end of is let go.
        """
        plain = v.plain
        if not plain:
            return None
        parts: list[tuple[int, Block, int, int]] = []
        pos = start
        while pos < end:
            found = _block_at(plain, pos)
            if found is None:
                return None
            bstart, data = found
            a = pos - bstart
            b = min(end - bstart, len(data))
            parts.append((bstart, data, a, b))
            pos = bstart + b
        for bstart, data, _, b in parts:
            if b == len(data):
                del plain[bstart]
                if self._order.pop((id(v), bstart), None) is not None:
                    self.held -= len(data)
        self.served += end - start
        if len(parts) == 1:
            _, data, a, b = parts[0]
            return data if a == 0 and b == len(data) else data[a:b]
        return b"".join(memoryview(data)[a:b] for _, data, a, b in parts)

    def forget(self, v: ObjectContent, keep: tuple[int, int] | None = None) -> int:
        """Let go of ``v``'s blocks (those outside ``keep``); the bytes dropped."""
        plain = v.plain
        if not plain:
            return 0
        gone = 0
        for bstart in list(plain):
            data = plain[bstart]
            if keep is not None and bstart < keep[1] and keep[0] < bstart + len(data):
                continue
            del plain[bstart]
            if self._order.pop((id(v), bstart), None) is not None:
                self.held -= len(data)
            gone += len(data)
        self.dropped += gone
        return gone


def _block_at(plain: dict[int, Block], pos: int) -> tuple[int, Block] | None:
    """The block holding byte ``pos``: it starts in ``pos``'s cell, at or before it."""
    data = plain.get(pos)
    if data is not None:
        return pos, data
    low = pos - pos % CELL
    for bstart, data in plain.items():
        if low <= bstart < pos < bstart + len(data):
            return bstart, data
    return None
