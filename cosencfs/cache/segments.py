"""Which log record holds the newest bytes of each range of a dirty file.

A :class:`SegmentMap` maps disjoint byte ranges ``[start, end)`` of the file
to the record that last wrote them (its position in the log file and the
file offset its plaintext starts at).  A new write covers older segments,
splitting them where it starts and ends; a truncate drops what lies beyond.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(slots=True, frozen=True)
class RecordRef:
    """A data record in the log: where it is and what it covers."""

    #: Byte position of the record (its header) in the log file.
    pos: int
    #: File offset of the record's first plaintext byte, and its length.
    offset: int
    length: int

    @property
    def end(self) -> int:
        return self.offset + self.length


@dataclass(slots=True, frozen=True)
class Segment:
    start: int
    end: int
    rec: RecordRef


class SegmentMap:
    """Disjoint segments sorted by start; each names the record holding its bytes."""

    __slots__ = ("_ends", "_recs", "_starts")

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        self._recs: list[RecordRef] = []

    def __len__(self) -> int:
        return len(self._starts)

    def __iter__(self) -> Iterator[Segment]:
        for s, e, r in zip(self._starts, self._ends, self._recs, strict=True):
            yield Segment(s, e, r)

    def live_bytes(self) -> int:
        return sum(e - s for s, e in zip(self._starts, self._ends, strict=True))

    def put(self, start: int, end: int, rec: RecordRef) -> None:
        """``[start, end)`` now comes from ``rec``."""
        if end <= start:
            return
        self._cut(start, end)
        i = bisect.bisect_left(self._starts, start)
        self._starts.insert(i, start)
        self._ends.insert(i, end)
        self._recs.insert(i, rec)

    def truncate(self, size: int) -> None:
        """Forget everything at or beyond ``size``."""
        if self._ends and self._ends[-1] > size:
            self._cut(size, self._ends[-1])

    def _cut(self, start: int, end: int) -> None:
        """Remove ``[start, end)`` from every segment, keeping what lies outside."""
        i = bisect.bisect_right(self._ends, start)
        j = bisect.bisect_left(self._starts, end)
        if i >= j:
            return
        keep_s: list[int] = []
        keep_e: list[int] = []
        keep_r: list[RecordRef] = []
        if self._starts[i] < start:
            keep_s.append(self._starts[i])
            keep_e.append(start)
            keep_r.append(self._recs[i])
        if self._ends[j - 1] > end:
            keep_s.append(end)
            keep_e.append(self._ends[j - 1])
            keep_r.append(self._recs[j - 1])
        self._starts[i:j] = keep_s
        self._ends[i:j] = keep_e
        self._recs[i:j] = keep_r

    def pieces(self, start: int, end: int) -> list[tuple[int, int, RecordRef | None]]:
        """``[start, end)`` cut into pieces: each from a record, or ``None`` (a hole)."""
        out: list[tuple[int, int, RecordRef | None]] = []
        pos = start
        i = bisect.bisect_right(self._ends, start)
        while pos < end and i < len(self._starts):
            s, e = self._starts[i], self._ends[i]
            if s >= end:
                break
            if s > pos:
                out.append((pos, s, None))
            out.append((max(pos, s), min(e, end), self._recs[i]))
            pos = min(e, end)
            i += 1
        if pos < end:
            out.append((pos, end, None))
        return out
