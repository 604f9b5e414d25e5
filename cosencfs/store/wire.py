"""A COS request as it goes on the wire, signed by the SDK's code, and its answer.

cosencfs keeps the SDK's URL building and signature (``CosConfig.uri``,
``CosConfig.get_host``, ``CosS3Auth``: the exact bytes the SDK would sign)
and nothing else of its request pipeline; ``transport`` sends the result.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode, urlsplit
from xml.etree import ElementTree

from qcloud_cos import CosConfig
from qcloud_cos.cos_auth import CosS3Auth
from qcloud_cos.cos_comm import gen_copy_source_url

from cosencfs import __version__

USER_AGENT = f"cosencfs/{__version__} (cos-python-sdk-v5 signing)"


@dataclass(slots=True)
class _Signable:
    """What ``CosS3Auth.__call__`` reads and writes of a request."""

    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Answer:
    status: int
    headers: dict[str, str]  # lowercase names, values as Latin-1 text
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


@dataclass(slots=True, frozen=True)
class Endpoint:
    """Where the requests go: scheme, host and port to connect to."""

    scheme: str
    host: str
    port: int


class Signer:
    """Request targets and signed headers for one bucket, as the SDK makes them."""

    def __init__(self, conf: CosConfig, bucket: str) -> None:
        self._conf = conf
        self._bucket = bucket
        self._token = conf._token
        base = urlsplit(conf.uri(bucket=bucket))
        scheme = base.scheme
        self.endpoint = Endpoint(
            scheme, base.hostname or "", base.port or (443 if scheme == "https" else 80)
        )
        # What the SDK puts in Host: the bucket's host name when connecting by
        # IP (so one server can serve many buckets), else the URL's host.
        self._host = conf.get_host(Bucket=bucket) if conf._ip is not None else base.netloc

    def copy_source(self, source: Mapping[str, str]) -> str:
        """The ``x-cos-copy-source`` value for a source the SDK would name so."""
        conf = self._conf
        url: str = gen_copy_source_url(
            dict(source), conf._enable_old_domain, conf._enable_internal_domain
        )
        return url

    def prepare(
        self,
        method: str,
        key: str,
        headers: Mapping[str, str] | None,
        params: Mapping[str, Any] | None,
        body_length: int,
    ) -> tuple[bytes, list[tuple[bytes, bytes]]]:
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
        # The signature covers the text as UTF-8, like the SDK sends it.
        wire = [(k.encode("ascii"), v.encode("utf-8")) for k, v in req.headers.items()]
        path = urlsplit(url).path or "/"
        if query:
            # Percent-encoded as the signature encodes them (a '+' for a
            # space would be read back as a plus sign by some servers).
            path += "?" + urlencode(query, safe="", quote_via=quote)
        return path.encode("ascii"), wire
