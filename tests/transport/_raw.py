"""A scripted HTTP server for the transport tests: each reply is given bytes, then close or not."""

from __future__ import annotations

from dataclasses import dataclass, field

import trio

from cosencfs.server.tls import TlsFiles, server_context

#: What the server does with one request: bytes to send, then close or not.
Reply = tuple[bytes, bool]


@dataclass
class Script:
    tls: TlsFiles | None = None
    url: str = ""
    replies: list[Reply] = field(default_factory=list)
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0
    open_now: int = 0
    #: Set to never answer the requests left once the replies run out.
    hold: trio.Event = field(default_factory=trio.Event)
    #: Set by the test to make the server close every idle connection.
    close_idle: trio.Event = field(default_factory=trio.Event)
    #: For the next request with a longer body: read this many bytes of the
    #: body, then close the connection (``cut``) or stop reading (``stall``).
    cut: int | None = None
    stall: int | None = None
    #: Body bytes read of requests that were cut or stalled.
    partial: list[int] = field(default_factory=list)
    #: Set when a body has been cut or stalled.
    abandoned: trio.Event = field(default_factory=trio.Event)


class _Abandon(Exception):
    """The request was cut or stalled as the script says."""


def ok(body: bytes, *extra: str) -> bytes:
    head = ["HTTP/1.1 200 OK", f"Content-Length: {len(body)}", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def _read_request(
    stream: trio.abc.Stream, buf: bytes, script: Script
) -> tuple[bytes, bytes] | None:
    while b"\r\n\r\n" not in buf:
        data = await stream.receive_some(65536)
        if not data:
            return None
        buf += data
    head, _, buf = buf.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    limit = script.cut if script.cut is not None else script.stall
    if limit is not None and length > limit:
        while len(buf) < limit:
            buf += await stream.receive_some(min(65536, limit - len(buf)))
        script.partial.append(len(buf))
        script.abandoned.set()
        if script.cut is not None:
            script.cut = None
            raise _Abandon
        script.stall = None
        await trio.sleep_forever()
    body = bytearray(buf)  # not bytes: a large body would be copied per piece
    while len(body) < length:
        body += await stream.receive_some(65536)
    return head, bytes(body[length:])


async def serve_script(script: Script, tcp: trio.SocketStream) -> None:
    script.connections += 1
    script.open_now += 1
    stream: trio.abc.Stream = tcp
    if script.tls is not None:
        stream = trio.SSLStream(tcp, server_context(script.tls), server_side=True)
    buf = b""
    try:
        while True:
            read: tuple[bytes, bytes] | None = None
            async with trio.open_nursery() as nursery:

                async def close_when_told() -> None:
                    await script.close_idle.wait()
                    nursery.cancel_scope.cancel()

                async def read_one(pending: bytes = buf) -> None:
                    nonlocal read
                    try:
                        read = await _read_request(stream, pending, script)
                    except (trio.BrokenResourceError, trio.ClosedResourceError, _Abandon):
                        pass  # the client went away (or never finished TLS), or cut
                    nursery.cancel_scope.cancel()

                nursery.start_soon(close_when_told)
                nursery.start_soon(read_one)
            if read is None:
                return
            head, buf = read
            script.requests.append(head)
            if not script.replies:
                await script.hold.wait()
                return
            raw, close = script.replies.pop(0)
            await stream.send_all(raw)
            if close:
                return
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return
    finally:
        script.open_now -= 1
        await trio.aclose_forcefully(tcp)
