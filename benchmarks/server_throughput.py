"""Throughput of the local COS server on loopback.

Run: ``.venv/bin/python -m benchmarks.server_throughput [--big-mib 256] [--small-count 1000]``

Starts ``cosencfs local-server`` in a subprocess (signature checking on),
then measures PUT and GET of one big object and of many 4 KiB objects with
plain ``http.client`` over one keep-alive connection (signed requests), and
the same with the COS SDK's ``CosS3Client`` for comparison. Prints a table.
"""

from __future__ import annotations

import argparse
import http.client
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cosencfs.server.auth import cos_authorization
from cosencfs.server.cli import SECRET_KEY_ENV

BUCKET = "bench-1250000000"
REGION = "ap-guangzhou"
HOST = f"{BUCKET}.cos.{REGION}.myqcloud.com"
SECRET_ID = "AKIDbenchmark"
SECRET_KEY = "benchmark-secret"
MIB = 1024 * 1024


@dataclass(slots=True)
class Row:
    client: str
    op: str
    objects: int
    size: int
    seconds: float

    def line(self) -> str:
        total = self.objects * self.size
        return (
            f"{self.client:<12} {self.op:<4} {self.objects:>6} x {_size(self.size):>8} "
            f"{total / MIB / self.seconds:>9.1f} MiB/s {self.objects / self.seconds:>9.0f} req/s"
        )


def _size(n: int) -> str:
    return f"{n // MIB} MiB" if n >= MIB else f"{n // 1024} KiB"


def start_server(root: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cosencfs",
            "local-server",
            "--root",
            root,
            "--port",
            "0",
            "--bucket",
            BUCKET,
            "--secret-id",
            SECRET_ID,
        ],
        env={**os.environ, SECRET_KEY_ENV: SECRET_KEY},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.startswith("listening on "):
        proc.kill()
        raise SystemExit(f"server did not start: {line!r}")
    return proc, int(line.rsplit(":", 1)[1])


class Plain:
    """Signed requests over one keep-alive ``http.client`` connection."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port)

    def close(self) -> None:
        self.conn.close()

    def _headers(self, method: str, key: str, extra: dict[str, str]) -> dict[str, str]:
        signed = {"Host": HOST, **extra}
        auth = cos_authorization(
            SECRET_ID, SECRET_KEY, method=method, path="/" + key, headers=signed
        )
        return {**signed, "Authorization": auth}

    def put(self, key: str, body: bytes | memoryview) -> None:
        headers = self._headers("PUT", key, {"Content-Length": str(len(body))})
        self.conn.request("PUT", "/" + key, body=body, headers=headers)
        resp = self.conn.getresponse()
        resp.read()
        if resp.status != 200:
            raise RuntimeError(f"PUT {key}: {resp.status}")

    def get(self, key: str, buf: memoryview) -> int:
        self.conn.request("GET", "/" + key, headers=self._headers("GET", key, {}))
        resp = self.conn.getresponse()
        if resp.status != 200:
            raise RuntimeError(f"GET {key}: {resp.status}")
        total = 0
        while n := resp.readinto(buf):
            total += n
        resp.close()
        return total


def bench_plain(port: int, big: bytes, small: list[bytes]) -> list[Row]:
    client = Plain(port)
    buf = memoryview(bytearray(MIB))
    rows = []
    try:
        rows.append(_timed("http.client", "PUT", 1, len(big), lambda: client.put("big", big)))
        rows.append(_timed("http.client", "GET", 1, len(big), lambda: client.get("big", buf)))

        def put_small() -> None:
            for i, data in enumerate(small):
                client.put(f"small/{i:05d}", data)

        def get_small() -> None:
            for i in range(len(small)):
                client.get(f"small/{i:05d}", buf)

        rows.append(_timed("http.client", "PUT", len(small), len(small[0]), put_small))
        rows.append(_timed("http.client", "GET", len(small), len(small[0]), get_small))
    finally:
        client.close()
    return rows


def bench_sdk(port: int, big: bytes, small: list[bytes]) -> list[Row]:
    from qcloud_cos import CosConfig, CosS3Client

    config = CosConfig(
        IP="127.0.0.1",
        Port=port,
        Region=REGION,
        Scheme="http",
        SecretId=SECRET_ID,
        SecretKey=SECRET_KEY,
    )
    client = CosS3Client(config, retry=0)

    def get(key: str) -> None:
        stream = client.get_object(Bucket=BUCKET, Key=key)["Body"].get_raw_stream()
        while stream.read(MIB):
            pass

    rows = [
        _timed(
            "SDK",
            "PUT",
            1,
            len(big),
            lambda: client.put_object(Bucket=BUCKET, Key="sdk-big", Body=big),
        ),
        _timed("SDK", "GET", 1, len(big), lambda: get("sdk-big")),
    ]

    def put_small() -> None:
        for i, data in enumerate(small):
            client.put_object(Bucket=BUCKET, Key=f"sdk-small/{i:05d}", Body=data)

    def get_small() -> None:
        for i in range(len(small)):
            get(f"sdk-small/{i:05d}")

    rows.append(_timed("SDK", "PUT", len(small), len(small[0]), put_small))
    rows.append(_timed("SDK", "GET", len(small), len(small[0]), get_small))
    return rows


def _timed(client: str, op: str, objects: int, size: int, fn: Callable[[], object]) -> Row:
    start = time.perf_counter()
    fn()
    return Row(client, op, objects, size, time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big-mib", type=int, default=256)
    parser.add_argument("--small-count", type=int, default=1000)
    parser.add_argument("--small-kib", type=int, default=4)
    parser.add_argument("--no-sdk", action="store_true", help="skip the SDK rows")
    args = parser.parse_args()
    big = os.urandom(args.big_mib * MIB)
    small = [os.urandom(args.small_kib * 1024) for _ in range(args.small_count)]
    with tempfile.TemporaryDirectory(prefix="cos-bench-") as root:
        proc, port = start_server(str(Path(root) / "srv"))
        try:
            rows = bench_plain(port, big, small)
            if not args.no_sdk:
                rows += bench_sdk(port, big, small)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            if proc.stdout is not None:
                proc.stdout.close()
    print(f"local COS server throughput, loopback, {os.cpu_count()} CPUs")
    print(f"{'client':<12} {'op':<4} {'objects':>17} {'throughput':>15} {'rate':>15}")
    for row in rows:
        print(row.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
