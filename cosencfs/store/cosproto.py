"""How COS is spoken: endpoint configuration, headers, metadata, answers and their errors.

The building blocks of ``cosops`` (the operations) and ``calls`` (error
mapping): everything here is a pure function of settings, headers or
answers.  The SDK logs
signing keys and request headers at DEBUG and every 404 at WARNING, so its
logger is silenced for good when this module loads.
"""

from __future__ import annotations

import email.utils
import ipaddress
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from qcloud_cos import CosConfig

from cosencfs.errors import (
    AccessDeniedError,
    ConfigError,
    InvalidRequestError,
    NoSuchBucketError,
    NoSuchUploadError,
    NotFoundError,
    PreconditionFailedError,
    StoreError,
    TransientError,
)
from cosencfs.store.base import META_PREFIX, ListPage, ObjectInfo
from cosencfs.store.retry import RetryPolicy, is_retryable


def _silence_sdk_logging() -> None:
    sdk_log = logging.getLogger("qcloud_cos")
    sdk_log.setLevel(logging.CRITICAL + 1)
    sdk_log.propagate = False
    # urllib3 logs full URLs (with presigned queries when used) at DEBUG.
    logging.getLogger("urllib3").setLevel(logging.WARNING)


_silence_sdk_logging()


@dataclass(slots=True, frozen=True)
class CosSettings:
    """Where the bucket is and how to reach it."""

    bucket: str
    region: str = "ap-guangzhou"
    #: ``http://HOST:PORT`` (a local server: the SDK connects to HOST:PORT and
    #: sends the bucket in the Host header), or ``https://DOMAIN`` for a custom
    #: COS endpoint; None uses the region's public endpoint.
    endpoint: str | None = None
    secret_id: str = field(default="", repr=False)
    secret_key: str = field(default="", repr=False)
    token: str | None = field(default=None, repr=False)
    concurrency: int = 16
    timeout: float = 30.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    #: PEM file of the CAs an https endpoint's certificate must chain to;
    #: None: the system's trust store (``SSL_CERT_FILE`` overrides it).
    ca_file: str | None = None


def make_cos_config(settings: CosSettings) -> CosConfig:
    """Translate settings into the SDK's ``CosConfig``."""
    kwargs: dict[str, Any] = {
        "Region": settings.region,
        "Timeout": settings.timeout,
        "PoolConnections": settings.concurrency,
        "PoolMaxSize": settings.concurrency,
    }
    if settings.secret_id and settings.secret_key:
        kwargs["SecretId"] = settings.secret_id
        kwargs["SecretKey"] = settings.secret_key
        if settings.token:
            kwargs["Token"] = settings.token
    else:
        kwargs["Anonymous"] = True
    if settings.endpoint:
        parts = urlsplit(settings.endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                f"endpoint {settings.endpoint!r}: expected http://HOST:PORT or https://DOMAIN"
            )
        kwargs["Scheme"] = parts.scheme
        if parts.port is not None or _is_ip_or_localhost(parts.hostname):
            # IP mode: connect to HOST:PORT, sign and send the bucket host name.
            kwargs["IP"] = parts.hostname
            kwargs["Port"] = parts.port
        else:
            kwargs["Endpoint"] = parts.hostname
    else:
        kwargs["Scheme"] = "https"
    return CosConfig(**kwargs)


def _is_ip_or_localhost(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def strip_etag(etag: str) -> str:
    return etag.strip().strip('"')


def parse_http_date(value: str) -> float:
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return 0.0


def parse_iso_date(value: str) -> float:
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return 0.0


def list_page(
    objects: list[ObjectInfo], prefixes: list[str], truncated: bool, next_marker: str
) -> ListPage:
    """A listing page; the marker of the next page is known even when COS omits it."""
    if not truncated:
        return ListPage(objects, prefixes, "", False)
    if not next_marker:
        # COS omits NextMarker without a delimiter; the last key is the marker.
        last = [o.key for o in objects] + prefixes
        next_marker = max(last) if last else ""
    return ListPage(objects, prefixes, next_marker, True)


#: Standard headers a Replaced copy would drop unless sent again.
STANDARD_HEADERS = {
    "cache-control": "Cache-Control",
    "content-disposition": "Content-Disposition",
    "content-encoding": "Content-Encoding",
    "content-language": "Content-Language",
    "expires": "Expires",
}


def header_text(value: str) -> str:
    """COS sends metadata as UTF-8 bytes; http.client reads them as Latin-1."""
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return value


def info_from_headers(key: str, headers: Mapping[str, str]) -> ObjectInfo:
    lower = {k.lower(): v for k, v in headers.items()}
    meta = {
        k[len(META_PREFIX) :]: header_text(v) for k, v in lower.items() if k.startswith(META_PREFIX)
    }
    return ObjectInfo(
        key=key,
        size=int(lower.get("content-length", "0")),
        etag=strip_etag(lower.get("etag", "")),
        last_modified=parse_http_date(lower.get("last-modified", "")),
        metadata=meta,
        content_type=lower.get("content-type", ""),
        has_metadata=True,
        headers={k: lower[k] for k in STANDARD_HEADERS if k in lower},
    )


def meta_headers(metadata: Mapping[str, str]) -> dict[str, str]:
    return {META_PREFIX + name.lower(): value for name, value in metadata.items()}


def replaced_headers(
    metadata: Mapping[str, str], content_type: str, headers: Mapping[str, str] | None
) -> dict[str, str]:
    """The request headers of an object whose metadata is set anew."""
    out = meta_headers(metadata)
    if content_type:
        out["Content-Type"] = content_type
    for name, value in (headers or {}).items():
        wire_name = STANDARD_HEADERS.get(name.lower())
        if wire_name is not None:
            out[wire_name] = value
    return out


class BadAnswer(Exception):
    """An answer that cannot be right (short body, missing ETag): try again."""


def ranged_part(data: bytes, resp: Mapping[str, Any], start: int, end: int | None) -> bytes:
    """The requested bytes of a ranged GET's answer.

    HTTP lets a server ignore Range and send the whole object with 200; bytes
    from the wrong offset would decrypt under the wrong counter into garbage,
    so the answer's Content-Range is checked and a whole body is cut.
    """
    content_range = next((v for k, v in resp.items() if k.lower() == "content-range"), None)
    if content_range is None:
        want_end = len(data) if end is None else min(end, len(data))
        return data[start:want_end]
    unit, _, spec = str(content_range).partition(" ")
    first = spec.partition("-")[0]
    if unit != "bytes" or not first.isdigit() or int(first) != start:
        raise BadAnswer(f"answer for the wrong range: {content_range}")
    return data


def status_error(
    op: str, key: str, status: int, code: str, message: str, request_id: str
) -> StoreError:
    kw: dict[str, Any] = {
        "op": op,
        "key": key,
        "code": code,
        "status": status,
        "request_id": request_id,
    }
    if is_retryable(status, code):
        return TransientError(message, **kw)
    if code == "NoSuchBucket":
        return NoSuchBucketError(message, **kw)
    if code == "NoSuchUpload":
        return NoSuchUploadError(message, **kw)
    if status == 404:
        return NotFoundError(message, **kw)
    if status == 403:
        return AccessDeniedError(message, **kw)
    if status == 412:
        return PreconditionFailedError(message, **kw)
    if status == 200:
        # A copy or complete answered 200 with an <Error> body we cannot classify:
        # the operation did not happen; let the caller retry it.
        return TransientError(message or "error body in a 200 answer", **kw)
    return InvalidRequestError(message, **kw)
