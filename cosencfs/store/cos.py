"""``CosStore``: the ``ObjectStore`` over Tencent COS (or the local server).

What each store method means in COS requests: size limits, pages of
listings, batches of deletes, large copies made of part copies, a retried
complete whose first attempt succeeded.  Each request is an operation of
``cosencfs.store.cosops`` run by ``calls.Caller`` (signing, retries,
deadline, counters) over ``cosencfs.store.transport`` (h11 on trio streams).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from urllib.parse import urlsplit

import trio

from cosencfs.errors import (
    InvalidRequestError,
    NoSuchBucketError,
    NoSuchUploadError,
    NotFoundError,
    PreconditionFailedError,
    StoreError,
)
from cosencfs.store import cosops
from cosencfs.store.base import (
    LIST_PAGE_MAX,
    MAX_PART_BYTES,
    MAX_PARTS,
    MAX_PUT_BYTES,
    Body,
    ListPage,
    ListPages,
    ObjectInfo,
    PartInfo,
    StoreErrorInfo,
    UploadInfo,
    body_length,
    completed_by,
)
from cosencfs.store.calls import Caller
from cosencfs.store.cosproto import CosSettings, make_cos_config
from cosencfs.store.counters import RequestCounters
from cosencfs.store.transport import Transport, warn_if_proxied
from cosencfs.store.wire import Signer

__all__ = ["COPY_PART_BYTES", "CosSettings", "CosStore", "make_cos_config"]

log = logging.getLogger(__name__)

# MAX_PUT_BYTES and COPY_PART_BYTES are read from this module at each call,
# so tests can make "large" small.
#: Copies larger than this are made of part copies of this size.
COPY_PART_BYTES = 512 * 1024**2


class CosStore:
    """One bucket on COS (or on the local server)."""

    def __init__(self, settings: CosSettings) -> None:
        self._settings = settings
        conf = make_cos_config(settings)
        self._counters = RequestCounters()
        self._signer = Signer(conf, settings.bucket)
        self._transport = Transport(
            self._signer.endpoint,
            connections=settings.concurrency,
            timeout=settings.timeout,
            ca_file=settings.ca_file,
            counters=self._counters,
        )
        self._call = Caller(self._signer, self._transport, self._counters, settings.retry)
        warn_if_proxied(self._signer.endpoint)
        self._copy_source_base: dict[str, str] = {"Bucket": settings.bucket}
        if conf._ip is None and settings.endpoint:
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

    @property
    def transport(self) -> Transport:
        """The connections every request goes over (its ``limiter`` bounds them)."""
        return self._transport

    def close(self) -> None:
        self._transport.close()

    def _source(self, src_key: str) -> str:
        return self._signer.copy_source(dict(self._copy_source_base, Key=src_key))

    # ------------------------------------------------------------------ objects

    async def head_bucket(self) -> None:
        try:
            await self._call(cosops.head_bucket())
        except NotFoundError as exc:
            raise NoSuchBucketError(
                f"bucket {self.bucket!r} does not exist", op="HeadBucket", status=404
            ) from exc

    async def head(self, key: str) -> ObjectInfo:
        return await self._call(cosops.head_object(key))

    async def get(
        self, key: str, start: int = 0, end: int | None = None, *, if_match: str | None = None
    ) -> bytes:
        if end is not None and end <= start:
            return b""
        return await self._call(cosops.get_object(key, start, end, if_match))

    async def get_into(
        self,
        key: str,
        start: int,
        end: int,
        buffer: Callable[[int], memoryview],
        *,
        if_match: str | None = None,
    ) -> memoryview:
        if end <= start:
            return memoryview(b"")
        data = await self._call(cosops.get_object(key, start, end, if_match, into=buffer))
        # Of ``buffer``'s when the body was large enough to be received in
        # place (bodyrecv.DIRECT_BODY), else of the transport's own bytes.
        return memoryview(data)

    async def put(
        self,
        key: str,
        body: Body,
        metadata: Mapping[str, str],
        *,
        content_type: str = "",
        if_none_match: bool = False,
    ) -> str:
        if body_length(body) > MAX_PUT_BYTES:
            raise InvalidRequestError("object too large for a simple PUT", op="PutObject", key=key)
        return await self._call(cosops.put_object(key, body, metadata, content_type, if_none_match))

    async def list_objects(
        self, prefix: str = "", delimiter: str = "", marker: str = "", max_keys: int = 1000
    ) -> ListPage:
        max_keys = max(1, min(max_keys, LIST_PAGE_MAX))
        return await self._call(cosops.list_objects(prefix, delimiter, marker, max_keys))

    def list_all(self, prefix: str = "", delimiter: str = "") -> AsyncIterator[ListPage]:
        return ListPages(self, prefix, delimiter)

    async def delete(self, key: str) -> None:
        try:
            await self._call(cosops.delete_object(key))
        except NotFoundError:
            pass

    async def delete_many(self, keys: Sequence[str]) -> dict[str, StoreErrorInfo]:
        failures: dict[str, StoreErrorInfo] = {}
        for i in range(0, len(keys), LIST_PAGE_MAX):
            batch = await self._call(cosops.delete_objects(keys[i : i + LIST_PAGE_MAX]))
            failures.update(batch)
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
        return await self._call(
            cosops.copy_object(
                self._source(src_key),
                dst_key,
                metadata=metadata,
                content_type=content_type,
                headers=headers,
                if_match=if_match,
            )
        )

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
        return await self._call(cosops.initiate_multipart(key, metadata, content_type, headers))

    async def upload_part(self, key: str, upload_id: str, part_number: int, body: Body) -> str:
        return await self._call(cosops.upload_part(key, upload_id, part_number, body))

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
        return await self._call(
            cosops.upload_part_copy(
                key, upload_id, part_number, self._source(src_key), start, end, if_match
            )
        )

    async def list_parts(self, key: str, upload_id: str) -> list[PartInfo]:
        parts: list[PartInfo] = []
        marker: int | None = 0
        while marker is not None:
            page, marker = await self._call(cosops.list_parts(key, upload_id, marker))
            parts += page
        return parts

    async def complete_multipart(
        self, key: str, upload_id: str, parts: Sequence[tuple[int, str]]
    ) -> str:
        try:
            return await self._call(cosops.complete_multipart(key, upload_id, parts))
        except NoSuchUploadError:
            # A retried complete whose first attempt succeeded but lost its answer:
            # the object is there with the multipart ETag.
            info = await self.head(key)
            if completed_by(info.etag, parts):
                return info.etag
            raise

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        try:
            await self._call(cosops.abort_multipart(key, upload_id))
        except NoSuchUploadError:
            pass

    async def list_uploads(self, prefix: str = "") -> list[UploadInfo]:
        uploads: list[UploadInfo] = []
        markers: tuple[str, str] | None = ("", "")
        while markers is not None:
            page, markers = await self._call(cosops.list_uploads(prefix, *markers))
            uploads += page
        return uploads
