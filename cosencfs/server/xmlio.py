"""XML bodies of the COS API: rendering answers, parsing the two request bodies.

Answers are rendered with string templates rather than ElementTree: listing
pages are on the hot path of every ``ls`` and a template is several times
faster. Only CompleteMultipartUpload and DeleteMultipleObjects bodies are
parsed, with ElementTree and the namespace stripped.
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import quote
from xml.sax.saxutils import escape

from cosencfs.server.errors import CosError

XML_DECL = '<?xml version="1.0" encoding="UTF-8"?>\n'
# COS error bodies start with this exact declaration.
ERROR_DECL = "<?xml version='1.0' encoding='utf-8' ?>\n"
OWNER_ID = "qcs::cam::uin/100000000001:uin/100000000001"
OWNER_NAME = "100000000001"
MAX_XML_BODY = 10 * 1024 * 1024


def iso8601(ms: int) -> str:
    """``2024-01-02T03:04:05.678Z``, the listing date format."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


def quoted_etag(etag: str) -> str:
    return f'"{etag}"'


def _t(tag: str, value: object) -> str:
    return f"<{tag}>{escape(str(value))}</{tag}>"


def _bool(value: bool) -> str:
    # The SDK compares these with the strings 'true' / 'false'.
    return "true" if value else "false"


def _owner(tag: str = "Owner") -> str:
    return f"<{tag}><ID>{OWNER_ID}</ID><DisplayName>{OWNER_NAME}</DisplayName></{tag}>"


class _Encoder:
    """Applies ``encoding-type=url`` to keys and prefixes the way COS does."""

    __slots__ = ("enabled",)

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(self, value: str) -> str:
        # The SDK decodes with unquote(), so a space must become %20, never '+'.
        return quote(value, safe="/") if self.enabled else value


def error_body(code: str, message: str, resource: str, request_id: str, trace_id: str) -> bytes:
    # The SDK rejects an error body whose Code/Message/Resource/RequestId is empty.
    return (
        ERROR_DECL
        + "<Error>"
        + _t("Code", code or "Unknown")
        + _t("Message", message or code or "Unknown")
        + _t("Resource", resource or "/")
        + _t("RequestId", request_id)
        + _t("TraceId", trace_id)
        + "</Error>"
    ).encode()


@dataclass(slots=True, frozen=True)
class ListedObject:
    key: str
    size: int
    etag: str
    mtime_ms: int


def list_objects_v1(
    *,
    bucket: str,
    prefix: str,
    marker: str,
    max_keys: int,
    delimiter: str,
    url_encode: bool,
    entries: Sequence[ListedObject],
    prefixes: Sequence[str],
    truncated: bool,
    next_marker: str | None,
) -> bytes:
    enc = _Encoder(url_encode)
    out = [XML_DECL, "<ListBucketResult>", _t("Name", bucket)]
    if url_encode:
        out.append(_t("EncodingType", "url"))
    out += [_t("Prefix", enc(prefix)), _t("Marker", enc(marker)), _t("MaxKeys", max_keys)]
    if delimiter:
        out.append(_t("Delimiter", enc(delimiter)))
    out.append(_t("IsTruncated", _bool(truncated)))
    if truncated and next_marker is not None:
        out.append(_t("NextMarker", enc(next_marker)))
    _contents(out, entries, enc, owner=True)
    _prefixes(out, prefixes, enc)
    out.append("</ListBucketResult>")
    return "".join(out).encode()


def list_objects_v2(
    *,
    bucket: str,
    prefix: str,
    start_after: str,
    continuation_token: str,
    max_keys: int,
    delimiter: str,
    url_encode: bool,
    fetch_owner: bool,
    entries: Sequence[ListedObject],
    prefixes: Sequence[str],
    truncated: bool,
    next_token: str | None,
) -> bytes:
    enc = _Encoder(url_encode)
    out = [XML_DECL, "<ListBucketResult>", _t("Name", bucket)]
    if url_encode:
        out.append(_t("EncodingType", "url"))
    out += [_t("Prefix", enc(prefix)), _t("MaxKeys", max_keys)]
    out.append(_t("KeyCount", len(entries) + len(prefixes)))
    if delimiter:
        out.append(_t("Delimiter", enc(delimiter)))
    if continuation_token:
        out.append(_t("ContinuationToken", continuation_token))
    if start_after:
        out.append(_t("StartAfter", enc(start_after)))
    out.append(_t("IsTruncated", _bool(truncated)))
    if truncated and next_token is not None:
        out.append(_t("NextContinuationToken", next_token))
    _contents(out, entries, enc, owner=fetch_owner)
    _prefixes(out, prefixes, enc)
    out.append("</ListBucketResult>")
    return "".join(out).encode()


def _contents(out: list[str], entries: Iterable[ListedObject], enc: _Encoder, owner: bool) -> None:
    owner_xml = _owner() if owner else ""
    for e in entries:
        out.append(
            "<Contents>"
            + _t("Key", enc(e.key))
            + _t("LastModified", iso8601(e.mtime_ms))
            + _t("ETag", quoted_etag(e.etag))
            + _t("Size", e.size)
            + owner_xml
            + "<StorageClass>STANDARD</StorageClass></Contents>"
        )


def _prefixes(out: list[str], prefixes: Iterable[str], enc: _Encoder) -> None:
    for p in prefixes:
        out.append("<CommonPrefixes>" + _t("Prefix", enc(p)) + "</CommonPrefixes>")


@dataclass(slots=True, frozen=True)
class ListedUpload:
    key: str
    upload_id: str
    initiated_ms: int


def list_uploads(
    *,
    bucket: str,
    prefix: str,
    delimiter: str,
    key_marker: str,
    upload_id_marker: str,
    max_uploads: int,
    url_encode: bool,
    uploads: Sequence[ListedUpload],
    prefixes: Sequence[str],
    truncated: bool,
    next_key_marker: str,
    next_upload_id_marker: str,
) -> bytes:
    enc = _Encoder(url_encode)
    out = [XML_DECL, "<ListMultipartUploadsResult>", _t("Bucket", bucket)]
    if url_encode:
        out.append(_t("Encoding-Type", "url"))
    out += [
        _t("KeyMarker", enc(key_marker)),
        _t("UploadIdMarker", upload_id_marker),
        _t("NextKeyMarker", enc(next_key_marker)),
        _t("NextUploadIdMarker", next_upload_id_marker),
        _t("MaxUploads", max_uploads),
        _t("IsTruncated", _bool(truncated)),
        _t("Prefix", enc(prefix)),
    ]
    if delimiter:
        out.append(_t("Delimiter", enc(delimiter)))
    for u in uploads:
        out.append(
            "<Upload>"
            + _t("Key", enc(u.key))
            + _t("UploadId", u.upload_id)
            + "<StorageClass>STANDARD</StorageClass>"
            + _owner("Initiator")
            + _owner()
            + _t("Initiated", iso8601(u.initiated_ms))
            + "</Upload>"
        )
    _prefixes(out, prefixes, enc)
    out.append("</ListMultipartUploadsResult>")
    return "".join(out).encode()


@dataclass(slots=True, frozen=True)
class ListedPart:
    part_number: int
    size: int
    etag: str
    mtime_ms: int


def list_parts(
    *,
    bucket: str,
    key: str,
    upload_id: str,
    url_encode: bool,
    part_number_marker: int,
    max_parts: int,
    parts: Sequence[ListedPart],
    truncated: bool,
    next_marker: int,
) -> bytes:
    enc = _Encoder(url_encode)
    out = [XML_DECL, "<ListPartsResult>", _t("Bucket", bucket)]
    if url_encode:
        out.append(_t("Encoding-type", "url"))
    out += [
        _t("Key", enc(key)),
        _t("UploadId", upload_id),
        _owner("Initiator"),
        _owner(),
        _t("PartNumberMarker", part_number_marker),
    ]
    for p in parts:
        out.append(
            "<Part>"
            + _t("PartNumber", p.part_number)
            + _t("LastModified", iso8601(p.mtime_ms))
            + _t("ETag", quoted_etag(p.etag))
            + _t("Size", p.size)
            + "</Part>"
        )
    out += [
        _t("NextPartNumberMarker", next_marker),
        "<StorageClass>STANDARD</StorageClass>",
        _t("MaxParts", max_parts),
        _t("IsTruncated", _bool(truncated)),
        "</ListPartsResult>",
    ]
    return "".join(out).encode()


def initiate_result(bucket: str, key: str, upload_id: str) -> bytes:
    return (
        XML_DECL
        + "<InitiateMultipartUploadResult>"
        + _t("Bucket", bucket)
        + _t("Key", key)
        + _t("UploadId", upload_id)
        + "</InitiateMultipartUploadResult>"
    ).encode()


def complete_result(location: str, bucket: str, key: str, etag: str) -> bytes:
    return (
        XML_DECL
        + "<CompleteMultipartUploadResult>"
        + _t("Location", location)
        + _t("Bucket", bucket)
        + _t("Key", key)
        + _t("ETag", quoted_etag(etag))
        + "</CompleteMultipartUploadResult>"
    ).encode()


def copy_result(root: str, etag: str, mtime_ms: int) -> bytes:
    """``CopyObjectResult`` or ``CopyPartResult``."""
    return (
        XML_DECL
        + f"<{root}>"
        + _t("ETag", quoted_etag(etag))
        + _t("LastModified", iso8601(mtime_ms))
        + f"</{root}>"
    ).encode()


def delete_result(deleted: Sequence[str], errors: Sequence[tuple[str, str, str]]) -> bytes:
    out = [XML_DECL, "<DeleteResult>"]
    for key in deleted:
        out.append("<Deleted>" + _t("Key", key) + "</Deleted>")
    for key, code, message in errors:
        out.append(
            "<Error>" + _t("Key", key) + _t("Code", code) + _t("Message", message) + "</Error>"
        )
    out.append("</DeleteResult>")
    return "".join(out).encode()


def location(region: str) -> bytes:
    return (XML_DECL + _t("LocationConstraint", region)).encode()


def versioning() -> bytes:
    return (XML_DECL + "<VersioningConfiguration/>").encode()


def list_buckets(buckets: Sequence[tuple[str, int]], region: str) -> bytes:
    out = [XML_DECL, "<ListAllMyBucketsResult>", _owner(), "<Buckets>"]
    for name, created_ms in buckets:
        out.append(
            "<Bucket>"
            + _t("Name", name)
            + _t("Location", region)
            + _t("CreationDate", iso8601(created_ms))
            + "</Bucket>"
        )
    out.append("</Buckets></ListAllMyBucketsResult>")
    return "".join(out).encode()


# ---------------------------------------------------------------- request bodies


def _parse(body: bytes) -> ET.Element:
    if len(body) > MAX_XML_BODY:
        raise CosError("MalformedXML", "The XML body is too large.")
    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        raise CosError("MalformedXML") from exc
    for el in root.iter():
        if isinstance(el.tag, str) and el.tag.startswith("{"):
            el.tag = el.tag.split("}", 1)[1]
    return root


def parse_complete(body: bytes) -> list[tuple[int, str]]:
    """Parts of a CompleteMultipartUpload body as (number, unquoted ETag), in body order."""
    root = _parse(body)
    if root.tag != "CompleteMultipartUpload":
        raise CosError("MalformedXML")
    parts: list[tuple[int, str]] = []
    for part in root.findall("Part"):
        number = part.findtext("PartNumber")
        etag = part.findtext("ETag")
        if number is None or etag is None:
            raise CosError("MalformedXML", "Each Part needs a PartNumber and an ETag.")
        try:
            n = int(number.strip())
        except ValueError as exc:
            raise CosError("MalformedXML", "PartNumber is not a number.") from exc
        parts.append((n, etag.strip().strip('"').lower()))
    if not parts:
        raise CosError("MalformedXML", "The list of parts is empty.")
    return parts


def parse_delete(body: bytes) -> tuple[bool, list[str]]:
    """(quiet, keys) of a DeleteMultipleObjects body."""
    root = _parse(body)
    if root.tag != "Delete":
        raise CosError("MalformedXML")
    quiet = (root.findtext("Quiet") or "").strip().lower() == "true"
    keys: list[str] = []
    for obj in root.findall("Object"):
        key = obj.findtext("Key")
        if key is None:
            raise CosError("MalformedXML", "Each Object needs a Key.")
        keys.append(key)
    if not keys or len(keys) > 1000:
        raise CosError("MalformedXML", "Delete takes 1 to 1000 objects.")
    return quiet, keys
