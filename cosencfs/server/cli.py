"""``cosencfs local-server``: run the local COS server in the foreground."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from types import FrameType

log = logging.getLogger(__name__)


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
    parser.add_argument("--secret-key", help="SecretKey checking the signatures")
    parser.add_argument(
        "--fault-rate",
        type=float,
        default=0.0,
        metavar="P",
        help="probability that a request fails (500, 503 or a reset connection)",
    )
    parser.add_argument("--latency-ms", type=int, default=0, help="delay added to every request")
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
    if (args.secret_id is None) != (args.secret_key is None):
        print("error: --secret-id and --secret-key go together", file=sys.stderr)
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
            secret_key=args.secret_key,
            fault_rate=args.fault_rate,
            latency_ms=args.latency_ms,
            fault_seed=args.fault_seed,
            allow_unsigned_s3=args.allow_unsigned_s3,
            fsync=args.fsync,
            region=args.region,
        )
        server.start()
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"error: cannot start the local COS server: {exc}", file=sys.stderr)
        return 1
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
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
