"""``MemoryStore``: an ``ObjectStore`` in memory that answers as CosStore over the local server.

Tests of the layers above the store run on it without HTTP (the Filesystem
model test makes thousands of requests a minute).  The bucket and the rules
the local server enforces are ``membucket.Bucket``'s; this module makes its
methods requests: counted as CosStore counts them (every attempt, failures,
retries, body bytes), delayed and failed as the local server's fault
injection does (``cosencfs.faults``: a rate and a latency, the same
faults for the same seed), retried under the same ``RetryPolicy``.
tests/store/test_memory_store.py runs one set of contract checks on both
stores.  A request yields before it is applied and after, so a cancelled
task (a simulated crash) loses either the request or only its answer.
"""

from __future__ import annotations

import functools
import random
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import TypeVar

import trio

from cosencfs.errors import (
    InvalidRequestError,
    NoSuchUploadError,
    PreconditionFailedError,
    StoreError,
    TransientError,
)
from cosencfs.faults import FaultInjector
from cosencfs.store import base
from cosencfs.store.base import (
    Body,
    ListPage,
    ListPages,
    ObjectInfo,
    PartInfo,
    StoreErrorInfo,
    UploadInfo,
)
from cosencfs.store.bodies import read_small_body
from cosencfs.store.counters import RequestCounters
from cosencfs.store.membucket import Bucket, Replacement, check_key, fault_error
from cosencfs.store.retry import RetryPolicy

__all__ = ["COPY_PART_BYTES", "MAX_PUT_BYTES", "MemoryStore"]

T = TypeVar("T")

#: As in cos.py (tests lower both to copy "large" objects cheaply): the largest
#: simple PUT or copy, and the part size of larger copies.
MAX_PUT_BYTES = base.MAX_PUT_BYTES
COPY_PART_BYTES = 512 * 1024**2


class MemoryStore:
    """One bucket in memory; see the module docstring."""

    def __init__(
        self,
        bucket: str = "memory-1250000000",
        *,
        fault_rate: float = 0.0,
        latency_ms: int = 0,
        seed: int | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.bucket = bucket
        self.counters = RequestCounters()
        #: The local server's fault picker: tests set its rate and latency, or script ``pick``.
        self.faults = FaultInjector(fault_rate, latency_ms, seed)
        self.retry = retry or RetryPolicy()
        self._jitter = random.Random(seed)
        self._bucket = Bucket()

    def close(self) -> None:
        """Nothing to release; there so that callers can treat it as a CosStore."""

    async def _call(self, op: str, key: str, fn: Callable[[], T], *, up: int = 0) -> T:
        """``fn`` as one request, after the server's latency and faults, retried as
        CosStore retries: every attempt counted, the whole call bounded by the policy."""
        policy = self.retry
        started = trio.current_time()
        deadline = started + policy.deadline + up / (256 * 1024)
        attempt = 0
        while True:
            attempt += 1
            self.counters.request(op, up=up)
            with trio.move_on_at(deadline) as late:
                if self.faults.latency_ms:
                    await trio.sleep(self.faults.latency_ms / 1000)
                else:
                    await trio.lowlevel.checkpoint()
            try:
                if late.cancelled_caught:
                    raise TransientError(f"no answer within {deadline - started:.0f} s")
                fault = self.faults.pick(op == "CopyObject")
                if fault is not None:
                    raise fault_error(fault)
                result = fn()
            except StoreError as exc:
                self.counters.failure(op)
                exc.op, exc.key = op, key
                if not isinstance(exc, TransientError) or late.cancelled_caught:
                    raise
                err = exc
            else:
                # Applied: a cancellation now loses the answer, not the change.
                await trio.lowlevel.checkpoint()
                return result
            delay = policy.delay(attempt, self._jitter)
            if attempt >= policy.max_attempts or trio.current_time() + delay > deadline:
                raise err
            self.counters.retry(op)
            await trio.sleep(delay)

    async def _paged(
        self, op: str, key: str, page: Callable[[int], tuple[list[T], bool]]
    ) -> list[T]:
        """A listing of at most 1000 entries a request; ``page(n)`` gives the entries
        after the first ``n`` and whether more follow."""
        found: list[T] = []
        more = True
        while more:
            entries, more = await self._call(op, key, functools.partial(page, len(found)))
            found += entries
        return found

    # -- objects -----------------------------------------------------------------

    async def head_bucket(self) -> None:
        await self._call("HeadBucket", "", lambda: None)

    async def head(self, key: str) -> ObjectInfo:
        return await self._call("HeadObject", key, functools.partial(self._bucket.head, key))

    async def get(
        self, key: str, start: int = 0, end: int | None = None, *, if_match: str | None = None
    ) -> bytes:
        if end is not None and end <= start:
            return b""

        def fn() -> bytes:
            data = self._bucket.get(key, start, end, if_match)
            self.counters.add_down(len(data))
            return data

        return await self._call("GetObject", key, fn)

    async def get_into(
        self,
        key: str,
        start: int,
        end: int,
        buffer: Callable[[int], memoryview],
        *,
        if_match: str | None = None,
    ) -> memoryview:
        # Through ``get`` (subclasses in the tests watch it), then into the
        # caller's buffer as a COS answer's body would be received.
        data = await self.get(key, start, end, if_match=if_match)
        into = buffer(len(data))[: len(data)]
        into[:] = data
        return into

    async def put(
        self,
        key: str,
        body: Body,
        metadata: Mapping[str, str],
        *,
        content_type: str = "",
        if_none_match: bool = False,
    ) -> str:
        length = base.body_length(body)
        if length > MAX_PUT_BYTES:
            raise InvalidRequestError("object too large for a simple PUT", op="PutObject", key=key)

        def fn() -> str:
            data = bytes(read_small_body(body))  # a file range: what it holds at this attempt
            return self._bucket.put(key, data, metadata, content_type, if_none_match)

        return await self._call("PutObject", key, fn, up=length)

    async def list_objects(
        self, prefix: str = "", delimiter: str = "", marker: str = "", max_keys: int = 1000
    ) -> ListPage:
        limit = max(1, min(max_keys, base.LIST_PAGE_MAX))
        page = functools.partial(self._bucket.listing, prefix, delimiter, marker, limit)
        return await self._call("ListObjects", prefix, page)

    def list_all(self, prefix: str = "", delimiter: str = "") -> AsyncIterator[ListPage]:
        return ListPages(self, prefix, delimiter)

    async def delete(self, key: str) -> None:
        def fn() -> None:
            check_key(key)
            self._bucket.delete([key])

        await self._call("DeleteObject", key, fn)

    async def delete_many(self, keys: Sequence[str]) -> dict[str, StoreErrorInfo]:
        failures: dict[str, StoreErrorInfo] = {}
        for i in range(0, len(keys), base.LIST_PAGE_MAX):
            batch = keys[i : i + base.LIST_PAGE_MAX]
            fn = functools.partial(self._bucket.delete, batch)
            failures.update(await self._call("DeleteMultipleObjects", batch[0], fn))
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
        replacing: Replacement = None if metadata is None else (metadata, content_type, headers)
        if size is None or size > MAX_PUT_BYTES:
            info = await self.head(src_key)
            if if_match and info.etag != if_match:
                raise PreconditionFailedError("source changed", op="CopyObject", key=src_key)
            if info.size > MAX_PUT_BYTES:
                return await self._copy_in_parts(src_key, dst_key, info, replacing)
        fn = functools.partial(self._bucket.copy, src_key, dst_key, replacing, if_match)
        return await self._call("CopyObject", dst_key, fn)

    async def _copy_in_parts(
        self, src_key: str, dst_key: str, info: ObjectInfo, replacing: Replacement
    ) -> str:
        """A copy too large for CopyObject: part copies, each of the same version of
        the source (If-Match); the upload is aborted if one fails."""
        meta, ctype, headers = replacing or (info.metadata, info.content_type, info.headers)
        upload_id = await self.create_multipart(dst_key, meta, content_type=ctype, headers=headers)
        part = min(max(COPY_PART_BYTES, -(-info.size // base.MAX_PARTS)), base.MAX_PART_BYTES)
        try:
            etags = []
            for n, at in enumerate(range(0, info.size, part), start=1):
                end = min(at + part, info.size)
                etag = await self.upload_part_copy(
                    dst_key, upload_id, n, src_key, at, end, if_match=info.etag
                )
                etags.append((n, etag))
            return await self.complete_multipart(dst_key, upload_id, etags)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.abort_multipart(dst_key, upload_id)
            raise

    # -- multipart ---------------------------------------------------------------

    async def create_multipart(
        self,
        key: str,
        metadata: Mapping[str, str],
        *,
        content_type: str = "",
        headers: Mapping[str, str] | None = None,
    ) -> str:
        fn = functools.partial(self._bucket.create_upload, key, metadata, content_type, headers)
        return await self._call("InitiateMultipartUpload", key, fn)

    async def upload_part(self, key: str, upload_id: str, part_number: int, body: Body) -> str:
        def data() -> bytes:
            return bytes(read_small_body(body))  # a file range: what it holds at this attempt

        fn = functools.partial(self._bucket.add_part, key, upload_id, part_number, data)
        return await self._call("UploadPart", key, fn, up=base.body_length(body))

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
        data = functools.partial(self._bucket.source_range, src_key, start, end, if_match)
        fn = functools.partial(self._bucket.add_part, key, upload_id, part_number, data)
        return await self._call("UploadPartCopy", key, fn)

    async def list_parts(self, key: str, upload_id: str) -> list[PartInfo]:
        return await self._paged(
            "ListParts", key, functools.partial(self._bucket.parts, key, upload_id)
        )

    async def complete_multipart(
        self, key: str, upload_id: str, parts: Sequence[tuple[int, str]]
    ) -> str:
        try:
            fn = functools.partial(self._bucket.complete, key, upload_id, parts)
            return await self._call("CompleteMultipartUpload", key, fn)
        except NoSuchUploadError:
            # As CosStore: a complete repeated after its answer was lost finds the object.
            info = await self.head(key)
            if base.completed_by(info.etag, parts):
                return info.etag
            raise

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        try:
            fn = functools.partial(self._bucket.abort, key, upload_id)
            await self._call("AbortMultipartUpload", key, fn)
        except NoSuchUploadError:
            pass

    async def list_uploads(self, prefix: str = "") -> list[UploadInfo]:
        page = functools.partial(self._bucket.uploads, prefix)
        return await self._paged("ListMultipartUploads", prefix, page)
