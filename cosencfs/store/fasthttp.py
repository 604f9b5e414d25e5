"""A lean HTTP path for the data plane: GET, HEAD, PUT, DELETE and LIST.

The SDK's request pipeline (argument mapping, requests' session, prepared
requests, adapters, hooks) costs about a millisecond of CPU per request on
this class of machine — more than a 4 KiB GET or PUT takes on the wire, and
under the GIL it serializes.  For the requests that move object data, cosencfs
keeps the SDK's URL building and signature (``CosConfig.uri``,
``CosConfig.get_host``, ``CosS3Auth``: the exact bytes the SDK would sign) and
sends them over plain ``http.client`` keep-alive connections, one per worker
thread.  Listings come here too (their answer is parsed by
``cosproto.list_page_from_xml``).  Copies, batch deletes and multipart control
still go through ``CosS3Client``; small requests on plain HTTP go through
``asynchttp`` in the event loop, signed by ``FastTransport.prepare``.
"""

from __future__ import annotations

import http.client
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode, urlsplit
from xml.etree import ElementTree

from qcloud_cos import CosConfig
from qcloud_cos.cos_auth import CosS3Auth

from cosencfs import __version__

USER_AGENT = f"cosencfs/{__version__} (cos-python-sdk-v5 signing)"

#: A keep-alive connection idle this long may have been closed by the server:
#: if it fails before any answer, the request is sent once more at once.
STALE_AFTER = 2.0


@dataclass(slots=True)
class _Signable:
    """What ``CosS3Auth.__call__`` reads and writes of a request."""

    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Answer:
    status: int
    headers: dict[str, str]  # lowercase names
    body: bytes


class HttpStatusError(Exception):
    """A 3xx/4xx/5xx answer, with the COS error fields when there are any."""

    def __init__(self, status: int, code: str, message: str, request_id: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id


def error_from(answer: Answer) -> HttpStatusError:
    code = answer.headers.get("x-cos-error-code", "")
    message = ""
    request_id = answer.headers.get("x-cos-request-id", "")
    if answer.body:
        try:
            root = ElementTree.fromstring(answer.body)
        except ElementTree.ParseError:
            message = answer.body[:200].decode("utf-8", "replace")
        else:
            code = root.findtext("Code") or code
            message = root.findtext("Message") or ""
            request_id = root.findtext("RequestId") or request_id
    if not code:
        code = {404: "NoSuchKey", 403: "AccessDenied", 412: "PreconditionFailed"}.get(
            answer.status, f"HTTP{answer.status}"
        )
    return HttpStatusError(answer.status, code, message, request_id)


class FastTransport:
    def __init__(self, conf: CosConfig, bucket: str, timeout: float) -> None:
        self._conf = conf
        self._bucket = bucket
        self._timeout = timeout
        self._local = threading.local()
        self._all: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._token = conf._token
        base = urlsplit(conf.uri(bucket=bucket))
        self._scheme: str = base.scheme
        self._netloc: str = base.netloc
        # What the SDK puts in Host: the bucket's host name when connecting by
        # IP (so one server can serve many buckets), else the URL's host.
        self._host = conf.get_host(Bucket=bucket) if conf._ip is not None else base.netloc
        self._ssl = ssl.create_default_context() if base.scheme == "https" else None
        if self._ssl is not None and conf._verify_ssl is False:
            self._ssl.check_hostname = False
            self._ssl.verify_mode = ssl.CERT_NONE

    def _connection(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            # Large blocks: a streamed part body is read and sent 1 MiB at a time.
            if self._ssl is not None:
                conn = http.client.HTTPSConnection(
                    self._netloc, timeout=self._timeout, context=self._ssl, blocksize=1 << 20
                )
            else:
                conn = http.client.HTTPConnection(
                    self._netloc, timeout=self._timeout, blocksize=1 << 20
                )
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def _last_use(self) -> float:
        used: float = getattr(self._local, "used", 0.0)
        return used

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    @property
    def scheme(self) -> str:
        return self._scheme

    @property
    def netloc(self) -> str:
        return self._netloc

    def prepare(
        self,
        method: str,
        key: str,
        headers: Mapping[str, str] | None,
        params: Mapping[str, Any] | None,
        body_length: int,
    ) -> tuple[str, dict[str, str]]:
        """The request target and the signed headers, as the SDK would send them."""
        url = self._conf.uri(bucket=self._bucket, path=key or None)
        query = {k: str(v) for k, v in (params or {}).items()}
        req = _Signable(method, url, {"Host": self._host, "User-Agent": USER_AGENT})
        if self._token:
            req.headers["x-cos-security-token"] = self._token
        req.headers.update(headers or {})
        if method in ("PUT", "POST"):
            req.headers["Content-Length"] = str(body_length)
        CosS3Auth(self._conf, key or None, params=query)(req)
        # The signature covers the text (as UTF-8, like the SDK); http.client
        # writes header values as Latin-1, so hand it the UTF-8 bytes that way.
        wire = {k: v.encode("utf-8").decode("latin-1") for k, v in req.headers.items()}
        path = urlsplit(url).path or "/"
        if query:
            # Percent-encoded as the signature encodes them (a '+' for a
            # space would be read back as a plus sign by some servers).
            path += "?" + urlencode(query, safe="", quote_via=quote)
        return path, wire

    def request(
        self,
        method: str,
        key: str,
        *,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, Any] | None = None,
        body: bytes | bytearray | memoryview | Any = None,
        on_resend: Callable[[], None] = lambda: None,
    ) -> Answer:
        path, wire = self.prepare(
            method, key, headers, params, len(body) if body is not None else 0
        )
        # A keep-alive connection idle for a while may have been closed by the
        # server; if it fails before any answer it is replaced and the request
        # sent once more (reported through on_resend: every attempt is billed).
        # Other failures go up to the caller's retry policy.
        for attempt in (1, 2):
            conn = self._connection()
            stale = conn.sock is not None and time.monotonic() - self._last_use() > STALE_AFTER
            try:
                conn.request(method, path, body=body, headers=wire)
                resp = conn.getresponse()
                data = resp.read()  # also for HEAD: frees the connection for the next request
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self._drop_connection()
                if not stale or attempt == 2 or _is_stream(body):
                    raise
                on_resend()
                continue
            except BaseException:
                self._drop_connection()
                raise
            finally:
                self._local.used = time.monotonic()
            answer = Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
            if resp.will_close:
                self._drop_connection()
            if answer.status >= 300:
                raise error_from(answer)
            return answer
        raise AssertionError("unreachable")

    def close(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()


def _is_stream(body: object) -> bool:
    return body is not None and hasattr(body, "read")
