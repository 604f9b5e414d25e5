"""CacheManager (cosencfs/cache/manager.py): clean copies by source, eviction,
the orphan sweep, the directory lock."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from cosencfs.cache import spare
from cosencfs.cache.content import Inflight, ObjectContent, Source
from cosencfs.cache.layout import new_vid
from cosencfs.cache.manager import CacheManager
from cosencfs.crypto.ctr import DataKey, encrypt
from cosencfs.errors import CacheIntegrityError, ConfigError
from tests.cache.conftest import NO_STORE


def source(key: str, etag: str = "e1", size: int = 1000) -> Source:
    return Source(key, etag, DataKey.generate(), size, {"envelope": "of " + key})


def filled(cache: CacheManager, src: Source) -> ObjectContent:
    """The clean copy of ``src`` with all its bytes fetched."""
    v = cache.clean_for(src)
    assert src.dk is not None
    v.store_fetched(0, encrypt(src.dk, 0, os.urandom(src.limit)))
    return v


def data_files(cache: CacheManager) -> set[str]:
    return set(os.listdir(cache.data_dir))


async def emptied(cache: CacheManager) -> None:
    """Wait until the files the cache disposed of are deleted (cache/spare.py)."""
    with trio.fail_after(30):
        while cache.spares.disposing:  # noqa: ASYNC110 - a worker thread deletes them
            await trio.sleep(0.01)


async def test_clean_copies_are_found_by_key_and_etag(cache: CacheManager) -> None:
    a = source("a")
    v = cache.clean_for(a)
    same = Source("a", "e1", a.dk, 1000, {})
    assert cache.clean_for(same) is v  # same (key, ETag, data key)
    # Same key and ETag under another data key: not that object; never read.
    with pytest.raises(CacheIntegrityError, match="another data key"):
        cache.clean_for(source("a"))
    assert cache.clean_for(source("a", "e2")) is not v  # another version
    # Its own record of the source (a rename changes it, not the caller's).
    s = v.source
    assert s is not None
    assert s is not a
    assert (s.key, s.etag, s.dk, s.limit, s.envelope) == ("a", "e1", a.dk, 1000, a.envelope)
    assert v.dk is a.dk
    assert v.size == 1000
    assert v.holds == 0
    # A plaintext object is kept under a throw-away key of its own.
    p = cache.clean_for(Source("p", "e", None, 10))
    assert p.plaintext_source
    assert p.dk is not None
    # A discarded copy is made afresh (and its file is gone, by a worker thread).
    cache.discard(v)
    assert cache.spares.disposing
    await emptied(cache)
    assert v.vid not in data_files(cache)
    assert cache.clean_for(source("a")) is not v


async def test_adopt_and_rekey(cache: CacheManager) -> None:
    old = cache.clean_for(source("f"))
    staged = cache.staged(DataKey.generate(), 5)
    assert staged.holds == 1
    assert staged.source is None
    staged.produce(0, b"hello")
    made = Source("f", "e1", staged.dk, 5, {})
    cache.adopt(staged, made)
    assert staged.holds == 0
    assert cache.clean_for(Source("f", "e1", staged.dk, 5)) is staged  # replaces the old
    assert old.vid in cache.versions  # still readable by whoever has it
    cache.rekey(staged, "g", "e9")  # renamed by a server-side copy
    assert cache.clean_for(Source("g", "e9", staged.dk, 5)) is staged
    assert cache.clean_for(source("f")) is not staged
    # A direct copy left by an earlier run: its bytes count, it is held.
    left = cache.staged(DataKey.generate(), 3)
    left.produce(0, b"abc")
    vid, dk = left.vid, left.dk
    cache.close_copy(left)
    assert vid in data_files(cache)
    assert vid not in cache.versions
    again = cache.reopen_copy(vid, dk, 3)
    assert again.holds == 1
    assert again.complete
    assert again.read_plain(0, 3) == b"abc"


async def test_eviction_drops_only_clean_unused_copies(tmp_path: Path) -> None:
    cache = CacheManager(tmp_path / "cache", NO_STORE, limit_bytes=1000)
    evicted: list[ObjectContent] = []
    cache.on_evict = evicted.append
    try:
        # Dirty data: a layer with records in its log.
        layer = cache.layers.new(size=0, limit=0)
        refs, n = layer.append_write(0, os.urandom(3000))
        layer.apply_write(refs, n)
        # An upload copy being produced (held), a copy a reader reads (busy),
        # one being fetched (in flight), and two unused clean copies.
        held = cache.staged(DataKey.generate(), 1000)
        held.produce(0, os.urandom(1000))
        pinned = filled(cache, source("pinned"))
        pinned.pins += 1
        pinned.busy.append((0, 1000))  # what its reader reads right now
        fetching = filled(cache, source("fetching"))
        fetching.inflight.append(Inflight(0, 10))
        old, new = filled(cache, source("old")), filled(cache, source("new"))
        old.last_access -= 10
        assert cache.usage() == 5000 + layer.log_size
        freed = cache.evict()
        assert freed == 2000
        assert evicted == [old, new]  # least recently used first
        assert old.discarded
        assert new.discarded
        await emptied(cache)
        assert not {old.vid, new.vid} & data_files(cache)
        for kept in (held, pinned, fetching):
            assert not kept.discarded
            assert kept.vid in data_files(cache)
        assert layer.vid in cache.layers
        assert f"{layer.vid}.log" in data_files(cache)
        # Still over the limit (dirty data is never dropped): nothing more to free.
        assert cache.evict() == 0
    finally:
        cache.close()


async def test_eviction_keeps_the_copy_count_bounded(tmp_path: Path) -> None:
    cache = CacheManager(tmp_path / "cache", NO_STORE, limit_bytes=1 << 30, max_versions=3)
    try:
        copies = [filled(cache, source(f"k{i}", size=10)) for i in range(5)]
        for i, v in enumerate(copies):
            v.last_access = float(i)
        cache.evict()
        assert [v.discarded for v in copies] == [True, True, False, False, False]
    finally:
        cache.close()


async def test_unread_upload_copies_are_bounded_apart(tmp_path: Path) -> None:
    """Copies an upload produced and nobody read go beyond ``max_unread``,
    oldest first; copies read since, and fetched ones, stay (under
    ``max_versions``)."""
    cache = CacheManager(tmp_path / "cache", NO_STORE, limit_bytes=1 << 30, max_unread=2)
    try:
        fetched = filled(cache, source("fetched", size=10))
        produced = []
        for i in range(5):
            v = cache.staged(DataKey.generate(), 4)
            v.produce(0, b"data")
            cache.adopt(v, Source(f"up{i}", "e1", v.dk, 4, {}))
            produced.append(v)
        for i, v in enumerate([fetched, *produced]):
            v.last_access = float(i)
        assert all(v.unread for v in produced)
        assert not fetched.unread
        produced[0].touch()  # read back: an ordinary copy now
        produced[0].last_access = 0.5
        evicted: list[ObjectContent] = []
        cache.on_evict = evicted.append
        assert cache.evict() == 8
        assert evicted == [produced[1], produced[2]]  # the oldest unread, only
        assert [v.discarded for v in produced] == [False, True, True, False, False]
        assert not fetched.discarded
        await emptied(cache)
        assert not {produced[1].vid, produced[2].vid} & data_files(cache)
        assert cache.evict() == 0  # within both bounds now
    finally:
        cache.close()


async def test_files_being_deleted_are_no_orphans_and_go_in_batches(
    cache: CacheManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Discarded copies are unlinked by a worker thread (cache/spare.py), off the event
    loop: what came while a batch ran goes in the next; the sweep leaves them alone."""
    batches: list[list[str]] = []
    started, release = trio.Event(), trio.Event()
    real = spare.remove_files

    def remove(paths: list[str]) -> None:
        batches.append([os.path.basename(p) for p in paths])
        trio.from_thread.run_sync(started.set)
        trio.from_thread.run(release.wait)  # holds the first batch until the test has looked
        real(paths)

    monkeypatch.setattr(spare, "remove_files", remove)
    copies = [filled(cache, source(f"t{i}", size=10)) for i in range(5)]
    cache.discard(copies[0])
    await started.wait()
    for v in copies[1:]:
        cache.discard(v)  # while the first batch runs
    assert cache.spares.disposing == 5
    assert cache.sweep_orphans(keep=set()) == 0  # nothing of the cache's is an orphan
    assert {v.vid for v in copies} <= data_files(cache)  # still there ...
    release.set()
    await emptied(cache)
    assert not {v.vid for v in copies} & data_files(cache)  # ... and gone, in two batches
    assert batches == [[copies[0].vid], [v.vid for v in copies[1:]]]


async def test_orphan_sweep_keeps_journaled_and_live_files(cache: CacheManager) -> None:
    live_copy = filled(cache, source("live", size=10))
    live_layer = cache.layers.new(size=0, limit=0)
    refs, n = live_layer.append_write(0, b"x")
    live_layer.apply_write(refs, n)
    journaled, journaled_log = new_vid(), new_vid()
    orphan, orphan_log = new_vid(), new_vid()
    for name in (journaled, f"{journaled_log}.log", orphan, f"{orphan_log}.log"):
        (cache.data_dir / name).write_bytes(b"ciphertext")
    assert cache.sweep_orphans(keep={journaled, journaled_log}) == 2
    assert data_files(cache) == {
        live_copy.vid,
        f"{live_layer.vid}.log",
        journaled,
        f"{journaled_log}.log",
    }


async def test_a_cache_directory_serves_one_process(cache: CacheManager) -> None:
    with pytest.raises(ConfigError, match="in use"):
        CacheManager(cache.root, NO_STORE, limit_bytes=1 << 30)


MIB = 1 << 20


async def test_ranges_of_copies_in_use_go_but_not_what_readers_need(tmp_path: Path) -> None:
    """Over the limit with every copy in use: clean ranges nobody reads now go
    (their blocks freed), the range being read, the fetch in flight and the
    read-ahead window stay; held upload copies are never touched."""
    cache = CacheManager(tmp_path / "cache", NO_STORE, limit_bytes=2 * MIB)
    try:
        src = source("big", size=8 * MIB)
        v = filled(cache, src)
        v.pins += 1  # an open file being read: whole-copy eviction skips it
        v.busy.append((3 * MIB + 10, 3 * MIB + 4106))  # the read under way
        v.ahead = (3 * MIB + 4106, 4 * MIB)  # read-ahead not read yet
        v.inflight.append(Inflight(4 * MIB, 5 * MIB))  # being fetched
        held = cache.staged(DataKey.generate(), MIB)
        held.produce(0, os.urandom(MIB))
        blocks_before = os.stat(v.path).st_blocks
        freed = cache.evict()
        assert not v.discarded
        assert not held.discarded
        assert held.present.total == MIB
        # Everything else went, cut on 64 KiB boundaries outside the kept ranges.
        assert list(v.present) == [(3 * MIB, 5 * MIB)]
        assert freed == 6 * MIB
        assert cache.usage() == 3 * MIB  # over the limit by what readers need
        assert os.stat(v.path).st_blocks <= blocks_before - 6 * MIB // 512
        # Nothing more can go while they are needed.
        assert cache.evict() == 0
    finally:
        cache.close()


async def test_a_dropped_range_reads_back_after_a_fetch(tmp_path: Path) -> None:
    """Dropping forgets the bytes; the copy reports them missing, so the next
    read fetches them again (the same ciphertext: nothing encrypted twice)."""
    cache = CacheManager(tmp_path / "cache", NO_STORE, limit_bytes=1 << 30)
    try:
        v = filled(cache, source("k", size=256 * 1024))
        assert cache.usage() == 256 * 1024
        gone = v.drop(64 * 1024, 192 * 1024, lambda fd, off, n: None)
        assert gone == 128 * 1024
        assert cache.usage() == 128 * 1024
        assert v.present.missing(0, 256 * 1024) == [(64 * 1024, 192 * 1024)]
        assert v.drop(64 * 1024, 192 * 1024, lambda fd, off, n: None) == 0
    finally:
        cache.close()
