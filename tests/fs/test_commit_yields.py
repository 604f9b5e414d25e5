"""Committing a small file (issue 18 creation): free locks and tokens are
taken without a trip through trio's scheduler, a small request is written
to its socket at once, and the log file a layer written front to back never
had is not unlinked.

``async with`` on a trio lock or limiter yields even when it is free (a
pass of the run loop, an epoll call); a commit took four such (the window's
token, the upload lock, the head's lock, the connection pool's token) per
file. Each still waits when it is held elsewhere.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, cast

import pytest
import trio
import trio.testing

from cosencfs.crypto.envelope import EnvelopeCodec
from cosencfs.fs.core import Filesystem
from cosencfs.fs.inode import Inode
from cosencfs.fs.writeback import WriteBack
from cosencfs.store import transport
from cosencfs.store.memory import MemoryStore
from cosencfs.store.transport import Transport, _Conn
from cosencfs.store.wire import Answer, Endpoint
from tests.testlib import idle_memory_fs

ROOT = 1


@pytest.fixture
async def mem_fs(codec: EnvelopeCodec, tmp_path: Path) -> AsyncIterator[Filesystem]:
    async with idle_memory_fs(codec, tmp_path / "cache") as fs:
        yield fs


class _Steps(trio.abc.Instrument):
    """Counts the steps of one task: each after the first is a yield."""

    def __init__(self, task: trio.lowlevel.Task) -> None:
        self.task = task
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task:
            self.steps += 1


async def _yields(fn: Callable[[], Any]) -> int:
    """How often ``fn`` yielded to trio's scheduler."""
    steps = _Steps(trio.lowlevel.current_task())
    trio.lowlevel.add_instrument(steps)
    try:
        await fn()
    finally:
        trio.lowlevel.remove_instrument(steps)
    return steps.steps


async def test_a_small_files_commit_yields_only_for_its_put(mem_fs: Filesystem) -> None:
    fs = mem_fs
    data = os.urandom(2048)
    fh, _ = await fs.create(ROOT, b"f", 0o644, os.O_WRONLY | os.O_CREAT, 0, 0)
    await fs.write(fh, 0, data)
    await fs.flush(fh)
    node = fs.files.handles.get(fh).node
    store = cast(MemoryStore, fs.ctx.store)
    before = store.counters.snapshot().total_requests
    # MemoryStore's PUT yields once, the write-back's flush once more: the
    # commit's locks not at all (they yielded twice more: 4 on the old code).
    assert await _yields(lambda: fs.fsync(fh, False)) == 2
    assert not node.dirty
    assert store.counters.snapshot().total_requests == before + 1  # one PUT
    await fs.release(fh)


async def test_the_upload_lock_still_waits_for_its_holder(mem_fs: Filesystem) -> None:
    fs = mem_fs
    fh, _ = await fs.create(ROOT, b"g", 0o644, os.O_WRONLY | os.O_CREAT, 0, 0)
    node = fs.files.handles.get(fh).node
    entered = trio.Event()

    async def other() -> None:
        async with node.upload_lock:
            entered.set()

    async with trio.open_nursery() as nursery:
        async with node.upload_lock:
            nursery.start_soon(other)
            await trio.testing.wait_all_tasks_blocked()
            assert not entered.is_set()
        await entered.wait()

    # Free again, and taken at once.
    async def take() -> None:
        async with node.upload_lock:
            pass

    assert await _yields(take) == 0
    await fs.release(fh)


async def test_a_background_upload_takes_a_free_window_token_without_yielding() -> None:
    ran: list[int] = []

    async def commit(node: Inode) -> None:
        ran.append(node.ino)

    class _Node:
        ino, dirty, unlinked, name = 7, False, False, "f"

    limiter = trio.CapacityLimiter(1)
    wb = WriteBack(commit, delay=0.0, max_dirty_age=60.0, limiter=limiter)
    node = cast(Inode, _Node())
    assert await _yields(lambda: wb.flush(node, bounded=True)) == 0
    assert ran == [7]
    assert limiter.borrowed_tokens == 0
    # Held elsewhere: the upload waits for it.
    async with trio.open_nursery() as nursery, limiter:
        nursery.start_soon(lambda: wb.flush(node, bounded=True))
        await trio.testing.wait_all_tasks_blocked()
        assert ran == [7]
    assert ran == [7, 7]
    assert limiter.borrowed_tokens == 0


async def test_a_request_takes_a_free_connection_token_without_yielding() -> None:
    t = Transport(Endpoint("http", "127.0.0.1", 9), connections=1, timeout=1.0)
    conn = object()
    t_any = cast(Any, t)
    t_any._reusable = lambda: conn
    t_any._idle = []

    async def exchange(*_a: object) -> tuple[Answer, bool]:
        return Answer(200, {}, b""), False

    t_any._exchange = exchange
    t_any._discard = lambda c: None

    async def one() -> None:
        answer = await t.request("GET", b"/k", [(b"Host", b"x")])
        assert answer.status == 200

    assert await _yields(one) == 0
    assert t.limiter.borrowed_tokens == 0
    # Held elsewhere: the request waits for it.
    done = trio.Event()

    async def waiting() -> None:
        await one()
        done.set()

    async with trio.open_nursery() as nursery, t.limiter:
        nursery.start_soon(waiting)
        await trio.testing.wait_all_tasks_blocked()
        assert not done.is_set()
    assert done.is_set()
    assert t.limiter.borrowed_tokens == 0


async def test_a_layer_that_never_had_a_log_is_not_unlinked(
    mem_fs: Filesystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    fs = mem_fs
    unlinked: list[str] = []
    real = os.unlink

    def unlink(path: str) -> None:
        unlinked.append(str(path))
        real(path)

    monkeypatch.setattr(os, "unlink", unlink)
    # Front to back: only a direct copy, no log.
    fh, _ = await fs.create(ROOT, b"a", 0o644, os.O_RDWR | os.O_CREAT, 0, 0)
    await fs.write(fh, 0, os.urandom(2048))
    head = fs.files.handles.get(fh).node.as_file.head
    if head is None:
        raise AssertionError("no head after a write")
    direct_log = head.path
    await fs.fsync(fh, False)
    assert direct_log not in unlinked
    # Written out of order: a log, deleted once the file is committed.
    await fs.write(fh, 8192, os.urandom(100))
    await fs.write(fh, 10, os.urandom(100))
    head = fs.files.handles.get(fh).node.as_file.head
    if head is None:
        raise AssertionError("no head after a write")
    logged = head.path
    assert Path(logged).exists()  # noqa: ASYNC240 - a test's look at the cache
    await fs.fsync(fh, False)
    assert logged in unlinked
    assert not Path(logged).exists()  # noqa: ASYNC240
    await fs.release(fh)


async def test_a_small_send_on_a_plain_connection_does_not_yield() -> None:
    a, b = trio.socket.socketpair()
    conn = _Conn(trio.SocketStream(a))
    try:
        assert await _yields(lambda: transport._send(conn, b"x" * 4096)) == 0
        assert len(await b.recv(65536)) == 4096
        # More than the socket's buffer takes at once: the rest by send_all.
        big = os.urandom(8 << 20)
        got = bytearray()

        async def drain() -> None:
            while len(got) < len(big):
                got.extend(await b.recv(1 << 20))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain)
            await transport._send(conn, big)
        assert bytes(got) == big
    finally:
        a.close()
        b.close()


async def test_a_waiter_cancelled_or_refused_leaves_no_user_counted(mem_fs: Filesystem) -> None:
    fs = mem_fs
    fh, _ = await fs.create(ROOT, b"h", 0o644, os.O_WRONLY | os.O_CREAT, 0, 0)
    node = fs.files.handles.get(fh).node
    held, done = trio.Event(), trio.Event()

    async def holder() -> None:
        async with node.upload_lock:
            with pytest.raises(RuntimeError):
                # Taken by this task already: refused at once (not reentrant).
                async with node.upload_lock:
                    pass
            held.set()
            await done.wait()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(holder)
        await held.wait()
        with trio.move_on_after(0.01):
            async with node.upload_lock:  # waits for the holder: cancelled
                raise AssertionError("taken while held")
        aux = node._aux
        assert aux is not None
        assert aux.users == 1
        done.set()
    assert node._aux is None  # the last user out dropped it
    await fs.release(fh)
