"""A COS request as it goes on the wire, signed by the SDK's code, and its answer.

cosencfs keeps the SDK's URL building and signature (``CosConfig.uri``,
``CosConfig.get_host``, ``CosS3Auth``: the exact bytes the SDK would sign)
and nothing else of its request pipeline; ``transport`` sends the result.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
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


#: Validity of a signature, as the SDK's ``CosS3Auth`` default (seconds).
SIGN_EXPIRE = 10000

#: The signature's start time moves in steps of this many seconds (below).
KEY_TIME_STEP = 60

#: Headers the SDK's signature covers besides ``x-cos-*`` and ``x-ci-*``
#: (``qcloud_cos.cos_auth.filter_headers``).
_SIGNED = frozenset(
    {
        "cache-control",
        "content-disposition",
        "content-encoding",
        "content-type",
        "content-md5",
        "content-length",
        "expect",
        "expires",
        "host",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-unmodified-since",
        "origin",
        "range",
        "transfer-encoding",
        "pic-operations",
    }
)


_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]*\Z").match


def _q(text: str) -> str:
    """The SDK's ``quote(to_bytes(text), '-_.~')``, without its work when nothing changes."""
    if _UNRESERVED(text):
        return text
    return quote(text.encode("utf-8"), "-_.~")


#: Header name -> its quoted lowercase form when the signature covers it, else "".
_NAMES: dict[str, str] = {}


def _signed_name(name: str) -> str:
    out = _NAMES.get(name)
    if out is None:
        low = name.lower()
        signs = low in _SIGNED or low.startswith("x-cos-") or low.startswith("x-ci-")
        out = _q(name).lower() if signs else ""
        if len(_NAMES) < 4096:  # names are few (metadata names included)
            _NAMES[name] = out
    return out


def key_time(now: float) -> str:
    """``q-key-time`` (= ``q-sign-time``) for a request signed at ``now``.

    The SDK signs ``[now - 60, now + 10000]`` with ``now`` in whole seconds,
    so its signing key (an HMAC of that text) changes every second.  Here the
    start moves in ``KEY_TIME_STEP`` steps: ``[t - 60, t + 10000]`` with
    ``t = now`` rounded down to a step, so one signing key serves a minute of
    requests.  Every signature still starts at least 60 s in the past (the
    SDK's allowance for clock skew) and stays valid at least
    ``SIGN_EXPIRE - KEY_TIME_STEP`` seconds: far beyond any retry.
    """
    start = int(now) // KEY_TIME_STEP * KEY_TIME_STEP
    return f"{start - 60};{start + SIGN_EXPIRE}"


class SdkSignature:
    """``CosS3Auth``'s Authorization value, computed with the signing key cached.

    The same algorithm, byte for byte (``qcloud_cos/cos_auth.py``: the
    canonical request, its SHA-1, the HMAC-SHA1 signing key of the key time,
    the HMAC-SHA1 signature), given the same key time; only the key time is
    chosen per step (:func:`key_time`) so its signing key is derived once a
    minute instead of on every request.  tests/store/test_signing.py checks
    it against the SDK's own code.  Signing was ~75 us of the daemon's CPU per
    request through ``CosS3Auth`` (3 % of a small file's creation).
    """

    def __init__(self, conf: CosConfig) -> None:
        self._conf = conf
        self._cached: tuple[bytes, str, str] | None = None  # (secret, key time, signing key)

    def _credentials(self) -> tuple[str, str]:
        conf = self._conf
        cred = getattr(conf, "_credential_inst", None)
        sid = conf._secret_id if conf._secret_id else (cred.secret_id if cred else None)
        skey = conf._secret_key if conf._secret_key else (cred.secret_key if cred else None)
        return str(sid), str(skey)

    def _signing_key(self, secret: str, ktime: str) -> str:
        raw = secret.encode("utf-8")
        cached = self._cached
        if cached is not None and cached[0] == raw and cached[1] == ktime:
            return cached[2]
        sign_key = hmac.new(raw, ktime.encode("utf-8"), hashlib.sha1).hexdigest()
        self._cached = (raw, ktime, sign_key)
        return sign_key

    def authorization(
        self,
        method: str,
        key: str | None,
        params: Mapping[str, str],
        headers: Mapping[str, str],
        now: float | None = None,
    ) -> str:
        """The Authorization header of a request (its headers include Host)."""
        conf = self._conf
        if conf._anonymous:
            return ""
        path = "/" if not key else (key if key[0] == "/" else "/" + key)
        signed = {}
        for k, v in headers.items():
            name = _signed_name(k)
            if name:
                signed[name] = _q(v)
        query = {_q(k).lower(): _q(v) for k, v in params.items()} if conf._sign_params else {}
        hs = sorted(signed.items())
        ps = sorted(query.items())
        canonical = "{}\n{}\n{}\n{}\n".format(
            method.lower(),
            path,
            "&".join(f"{k}={v}" for k, v in ps),
            "&".join(f"{k}={v}" for k, v in hs),
        )
        ktime = key_time(time.time() if now is None else now)
        digest = hashlib.sha1(canonical.encode("utf-8")).hexdigest()
        to_sign = f"sha1\n{ktime}\n{digest}\n"
        sid, secret = self._credentials()
        sign_key = self._signing_key(secret, ktime)
        sign = hmac.new(sign_key.encode("utf-8"), to_sign.encode("utf-8"), hashlib.sha1)
        return (
            f"q-sign-algorithm=sha1&q-ak={sid}&q-sign-time={ktime}&q-key-time={ktime}"
            f"&q-header-list={';'.join(k for k, _ in hs)}"
            f"&q-url-param-list={';'.join(k for k, _ in ps)}&q-signature={sign.hexdigest()}"
        )


def sdk_authorization(
    conf: CosConfig,
    method: str,
    key: str | None,
    params: Mapping[str, str],
    headers: Mapping[str, str],
) -> str:
    """What the SDK's own ``CosS3Auth`` makes of a request now (for tests and comparison)."""
    req = _Signable(method, "http://unused/", dict(headers))
    CosS3Auth(conf, key, params=dict(params))(req)
    return req.headers["Authorization"]


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
        self._signature = SdkSignature(conf)

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
        req.headers["Authorization"] = self._signature.authorization(
            method, key or None, query, req.headers
        )
        # The signature covers the text as UTF-8, like the SDK sends it.
        wire = [(k.encode("ascii"), v.encode("utf-8")) for k, v in req.headers.items()]
        path = urlsplit(url).path or "/"
        if query:
            # Percent-encoded as the signature encodes them (a '+' for a
            # space would be read back as a plus sign by some servers).
            path += "?" + urlencode(query, safe="", quote_via=quote)
        return path.encode("ascii"), wire
