"""Extents against a set-of-bytes model."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from cosencfs.cache.extents import Extents

SPAN = 200
ranges = st.tuples(st.integers(0, SPAN), st.integers(0, SPAN)).map(lambda t: (min(t), max(t)))
ops = st.lists(st.tuples(st.sampled_from(["add", "remove", "truncate"]), ranges), max_size=40)


def _model_ranges(model: set[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for b in sorted(model):
        if out and out[-1][1] == b:
            out[-1] = (out[-1][0], b + 1)
        else:
            out.append((b, b + 1))
    return out


@settings(max_examples=300, deadline=None)
@given(ops, ranges)
def test_extents_match_a_set_model(
    operations: list[tuple[str, tuple[int, int]]], probe: tuple[int, int]
) -> None:
    ext = Extents()
    model: set[int] = set()
    for op, (s, e) in operations:
        if op == "add":
            ext.add(s, e)
            model |= set(range(s, e))
        elif op == "remove":
            ext.remove(s, e)
            model -= set(range(s, e))
        else:
            ext.truncate(s)
            model = {b for b in model if b < s}
        assert list(ext) == _model_ranges(model)
    s, e = probe
    want = set(range(s, e))
    assert ext.contains(s, e) == want.issubset(model)
    assert ext.missing(s, e) == _model_ranges(want - model)
    assert ext.intersection(s, e) == _model_ranges(want & model)
    assert ext.total == len(model)
    assert Extents.from_list(ext.to_list()) == ext


def test_adjacent_ranges_merge() -> None:
    ext = Extents([(0, 10), (10, 20), (30, 40)])
    assert list(ext) == [(0, 20), (30, 40)]
    ext.add(15, 35)
    assert list(ext) == [(0, 40)]
