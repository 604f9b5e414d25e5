"""PlainHold (cosencfs/cache/plainhold.py): decrypted read-ahead handed to its
reader once, without a copy where the read matches a block, within a budget."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cosencfs.cache.content import ObjectContent, Source
from cosencfs.cache.plainhold import CELL, PlainHold, cells
from cosencfs.crypto.ctr import DataKey

SIZE = 8 * CELL


@pytest.fixture
async def copy(tmp_path: Path) -> AsyncIterator[ObjectContent]:
    dk = DataKey.generate()
    v = ObjectContent("v1", str(tmp_path / "v1"), dk, SIZE, Source("k", "e", dk, SIZE))
    yield v
    v.close()


def blocks(data: bytes, start: int, end: int) -> list[tuple[int, bytes]]:
    return [(s, data[s:e]) for s, e in cells(start, end)]


def test_cells_never_cross_a_multiple_of_cell() -> None:
    assert cells(100, 2 * CELL + 5) == [(100, CELL), (CELL, 2 * CELL), (2 * CELL, 2 * CELL + 5)]
    assert cells(5, 5) == []


async def test_a_read_matching_a_block_gets_the_block_itself(copy: ObjectContent) -> None:
    data = os.urandom(SIZE)
    hold = PlainHold()
    pieces = blocks(data, 64 * 1024, 3 * CELL)
    hold.put(copy, pieces)
    assert hold.held == 3 * CELL - 64 * 1024
    got = hold.take(copy, CELL, 2 * CELL)
    assert got is pieces[1][1]  # no copy
    # Across two blocks, and part of one: the part not read stays.
    assert hold.take(copy, 2 * CELL - 10, 2 * CELL) is None  # already taken
    assert hold.take(copy, 64 * 1024, 100 * 1024) == data[64 * 1024 : 100 * 1024]
    assert hold.take(copy, 100 * 1024, CELL) == data[100 * 1024 : CELL]
    assert hold.take(copy, 2 * CELL, 3 * CELL) == data[2 * CELL : 3 * CELL]
    assert hold.held == 0
    assert hold.served == 3 * CELL - 64 * 1024
    # Not held (whole): nothing is taken.
    hold.put(copy, blocks(data, 4 * CELL, 5 * CELL))
    assert hold.take(copy, 4 * CELL, 5 * CELL + 1) is None
    assert hold.take(copy, 3 * CELL, 4 * CELL + 1) is None
    assert hold.held == CELL
    spanning = blocks(data, 5 * CELL - 100, 5 * CELL + 100)
    hold.put(copy, spanning)
    assert hold.take(copy, 4 * CELL + 5, 5 * CELL + 50) == data[4 * CELL + 5 : 5 * CELL + 50]


async def test_the_oldest_blocks_go_beyond_the_budget(copy: ObjectContent) -> None:
    data = os.urandom(SIZE)
    hold = PlainHold(budget=2 * CELL)
    hold.put(copy, blocks(data, 0, 2 * CELL))
    hold.put(copy, blocks(data, 2 * CELL, 3 * CELL))
    assert hold.held == 2 * CELL
    assert hold.dropped == CELL
    assert hold.take(copy, 0, 10) is None  # the oldest went
    assert hold.take(copy, CELL, 2 * CELL) == data[CELL : 2 * CELL]


async def test_forget_and_close_let_go(copy: ObjectContent) -> None:
    data = os.urandom(SIZE)
    hold = PlainHold()
    hold.put(copy, blocks(data, 0, 4 * CELL))
    assert hold.forget(copy, keep=(CELL + 5, CELL + 6)) == 3 * CELL
    assert copy.plain is not None
    assert list(copy.plain) == [CELL]
    assert hold.held == CELL
    copy.close()
    assert hold.take(copy, CELL, 2 * CELL) is None
    hold.put(copy, blocks(data, 0, CELL))  # a closed copy holds nothing
    assert copy.plain is None
