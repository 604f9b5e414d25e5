"""The local server's latency model: every round trip a client waits for costs one RTT.

A real COS endpoint is 5-30 ms away, and what that costs a client is its
round trips, not its requests alone: a TCP connect (SYN, SYN-ACK), each
round trip of a TLS handshake (one for TLS 1.3 or a resumed TLS 1.2
session, two for a full TLS 1.2 one), each request/response, and the wait
for ``100 Continue`` when a client sends ``Expect: 100-continue``.  This
kernel has no netem, so the server charges them itself: the connection's
thread sleeps one RTT per round trip before it answers.

The set-up round trips of a connection (connect, handshake) are charged
when its first request arrives, not at accept: only then is it known
whether the connection is the benchmark's own admin call (never charged,
never counted), and the client, which speaks first in HTTP and TLS, is
waiting for that first answer anyway.  The model has no bandwidth: bodies
flow at loopback speed, so it says nothing about bandwidth-delay effects
(TCP windows, slow start).  docs/performance.md describes its use.
"""

from __future__ import annotations

import logging
import ssl
import threading
from dataclasses import dataclass, field
from enum import Enum

from cosencfs.server.stats import Stats

log = logging.getLogger(__name__)


class RoundTrip(Enum):
    """What a charged round trip was for (the keys of the server's network counters)."""

    CONNECT = "connect"
    TLS_HANDSHAKE = "tls_handshake"
    REQUEST = "request"
    CONTINUE = "continue"


@dataclass(slots=True)
class RttModel:
    """Charges round trips: counts them and sleeps ``rtt_ms`` for each."""

    rtt_ms: float
    stats: Stats
    stopping: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        if self.rtt_ms < 0:
            raise ValueError(f"RTT must be >= 0 ms, not {self.rtt_ms}")

    def charge(self, kind: RoundTrip, n: int = 1, *, wait: bool = True) -> None:
        """Count ``n`` round trips of ``kind`` and (``wait``) sleep that many RTTs.

        ``wait=False`` counts round trips nobody waits for any more (a
        connection closed before its first request).
        """
        if n <= 0:
            return
        self.stats.add_round_trips(kind.value, n, n * self.rtt_ms)
        if wait and self.rtt_ms > 0:
            # Cut short when the server stops, so stop() never waits on a sleep.
            self.stopping.wait(n * self.rtt_ms / 1000)


def handshake_round_trips(sock: ssl.SSLSocket) -> int:
    """Round trips the TLS handshake just made on ``sock`` took (full or resumed)."""
    version = sock.version()
    if version == "TLSv1.3" or sock.session_reused:
        return 1
    return 2


class ConnectionState(Enum):
    """Where a connection is in being charged for its set-up."""

    PENDING = "pending"  # accepted; no request yet
    CHARGED = "charged"  # its first request was a COS request: set-up charged
    ADMIN = "admin"  # its first request was an admin call: never charged or counted


@dataclass(slots=True)
class ConnectionCharges:
    """One connection's set-up round trips, charged on its first COS request."""

    model: RttModel
    tls: bool = False
    handshake_rtts: int = 0
    state: ConnectionState = ConnectionState.PENDING

    def first_request(self, *, admin: bool) -> None:
        """Charge (or, for an admin call, forget) the set-up; later calls do nothing."""
        if self.state is not ConnectionState.PENDING:
            return
        if admin:
            self.state = ConnectionState.ADMIN
            return
        self.state = ConnectionState.CHARGED
        self._count_and_charge(wait=True)

    def closed(self) -> None:
        """A connection that never sent a request still made its round trips: count them."""
        if self.state is ConnectionState.PENDING:
            self.state = ConnectionState.CHARGED
            self._count_and_charge(wait=False)

    def _count_and_charge(self, *, wait: bool) -> None:
        self.model.stats.add_connection(tls=self.tls)
        self.model.charge(RoundTrip.CONNECT, 1, wait=wait)
        self.model.charge(RoundTrip.TLS_HANDSHAKE, self.handshake_rtts, wait=wait)
