"""A write that starts a streamed part waits for a part buffer (cosencfs/fs/stream.py).

When the mount's budget of part buffers is spent by the stream's own PUTs,
the write that starts the next part waits for one of them to come back
(``StreamUpload.wait_hold``) instead of sending that part through the page
cache and reading it back.  A wait that times out (the network slower than
the writer) makes that stream wait no more.  Counted, not timed: where each
part came from, the waits, and the bytes COS holds.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio

from cosencfs.crypto.envelope import EnvelopeCodec
from cosencfs.errors import StoreError
from cosencfs.fs import stream
from cosencfs.fs.core import Filesystem
from cosencfs.fs.upload import MIN_PART
from cosencfs.store.cos import CosStore
from tests.fs.test_stream_parts import _stored_and_tagged, _write

MIB = 1024 * 1024


def _gated_parts(
    monkeypatch: pytest.MonkeyPatch,
    store: CosStore,
    fsys: Filesystem,
    size: int,
    *,
    ahead: int = 1,
) -> list[int]:
    """Part ``n``'s UploadPart of ``store`` waits until the writer has written
    part ``n + ahead`` whole (or the file): the writer is always ahead of the
    PUTs, whatever the machine's speed; the part numbers sent, in order."""
    sent: list[int] = []
    real: Callable[..., Awaitable[str]] = store.upload_part

    async def gated(key: str, upload_id: str, n: int, body: Any, *a: Any, **kw: Any) -> str:
        while fsys.writer.write_bytes < min((n + ahead) * MIN_PART, size):  # noqa: ASYNC110 - a counter
            await trio.sleep(0.005)
        sent.append(n)
        return await real(key, upload_id, n, body, *a, **kw)

    monkeypatch.setattr(store, "upload_part", gated)
    return sent


async def test_a_write_waits_for_a_buffer_its_stream_sends_back(
    fsys: Filesystem, store: CosStore, codec: EnvelopeCodec, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two buffers and PUTs behind the writer (part n's until part n + 1 is
    written): every part from the third on (the stream starts with the
    write past 16 MiB, the first of part 3) goes from the buffer its writes
    filled; the write that starts a part waits for the PUT two parts back.
    Before, that part found both buffers taken, went through the page cache
    and was read back (or sent from the copy)."""
    monkeypatch.setattr(stream, "HOLD_WAIT", 30.0)  # never times out here
    data = os.urandom(64 * MIB + 1000)
    sent = _gated_parts(monkeypatch, store, fsys, len(data))
    counts = fsys.ctx.part_buffers
    counts.limit = 2
    parts = -(-len(data) // MIN_PART)
    await _write(fsys, "big", data, MIB)
    assert sorted(sent) == list(range(1, parts + 1))
    assert counts.sent_held == parts - 2
    assert counts.sent_held + counts.sent_loaded + counts.sent_file == parts
    assert counts.waits >= 1
    assert counts.wait_timeouts == 0
    assert counts.held == 0
    await _stored_and_tagged(store, codec, "big", data)


async def test_a_wait_that_times_out_stops_the_waits(
    fsys: Filesystem, store: CosStore, codec: EnvelopeCodec, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No PUT answers before the whole file is written: the first write
    that waits (part 5's: part 3 holds the one buffer in its PUT) waits
    HOLD_WAIT in vain; the stream waits no more, its later parts go through
    the page cache as before, and the object is whole and tagged."""
    monkeypatch.setattr(stream, "HOLD_WAIT", 0.05)
    data = os.urandom(56 * MIB + 7)
    _gated_parts(monkeypatch, store, fsys, len(data), ahead=len(data) // MIN_PART + 1)
    counts = fsys.ctx.part_buffers
    counts.limit = 1
    await _write(fsys, "big", data, MIB)
    assert counts.waits == counts.wait_timeouts == 1
    assert counts.sent_held + counts.sent_loaded + counts.sent_file == -(-len(data) // MIN_PART)
    assert counts.sent_file >= 1
    assert counts.held == 0
    await _stored_and_tagged(store, codec, "big", data)


async def test_no_wait_for_a_buffer_no_put_holds(
    fsys: Filesystem, store: CosStore, codec: EnvelopeCodec, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The budget spent elsewhere (here: none at all) and none of the
    stream's buffers in a PUT: nothing would come back, so no write waits."""
    monkeypatch.setattr(stream, "HOLD_WAIT", 30.0)
    counts = fsys.ctx.part_buffers
    counts.limit = 0
    data = os.urandom(40 * MIB)
    with trio.fail_after(20):
        await _write(fsys, "big", data, MIB)
    assert counts.waits == 0
    assert counts.sent_file == 5
    await _stored_and_tagged(store, codec, "big", data)


async def test_no_wait_when_the_upload_never_started(
    fsys: Filesystem, store: CosStore, codec: EnvelopeCodec, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stream's Initiate failed: its held parts are never sent, so no
    buffer would come back; the writes do not wait (they waited HOLD_WAIT
    for nothing without the check).  fsync uploads the file anew."""
    monkeypatch.setattr(stream, "HOLD_WAIT", 30.0)
    real = store.create_multipart
    calls = 0

    async def fails_once(*a: Any, **kw: Any) -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise StoreError("injected: Initiate refused")
        return await real(*a, **kw)

    monkeypatch.setattr(store, "create_multipart", fails_once)
    counts = fsys.ctx.part_buffers
    counts.limit = 1
    data = os.urandom(40 * MIB + 3)
    with trio.fail_after(20):
        await _write(fsys, "big", data, MIB)
    assert calls == 2
    assert counts.waits == 0
    assert counts.held == 0
    await _stored_and_tagged(store, codec, "big", data)
