"""Sets of half-open byte ranges ``[start, end)``.

The cache tracks which bytes of a cache file hold valid ciphertext with one
of these instead of fixed-size blocks, so a random 4 KiB read fetches about
4 KiB (16-byte aligned), while sequential fetches merge into few ranges.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator


class Extents:
    """Disjoint, non-adjacent, sorted ranges; adjacent ranges are merged."""

    __slots__ = ("_ends", "_starts", "_total")

    def __init__(self, ranges: Iterable[tuple[int, int]] = ()) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        self._total = 0  # kept up to date: the cache sums it over every version
        for start, end in ranges:
            self.add(start, end)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(zip(self._starts, self._ends, strict=True))

    def __len__(self) -> int:
        return len(self._starts)

    def __bool__(self) -> bool:
        return bool(self._starts)

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Extents):
            return NotImplemented
        return self._starts == other._starts and self._ends == other._ends

    def __repr__(self) -> str:
        return f"Extents({list(self)!r})"

    def copy(self) -> Extents:
        new = Extents()
        new._starts = list(self._starts)
        new._ends = list(self._ends)
        new._total = self._total
        return new

    @property
    def total(self) -> int:
        return self._total

    def add(self, start: int, end: int) -> None:
        if end <= start:
            return
        # First range whose end reaches start (touching ranges merge) ...
        i = bisect.bisect_left(self._ends, start)
        # ... and the first range starting beyond end.
        j = bisect.bisect_right(self._starts, end)
        if i < j:
            start = min(start, self._starts[i])
            end = max(end, self._ends[j - 1])
        self._total += (end - start) - sum(
            e - s for s, e in zip(self._starts[i:j], self._ends[i:j], strict=True)
        )
        self._starts[i:j] = [start]
        self._ends[i:j] = [end]

    def remove(self, start: int, end: int) -> None:
        if end <= start:
            return
        i = bisect.bisect_right(self._ends, start)
        j = bisect.bisect_left(self._starts, end)
        if i >= j:
            return
        new_starts: list[int] = []
        new_ends: list[int] = []
        if self._starts[i] < start:
            new_starts.append(self._starts[i])
            new_ends.append(start)
        if self._ends[j - 1] > end:
            new_starts.append(end)
            new_ends.append(self._ends[j - 1])
        self._total += sum(e - s for s, e in zip(new_starts, new_ends, strict=True)) - sum(
            e - s for s, e in zip(self._starts[i:j], self._ends[i:j], strict=True)
        )
        self._starts[i:j] = new_starts
        self._ends[i:j] = new_ends

    def truncate(self, size: int) -> None:
        """Drop everything at or beyond ``size``."""
        self.remove(size, max(size, self._ends[-1]) if self._ends else size)

    def contains(self, start: int, end: int) -> bool:
        """True when all of ``[start, end)`` is covered."""
        if end <= start:
            return True
        i = bisect.bisect_right(self._starts, start) - 1
        return i >= 0 and self._ends[i] >= end

    def missing(self, start: int, end: int) -> list[tuple[int, int]]:
        """The parts of ``[start, end)`` not covered, in order."""
        gaps: list[tuple[int, int]] = []
        if end <= start:
            return gaps
        pos = start
        i = max(bisect.bisect_right(self._ends, start), 0)
        while pos < end and i < len(self._starts):
            s, e = self._starts[i], self._ends[i]
            if s >= end:
                break
            if s > pos:
                gaps.append((pos, s))
            pos = max(pos, e)
            i += 1
        if pos < end:
            gaps.append((pos, end))
        return gaps

    def intersection(self, start: int, end: int) -> list[tuple[int, int]]:
        """The covered parts of ``[start, end)``, in order."""
        out: list[tuple[int, int]] = []
        if end <= start:
            return out
        i = bisect.bisect_right(self._ends, start)
        while i < len(self._starts) and self._starts[i] < end:
            out.append((max(start, self._starts[i]), min(end, self._ends[i])))
            i += 1
        return out

    def to_list(self) -> list[list[int]]:
        """JSON-friendly form for the journal."""
        return [[s, e] for s, e in self]

    @classmethod
    def from_list(cls, data: Iterable[Iterable[int]]) -> Extents:
        ext = cls()
        for pair in data:
            s, e = pair
            ext.add(int(s), int(e))
        return ext
