"""``ObjectStore`` over Tencent COS, through the SDK's plain ``CosS3Client``.

The SDK is synchronous (requests), so every call runs in a worker thread via
``trio.to_thread.run_sync`` under one ``CapacityLimiter``; the requests
connection pool is sized to the limiter so no thread waits for a socket.
The SDK's own retry loop is switched off (``retry=0``): it sleeps in the
calling thread, never retries non-rewindable bodies and cannot be bounded in
time.  Retries happen here instead (``cosencfs.store.retry``).

Protocol details (configuration, headers, error mapping) live in
``cosencfs.store.cosproto``; the data-plane fast path in ``fasthttp``.
"""

from __future__ import annotations

import http.client
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

import requests
import trio
import urllib3.exceptions
from qcloud_cos import CosS3Client
from qcloud_cos.cos_exception import CosClientError, CosServiceError

from cosencfs.errors import (
    InvalidRequestError,
    NoSuchBucketError,
    NoSuchUploadError,
    NotFoundError,
    PreconditionFailedError,
    StoreError,
    TransientError,
)
from cosencfs.store.asynchttp import SMALL_BODY, AsyncTransport
from cosencfs.store.base import (
    LIST_PAGE_MAX,
    MAX_PART_BYTES,
    MAX_PARTS,
    MAX_PUT_BYTES,
    Body,
    ListPage,
    ObjectInfo,
    PartInfo,
    StoreErrorInfo,
    UploadInfo,
    body_length,
)
from cosencfs.store.bodies import open_body, read_small_body
from cosencfs.store.cosproto import (
    BadAnswer,
    CosSettings,
    info_from_headers,
    list_page,
    list_page_from_xml,
    make_cos_config,
    meta_headers,
    parse_iso_date,
    ranged_part,
    replaced_headers,
    service_error,
    status_error,
    strip_etag,
)
from cosencfs.store.counters import RequestCounters
from cosencfs.store.fasthttp import Answer, FastTransport, HttpStatusError
from cosencfs.store.retry import RetryPolicy

__all__ = ["COPY_PART_BYTES", "CosSettings", "CosStore", "make_cos_config"]

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Copies larger than this are made of part copies of this size.
COPY_PART_BYTES = 512 * 1024**2

_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    ConnectionError,
    TimeoutError,
)


class CosStore:
    """One bucket on COS (or on the local server)."""

    def __init__(self, settings: CosSettings) -> None:
        self._settings = settings
        self._conf = make_cos_config(settings)
        self._session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(
            pool_connections=settings.concurrency,
            pool_maxsize=settings.concurrency,
            max_retries=0,
        )
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._client = CosS3Client(self._conf, retry=0, session=self._session)
        self._fast = (
            FastTransport(self._conf, settings.bucket, settings.timeout)
            if settings.fast_path
            else None
        )
        self._aio = (
            AsyncTransport(self._fast, settings.concurrency, settings.timeout)
            if self._fast is not None and self._fast.scheme == "http"
            else None
        )
        #: The named limiter every SDK call goes through.
        self.sdk_limiter = trio.CapacityLimiter(settings.concurrency)
        self._counters = RequestCounters()
        self._copy_source_base: dict[str, str] = {"Bucket": settings.bucket}
        if self._conf._ip is None and settings.endpoint:
            self._copy_source_base["Endpoint"] = urlsplit(settings.endpoint).hostname or ""
        else:
            self._copy_source_base["Region"] = settings.region

    # ------------------------------------------------------------------ basics

    @property
    def bucket(self) -> str:
        return self._settings.bucket

    @property
    def counters(self) -> RequestCounters:
        return self._counters

    @property
    def settings(self) -> CosSettings:
        return self._settings

    def _resent(self, op: str) -> Callable[[], None]:
        """Count the failed first attempt of a request resent on a fresh connection."""

        def count() -> None:
            self._counters.failure(op)
            self._counters.request(op)

        return count

    def close(self) -> None:
        self._session.close()
        if self._fast is not None:
            self._fast.close()
        if self._aio is not None:
            self._aio.close()

    async def _call(
        self,
        op: str,
        key: str,
        fn: Callable[[], T],
        *,
        up: int = 0,
        policy: RetryPolicy | None = None,
        afn: Callable[[], Awaitable[T]] | None = None,
    ) -> T:
        """Run ``fn`` in a worker thread (or ``afn`` in the event loop), retrying
        transient failures."""
        policy = policy or self._settings.retry
        started = trio.current_time()
        # The whole call, retries included, ends by this time: an unreachable
        # or hanging server gives an error after a known delay, never a hang.
        # Bodies get extra time at a pessimistic 256 KiB/s.
        deadline = started + policy.deadline + up / (256 * 1024)
        attempt = 0
        while True:
            attempt += 1
            self._counters.request(op, up=up)
            t0 = time.monotonic()
            try:
                with trio.move_on_at(deadline) as scope:
                    if afn is not None:
                        result = await afn()
                    else:
                        # A worker thread stuck in a socket read is abandoned
                        # (it ends at its socket timeout); the caller goes on.
                        result = await trio.to_thread.run_sync(
                            fn, limiter=self.sdk_limiter, abandon_on_cancel=True
                        )
                if scope.cancelled_caught:
                    self._counters.failure(op)
                    raise TransientError(
                        f"no answer within {deadline - started:.0f} s", op=op, key=key
                    )
            except CosServiceError as exc:
                self._counters.failure(op)
                err = service_error(op, key, exc)
            except HttpStatusError as exc:
                self._counters.failure(op)
                err = status_error(op, key, exc.status, exc.code, exc.message, exc.request_id)
            except CosClientError as exc:
                self._counters.failure(op)
                cause = exc.__context__
                if not isinstance(cause, _CONNECTION_ERRORS):
                    raise InvalidRequestError(f"client error: {exc}", op=op, key=key) from exc
                err = TransientError(f"connection failed: {type(cause).__name__}", op=op, key=key)
            except _CONNECTION_ERRORS as exc:
                self._counters.failure(op)
                err = TransientError(f"connection failed: {type(exc).__name__}", op=op, key=key)
            except BadAnswer as exc:
                self._counters.failure(op)
                err = TransientError(str(exc), op=op, key=key)
            else:
                log.debug("%s %r ok in %.1f ms", op, key, (time.monotonic() - t0) * 1000)
                return result
            if not isinstance(err, TransientError):
                raise err
            delay = policy.delay(attempt)
            elapsed = trio.current_time() - started
            if attempt >= policy.max_attempts or started + elapsed + delay > deadline:
                log.warning(
                    "%s %r failed after %d attempts in %.1f s: %s", op, key, attempt, elapsed, err
                )
                raise err
            log.debug(
                "%s %r attempt %d failed (%s); retrying in %.2f s", op, key, attempt, err, delay
            )
            self._counters.retry()
            await trio.sleep(delay)

    # ------------------------------------------------------------------ objects

    async def head_bucket(self) -> None:
        def fn() -> None:
            self._client.head_bucket(Bucket=self.bucket)

        try:
            await self._call("HeadBucket", "", fn)
        except NotFoundError as exc:
            raise NoSuchBucketError(
                f"bucket {self.bucket!r} does not exist", op="HeadBucket", status=404
            ) from exc

    async def head(self, key: str) -> ObjectInfo:
        fast, aio = self._fast, self._aio

        def fn() -> ObjectInfo:
            if fast is not None:
                return info_from_headers(
                    key, fast.request("HEAD", key, on_resend=self._resent("HeadObject")).headers
                )
            headers = self._client.head_object(Bucket=self.bucket, Key=key)
            return info_from_headers(key, headers)

        async def afn() -> ObjectInfo:
            assert aio is not None
            answer = await aio.request("HEAD", key, on_resend=self._resent("HeadObject"))
            return info_from_headers(key, answer.headers)

        return await self._call("HeadObject", key, fn, afn=afn if aio is not None else None)

    async def get(
        self, key: str, start: int = 0, end: int | None = None, *, if_match: str | None = None
    ) -> bytes:
        if end is not None and end <= start:
            return b""
        kwargs: dict[str, str] = {}
        if start or end is not None:
            kwargs["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        if if_match:
            kwargs["IfMatch"] = f'"{if_match}"'

        fast, aio = self._fast, self._aio
        headers = {}
        if "Range" in kwargs:
            headers["Range"] = kwargs["Range"]
        if if_match:
            headers["If-Match"] = kwargs["IfMatch"]

        def received(answer: Answer) -> bytes:
            self._counters.add_down(len(answer.body))
            if "Range" in kwargs:
                return ranged_part(answer.body, answer.headers, start, end)
            return answer.body

        def fn() -> bytes:
            if fast is not None:
                return received(
                    fast.request("GET", key, headers=headers, on_resend=self._resent("GetObject"))
                )
            resp = self._client.get_object(Bucket=self.bucket, Key=key, **kwargs)
            body = resp["Body"]
            raw = body.get_raw_stream()
            try:
                data: bytes = raw.read()
            finally:
                raw.release_conn()
            expected = int(resp.get("Content-Length", len(data)))
            self._counters.add_down(len(data))
            if len(data) != expected:
                raise BadAnswer(f"short body: {len(data)} of {expected} bytes")
            if "Range" in kwargs:
                data = ranged_part(data, resp, start, end)
            return data

        async def afn() -> bytes:
            assert aio is not None
            return received(
                await aio.request("GET", key, headers=headers, on_resend=self._resent("GetObject"))
            )

        small = end is not None and end - start <= SMALL_BODY
        return await self._call(
            "GetObject", key, fn, afn=afn if aio is not None and small else None
        )

    async def put(
        self,
        key: str,
        body: Body,
        metadata: Mapping[str, str],
        *,
        content_type: str = "",
        if_none_match: bool = False,
    ) -> str:
        length = body_length(body)
        if length > MAX_PUT_BYTES:
            raise InvalidRequestError("object too large for a simple PUT", op="PutObject", key=key)
        kwargs: dict[str, Any] = {"Metadata": meta_headers(metadata)}
        if content_type:
            kwargs["ContentType"] = content_type
        if if_none_match:
            kwargs["IfNoneMatch"] = "*"

        fast, aio = self._fast, self._aio
        headers = meta_headers(metadata)
        if content_type:
            headers["Content-Type"] = content_type
        if if_none_match:
            headers["If-None-Match"] = "*"

        def fn() -> str:
            with open_body(body) as data:
                if fast is not None:
                    answer = fast.request(
                        "PUT", key, headers=headers, body=data, on_resend=self._resent("PutObject")
                    )
                    return strip_etag(answer.headers.get("etag", ""))
                resp = self._client.put_object(Bucket=self.bucket, Key=key, Body=data, **kwargs)
            return strip_etag(resp.get("ETag", ""))

        async def afn() -> str:
            assert aio is not None
            # A small cache-file range is read in the event loop: page-cache
            # reads of this size take microseconds, less than a thread hop.
            data = read_small_body(body)
            answer = await aio.request(
                "PUT", key, headers=headers, body=data, on_resend=self._resent("PutObject")
            )
            return strip_etag(answer.headers.get("etag", ""))

        small = length <= SMALL_BODY
        return await self._call(
            "PutObject", key, fn, up=length, afn=afn if aio is not None and small else None
        )

    async def list_objects(
        self, prefix: str = "", delimiter: str = "", marker: str = "", max_keys: int = 1000
    ) -> ListPage:
        max_keys = max(1, min(max_keys, LIST_PAGE_MAX))

        fast = self._fast

        def fn() -> ListPage:
            if fast is not None:
                params = {
                    "prefix": prefix,
                    "delimiter": delimiter,
                    "marker": marker,
                    "max-keys": max_keys,
                    "encoding-type": "url",
                }
                # Listing XML is not counted in bytes down, which are object data.
                answer = fast.request(
                    "GET", "", params=params, on_resend=self._resent("ListObjects")
                )
                return list_page_from_xml(answer.body)
            data = self._client.list_objects(
                Bucket=self.bucket,
                Prefix=prefix,
                Delimiter=delimiter,
                Marker=marker,
                MaxKeys=max_keys,
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
            truncated = str(data.get("IsTruncated", "false")).lower() == "true"
            return list_page(objects, prefixes, truncated, data.get("NextMarker") or "")

        return await self._call("ListObjects", prefix, fn)

    async def list_all(self, prefix: str = "", delimiter: str = "") -> AsyncIterator[ListPage]:
        marker = ""
        while True:
            page = await self.list_objects(prefix, delimiter, marker)
            yield page
            if not page.truncated or not page.next_marker:
                return
            marker = page.next_marker

    async def delete(self, key: str) -> None:
        fast = self._fast

        def fn() -> None:
            if fast is not None:
                fast.request("DELETE", key, on_resend=self._resent("DeleteObject"))
                return
            self._client.delete_object(Bucket=self.bucket, Key=key)

        try:
            await self._call("DeleteObject", key, fn)
        except NotFoundError:
            pass

    async def delete_many(self, keys: Sequence[str]) -> dict[str, StoreErrorInfo]:
        failures: dict[str, StoreErrorInfo] = {}
        for i in range(0, len(keys), LIST_PAGE_MAX):
            batch = list(keys[i : i + LIST_PAGE_MAX])

            def fn(batch: list[str] = batch) -> dict[str, Any]:
                result: dict[str, Any] = self._client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Object": [{"Key": k} for k in batch], "Quiet": "true"},
                )
                return result

            data = await self._call("DeleteMultipleObjects", batch[0], fn)
            for err in data.get("Error", []) or []:
                failures[err.get("Key", "")] = StoreErrorInfo(
                    code=err.get("Code", ""), message=err.get("Message", "")
                )
        return failures

    async def copy(
        self,
        src_key: str,
        dst_key: str,
        *,
        metadata: Mapping[str, str] | None = None,
        content_type: str = "",
        headers: Mapping[str, str] | None = None,
        if_match: str | None = None,
        size: int | None = None,
    ) -> str:
        if size is None or size > MAX_PUT_BYTES:
            info = await self.head(src_key)
            if if_match and info.etag != if_match:
                raise PreconditionFailedError("source changed", op="CopyObject", key=src_key)
            if info.size > MAX_PUT_BYTES:
                return await self._copy_large(
                    src_key, dst_key, info, metadata, content_type, headers, info.etag
                )
        kwargs: dict[str, Any] = {}
        directive = "Copy"
        if metadata is not None:
            directive = "Replaced"
            kwargs.update(replaced_headers(metadata, content_type, headers))
        if if_match:
            kwargs["CopySourceIfMatch"] = f'"{if_match}"'
        source = dict(self._copy_source_base, Key=src_key)

        def fn() -> str:
            resp = self._client.copy_object(
                Bucket=self.bucket, Key=dst_key, CopySource=source, CopyStatus=directive, **kwargs
            )
            return strip_etag(str(resp.get("ETag", "")))

        return await self._call("CopyObject", dst_key, fn)

    async def _copy_large(
        self,
        src_key: str,
        dst_key: str,
        info: ObjectInfo,
        metadata: Mapping[str, str] | None,
        content_type: str,
        headers: Mapping[str, str] | None,
        source_etag: str,
    ) -> str:
        part = max(COPY_PART_BYTES, -(-info.size // MAX_PARTS))
        part = min(part, MAX_PART_BYTES)
        meta = info.metadata if metadata is None else metadata
        ctype = info.content_type if metadata is None else content_type
        std = info.headers if metadata is None else (headers or {})
        upload_id = await self.create_multipart(dst_key, meta, content_type=ctype, headers=std)
        etags: dict[int, str] = {}
        try:

            async def one(n: int, start: int) -> None:
                end = min(start + part, info.size)
                # Every part is taken from the same version of the source: a
                # source rewritten meanwhile fails the copy instead of mixing.
                etags[n] = await self.upload_part_copy(
                    dst_key, upload_id, n, src_key, start, end, if_match=source_etag
                )

            async with trio.open_nursery() as nursery:
                for n, start in enumerate(range(0, info.size, part), start=1):
                    nursery.start_soon(one, n, start)
            return await self.complete_multipart(dst_key, upload_id, sorted(etags.items()))
        except BaseException:
            with trio.CancelScope(shield=True):
                try:
                    await self.abort_multipart(dst_key, upload_id)
                except StoreError:
                    log.warning("could not abort part-copy upload of %r", dst_key)
            raise

    # ------------------------------------------------------------------ multipart

    async def create_multipart(
        self,
        key: str,
        metadata: Mapping[str, str],
        *,
        content_type: str = "",
        headers: Mapping[str, str] | None = None,
    ) -> str:
        kwargs = replaced_headers(metadata, content_type, headers)

        def fn() -> str:
            data = self._client.create_multipart_upload(Bucket=self.bucket, Key=key, **kwargs)
            return str(data["UploadId"])

        return await self._call("InitiateMultipartUpload", key, fn)

    async def upload_part(self, key: str, upload_id: str, part_number: int, body: Body) -> str:
        length = body_length(body)

        fast = self._fast

        def fn() -> str:
            with open_body(body) as data:
                if fast is not None:
                    answer = fast.request(
                        "PUT",
                        key,
                        params={"partNumber": part_number, "uploadId": upload_id},
                        body=data,
                        on_resend=self._resent("UploadPart"),
                    )
                    return strip_etag(answer.headers.get("etag", ""))
                resp = self._client.upload_part(
                    Bucket=self.bucket,
                    Key=key,
                    Body=data,
                    PartNumber=part_number,
                    UploadId=upload_id,
                )
            return strip_etag(resp.get("ETag", ""))

        return await self._call("UploadPart", key, fn, up=length)

    async def upload_part_copy(
        self,
        key: str,
        upload_id: str,
        part_number: int,
        src_key: str,
        start: int,
        end: int,
        *,
        if_match: str | None = None,
    ) -> str:
        source = dict(self._copy_source_base, Key=src_key)
        kwargs: dict[str, Any] = {}
        if if_match:
            kwargs["CopySourceIfMatch"] = f'"{if_match}"'

        def fn() -> str:
            resp = self._client.upload_part_copy(
                Bucket=self.bucket,
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

        return await self._call("UploadPartCopy", key, fn)

    async def list_parts(self, key: str, upload_id: str) -> list[PartInfo]:
        parts: list[PartInfo] = []
        marker = 0
        while True:

            def fn(marker: int = marker) -> dict[str, Any]:
                result: dict[str, Any] = self._client.list_parts(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumberMarker=marker
                )
                return result

            data = await self._call("ListParts", key, fn)
            for p in data.get("Part", []) or []:
                parts.append(
                    PartInfo(
                        part_number=int(p["PartNumber"]),
                        etag=strip_etag(p.get("ETag", "")),
                        size=int(p.get("Size", 0)),
                    )
                )
            if str(data.get("IsTruncated", "false")).lower() != "true":
                return parts
            marker = int(data.get("NextPartNumberMarker", 0))

    async def complete_multipart(
        self, key: str, upload_id: str, parts: Sequence[tuple[int, str]]
    ) -> str:
        body = {"Part": [{"PartNumber": n, "ETag": f'"{etag}"'} for n, etag in parts]}

        def fn() -> str:
            data = self._client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload=body
            )
            return strip_etag(str(data.get("ETag", "")))

        try:
            return await self._call("CompleteMultipartUpload", key, fn)
        except NoSuchUploadError:
            # A retried complete whose first attempt succeeded but lost its answer:
            # the object is there with the multipart ETag.
            info = await self.head(key)
            if info.etag.endswith(f"-{len(parts)}"):
                return info.etag
            raise

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        def fn() -> None:
            self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)

        try:
            await self._call("AbortMultipartUpload", key, fn)
        except NoSuchUploadError:
            pass

    async def list_uploads(self, prefix: str = "") -> list[UploadInfo]:
        uploads: list[UploadInfo] = []
        key_marker = ""
        id_marker = ""
        while True:

            def fn(km: str = key_marker, im: str = id_marker) -> dict[str, Any]:
                result: dict[str, Any] = self._client.list_multipart_uploads(
                    Bucket=self.bucket, Prefix=prefix, KeyMarker=km, UploadIdMarker=im
                )
                return result

            data = await self._call("ListMultipartUploads", prefix, fn)
            for u in data.get("Upload", []) or []:
                uploads.append(
                    UploadInfo(
                        key=u["Key"],
                        upload_id=u["UploadId"],
                        initiated=parse_iso_date(u.get("Initiated", "")),
                    )
                )
            if str(data.get("IsTruncated", "false")).lower() != "true":
                return uploads
            key_marker = data.get("NextKeyMarker", "")
            id_marker = data.get("NextUploadIdMarker", "")
