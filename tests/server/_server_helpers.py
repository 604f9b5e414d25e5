"""Helpers of the local COS server tests (imported by conftest.py and the tests)."""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from cosencfs.server.auth import cos_authorization

SECRET_ID = "AKIDlocaltest"
SECRET_KEY = "local-test-secret"
BUCKET = "test-1250000000"
REGION = "ap-guangzhou"
VHOST = f"{BUCKET}.cos.{REGION}.myqcloud.com"
REPO = Path(__file__).resolve().parents[2]

ClientFactory = Callable[..., Any]


class Http:
    """Plain http.client requests (keep-alive), COS-signed unless told otherwise."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def close(self) -> None:
        self.conn.close()

    def request(
        self,
        method: str,
        key: str = "",
        *,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        host: str = VHOST,
        sign: bool = True,
        path: str | None = None,
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        """``key`` is unquoted; ``path`` (already quoted) overrides it for path-style."""
        all_headers = {"Host": host, **(headers or {})}
        if body or method in ("PUT", "POST"):
            all_headers.setdefault("Content-Length", str(len(body)))
        if sign:
            all_headers["Authorization"] = cos_authorization(
                SECRET_ID,
                SECRET_KEY,
                method=method,
                path="/" + key,
                params=params,
                headers={k: v for k, v in all_headers.items()},
            )
        target = path if path is not None else "/" + quote(key, safe="/-_.~")
        if params:
            target += "?" + "&".join(
                f"{quote(k, safe='')}={quote(v, safe='')}" if v else quote(k, safe="")
                for k, v in params.items()
            )
        self.conn.request(method, target, body=body, headers=all_headers)
        resp = self.conn.getresponse()
        data = resp.read()
        return resp.status, resp.headers, data


class CliServer:
    """``cosencfs local-server`` in a subprocess."""

    def __init__(
        self, root: Path, *extra: str, port: int = 0, env: dict[str, str] | None = None
    ) -> None:
        env = {**os.environ, **(env or {})}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        # A file, not a pipe: nobody reads stderr while it runs, and a full pipe would block it.
        self.stderr_file = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed in kill())
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cosencfs",
                "local-server",
                "--root",
                str(root),
                "--port",
                str(port),
                "--bucket",
                BUCKET,
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=self.stderr_file,
            text=True,
            env=env,
            cwd=REPO,
        )
        assert self.proc.stdout is not None
        self.line = self.proc.stdout.readline().strip()
        if not self.line.startswith(("listening on http://", "listening on https://")):
            if self.proc.poll() is None:
                self.proc.kill()
            self.returncode = self.proc.wait(timeout=30)
            self.stderr_file.seek(0)
            self.error = self.stderr_file.read()
            self.close_pipes()
            raise AssertionError(f"server did not start: {self.line!r} {self.error!r}")
        self.port = int(self.line.rsplit(":", 1)[1])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        self.close_pipes()

    def close_pipes(self) -> None:
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.stderr_file.close()
