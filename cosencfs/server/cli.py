"""``cosencfs local-server``: run the local COS server in the foreground."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import stat
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cosencfs.server.tls import TlsFiles

log = logging.getLogger(__name__)

#: Environment variable holding the SecretKey (the environment of a process is
#: readable only by its user and root, unlike its command line).
SECRET_KEY_ENV = "COSENCFS_SERVER_SECRET_KEY"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", required=True, help="directory holding the objects and index")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    parser.add_argument("--port", type=int, default=0, help="port to bind; 0 picks a free one")
    parser.add_argument(
        "--bucket",
        action="append",
        default=[],
        metavar="NAME",
        help="create this bucket if missing (repeatable)",
    )
    parser.add_argument("--secret-id", help="SecretId whose signatures are accepted")
    parser.add_argument(
        "--secret-key-file",
        metavar="FILE",
        help=f"file holding the SecretKey checking the signatures (mode 0600); "
        f"or set ${SECRET_KEY_ENV}",
    )
    parser.add_argument(
        "--secret-key",
        help="UNSAFE: the SecretKey on the command line, visible to every local user in ps; "
        f"use --secret-key-file or ${SECRET_KEY_ENV}",
    )
    parser.add_argument(
        "--fault-rate",
        type=float,
        default=0.0,
        metavar="P",
        help="probability that a request fails (500, 503 or a reset connection)",
    )
    parser.add_argument(
        "--latency-ms",
        type=int,
        default=0,
        help="delay added to every request (fault injection; see --rtt-ms for a network model)",
    )
    parser.add_argument(
        "--rtt-ms",
        type=float,
        default=0.0,
        metavar="MS",
        help="simulated network round trip: every TCP connect, TLS handshake round trip, "
        "request and 100-continue waits this long (default 0)",
    )
    parser.add_argument("--tls-cert", metavar="FILE", help="serve https: certificate chain (PEM)")
    parser.add_argument("--tls-key", metavar="FILE", help="the private key of --tls-cert (PEM)")
    parser.add_argument(
        "--tls-dir",
        metavar="DIR",
        help="serve https with a CA and certificate made in DIR on first use "
        "(clients trust DIR/ca.pem)",
    )
    parser.add_argument("--fault-seed", type=int, default=None, help="seed for fault injection")
    parser.add_argument(
        "--allow-unsigned-s3",
        action="store_true",
        help="accept S3-signed requests (AWS4-HMAC-SHA256) without verifying them",
    )
    parser.add_argument(
        "--fsync",
        action="store_true",
        help="fsync data and index (survive power loss, not only a crash of this process)",
    )
    parser.add_argument("--region", default="ap-guangzhou", help="region reported to clients")
    parser.add_argument(
        "--log-level",
        default="WARNING",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging level on stderr (default %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    # Imported here: every cosencfs command builds this parser, few run the server.
    from cosencfs.server import LocalCosServer  # noqa: PLC0415

    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    try:
        secret_key = _secret_key(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if (args.secret_id is None) != (secret_key is None):
        print(
            f"error: --secret-id and a SecretKey (--secret-key-file or ${SECRET_KEY_ENV}) "
            "go together",
            file=sys.stderr,
        )
        return 2
    if args.secret_id is None:
        log.warning("no credentials: anyone who can reach %s may read and write", args.host)
    try:
        tls = _tls_files(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    try:
        server = LocalCosServer(
            args.root,
            host=args.host,
            port=args.port,
            buckets=args.bucket,
            secret_id=args.secret_id,
            secret_key=secret_key,
            fault_rate=args.fault_rate,
            latency_ms=args.latency_ms,
            fault_seed=args.fault_seed,
            allow_unsigned_s3=args.allow_unsigned_s3,
            fsync=args.fsync,
            region=args.region,
            rtt_ms=args.rtt_ms,
            tls=tls,
        )
        server.start()
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"error: cannot start the local COS server: {exc}", file=sys.stderr)
        return 1
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        if tls is not None and tls.ca is not None:
            # stderr: the first line on stdout is the URL, which scripts wait for.
            print(f"https: clients trust {tls.ca}", file=sys.stderr, flush=True)
        print(f"listening on {server.url}", flush=True)
        # A timed wait keeps the main thread responsive to signals.
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("stopped")
    return 0


def _tls_files(args: argparse.Namespace) -> TlsFiles | None:
    """The certificate to serve: given (--tls-cert/--tls-key), made (--tls-dir), or none."""
    from cosencfs.server.tls import TlsFiles, ensure_self_signed  # noqa: PLC0415

    if args.tls_dir is not None:
        if args.tls_cert is not None or args.tls_key is not None:
            raise ValueError("--tls-dir makes its own certificate: not with --tls-cert/--tls-key")
        return ensure_self_signed(args.tls_dir)
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ValueError("--tls-cert and --tls-key go together")
    if args.tls_cert is None:
        return None
    return TlsFiles(cert=Path(args.tls_cert), key=Path(args.tls_key))


def _secret_key(args: argparse.Namespace) -> str | None:
    """The SecretKey from --secret-key-file, the environment, or (unsafe) --secret-key."""
    env = os.environ.pop(SECRET_KEY_ENV, None)  # not passed on to anything this starts
    if args.secret_key is not None:
        print(
            "warning: --secret-key shows the key to every local user (ps, /proc); "
            f"use --secret-key-file or ${SECRET_KEY_ENV}",
            file=sys.stderr,
        )
        return str(args.secret_key)
    if args.secret_key_file is not None:
        return _read_secret_file(args.secret_key_file)
    return env or None


def _read_secret_file(path: str) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise ValueError(f"cannot read the SecretKey file {path}: {exc.strerror}") from None
    with os.fdopen(fd) as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"SecretKey file {path} is not a regular file")
        if st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) & 0o077:
            raise ValueError(
                f"SecretKey file {path} must belong to this user and be readable by nobody "
                f"else (mode {stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {path}"
            )
        key = f.read().strip()
    if not key:
        raise ValueError(f"SecretKey file {path} is empty")
    return key
