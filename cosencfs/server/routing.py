"""Request addressing and classification: which bucket, which key, which COS operation."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from email.message import Message
from enum import StrEnum
from urllib.parse import parse_qsl, unquote, urlsplit

from cosencfs.server.errors import CosError


class Op(StrEnum):
    """COS operation names, as counted by the stats endpoint."""

    GET_OBJECT = "GetObject"
    HEAD_OBJECT = "HeadObject"
    PUT_OBJECT = "PutObject"
    COPY_OBJECT = "CopyObject"
    DELETE_OBJECT = "DeleteObject"
    DELETE_MULTIPLE_OBJECTS = "DeleteMultipleObjects"
    LIST_OBJECTS = "ListObjects"
    LIST_OBJECTS_V2 = "ListObjectsV2"
    INITIATE_MULTIPART_UPLOAD = "InitiateMultipartUpload"
    UPLOAD_PART = "UploadPart"
    UPLOAD_PART_COPY = "UploadPartCopy"
    LIST_PARTS = "ListParts"
    COMPLETE_MULTIPART_UPLOAD = "CompleteMultipartUpload"
    ABORT_MULTIPART_UPLOAD = "AbortMultipartUpload"
    LIST_MULTIPART_UPLOADS = "ListMultipartUploads"
    PUT_BUCKET = "PutBucket"
    HEAD_BUCKET = "HeadBucket"
    DELETE_BUCKET = "DeleteBucket"
    GET_BUCKET_LOCATION = "GetBucketLocation"
    LIST_BUCKETS = "ListBuckets"
    GET_BUCKET_VERSIONING = "GetBucketVersioning"
    #: Anything this server does not implement (answered 405 or 501).
    UNSUPPORTED = "Unsupported"


#: Sub-resources of real COS that this server does not implement.
_UNSUPPORTED_SUBRESOURCES = frozenset(
    {
        "acl", "cors", "lifecycle", "policy", "tagging", "versioning", "website", "logging",
        "restore", "select", "replication", "encryption", "referer", "domain", "inventory",
        "intelligenttiering", "object-lock", "append", "versions", "accelerate", "origin",
        "notification", "torrent", "retention", "legal-hold",
    }
)  # fmt: skip


@dataclass(slots=True)
class Request:
    method: str
    host: str
    raw_path: str  # as sent, still percent-encoded
    query_list: list[tuple[str, str]]
    headers: Message
    bucket: str | None
    key: str | None
    s3: bool  # answer in S3 dialect (x-amz-meta-*)
    op: Op
    request_id: str
    query: dict[str, str] = field(default_factory=dict)

    def header(self, name: str, default: str = "") -> str:
        value = self.headers.get(name)
        return default if value is None else str(value)

    @property
    def resource(self) -> str:
        """What COS puts in an error's <Resource>."""
        return f"{self.host}{self.raw_path}"

    @property
    def meta_prefix(self) -> str:
        return "x-amz-meta-" if self.s3 else "x-cos-meta-"


@dataclass(slots=True)
class Response:
    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    #: Send the body from this fd (the handler closes it) instead of ``body``.
    file_fd: int | None = None
    file_offset: int = 0
    #: Content-Length when it differs from the body actually sent (HEAD).
    content_length: int | None = None
    #: Close the connection after this answer.
    close: bool = False
    #: No answer at all: reset the connection (an injected fault).
    reset: bool = False


def request_from(
    method: str, path: str, query_string: str, headers: Message
) -> tuple[Request, CosError | None]:
    """The ``Request`` of a request line and its headers, and the error of a bad address.

    A request with a bad address is still a request: it is counted (as
    ``Unsupported``) and answered once its body is read.
    """
    query_list = parse_query(query_string)
    query = dict(query_list)
    req = Request(
        method=method,
        host=str(headers.get("Host", "")),
        raw_path=path,
        query_list=query_list,
        headers=headers,
        bucket=None,
        key=None,
        s3=False,
        op=Op.UNSUPPORTED,
        request_id=os.urandom(12).hex(),
        query=query,
    )
    bad_address: CosError | None = None
    try:
        req.bucket, req.key, path_style = address(req.host, path)
    except CosError as exc:
        bad_address, path_style = exc, True
    else:
        req.op = classify(method, req.bucket, req.key, query, headers)
    req.s3 = (
        path_style
        or req.header("Authorization").startswith("AWS")
        or "X-Amz-Algorithm" in query
        or any(k.lower().startswith("x-amz-meta-") for k in headers)
    )
    return req, bad_address


def split_target(target: str) -> tuple[str, str]:
    """Request target -> (path, query string); accepts absolute-form targets."""
    if target.startswith(("http://", "https://")):
        parts = urlsplit(target)
        return parts.path or "/", parts.query
    path, _, query = target.partition("?")
    return path or "/", query


def hostname_of(host: str) -> str:
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    name, sep, port = host.rpartition(":")
    return name if sep and port.isdigit() else host


def _is_ip_or_localhost(hostname: str) -> bool:
    if hostname in ("", "localhost"):
        return True
    try:
        ipaddress.ip_address(hostname)
    except ValueError:
        return False
    return True


def _unquote_strict(text: str) -> str:
    try:
        return unquote(text, errors="strict")
    except UnicodeDecodeError:
        raise CosError("InvalidURI", "The key is not valid UTF-8.") from None


def address(host: str, path: str) -> tuple[str | None, str | None, bool]:
    """(bucket, key, path_style) of a request.

    Virtual-hosted (``<bucket>.cos.<region>.myqcloud.com``, what the COS SDK
    sends) when the host is a name containing ``.cos.``; path-style
    (``/<bucket>/<key>``, S3 tools) otherwise.
    """
    hostname = hostname_of(host).lower()
    if (
        not _is_ip_or_localhost(hostname)
        and ".cos." in hostname
        and not hostname.startswith("service.cos.")
    ):
        bucket = hostname.split(".", 1)[0]
        key = _unquote_strict(path[1:]) if len(path) > 1 else None
        return bucket, key or None, False
    stripped = path.lstrip("/")
    if not stripped:
        return None, None, True
    bucket_part, _, key_part = stripped.partition("/")
    return _unquote_strict(bucket_part), (_unquote_strict(key_part) or None), True


def parse_query(query: str) -> list[tuple[str, str]]:
    return parse_qsl(query, keep_blank_values=True)


def classify(
    method: str, bucket: str | None, key: str | None, query: dict[str, str], headers: Message
) -> Op:
    if key is None and bucket is not None and method == "GET" and "versioning" in query:
        # rclone asks before purging; the answer "never versioned" is always true here.
        return Op.GET_BUCKET_VERSIONING
    if any(name in _UNSUPPORTED_SUBRESOURCES for name in query):
        return Op.UNSUPPORTED
    if bucket is None:
        return Op.LIST_BUCKETS if method == "GET" else Op.UNSUPPORTED
    if key is None:
        return _bucket_op(method, query)
    copy = "x-cos-copy-source" in headers or "x-amz-copy-source" in headers
    if method == "PUT":
        if "partNumber" in query or "uploadId" in query:
            return Op.UPLOAD_PART_COPY if copy else Op.UPLOAD_PART
        return Op.COPY_OBJECT if copy else Op.PUT_OBJECT
    if method == "GET":
        return Op.LIST_PARTS if "uploadId" in query else Op.GET_OBJECT
    if method == "HEAD":
        return Op.HEAD_OBJECT
    if method == "DELETE":
        return Op.ABORT_MULTIPART_UPLOAD if "uploadId" in query else Op.DELETE_OBJECT
    if method == "POST":
        if "uploads" in query:
            return Op.INITIATE_MULTIPART_UPLOAD
        if "uploadId" in query:
            return Op.COMPLETE_MULTIPART_UPLOAD
    return Op.UNSUPPORTED


def _bucket_op(method: str, query: dict[str, str]) -> Op:
    if method == "GET":
        if "location" in query:
            return Op.GET_BUCKET_LOCATION
        if "uploads" in query:
            return Op.LIST_MULTIPART_UPLOADS
        if query.get("list-type") == "2":
            return Op.LIST_OBJECTS_V2
        return Op.LIST_OBJECTS
    if method == "PUT":
        return Op.PUT_BUCKET
    if method == "HEAD":
        return Op.HEAD_BUCKET
    if method == "DELETE":
        return Op.DELETE_BUCKET
    if method == "POST" and "delete" in query:
        return Op.DELETE_MULTIPLE_OBJECTS
    return Op.UNSUPPORTED
