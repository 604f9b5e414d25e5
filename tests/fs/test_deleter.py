"""The deleter's memory of recent deletes: what a listing started earlier may still show."""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from cosencfs.cache.journal import Journal
from cosencfs.fs.deleter import Deleter
from cosencfs.store.memory import MemoryStore


async def _delete(store: MemoryStore, deleter: Deleter, keys: list[str]) -> None:
    for key in keys:
        await store.put(key, b"", {})
        deleter.queue(key)
    await deleter.flush()


async def test_deletes_done_over_a_minute_ago_are_forgotten_past_1024(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    store = MemoryStore()
    deleter = Deleter(store, Journal(tmp_path / "journal.db"))
    t0 = trio.current_time()
    old = [f"old/{i}" for i in range(1500)]
    await _delete(store, deleter, old)
    # Recent: all remembered, whatever their number.
    assert all(deleter.gone_since(k, t0) for k in old)
    assert deleter.dirs_with_gone_keys("", t0) == {"old"}
    await trio.sleep(30.0)
    t1 = trio.current_time()
    await _delete(store, deleter, ["mid/0"])
    assert all(deleter.gone_since(k, t0) for k in old)  # not a minute old yet
    await trio.sleep(31.0)
    new = [f"new/{i}" for i in range(10)]
    await _delete(store, deleter, new)
    # Over 1024 entries: what is a minute old goes, what is younger stays.
    assert not any(deleter.gone_since(k, t0) for k in old)
    assert deleter.gone_since("mid/0", t1)
    assert all(deleter.gone_since(k, t1) for k in new)
    assert deleter.dirs_with_gone_keys("", t0) == {"mid", "new"}
    assert [o.key async for page in store.list_all("") for o in page.objects] == []
