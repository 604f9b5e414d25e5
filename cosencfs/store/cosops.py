"""The COS operations described once: what each request sends and how its answer maps.

An ``Operation`` is one COS request, independent of the path that carries it
(``cosencfs.store.paths``): http.client in a worker thread, the event loop,
or the SDK's ``CosS3Client``.  The requests that move object data and the
listing are described as HTTP (``HttpExchange``: method, key, headers,
query, body, and the mapping of the answer); the SDK sends the same headers
when it carries them (``paths.sdk_exchange`` derives its arguments).  The
others (HeadBucket, copies, batch deletes, multipart control, ListParts,
ListMultipartUploads) are still SDK calls with their own mapping (``sdk``),
and so is the SDK's own listing parser.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from qcloud_cos import CosS3Client

from cosencfs.store.asynchttp import SMALL_BODY
from cosencfs.store.base import (
    Body,
    ListPage,
    ObjectInfo,
    PartInfo,
    StoreErrorInfo,
    UploadInfo,
    body_length,
)
from cosencfs.store.cosproto import (
    BadAnswer,
    info_from_headers,
    list_page,
    list_page_from_xml,
    meta_headers,
    parse_iso_date,
    ranged_part,
    replaced_headers,
    strip_etag,
)
from cosencfs.store.fasthttp import Answer

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


@dataclass(slots=True, frozen=True)
class Operation(Generic[T]):
    """One COS request, whatever carries it."""

    #: The COS operation: what the counters count and messages name.
    name: str
    #: The key messages name.
    key: str
    #: The request as HTTP; None: not described as HTTP yet, ``sdk`` sends it.
    http: HttpExchange[T] | None = None
    #: The request as a ``CosS3Client`` call with its own answer mapping
    #: (client, bucket); used by the SDK path instead of ``http``.
    sdk: Callable[[CosS3Client, str], T] | None = None
    #: Body bytes sent (counted, and extra time before the deadline).
    up: int = 0
    #: Small enough to be sent from the event loop (``asynchttp``).
    small: bool = False
    #: The answer's body is object data, counted in bytes down.
    counts_down: bool = False

    def __post_init__(self) -> None:
        if self.http is None and self.sdk is None:
            raise ValueError(f"{self.name}: an operation needs a request")


# ---------------------------------------------------------------------- objects


def _etag(answer: Answer) -> str:
    return strip_etag(answer.headers.get("etag", ""))


def head_object(key: str) -> Operation[ObjectInfo]:
    def parse(answer: Answer) -> ObjectInfo:
        return info_from_headers(key, answer.headers)

    return Operation("HeadObject", key, HttpExchange("HEAD", key, parse), small=True)


def get_object(key: str, start: int, end: int | None, if_match: str | None) -> Operation[bytes]:
    """Bytes ``[start, end)`` of ``key`` (the whole object from 0 with no end)."""
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
        HttpExchange("GET", key, parse, headers),
        small=end is not None and end - start <= SMALL_BODY,
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
        small=length <= SMALL_BODY,
    )


def delete_object(key: str) -> Operation[None]:
    def parse(answer: Answer) -> None:
        return None

    return Operation("DeleteObject", key, HttpExchange("DELETE", key, parse))


def list_objects(prefix: str, delimiter: str, marker: str, max_keys: int) -> Operation[ListPage]:
    params: dict[str, str | int] = {
        "prefix": prefix,
        "delimiter": delimiter,
        "marker": marker,
        "max-keys": max_keys,
        "encoding-type": "url",
    }

    def parse(answer: Answer) -> ListPage:
        # Listing XML is not counted in bytes down, which are object data.
        return list_page_from_xml(answer.body)

    def sdk(client: CosS3Client, bucket: str) -> ListPage:
        data = client.list_objects(
            Bucket=bucket, Prefix=prefix, Delimiter=delimiter, Marker=marker, MaxKeys=max_keys
        )
        objects = [
            ObjectInfo(
                key=item["Key"],
                size=int(item.get("Size", 0)),
                etag=strip_etag(item.get("ETag", "")),
                last_modified=parse_iso_date(item.get("LastModified", "")),
                has_metadata=False,
            )
            for item in data.get("Contents", [])
        ]
        prefixes = [p["Prefix"] for p in data.get("CommonPrefixes", [])]
        return list_page(objects, prefixes, _truncated(data), data.get("NextMarker") or "")

    return Operation("ListObjects", prefix, HttpExchange("GET", "", parse, params=params), sdk)


def delete_objects(keys: Sequence[str]) -> Operation[dict[str, StoreErrorInfo]]:
    """DeleteMultipleObjects of up to 1000 keys, quietly: the answer names the failures."""

    def sdk(client: CosS3Client, bucket: str) -> dict[str, StoreErrorInfo]:
        data: dict[str, Any] = client.delete_objects(
            Bucket=bucket, Delete={"Object": [{"Key": k} for k in keys], "Quiet": "true"}
        )
        return {
            err.get("Key", ""): StoreErrorInfo(
                code=err.get("Code", ""), message=err.get("Message", "")
            )
            for err in data.get("Error", []) or []
        }

    return Operation("DeleteMultipleObjects", keys[0], sdk=sdk)


def copy_object(
    source: Mapping[str, str],
    dst_key: str,
    *,
    metadata: Mapping[str, str] | None,
    content_type: str,
    headers: Mapping[str, str] | None,
    if_match: str | None,
) -> Operation[str]:
    """A server-side copy; ``metadata`` None keeps the source's (``Copy``)."""
    kwargs: dict[str, Any] = {}
    directive = "Copy"
    if metadata is not None:
        directive = "Replaced"
        kwargs.update(replaced_headers(metadata, content_type, headers))
    if if_match:
        kwargs["CopySourceIfMatch"] = f'"{if_match}"'

    def sdk(client: CosS3Client, bucket: str) -> str:
        resp = client.copy_object(
            Bucket=bucket, Key=dst_key, CopySource=source, CopyStatus=directive, **kwargs
        )
        return strip_etag(str(resp.get("ETag", "")))

    return Operation("CopyObject", dst_key, sdk=sdk)


# ---------------------------------------------------------------------- multipart


def initiate_multipart(
    key: str, metadata: Mapping[str, str], content_type: str, headers: Mapping[str, str] | None
) -> Operation[str]:
    kwargs = replaced_headers(metadata, content_type, headers)

    def sdk(client: CosS3Client, bucket: str) -> str:
        data = client.create_multipart_upload(Bucket=bucket, Key=key, **kwargs)
        return str(data["UploadId"])

    return Operation("InitiateMultipartUpload", key, sdk=sdk)


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
    source: Mapping[str, str],
    start: int,
    end: int,
    if_match: str | None,
) -> Operation[str]:
    kwargs: dict[str, Any] = {}
    if if_match:
        kwargs["CopySourceIfMatch"] = f'"{if_match}"'

    def sdk(client: CosS3Client, bucket: str) -> str:
        resp = client.upload_part_copy(
            Bucket=bucket,
            Key=key,
            PartNumber=part_number,
            UploadId=upload_id,
            CopySource=source,
            CopySourceRange=f"bytes={start}-{end - 1}",
            **kwargs,
        )
        etag = strip_etag(str(resp.get("ETag", "")))
        if not etag:
            # Like CopyObject, a part copy can answer 200 with an <Error>
            # body; the SDK does not check this one.
            raise BadAnswer("UploadPartCopy answered without an ETag")
        return etag

    return Operation("UploadPartCopy", key, sdk=sdk)


#: One page of parts, and the marker of the next page (None: the last page).
PartsPage = tuple[list[PartInfo], int | None]


def list_parts(key: str, upload_id: str, marker: int) -> Operation[PartsPage]:
    def sdk(client: CosS3Client, bucket: str) -> PartsPage:
        data: dict[str, Any] = client.list_parts(
            Bucket=bucket, Key=key, UploadId=upload_id, PartNumberMarker=marker
        )
        parts = [
            PartInfo(
                part_number=int(p["PartNumber"]),
                etag=strip_etag(p.get("ETag", "")),
                size=int(p.get("Size", 0)),
            )
            for p in data.get("Part", []) or []
        ]
        if not _truncated(data):
            return parts, None
        return parts, int(data.get("NextPartNumberMarker", 0))

    return Operation("ListParts", key, sdk=sdk)


def complete_multipart(
    key: str, upload_id: str, parts: Sequence[tuple[int, str]]
) -> Operation[str]:
    body = {"Part": [{"PartNumber": n, "ETag": f'"{etag}"'} for n, etag in parts]}

    def sdk(client: CosS3Client, bucket: str) -> str:
        data = client.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload=body
        )
        return strip_etag(str(data.get("ETag", "")))

    return Operation("CompleteMultipartUpload", key, sdk=sdk)


def abort_multipart(key: str, upload_id: str) -> Operation[None]:
    def sdk(client: CosS3Client, bucket: str) -> None:
        client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)

    return Operation("AbortMultipartUpload", key, sdk=sdk)


#: One page of uploads, and the (key, upload id) markers of the next (None: the last page).
UploadsPage = tuple[list[UploadInfo], tuple[str, str] | None]


def list_uploads(prefix: str, key_marker: str, id_marker: str) -> Operation[UploadsPage]:
    def sdk(client: CosS3Client, bucket: str) -> UploadsPage:
        data: dict[str, Any] = client.list_multipart_uploads(
            Bucket=bucket, Prefix=prefix, KeyMarker=key_marker, UploadIdMarker=id_marker
        )
        uploads = [
            UploadInfo(
                key=u["Key"],
                upload_id=u["UploadId"],
                initiated=parse_iso_date(u.get("Initiated", "")),
            )
            for u in data.get("Upload", []) or []
        ]
        if not _truncated(data):
            return uploads, None
        return uploads, (data.get("NextKeyMarker", ""), data.get("NextUploadIdMarker", ""))

    return Operation("ListMultipartUploads", prefix, sdk=sdk)


def head_bucket() -> Operation[None]:
    def sdk(client: CosS3Client, bucket: str) -> None:
        client.head_bucket(Bucket=bucket)

    return Operation("HeadBucket", "", sdk=sdk)


def _truncated(data: Mapping[str, Any]) -> bool:
    # The SDK leaves IsTruncated as the XML's text.
    return str(data.get("IsTruncated", "false")).lower() == "true"
