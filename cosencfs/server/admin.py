"""The admin endpoints (``/_cosencfs/...``): statistics and fault injection.

Served on any Host, signed like every other request when the server has
credentials (``auth.authorize_admin``).  ``admin_request`` is the client side
for tests and benchmarks: it signs with the server's credentials.
"""

from __future__ import annotations

import http.client
import json
import ssl
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, urlsplit

from cosencfs.server.auth import authorize_admin, cos_authorization
from cosencfs.server.context import ServerContext
from cosencfs.server.errors import CosError
from cosencfs.server.routing import parse_query

ADMIN_PATHS = frozenset({"/_cosencfs/stats", "/_cosencfs/reset-stats", "/_cosencfs/faults"})
_JSON = ("Content-Type", "application/json")


def handle(
    ctx: ServerContext,
    *,
    method: str,
    path: str,
    query_string: str,
    headers: Iterable[tuple[str, str]],
    authorization: str,
) -> tuple[int, list[tuple[str, str]], bytes]:
    """(status, headers, body) of an admin request."""
    query = parse_query(query_string)
    try:
        authorize_admin(
            ctx.credentials,
            authorization=authorization,
            method=method,
            raw_path=path,
            query=query,
            headers=headers,
        )
    except CosError as exc:
        return exc.status, [_JSON], _dump({"error": exc.code, "message": exc.message})
    status, payload = 200, {}
    if path == "/_cosencfs/stats" and method == "GET":
        payload = ctx.stats.snapshot()
    elif path == "/_cosencfs/reset-stats" and method == "POST":
        ctx.stats.reset()
        payload = {"ok": True}
    elif path == "/_cosencfs/faults" and method == "POST":
        params = dict(query)
        try:
            rate = float(params.get("rate", ctx.faults.rate))
            latency = int(params.get("latency_ms", ctx.faults.latency_ms))
            ctx.faults.set(rate, latency)
            payload = {"rate": ctx.faults.rate, "latency_ms": ctx.faults.latency_ms}
        except ValueError as exc:
            status, payload = 400, {"error": str(exc)}
    else:
        status, payload = 405, {"error": f"{method} {path} is not an admin operation"}
    return status, [_JSON], _dump(payload)


def _dump(payload: object) -> bytes:
    return json.dumps(payload).encode()


def admin_request(
    url: str,
    method: str,
    path: str,
    params: Mapping[str, str] | None = None,
    *,
    secret_id: str | None = None,
    secret_key: str | None = None,
    timeout: float = 10.0,
    cafile: str | None = None,
) -> tuple[int, Any]:
    """Call an admin endpoint of the server at ``url``; returns (status, decoded JSON).

    With credentials the request is signed, parameters included, as the
    server requires.  An ``https`` URL is verified against ``cafile`` (or
    the system's CAs).
    """
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        context = ssl.create_default_context(cafile=cafile)
        conn = http.client.HTTPSConnection(host, parts.port, timeout=timeout, context=context)
    else:
        conn = http.client.HTTPConnection(host, parts.port, timeout=timeout)
    params = dict(params or {})
    target = path
    if params:
        target += "?" + "&".join(
            f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in params.items()
        )
    headers = {"Host": parts.netloc}
    if secret_id is not None and secret_key is not None:
        headers["Authorization"] = cos_authorization(
            secret_id, secret_key, method=method, path=path, params=params
        )
    try:
        conn.request(method, target, body=b"" if method == "POST" else None, headers=headers)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"null")
    finally:
        conn.close()
