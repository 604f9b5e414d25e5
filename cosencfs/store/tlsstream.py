"""TLS over a trio socket stream that decrypts every record a read brought in, at once.

``trio.SSLStream`` returns one TLS record (at most 16 KiB, often 8) per
``receive_some``, each with a trip through the scheduler: for an 8 MiB GET
that is about a thousand trips, h11 events and cancel scopes, and measured
it cost 4-5x the CPU of the threaded ``http.client`` path it replaced.  This
stream reads up to ``RECV`` bytes from the socket per trip and hands all the
records they complete to the caller in one piece.  The TLS itself is the
standard library's (``ssl.SSLObject`` over memory BIOs, as in trio's own
stream): certificate and host name checks, alerts, session tickets and
key updates are OpenSSL's; only the pumping of bytes is here.

``ClientTls`` is the client's TLS for one endpoint: its verifying context,
and the session a new connection resumes (an abbreviated handshake: no
certificate sent, signed or checked again, the cost of a new connection
to both ends), with counts of handshakes and resumptions.
"""

from __future__ import annotations

import ssl
from typing import cast

import trio

from cosencfs.errors import ConfigError

#: Bytes read from the socket per trip through the scheduler.
RECV = 256 * 1024
#: Plaintext asked of one ``SSLObject.read`` (a record holds at most 16 KiB).
_RECORD = 32 * 1024


def client_tls_context(ca_file: str | None) -> ssl.SSLContext:
    """Verifying TLS: ``ca_file`` alone when given, else the default trust store."""
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the CA file {ca_file!r}: {exc}") from None


class ClientTls:
    """TLS to one endpoint: new connections resume the session of one before.

    A session (TLS 1.3: a ticket, which arrives after the handshake, with
    the first answer) is taken from a connection that finished an exchange
    (``keep``) and offered by the next connection made; the server may
    refuse it, and the handshake is then a full one.  Sessions are only
    ever offered to the host (and context) that issued them.  Event loop
    only: no lock.
    """

    def __init__(self, context: ssl.SSLContext, host: str) -> None:
        self.context = context
        self.host = host
        self._session: ssl.SSLSession | None = None
        #: Handshakes made, and how many of them resumed a session.
        self.handshakes = 0
        self.resumed = 0

    async def connect(self, tcp: trio.SocketStream) -> TlsStream:
        """``tcp`` with TLS on it, the handshake made (its errors as ``TlsStream.handshake``)."""
        stream = TlsStream(tcp, self.context, self.host, self._session)
        await stream.handshake()
        self.handshakes += 1
        if stream.session_reused:
            self.resumed += 1
        return stream

    def keep(self, stream: TlsStream) -> None:
        """``stream`` ended an exchange: its session is the one new connections
        offer.  Taken once per connection, after its first exchange: reading
        ``SSLObject.session`` copies the session through DER, certificates
        included (~0.4 ms: measured, done per request it doubled a HEAD's CPU)."""
        if stream.session_taken:
            return
        stream.session_taken = True
        session = stream.session
        if session is not None and session.has_ticket:
            self._session = session


class TlsStream:
    """A client TLS connection over ``transport_stream`` (call ``handshake`` first)."""

    def __init__(
        self,
        transport_stream: trio.SocketStream,
        context: ssl.SSLContext,
        server_hostname: str,
        session: ssl.SSLSession | None = None,
    ) -> None:
        self.transport_stream = transport_stream
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._tls = context.wrap_bio(
            self._in, self._out, server_hostname=server_hostname, session=session
        )
        self._eof = False
        #: ``ClientTls.keep`` has taken this connection's session.
        self.session_taken = False

    @property
    def session(self) -> ssl.SSLSession | None:
        return self._tls.session

    @property
    def session_reused(self) -> bool:
        return self._tls.session_reused

    async def _flush(self) -> None:
        if self._out.pending:
            await self.transport_stream.send_all(self._out.read())

    async def _fill(self) -> None:
        data = await self.transport_stream.receive_some(RECV)
        if data:
            self._in.write(data)
        else:
            self._in.write_eof()
            self._eof = True

    async def handshake(self) -> None:
        """Raises ``ssl.SSLError`` (``SSLCertVerificationError`` for a bad
        certificate), or ``ConnectionError`` when the server hangs up."""
        while True:
            try:
                self._tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self._flush()
                if self._eof:
                    raise ConnectionResetError("closed during the TLS handshake") from None
                await self._fill()
        await self._flush()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        # On an established TLS 1.2/1.3 connection a write never waits for a
        # read (no renegotiation from a client that never asks for one).
        self._tls.write(data)
        await self._flush()

    def encrypt(self, data: bytes | bytearray | memoryview) -> bytes:
        """The TLS records of ``data``, for the caller to send itself (``bodysend``
        does, in a worker thread, while the connection's task awaits it)."""
        self._tls.write(data)
        return self._out.read()

    async def receive_into(self, view: memoryview) -> int:
        """Decrypt into ``view`` every record complete so far (up to its size);
        0 at the end of the stream."""
        while True:
            done, ended = self.decrypt_into(view)
            await self._flush()
            if done:
                return done
            if ended or self._eof:
                return 0
            await self._fill()

    # The synchronous steps below are for ``bodyrecv``'s worker thread, which
    # moves the bytes itself while the connection's task awaits it.

    def decrypt_into(self, view: memoryview) -> tuple[int, bool]:
        """Decrypt into ``view`` the records received so far (up to its size):
        the bytes written, and whether the stream has ended."""
        done = 0
        try:
            while done < len(view):
                n = cast(int, self._tls.read(len(view) - done, view[done:]))
                if not n:
                    return done, True
                done += n
        except ssl.SSLWantReadError:
            pass
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            return done, True
        return done, self._eof and not done

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Bytes received from the socket (none: the peer closed it)."""
        if data:
            self._in.write(data)
        else:
            self._in.write_eof()
            self._eof = True

    def outgoing(self) -> bytes:
        """Records TLS wants sent (answers to key updates, alerts), usually none."""
        return self._out.read() if self._out.pending else b""

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """The plaintext of every record complete so far; b"" at the end of the stream.

        A peer that closes without close_notify ends the stream too (as
        ``https_compatible`` does in trio): HTTP's own framing tells a
        truncated answer.  ``max_bytes`` is ignored (the records are whole).
        """
        while True:
            pieces: list[bytes] = []
            ended = False
            try:
                while True:
                    piece = self._tls.read(_RECORD)
                    if not piece:
                        ended = True
                        break
                    pieces.append(piece)
            except ssl.SSLWantReadError:
                pass
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                ended = True
            # Reading may have produced records to send (key update answers).
            await self._flush()
            if pieces:
                return b"".join(pieces)
            if ended or self._eof:
                return b""
            await self._fill()
