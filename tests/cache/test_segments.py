"""SegmentMap (cosencfs/cache/segments.py) against a byte-by-byte reference."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from cosencfs.cache.segments import RecordRef, SegmentMap

SIZE = 200


class Reference:
    """The newest record of every byte, one list slot per byte."""

    def __init__(self) -> None:
        self.owner: list[RecordRef | None] = [None] * SIZE

    def put(self, start: int, end: int, rec: RecordRef) -> None:
        for i in range(start, end):
            self.owner[i] = rec

    def truncate(self, size: int) -> None:
        for i in range(size, SIZE):
            self.owner[i] = None


def expand(pieces: list[tuple[int, int, RecordRef | None]]) -> list[RecordRef | None]:
    out: list[RecordRef | None] = []
    for s, e, rec in pieces:
        out += [rec] * (e - s)
    return out


def ref(n: int, start: int, end: int) -> RecordRef:
    return RecordRef(pos=n * 1000, offset=start, length=end - start)


def test_put_cuts_older_segments_and_pieces_show_holes() -> None:
    m = SegmentMap()
    a, b = ref(0, 0, 100), ref(1, 40, 60)
    m.put(0, 100, a)
    m.put(40, 60, b)
    assert [(s.start, s.end, s.rec) for s in m] == [(0, 40, a), (40, 60, b), (60, 100, a)]
    assert m.live_bytes() == 100
    assert m.pieces(30, 110) == [(30, 40, a), (40, 60, b), (60, 100, a), (100, 110, None)]
    m.truncate(50)
    assert [(s.start, s.end) for s in m] == [(0, 40), (40, 50)]
    assert m.pieces(45, 70) == [(45, 50, b), (50, 70, None)]
    m.put(10, 10, ref(2, 10, 10))  # empty: nothing changes
    assert len(m) == 2


ops = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.integers(0, SIZE), st.integers(0, 40)),
        st.tuples(st.just("truncate"), st.integers(0, SIZE), st.just(0)),
    ),
    max_size=30,
)


@settings(max_examples=300, deadline=None)
@given(ops=ops, window=st.tuples(st.integers(0, SIZE), st.integers(0, SIZE)))
def test_segment_map_matches_reference(
    ops: list[tuple[str, int, int]], window: tuple[int, int]
) -> None:
    m, want = SegmentMap(), Reference()
    for n, (op, a, length) in enumerate(ops):
        if op == "put":
            end = min(a + length, SIZE)
            rec = ref(n, a, end)
            m.put(a, end, rec)
            want.put(a, end, rec)
        else:
            m.truncate(a)
            want.truncate(a)
    segs = list(m)
    # Disjoint, sorted, non-empty.
    assert all(s.start < s.end for s in segs)
    assert all(x.end <= y.start for x, y in itertools.pairwise(segs))
    assert m.live_bytes() == sum(r is not None for r in want.owner)
    assert expand(m.pieces(0, SIZE)) == want.owner
    lo, hi = sorted(window)
    pieces = m.pieces(lo, hi)
    assert expand(pieces) == want.owner[lo:hi]
    # Pieces tile the window exactly, in order.
    assert [p[0] for p in pieces[1:]] == [p[1] for p in pieces[:-1]]
    if pieces:
        assert pieces[0][0] == lo
        assert pieces[-1][1] == hi
