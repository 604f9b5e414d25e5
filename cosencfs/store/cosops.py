"""The COS operations described once: the HTTP request each sends and how its answer maps.

An ``Operation`` is one COS request: method, key, headers, query and body as
they go on the wire before signing (``HttpExchange``), and the mapping of
the answer to a result.  ``calls.Caller`` signs it (``wire.Signer``, the
SDK's signature), sends it (``transport``) and retries it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from cosencfs.store import cosxml
from cosencfs.store.base import (
    Body,
    ListPage,
    ObjectInfo,
    StoreErrorInfo,
    body_length,
)
from cosencfs.store.cosproto import (
    info_from_headers,
    meta_headers,
    ranged_part,
    replaced_headers,
    strip_etag,
)
from cosencfs.store.cosxml import PartsPage, UploadsPage
from cosencfs.store.wire import Answer

T = TypeVar("T")


@dataclass(slots=True, frozen=True)
class HttpExchange(Generic[T]):
    """A request as it goes on the wire (before signing), and what its answer means."""

    method: str
    #: The object key; "" addresses the bucket.
    key: str
    parse: Callable[[Answer], T]
    headers: Mapping[str, str] = field(default_factory=dict)
    params: Mapping[str, str | int] = field(default_factory=dict)
    body: Body | None = None
    #: Gives the buffer a large answer body is received into, once its length
    #: is known (``ObjectStore.get_into``); None: the transport's own.
    into: Callable[[int], memoryview] | None = None


@dataclass(slots=True, frozen=True)
class Operation(Generic[T]):
    """One COS request."""

    #: The COS operation: what the counters count and messages name.
    name: str
    #: The key messages name.
    key: str
    http: HttpExchange[T]
    #: Body bytes sent (counted, and extra time before the deadline).
    up: int = 0
    #: The answer's body is object data, counted in bytes down.
    counts_down: bool = False


def _xml_answer(parse: Callable[[bytes], T]) -> Callable[[Answer], T]:
    def parse_answer(answer: Answer) -> T:
        return parse(answer.body)

    return parse_answer


def _nothing(answer: Answer) -> None:
    return None


# ---------------------------------------------------------------------- objects


def _etag(answer: Answer) -> str:
    return strip_etag(answer.headers.get("etag", ""))


def head_object(key: str) -> Operation[ObjectInfo]:
    def parse(answer: Answer) -> ObjectInfo:
        return info_from_headers(key, answer.headers)

    return Operation("HeadObject", key, HttpExchange("HEAD", key, parse))


def get_object(
    key: str,
    start: int,
    end: int | None,
    if_match: str | None,
    into: Callable[[int], memoryview] | None = None,
) -> Operation[bytes]:
    """Bytes ``[start, end)`` of ``key`` (the whole object from 0 with no end);
    ``into``: a large body is received into the buffer it gives."""
    headers: dict[str, str] = {}
    ranged = bool(start or end is not None)
    if ranged:
        headers["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
    if if_match:
        headers["If-Match"] = f'"{if_match}"'

    def parse(answer: Answer) -> bytes:
        if ranged:
            return ranged_part(answer.body, answer.headers, start, end)
        return answer.body

    return Operation(
        "GetObject",
        key,
        HttpExchange("GET", key, parse, headers, into=into),
        counts_down=True,
    )


def put_object(
    key: str, body: Body, metadata: Mapping[str, str], content_type: str, if_none_match: bool
) -> Operation[str]:
    headers = meta_headers(metadata)
    if content_type:
        headers["Content-Type"] = content_type
    if if_none_match:
        headers["If-None-Match"] = "*"
    length = body_length(body)
    return Operation(
        "PutObject",
        key,
        HttpExchange("PUT", key, _etag, headers, body=body),
        up=length,
    )


def delete_object(key: str) -> Operation[None]:
    return Operation("DeleteObject", key, HttpExchange("DELETE", key, _nothing))


def list_objects(prefix: str, delimiter: str, marker: str, max_keys: int) -> Operation[ListPage]:
    params: dict[str, str | int] = {
        "prefix": prefix,
        "delimiter": delimiter,
        "marker": marker,
        "max-keys": max_keys,
        "encoding-type": "url",
    }

    # Listing XML is not counted in bytes down, which are object data.
    parse = _xml_answer(cosxml.list_page_from_xml)
    return Operation("ListObjects", prefix, HttpExchange("GET", "", parse, params=params))


def delete_objects(keys: Sequence[str]) -> Operation[dict[str, StoreErrorInfo]]:
    """DeleteMultipleObjects of up to 1000 keys, quietly: the answer names the failures."""
    body = cosxml.delete_body(keys)
    headers = {"Content-MD5": cosxml.content_md5(body), "Content-Type": "application/xml"}
    params: dict[str, str | int] = {"delete": ""}
    return Operation(
        "DeleteMultipleObjects",
        keys[0],
        HttpExchange("POST", "", _xml_answer(cosxml.delete_failures), headers, params, body),
    )


def copy_object(
    source: str,
    dst_key: str,
    *,
    metadata: Mapping[str, str] | None,
    content_type: str,
    headers: Mapping[str, str] | None,
    if_match: str | None,
) -> Operation[str]:
    """A server-side copy from ``source`` (an ``x-cos-copy-source`` value);
    ``metadata`` None keeps the source's (``Copy``)."""
    sent: dict[str, str] = {}
    directive = "Copy"
    if metadata is not None:
        directive = "Replaced"
        sent.update(replaced_headers(metadata, content_type, headers))
    sent["x-cos-copy-source"] = source
    sent["x-cos-metadata-directive"] = directive
    if if_match:
        sent["x-cos-copy-source-If-Match"] = f'"{if_match}"'
    parse = _xml_answer(cosxml.etag_of)
    return Operation("CopyObject", dst_key, HttpExchange("PUT", dst_key, parse, sent))


# ---------------------------------------------------------------------- multipart


def initiate_multipart(
    key: str, metadata: Mapping[str, str], content_type: str, headers: Mapping[str, str] | None
) -> Operation[str]:
    sent = replaced_headers(metadata, content_type, headers)
    params: dict[str, str | int] = {"uploads": ""}
    parse = _xml_answer(cosxml.upload_id_of)
    return Operation("InitiateMultipartUpload", key, HttpExchange("POST", key, parse, sent, params))


def upload_part(key: str, upload_id: str, part_number: int, body: Body) -> Operation[str]:
    params: dict[str, str | int] = {"partNumber": part_number, "uploadId": upload_id}
    return Operation(
        "UploadPart",
        key,
        HttpExchange("PUT", key, _etag, params=params, body=body),
        up=body_length(body),
    )


def upload_part_copy(
    key: str,
    upload_id: str,
    part_number: int,
    source: str,
    start: int,
    end: int,
    if_match: str | None,
) -> Operation[str]:
    sent = {"x-cos-copy-source": source, "x-cos-copy-source-range": f"bytes={start}-{end - 1}"}
    if if_match:
        sent["x-cos-copy-source-If-Match"] = f'"{if_match}"'
    params: dict[str, str | int] = {"partNumber": part_number, "uploadId": upload_id}
    # Like CopyObject, a part copy can answer 200 with an <Error> body.
    parse = _xml_answer(cosxml.etag_of)
    return Operation("UploadPartCopy", key, HttpExchange("PUT", key, parse, sent, params))


def list_parts(key: str, upload_id: str, marker: int) -> Operation[PartsPage]:
    params: dict[str, str | int] = {
        "uploadId": upload_id,
        "part-number-marker": marker,
        "max-parts": 1000,
        "encoding-type": "url",
    }
    parse = _xml_answer(cosxml.parts_page)
    return Operation("ListParts", key, HttpExchange("GET", key, parse, params=params))


def complete_multipart(
    key: str, upload_id: str, parts: Sequence[tuple[int, str]]
) -> Operation[str]:
    body = cosxml.complete_body(parts)
    params: dict[str, str | int] = {"uploadId": upload_id}
    parse = _xml_answer(cosxml.etag_of)
    return Operation(
        "CompleteMultipartUpload",
        key,
        HttpExchange("POST", key, parse, params=params, body=body),
    )


def abort_multipart(key: str, upload_id: str) -> Operation[None]:
    params: dict[str, str | int] = {"uploadId": upload_id}
    return Operation(
        "AbortMultipartUpload", key, HttpExchange("DELETE", key, _nothing, params=params)
    )


def list_uploads(prefix: str, key_marker: str, id_marker: str) -> Operation[UploadsPage]:
    params: dict[str, str | int] = {
        "uploads": "",
        "prefix": prefix,
        "delimiter": "",
        "key-marker": key_marker,
        "upload-id-marker": id_marker,
        "max-uploads": 1000,
        "encoding-type": "url",
    }
    parse = _xml_answer(cosxml.uploads_page)
    return Operation("ListMultipartUploads", prefix, HttpExchange("GET", "", parse, params=params))


def head_bucket() -> Operation[None]:
    return Operation("HeadBucket", "", HttpExchange("HEAD", "", _nothing))
