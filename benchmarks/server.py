"""The local COS server under every filesystem, run as a subprocess.

Each filesystem under test gets its own server on a fresh root. Request
counts and bytes come from the server's admin endpoint (reset before each
workload), so every peer is measured the same way. Whether data has reached
the bucket is read from the server's SQLite index directly (read-only):
polling through HTTP would add requests to the very counters being measured.
"""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.system import BenchError, clean_env, stop_process, tail
from cosencfs.server.admin import admin_request
from cosencfs.server.cli import SECRET_KEY_ENV

BUCKET = "bench-1250000000"
REGION = "ap-guangzhou"
SECRET_ID = "AKIDbenchmark0000"
SECRET_KEY = "benchmark-secret-key-0000"

_LISTENING = re.compile(rb"listening on (https?://[0-9.]+:\d+)")


@dataclass(slots=True)
class ServerStats:
    requests: dict[str, int]
    bytes_in: int
    bytes_out: int
    #: Connections and round trips the latency model charged (see cosencfs/server/latency.py).
    network: dict[str, Any] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.requests.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": dict(sorted(self.requests.items())),
            "total_requests": self.total,
            "bytes_up": self.bytes_in,
            "bytes_down": self.bytes_out,
        }


@dataclass(slots=True)
class BucketState:
    """What the index holds: objects with a body, and their total size."""

    files: int
    bytes: int
    largest: int


@dataclass(frozen=True, slots=True)
class Network:
    """The network every filesystem sees: a round-trip time, plain http or https."""

    rtt_ms: float = 0.0
    https: bool = False

    @property
    def label(self) -> str:
        return f"{self.rtt_ms:g} ms {'https' if self.https else 'http'}"


class LocalServer:
    """``cosencfs local-server`` in a subprocess over ``root``.

    With ``network.https`` it makes a CA and certificate in ``root/../tls``
    (``ca`` is what clients must trust); ``network.rtt_ms`` is its
    ``--rtt-ms``.
    """

    def __init__(self, root: Path, log: Path, network: Network | None = None) -> None:
        self.root = root
        self.log = log
        self.network = network or Network()
        self.tls_dir = root.parent / "tls"
        self.url = ""
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def ca(self) -> Path | None:
        """The CA file clients trust (https only)."""
        return self.tls_dir / "ca.pem" if self.network.https else None

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def start(self, timeout: float = 30.0) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable, "-m", "cosencfs", "local-server",
            "--root", str(self.root), "--port", "0", "--bucket", BUCKET,
            "--region", REGION, "--secret-id", SECRET_ID,
            # COS-signed requests (cosencfs) are still verified; S3 ones (rclone,
            # s3fs) are accepted unverified. Same server settings for every peer.
            "--allow-unsigned-s3",
            # DEBUG logs every request into the server log (for investigations).
            "--log-level", os.environ.get("COSENCFS_BENCH_SERVER_LOG_LEVEL", "WARNING"),
            "--rtt-ms", str(self.network.rtt_ms),
        ]  # fmt: skip
        if self.network.https:
            cmd += ["--tls-dir", str(self.tls_dir)]
        err = open(self.log, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=err,
            # The SecretKey in the environment, not in argv (visible in ps).
            env=clean_env({SECRET_KEY_ENV: SECRET_KEY}),
            start_new_session=True,
        )
        err.close()
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = b""
        # The server prints one line once it listens; read it without blocking forever.
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while b"\n" not in line:
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    self.stop()
                    raise BenchError(f"local server did not start: {tail(self.log)}")
                if sel.select(min(left, 0.5)):
                    line += os.read(self.proc.stdout.fileno(), 4096)
        m = _LISTENING.search(line)
        if not m:
            self.stop()
            raise BenchError(f"unexpected server output {line!r}")
        self.url = m.group(1).decode()

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
        stop_process(self.proc, timeout=20)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None

    def __enter__(self) -> LocalServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------- admin API

    def _admin(self, method: str, path: str) -> dict[str, Any]:
        # Signed like every request (the server refuses unsigned admin calls);
        # http.client directly: no proxy of the environment is ever used.
        ca = self.ca
        status, data = admin_request(
            self.url, method, path, secret_id=SECRET_ID, secret_key=SECRET_KEY,
            cafile=str(ca) if ca is not None else None,
        )  # fmt: skip
        if status != 200:
            raise BenchError(f"admin {method} {path}: {status} {data}")
        return dict(data)

    def stats(self) -> ServerStats:
        s = self._admin("GET", "/_cosencfs/stats")
        return ServerStats(
            requests={k: int(v) for k, v in s.get("requests", {}).items() if v},
            bytes_in=int(s.get("bytes_in", 0)),
            bytes_out=int(s.get("bytes_out", 0)),
            network=dict(s.get("network", {})),
        )

    def reset_stats(self) -> None:
        self._admin("POST", "/_cosencfs/reset-stats")

    # ---------------------------------------------------------- bucket probe

    def newest(self, min_size: int) -> int:
        """Last-Modified (ms) of the newest object of at least ``min_size`` bytes, or 0."""
        uri = f"file:{self.root / 'index.sqlite'}?mode=ro"
        for attempt in range(20):
            try:
                with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=5)) as db:
                    row = db.execute(
                        "SELECT coalesce(max(mtime_ms), 0) FROM objects"
                        " WHERE bucket = ? AND size >= ?",
                        (BUCKET, min_size),
                    ).fetchone()
                return int(row[0])
            except sqlite3.OperationalError:
                if attempt == 19:
                    raise
                time.sleep(0.05)
        raise AssertionError("unreachable")

    def bucket(self) -> BucketState:
        """Objects with a body in the bucket (0-byte directory markers excluded)."""
        uri = f"file:{self.root / 'index.sqlite'}?mode=ro"
        for attempt in range(20):
            try:
                with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=5)) as db:
                    row = db.execute(
                        "SELECT count(*), coalesce(sum(size), 0), coalesce(max(size), 0)"
                        " FROM objects WHERE bucket = ? AND size > 0",
                        (BUCKET,),
                    ).fetchone()
                return BucketState(int(row[0]), int(row[1]), int(row[2]))
            except sqlite3.OperationalError:
                if attempt == 19:
                    raise
                time.sleep(0.05)
        raise AssertionError("unreachable")
