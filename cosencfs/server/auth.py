"""Request authentication: COS ``q-sign-algorithm=sha1`` signatures, S3 tolerance.

The verification mirrors ``qcloud_cos/cos_auth.py`` (cos-python-sdk-v5):

    HttpString   = method.lower() \\n unquoted path \\n params \\n headers \\n
    params/headers = sorted "name=value" pairs joined by '&', names lowercased,
                     both quoted with safe characters "-_.~"
    SignKey      = hex(HMAC-SHA1(secret_key, q-key-time))
    StringToSign = "sha1\\n" q-sign-time "\\n" hex(SHA1(HttpString)) "\\n"
    Signature    = hex(HMAC-SHA1(SignKey, StringToSign))

Only the params and headers named in q-url-param-list / q-header-list are
signed; anything else in the request is ignored, as COS does.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from urllib.parse import quote, unquote

from cosencfs.server.errors import CosError

log = logging.getLogger(__name__)

_SAFE = "-_.~"
#: Accepted clock difference for the start of q-sign-time, seconds.
MAX_SKEW = 900
#: Query parameters that carry a presigned COS signature.
_SIGN_PARAMS = frozenset(
    {
        "q-sign-algorithm",
        "q-ak",
        "q-sign-time",
        "q-key-time",
        "q-header-list",
        "q-url-param-list",
        "q-signature",
    }
)


class AuthKind(Enum):
    NONE = "none"
    COS = "cos"
    S3 = "s3"


@dataclass(slots=True, frozen=True)
class Credentials:
    secret_id: str
    secret_key: str


def classify(authorization: str, query: Mapping[str, str]) -> AuthKind:
    """Which signature scheme a request uses (header first, then presigned query)."""
    if authorization:
        if authorization.startswith(("AWS4-HMAC-SHA256", "AWS ")):
            return AuthKind.S3
        return AuthKind.COS
    if "q-signature" in query or "sign" in query:
        return AuthKind.COS
    if "X-Amz-Signature" in query or "Signature" in query:
        return AuthKind.S3
    return AuthKind.NONE


def _q(value: str | bytes) -> str:
    return quote(value, safe=_SAFE)


def _latin1_bytes(value: str) -> bytes:
    # http.client decodes header bytes as latin-1; undo that to quote the bytes sent.
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode()


def parse_authorization(value: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for item in value.split("&"):
        name, sep, val = item.partition("=")
        if sep:
            fields[name.strip()] = val.strip()
    return fields


def string_to_sign(
    fields: Mapping[str, str],
    method: str,
    path: str,
    params: Iterable[tuple[str, str]],
    headers: Iterable[tuple[str, str]],
) -> str | None:
    """The COS StringToSign for the signed subset of a request (None: a listed item is missing)."""
    param_map = {_q(k).lower(): _q(v) for k, v in params}
    header_map: dict[str, str] = {}
    for k, v in headers:
        header_map.setdefault(_q(k).lower(), _q(_latin1_bytes(v)))
    signed_params: list[tuple[str, str]] = []
    for name in filter(None, fields.get("q-url-param-list", "").split(";")):
        if name not in param_map:
            return None
        signed_params.append((name, param_map[name]))
    signed_headers: list[tuple[str, str]] = []
    for name in filter(None, fields.get("q-header-list", "").split(";")):
        if name not in header_map:
            return None
        signed_headers.append((name, header_map[name]))
    http_string = "{}\n{}\n{}\n{}\n".format(
        method.lower(),
        path,
        "&".join(f"{k}={v}" for k, v in sorted(signed_params)),
        "&".join(f"{k}={v}" for k, v in sorted(signed_headers)),
    )
    log.debug("HttpString %r", http_string)
    digest = hashlib.sha1(http_string.encode()).hexdigest()
    return f"sha1\n{fields.get('q-sign-time', '')}\n{digest}\n"


def sign(secret_key: str, key_time: str, to_sign: str) -> str:
    sign_key = hmac.new(secret_key.encode(), key_time.encode(), hashlib.sha1).hexdigest()
    return hmac.new(sign_key.encode(), to_sign.encode(), hashlib.sha1).hexdigest()


def _check_time(value: str, now: float) -> None:
    start_s, sep, end_s = value.partition(";")
    try:
        start, end = int(start_s), int(end_s)
    except ValueError:
        raise CosError("AccessDenied", "q-sign-time is malformed.") from None
    if not sep or start > end:
        raise CosError("AccessDenied", "q-sign-time is malformed.")
    if now > end:
        raise CosError("AccessDenied", "Request has expired.")
    if start > now + MAX_SKEW:
        raise CosError("RequestTimeTooSkewed")


def verify_cos(
    creds: Credentials,
    *,
    authorization: str,
    method: str,
    raw_path: str,
    query: list[tuple[str, str]],
    headers: Iterable[tuple[str, str]],
    now: float | None = None,
) -> None:
    """Raise CosError unless the request carries a valid COS signature for ``creds``."""
    if authorization:
        fields = parse_authorization(authorization)
    else:
        qmap = dict(query)
        fields = (
            parse_authorization(qmap["sign"])
            if "sign" in qmap
            else {k: v for k, v in qmap.items() if k in _SIGN_PARAMS}
        )
        query = [(k, v) for k, v in query if k not in _SIGN_PARAMS and k != "sign"]
    if fields.get("q-sign-algorithm", "").lower() != "sha1" or "q-signature" not in fields:
        raise CosError("AccessDenied", "The Authorization is not a COS sha1 signature.")
    if fields.get("q-ak") != creds.secret_id:
        raise CosError("InvalidAccessKeyId")
    _check_time(fields.get("q-sign-time", ""), time.time() if now is None else now)
    to_sign = string_to_sign(fields, method, unquote(raw_path), query, headers)
    if to_sign is None:
        raise CosError("SignatureDoesNotMatch", "A signed header or parameter is missing.")
    expected = sign(creds.secret_key, fields.get("q-key-time", ""), to_sign)
    if not hmac.compare_digest(expected, fields["q-signature"].lower()):
        raise CosError("SignatureDoesNotMatch")


def authenticate(
    creds: Credentials | None,
    allow_unsigned_s3: bool,
    *,
    authorization: str,
    method: str,
    raw_path: str,
    query: list[tuple[str, str]],
    headers: Iterable[tuple[str, str]],
) -> None:
    """Accept or reject a request according to the server's configuration."""
    if creds is None:
        return
    kind = classify(authorization, dict(query))
    if kind is AuthKind.S3:
        if allow_unsigned_s3:
            return
        raise CosError("AccessDenied", "S3 signatures are not accepted by this server.")
    if kind is AuthKind.NONE:
        raise CosError("AccessDenied", "Anonymous access is denied.")
    verify_cos(
        creds,
        authorization=authorization,
        method=method,
        raw_path=raw_path,
        query=query,
        headers=headers,
    )


def authorize_admin(
    creds: Credentials | None,
    *,
    authorization: str,
    method: str,
    raw_path: str,
    query: list[tuple[str, str]],
    headers: Iterable[tuple[str, str]],
) -> None:
    """Accept an admin request (``/_cosencfs/...``) only with a COS signature.

    An admin request changes how the server answers everyone (faults,
    latency) or what it reports, so it needs the same credentials as the
    data, S3 tolerance does not apply, and every query parameter must be
    signed (a captured request cannot be replayed with ``rate=1``).  A server
    without credentials accepts anything, admin requests included.
    """
    if creds is None:
        return
    if classify(authorization, dict(query)) is not AuthKind.COS:
        raise CosError("AccessDenied", "Admin requests need a COS signature.")
    fields = (
        parse_authorization(authorization)
        if authorization
        else {k: v for k, v in query if k in _SIGN_PARAMS}
    )
    signed = set(filter(None, fields.get("q-url-param-list", "").split(";")))
    for name, _value in query:
        if name not in _SIGN_PARAMS and name != "sign" and _q(name).lower() not in signed:
            raise CosError("AccessDenied", f"Admin parameter {name!r} is not signed.")
    verify_cos(
        creds,
        authorization=authorization,
        method=method,
        raw_path=raw_path,
        query=query,
        headers=headers,
    )


def cos_authorization(
    secret_id: str,
    secret_key: str,
    *,
    method: str,
    path: str,
    params: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    expire: int = 3600,
    now: float | None = None,
) -> str:
    """A COS Authorization value signing ``params`` and ``headers`` (for plain HTTP clients).

    ``path`` is the unquoted key path (``/`` + key), as in the SDK.
    """
    start = int(time.time() if now is None else now) - 60
    sign_time = f"{start};{start + 60 + expire}"
    param_names = sorted(_q(k).lower() for k in (params or {}))
    header_names = sorted(_q(k).lower() for k in (headers or {}))
    fields = {
        "q-sign-time": sign_time,
        "q-url-param-list": ";".join(param_names),
        "q-header-list": ";".join(header_names),
    }
    to_sign = string_to_sign(fields, method, path, (params or {}).items(), (headers or {}).items())
    if to_sign is None:  # every listed name comes from the mappings: a bug if reached
        raise ValueError("cannot sign: a signed name is missing from the request")
    return (
        f"q-sign-algorithm=sha1&q-ak={secret_id}&q-sign-time={sign_time}&q-key-time={sign_time}"
        f"&q-header-list={fields['q-header-list']}&q-url-param-list={fields['q-url-param-list']}"
        f"&q-signature={sign(secret_key, sign_time, to_sign)}"
    )
