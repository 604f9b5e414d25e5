"""``LocalCosServer``: the in-process API of the local COS server."""

from __future__ import annotations

import logging
import os
import ssl
import threading
from collections.abc import Iterable
from types import TracebackType

from cosencfs.faults import FaultInjector
from cosencfs.server.auth import Credentials
from cosencfs.server.connections import CosHTTPServer
from cosencfs.server.context import ServerContext, valid_bucket_name
from cosencfs.server.handler import CosHandler
from cosencfs.server.latency import RttModel
from cosencfs.server.stats import Stats
from cosencfs.server.storage import Storage
from cosencfs.server.tls import TlsFiles, server_context
from cosencfs.server.uploads import Uploads

log = logging.getLogger(__name__)

_POLL_INTERVAL = 0.05  # how quickly stop() interrupts the accept loop


class LocalCosServer:
    """A COS-compatible HTTP server over a local directory, served by background threads.

    Objects persist under ``root``: a new server on the same root (and, if
    wanted, the same port) sees everything the previous one stored.
    ``rtt_ms`` charges every round trip a client waits for (``latency.py``);
    ``tls`` makes it an https server.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        buckets: Iterable[str] = (),
        secret_id: str | None = None,
        secret_key: str | None = None,
        fault_rate: float = 0.0,
        latency_ms: int = 0,
        fault_seed: int | None = None,
        allow_unsigned_s3: bool = False,
        fsync: bool = False,
        region: str = "ap-guangzhou",
        rtt_ms: float = 0.0,
        tls: TlsFiles | None = None,
    ) -> None:
        if (secret_id is None) != (secret_key is None):
            raise ValueError("secret_id and secret_key go together")
        self._buckets = list(buckets)
        for name in self._buckets:
            if not valid_bucket_name(name):
                raise ValueError(f"invalid bucket name: {name!r}")
        self._root = os.fspath(root)
        self._host = host
        self._port = port
        self._credentials = (
            Credentials(secret_id, secret_key)
            if secret_id is not None and secret_key is not None
            else None
        )
        self._faults = FaultInjector(fault_rate, latency_ms, fault_seed)
        self._stats = Stats()
        self._stopping = threading.Event()
        self._rtt = RttModel(rtt_ms, self._stats, self._stopping)
        self._tls_files = tls
        # Loaded here: a bad certificate or key fails at construction, not in a thread.
        self._tls: ssl.SSLContext | None = server_context(tls) if tls is not None else None
        self._allow_unsigned_s3 = allow_unsigned_s3
        self._fsync = fsync
        self._region = region
        self._httpd: CosHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._storage: Storage | None = None
        self._ctx: ServerContext | None = None

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Bind, then serve in daemon threads; returns once the socket listens."""
        if self._httpd is not None:
            raise RuntimeError("server already started")
        self._stopping.clear()  # a server started again after stop()
        storage = Storage(self._root, fsync=self._fsync)
        try:
            for name in self._buckets:
                storage.create_bucket(name, exist_ok=True)
            ctx = ServerContext(
                storage=storage,
                uploads=Uploads(storage),
                credentials=self._credentials,
                allow_unsigned_s3=self._allow_unsigned_s3,
                region=self._region,
                faults=self._faults,
                stats=self._stats,
                rtt=self._rtt,
                stopping=self._stopping,
            )
            httpd = CosHTTPServer((self._host, self._port), ctx, CosHandler, self._tls)
        except BaseException:
            storage.close()
            raise
        self._storage, self._ctx, self._httpd = storage, ctx, httpd
        self._port = httpd.server_port
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": _POLL_INTERVAL},
            name=f"cos-server-{self._port}",
            daemon=True,
        )
        self._thread.start()
        log.info("local COS server on %s, root %s", self.url, self._root)

    def stop(self) -> None:
        """Stop accepting, close connections, join threads, close the index. Idempotent."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        if self._ctx is None or self._storage is None or self._thread is None:
            raise RuntimeError("LocalCosServer.stop: started without its state")
        self._ctx.stopping.set()
        httpd.shutdown()
        httpd.server_close()
        self._thread.join()
        httpd.close_connections()
        httpd.join_workers(timeout=10.0)
        self._storage.close()
        self._storage = self._ctx = self._thread = None
        log.info("local COS server on port %d stopped", self._port)

    def __enter__(self) -> LocalCosServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ---------------------------------------------------------------- properties

    @property
    def port(self) -> int:
        """The listening port (the real one once started with port 0)."""
        return self._port

    @property
    def host(self) -> str:
        return self._host

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{'https' if self._tls is not None else 'http'}://{host}:{self._port}"

    @property
    def tls_files(self) -> TlsFiles | None:
        """The certificate files served (``ca`` is what clients trust, when made here)."""
        return self._tls_files

    @property
    def rtt_ms(self) -> float:
        return self._rtt.rtt_ms

    @property
    def root(self) -> str:
        return self._root

    @property
    def region(self) -> str:
        return self._region

    # ---------------------------------------------------------------- control

    def stats(self) -> dict[str, int]:
        """Request counts by COS operation name since start or the last reset."""
        return self._stats.counts()

    def snapshot(self) -> dict[str, object]:
        """Everything the admin ``stats`` endpoint answers: requests, bytes, network counters."""
        return self._stats.snapshot()

    def reset_stats(self) -> None:
        self._stats.reset()

    def set_faults(self, rate: float, latency_ms: int = 0) -> None:
        self._faults.set(rate, latency_ms)
