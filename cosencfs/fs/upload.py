"""Uploading a produced copy: one PUT, or a multipart upload in parallel parts.

``Uploader`` sends one produced upload copy (the object's ciphertext at the
object's offsets, cosencfs/cache/assemble.py): one PUT for small files,
otherwise a multipart upload whose parts go up in parallel.  Parts start on
offsets that are multiples of 1 MiB (so of 16), and each part's ciphertext is
simply the copy's bytes at that offset — the counter follows from the offset,
so parts are independent, unlike the SDK's shared-stream multipart.  Each
finished part is journaled, so an upload interrupted by a failure or a crash
resumes from its missing parts.  The latency of each single PUT goes to the
upload window (cosencfs/fs/window.py), which sizes how many run at once.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

import trio

from cosencfs.cache.content import ObjectContent
from cosencfs.cache.journal import Journal
from cosencfs.errors import CosEncFsError, NotFoundError, StoreError
from cosencfs.fs.window import UploadWindow
from cosencfs.store.base import MAX_PART_BYTES, MAX_PARTS, FileRange, ObjectStore
from cosencfs.util import open_nursery

log = logging.getLogger(__name__)

MIB = 1024 * 1024
MIN_PART = 8 * MIB


def part_size(size: int) -> int:
    """Part size for an object of ``size`` bytes: at least 8 MiB, whole MiB,
    and large enough that 10,000 parts always suffice."""
    p = max(MIN_PART, math.ceil(size / MAX_PARTS))
    p = math.ceil(p / MIB) * MIB
    if p > MAX_PART_BYTES:
        raise ValueError(f"object of {size} bytes is too large for COS")
    return p


def parts_of(size: int) -> list[tuple[int, int, int]]:
    """``(part_number, start, end)`` for every part of an object of ``size`` bytes."""
    p = part_size(size)
    return [(i + 1, start, min(size, start + p)) for i, start in enumerate(range(0, size, p))]


async def put_final_metadata(
    store: ObjectStore,
    key: str,
    etag: str,
    metadata: Mapping[str, str],
    *,
    content_type: str,
    size: int,
) -> str:
    """The completed upload ``etag`` of ``key`` given its final metadata by a
    server-side copy onto itself (no data moved), ``If-Match`` the completed
    object; its new ETag.  A multipart upload's metadata is fixed when it is
    initiated, before all of it is known (the integrity tags, a streamed
    file's size and mtime)."""
    return await store.copy(
        key, key, metadata=metadata, content_type=content_type, if_match=etag, size=size
    )


class Uploader:
    def __init__(
        self,
        store: ObjectStore,
        journal: Journal,
        *,
        single_put_max: int,
        part_concurrency: int,
        window: UploadWindow,
    ) -> None:
        self.store = store
        self.journal = journal
        self.single_put_max = single_put_max
        self.part_limiter = trio.CapacityLimiter(part_concurrency)
        self.window = window

    async def upload(
        self,
        key: str,
        v: ObjectContent,
        metadata: dict[str, str],
        *,
        content_type: str,
        fid: str,
        resume: tuple[str, dict[int, str]] | None = None,
        body: bytes | None = None,
    ) -> str:
        """Send the whole (completely produced) copy; return the object's ETag.

        ``resume`` is a multipart upload (id, part ETags) an earlier run left
        unfinished: parts still in COS with those ETags are not sent again.
        ``body``: the copy's bytes, already read (a small file's, by its commit).
        """
        if not v.complete:
            raise CosEncFsError(f"upload of {key!r}: its copy {v.vid} is not complete")
        if v.size <= self.single_put_max:
            if resume is not None:
                await self.abort(key, resume[0])
            if body is not None and len(body) != v.size:
                raise CosEncFsError(f"upload of {key!r}: {len(body)} bytes, not {v.size}")
            sent = FileRange(v.path, 0, v.size) if body is None else body
            self.window.started()
            started = trio.current_time()
            try:
                return await self.store.put(key, sent, metadata, content_type=content_type)
            finally:
                self.window.observe(trio.current_time() - started)
        layout = parts_of(v.size)
        etags: dict[int, str] = {}
        upload_id = None
        if resume is not None:
            upload_id, etags = await self._resumable(key, resume, layout)
        resumed = upload_id is not None
        if upload_id is None:
            upload_id = await self.store.create_multipart(key, metadata, content_type=content_type)
        self.journal.set_upload(fid, upload_id, etags)
        try:

            async def one(n: int, start: int, end: int) -> None:
                async with self.part_limiter:
                    etags[n] = await self.store.upload_part(
                        key, upload_id, n, FileRange(v.path, start, end - start)
                    )
                # Each finished part is remembered, so a crash resumes after it.
                self.journal.set_upload(fid, upload_id, etags)

            async with open_nursery() as nursery:
                for n, start, end in layout:
                    if n not in etags:
                        nursery.start_soon(one, n, start, end)
            etag = await self.store.complete_multipart(key, upload_id, sorted(etags.items()))
        except StoreError:
            # Kept for a resume: the parts sent so far are not lost.
            raise
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.abort(key, upload_id)
                self.journal.set_upload(fid, None, {})
            raise
        self.journal.set_upload(fid, None, {})
        if resumed:
            # The upload's metadata was fixed when it began (a streamed upload
            # before the size was known, or an earlier attempt before a chmod).
            etag = await self.store.copy(
                key, key, metadata=metadata, content_type=content_type, if_match=etag, size=v.size
            )
        return etag

    async def _resumable(
        self, key: str, resume: tuple[str, dict[int, str]], layout: list[tuple[int, int, int]]
    ) -> tuple[str | None, dict[int, str]]:
        upload_id, recorded = resume
        try:
            existing = {p.part_number: p for p in await self.store.list_parts(key, upload_id)}
        except NotFoundError:
            return None, {}
        sizes = {n: end - start for n, start, end in layout}
        kept = {
            n: etag
            for n, etag in recorded.items()
            if n in existing and existing[n].etag == etag and existing[n].size == sizes.get(n)
        }
        log.info(
            "resuming the upload of %r: %d of %d parts already sent", key, len(kept), len(layout)
        )
        return upload_id, kept

    async def abort(self, key: str, upload_id: str) -> None:
        try:
            await self.store.abort_multipart(key, upload_id)
        except StoreError as exc:
            log.warning("could not abort multipart upload of %r: %s", key, exc)
