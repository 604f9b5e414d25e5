"""The event-loop HTTP transport against a scripted raw server.

The local COS server answers with Content-Length and keeps connections
alive; these tests give the parser what other servers and proxies send too:
chunked bodies, bodies ended by closing, connections closed while idle,
truncated bodies, no answer at all.
"""

from __future__ import annotations

import http.client
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
import trio

from cosencfs.store import asynchttp
from cosencfs.store.asynchttp import AsyncTransport
from cosencfs.store.cosproto import CosSettings, make_cos_config
from cosencfs.store.fasthttp import FastTransport, HttpStatusError
from tests.testlib import BUCKET, REGION, SECRET_ID, SECRET_KEY

#: What the server does with one request: bytes to send, then close or not.
Reply = tuple[bytes, bool]


@dataclass
class Script:
    replies: list[Reply] = field(default_factory=list)
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0
    open_now: int = 0
    most_open: int = 0
    hold: trio.Event = field(default_factory=trio.Event)


def ok(body: bytes, *extra: str) -> bytes:
    head = ["HTTP/1.1 200 OK", f"Content-Length: {len(body)}", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def serve(script: Script, stream: trio.SocketStream) -> None:
    script.connections += 1
    script.open_now += 1
    script.most_open = max(script.most_open, script.open_now)
    buf = b""
    try:
        while True:
            while b"\r\n\r\n" not in buf:
                data = await stream.receive_some(65536)
                if not data:
                    return
                buf += data
            head, _, buf = buf.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while len(buf) < length:
                buf += await stream.receive_some(65536)
            buf = buf[length:]
            script.requests.append(head)
            if not script.replies:
                await script.hold.wait()  # never answers
                return
            raw, close = script.replies.pop(0)
            await trio.sleep(0.01)  # let several requests overlap
            await stream.send_all(raw)
            if close:
                return
    finally:
        script.open_now -= 1
        await stream.aclose()


@pytest.fixture
async def scripted() -> AsyncIterator[tuple[Script, Callable[..., AsyncTransport]]]:
    script = Script()
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, lambda s: serve(script, s), 0)
        port = listeners[0].socket.getsockname()[1]
        transports: list[AsyncTransport] = []

        def make(connections: int = 4, timeout: float = 5.0) -> AsyncTransport:
            settings = CosSettings(
                bucket=BUCKET,
                region=REGION,
                endpoint=f"http://127.0.0.1:{port}",
                secret_id=SECRET_ID,
                secret_key=SECRET_KEY,
            )
            signer = FastTransport(make_cos_config(settings), BUCKET, timeout)
            t = AsyncTransport(signer, connections, timeout)
            transports.append(t)
            return t

        yield script, make
        for t in transports:
            t.close()
        script.hold.set()
        nursery.cancel_scope.cancel()


async def test_bodies_by_length_chunked_and_until_close(
    scripted: tuple[Script, Callable[..., AsyncTransport]],
) -> None:
    script, make = scripted
    t = make()
    script.replies = [
        (ok(b"hello", 'ETag: "e1"', "X-Cos-Meta-Mode: 33188"), False),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n4;ext=1\r\ndefg\r\n0\r\nTrailer: x\r\n\r\n",
            False,
        ),
        (b"HTTP/1.0 200 OK\r\nETag: x\r\n\r\nto the end", True),
        (ok(b""), False),
    ]
    a = await t.request("GET", "k1")
    assert (a.status, a.body, a.headers["etag"], a.headers["x-cos-meta-mode"]) == (
        200,
        b"hello",
        '"e1"',
        "33188",
    )
    assert (await t.request("GET", "k2")).body == b"abcdefg"
    assert (await t.request("GET", "k3")).body == b"to the end"
    # The first three shared one kept-alive connection; the HTTP/1.0 answer closed it.
    assert script.connections == 1
    await t.request("PUT", "k4", body=b"payload")
    assert script.connections == 2
    head = script.requests[-1].decode()
    assert head.startswith("PUT /k4 HTTP/1.1\r\n")
    assert "Content-Length: 7" in head
    assert "Authorization: q-sign-algorithm=sha1" in head


async def test_head_has_no_body_even_with_a_length(
    scripted: tuple[Script, Callable[..., AsyncTransport]],
) -> None:
    script, make = scripted
    t = make()
    script.replies = [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 4096\r\n\r\n", False),
        (ok(b"x"), False),
    ]
    assert (await t.request("HEAD", "k")).headers["content-length"] == "4096"
    assert (await t.request("GET", "k")).body == b"x"
    assert script.connections == 1


async def test_error_answer_carries_the_cos_code(
    scripted: tuple[Script, Callable[..., AsyncTransport]],
) -> None:
    script, make = scripted
    body = b"<Error><Code>NoSuchKey</Code><Message>gone</Message><RequestId>r1</RequestId></Error>"
    script.replies = [(ok(body).replace(b"200 OK", b"404 Not Found"), False)]
    with pytest.raises(HttpStatusError) as info:
        await make().request("GET", "k")
    assert (info.value.status, info.value.code, info.value.request_id) == (404, "NoSuchKey", "r1")


async def test_truncated_body_is_a_connection_error(
    scripted: tuple[Script, Callable[..., AsyncTransport]],
) -> None:
    script, make = scripted
    script.replies = [(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort", True)]
    with pytest.raises(http.client.IncompleteRead):
        await make().request("GET", "k")


async def test_idle_connection_closed_by_the_server_is_replaced_once(
    scripted: tuple[Script, Callable[..., AsyncTransport]], monkeypatch: pytest.MonkeyPatch
) -> None:
    script, make = scripted
    t = make()
    # The server answers, then closes the connection without saying so.
    script.replies = [(ok(b"1"), True)]
    assert (await t.request("GET", "a")).body == b"1"
    await trio.sleep(0.05)
    # Idle for less than STALE_AFTER: the failure is reported, not hidden.
    with pytest.raises(ConnectionError):
        await t.request("GET", "b")
    script.replies = [(ok(b"2"), True), (ok(b"3"), False)]
    assert (await t.request("GET", "b")).body == b"2"
    await trio.sleep(0.05)
    monkeypatch.setattr(asynchttp, "STALE_AFTER", 0.0)
    # Idle long enough to be suspect: resent on a fresh connection, once.
    resent: list[int] = []
    assert (await t.request("GET", "c", on_resend=lambda: resent.append(1))).body == b"3"
    assert resent == [1]
    assert script.connections == 3


async def test_no_answer_times_out(
    scripted: tuple[Script, Callable[..., AsyncTransport]],
) -> None:
    _, make = scripted
    t = make(timeout=0.3)
    started = trio.current_time()
    with pytest.raises(TimeoutError):
        await t.request("HEAD", "k")
    assert trio.current_time() - started < 2.0


async def test_connections_are_bounded_and_reused(
    scripted: tuple[Script, Callable[..., AsyncTransport]],
) -> None:
    script, make = scripted
    t = make(connections=2)
    script.replies = [(ok(b"%d" % i), False) for i in range(10)]
    bodies: list[bytes] = []

    async def one(i: int) -> None:
        bodies.append((await t.request("GET", f"k{i}")).body)

    async with trio.open_nursery() as nursery:
        for i in range(10):
            nursery.start_soon(one, i)
    assert sorted(bodies) == sorted(b"%d" % i for i in range(10))
    assert script.most_open == 2
    assert script.connections == 2
