"""systemd's readiness protocol (sd_notify), without a dependency.

With ``Type=notify`` systemd passes ``NOTIFY_SOCKET``; cosencfs sends
``READY=1`` once the mount is live, ``STATUS=...`` lines while it works and
``STOPPING=1`` when it begins to shut down.  Without the variable every call
is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, address: str | None = None) -> None:
        addr = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        self._addr: str | bytes | None = None
        if addr:
            # A leading '@' names a socket in the abstract namespace.
            self._addr = b"\0" + addr[1:].encode() if addr.startswith("@") else addr

    @property
    def enabled(self) -> bool:
        return self._addr is not None

    def send(self, *fields: str) -> None:
        if self._addr is None:
            return
        message = "\n".join(fields).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.connect(self._addr)
                s.sendall(message)
        except OSError as exc:
            log.warning("cannot notify systemd: %s", exc)

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def stopping(self, status: str) -> None:
        self.send("STOPPING=1", f"STATUS={status}")
