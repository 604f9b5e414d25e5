"""The block cache: versions on local disk, fetching, and eviction.

Fetches are 16-byte aligned ranged GETs of exactly what is missing (plus the
readahead the caller asks for); concurrent readers of the same bytes share
one request.  Fetched ciphertext is re-encrypted to the version's key when
the version is not the object's own (after a write started a new version).

Eviction is least-recently-used over clean, unpinned versions; dirty data is
never evicted, and a version is pinned while a file handle or an upload uses
it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import uuid
from collections.abc import Callable
from pathlib import Path

import trio

from cosencfs.cache.content import (
    CHUNK,
    ContentVersion,
    Inflight,
    Source,
    transcode,
    transcode_into,
)
from cosencfs.cache.extents import Extents
from cosencfs.cache.journal import Journal
from cosencfs.cache.layout import prepare_cache_dir
from cosencfs.crypto.ctr import DataKey
from cosencfs.errors import ConfigError, CosEncFsError, DamagedObjectError
from cosencfs.store.base import ObjectStore
from cosencfs.util import open_nursery

log = logging.getLogger(__name__)

ALIGN = 16
#: Buffers larger than this are en/decrypted and written in a worker thread.
THREAD_THRESHOLD = 256 * 1024
#: One ranged GET fetches at most this much; larger gaps become parallel GETs.
FETCH_CHUNK = 8 * 1024 * 1024


def align_down(n: int) -> int:
    return n - n % ALIGN


def align_up(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


class CacheManager:
    def __init__(
        self,
        root: Path,
        store: ObjectStore,
        *,
        limit_bytes: int,
        max_versions: int = 20_000,
    ) -> None:
        self.root = root
        self.store = store
        self.limit_bytes = limit_bytes
        self.max_versions = max_versions
        prepare_cache_dir(root)
        if not root.parent.exists():
            # Our own base directory (e.g. ~/.cache/cosencfs): private as well.
            root.parent.mkdir(mode=0o700, parents=True)
        root.mkdir(mode=0o700, exist_ok=True)
        os.chmod(root, 0o700)
        self.data_dir = root / "data"
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        self._lock_fd = os.open(root / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise ConfigError(
                f"cache directory {root} is in use by another cosencfs process"
            ) from None
        self.journal = Journal(root / "journal.db")
        self.versions: dict[str, ContentVersion] = {}
        #: Called when a clean version is evicted, so its owner forgets it.
        self.on_evict: Callable[[ContentVersion], None] = lambda v: None
        self.io_limiter = trio.CapacityLimiter(4)
        self.hits = 0
        self.misses = 0
        self.fetched_bytes = 0
        self._last_evict = -1e9
        #: Bytes present over all versions (shared with each version).
        self._usage = [0]

    def close(self) -> None:
        for v in list(self.versions.values()):
            v.close()
        self.versions.clear()
        self.journal.close()
        os.close(self._lock_fd)

    # -- versions ----------------------------------------------------------------

    def _path(self, vid: str) -> str:
        return str(self.data_dir / vid)

    def create(
        self,
        dk: DataKey,
        envelope: dict[str, str],
        size: int,
        source: Source | None,
        *,
        dirty: bool,
        sealed: bool = False,
    ) -> ContentVersion:
        vid = uuid.uuid4().hex
        v = ContentVersion(
            vid, self._path(vid), dk, envelope, size, source, dirty=dirty, sealed=sealed
        )
        v.account = self._usage
        self.versions[vid] = v
        return v

    def reopen(
        self,
        vid: str,
        dk: DataKey,
        envelope: dict[str, str],
        size: int,
        source: Source | None,
        present: Extents,
    ) -> ContentVersion:
        """A version left by an earlier run (from the journal)."""
        v = ContentVersion(
            vid,
            self._path(vid),
            dk,
            envelope,
            size,
            source,
            dirty=True,
            sealed=False,
            present=present,
            create=False,
        )
        v.account = self._usage
        self._usage[0] += present.total
        self.versions[vid] = v
        return v

    async def fork(
        self, old: ContentVersion, dk: DataKey, envelope: dict[str, str], upto: int
    ) -> ContentVersion:
        """A new version under a new key, holding ``old``'s bytes below ``upto``."""
        source = None
        if old.source is not None and not old.complete:
            src = old.source
            source = Source(src.key, src.etag, src.dk, min(src.limit, upto), src.envelope)
        new = self.create(dk, envelope, min(old.size, upto), source, dirty=True)
        old.pins += 1
        try:
            # Under old's lock: a concurrent fill must not change old.present
            # while the worker thread walks it.
            async with old.lock:
                await trio.to_thread.run_sync(
                    transcode_into, old, new, upto, limiter=self.io_limiter
                )
        except BaseException:
            self.discard(new)
            raise
        finally:
            old.pins -= 1
        return new

    def discard(self, v: ContentVersion) -> None:
        """Forget a version and delete its cache file."""
        if self.versions.pop(v.vid, None) is not None:
            self._usage[0] -= v.present.total
        if v.stream is not None:
            v.stream.abandon()
        v.close()
        try:
            os.unlink(v.path)
        except FileNotFoundError:
            pass

    def touch(self, v: ContentVersion) -> None:
        v.last_access = trio.current_time()

    # -- reading -----------------------------------------------------------------

    async def read(self, v: ContentVersion, offset: int, length: int) -> bytes:
        end = min(offset + length, v.size)
        if end <= offset:
            return b""
        if v.present.contains(offset, end):
            self.hits += 1
        else:
            self.misses += 1
            await self.ensure(v, offset, end)
        self.touch(v)
        if end - offset >= THREAD_THRESHOLD:
            return await trio.to_thread.run_sync(
                v.read_plain, offset, end - offset, limiter=self.io_limiter
            )
        return v.read_plain(offset, end - offset)

    async def ensure(self, v: ContentVersion, start: int, end: int) -> None:
        """Make ``[start, end)`` present: fetch from the source, or zero-fill."""
        end = min(end, v.size)
        v.pins += 1
        try:
            while True:
                gaps = v.present.missing(start, end)
                if not gaps:
                    return
                waits: list[trio.Event] = []
                todo: list[tuple[int, int]] = []
                for s, e in gaps:
                    pos = s
                    for inf in sorted(v.inflight, key=lambda i: i.start):
                        if inf.end <= pos or inf.start >= e:
                            continue
                        if inf.start > pos:
                            todo.append((pos, inf.start))
                        waits.append(inf.done)
                        pos = max(pos, inf.end)
                    if pos < e:
                        todo.append((pos, e))
                if todo:
                    async with open_nursery() as nursery:
                        for s, e in todo:
                            for inf in self._begin(v, s, e):
                                nursery.start_soon(self._fill, v, inf)
                for ev in waits:
                    await ev.wait()
        finally:
            v.pins -= 1

    def prefetch(self, nursery: trio.Nursery, v: ContentVersion, start: int, end: int) -> None:
        """Start fetching ``[start, end)`` in the background (readahead)."""
        end = min(end, v.limit)
        if end <= start:
            return
        for s, e in v.present.missing(start, end):
            for inf in self._begin(v, s, e, only_new=True):
                v.pins += 1
                nursery.start_soon(self._background_fill, v, inf)

    def _begin(
        self, v: ContentVersion, start: int, end: int, *, only_new: bool = False
    ) -> list[Inflight]:
        """Register the fetches that cover ``[start, end)``, split into chunks.

        Registration happens before any await, so a concurrent reader sees them
        and waits instead of fetching the same bytes again.
        """
        out: list[Inflight] = []
        limit = v.limit
        ranges: list[tuple[int, int]] = []
        if start < limit:
            # Aligned to the cipher block; clipped to the source's valid bytes.
            ranges.append((align_down(start), min(align_up(min(end, limit)), limit)))
        if end > limit:
            ranges.append((max(start, limit), end))  # zeros: no request
        for s, e in ranges:
            for pos in range(s, e, FETCH_CHUNK):
                seg = (pos, min(e, pos + FETCH_CHUNK))
                if only_new and any(i.start < seg[1] and seg[0] < i.end for i in v.inflight):
                    continue
                inf = Inflight(*seg)
                v.inflight.append(inf)
                out.append(inf)
        return out

    async def _background_fill(self, v: ContentVersion, inf: Inflight) -> None:
        try:
            await self._fill(v, inf)
        except (CosEncFsError, OSError) as exc:
            # A foreground read of these bytes will try again and report it.
            log.debug("readahead of %s failed: %s", v.vid, exc)
        finally:
            v.pins -= 1

    async def _fill(self, v: ContentVersion, inf: Inflight) -> None:
        try:
            start, end = inf.start, inf.end
            limit = v.limit
            src = v.source
            if src is not None and start < limit:
                data = await self.store.get(src.key, start, end, if_match=src.etag or None)
                if len(data) != end - start:
                    raise DamagedObjectError(
                        f"object {src.key!r} is shorter than expected "
                        f"({start + len(data)} < {end} bytes)"
                    )
                self.fetched_bytes += len(data)
                if src.dk is v.dk:
                    cipher = data
                elif len(data) >= THREAD_THRESHOLD:
                    cipher = await trio.to_thread.run_sync(
                        transcode, src.dk, v.dk, start, data, limiter=self.io_limiter
                    )
                else:
                    cipher = transcode(src.dk, v.dk, start, data)
            else:
                cipher = await self._zeros(v, start, end)
            async with v.lock:
                if v.discarded:
                    return
                if len(cipher) >= THREAD_THRESHOLD:
                    await trio.to_thread.run_sync(
                        v.store_cipher, start, cipher, limiter=self.io_limiter
                    )
                else:
                    v.store_cipher(start, cipher)
        finally:
            v.inflight.remove(inf)
            inf.done.set()

    async def _zeros(self, v: ContentVersion, start: int, end: int) -> bytes:
        if end - start >= THREAD_THRESHOLD:
            return await trio.to_thread.run_sync(
                v.zero_cipher, start, end - start, limiter=self.io_limiter
            )
        return v.zero_cipher(start, end - start)

    async def fill_all(self, v: ContentVersion) -> None:
        """Make every byte present (before an upload, or a rename of the source)."""
        for s, e in v.present.missing(0, v.size):
            for pos in range(s, e, CHUNK * 16):
                await self.ensure(v, pos, min(e, pos + CHUNK * 16))

    # -- space -----------------------------------------------------------------

    def usage(self) -> int:
        return self._usage[0]

    def dirty_bytes(self) -> int:
        return sum(v.size for v in self.versions.values() if v.dirty)

    def maybe_evict(self) -> int:
        """``evict``, at most twice a second: it walks every version."""
        now = trio.current_time()
        if now - self._last_evict < 0.5:
            return 0
        self._last_evict = now
        return self.evict()

    def evict(self) -> int:
        """Drop least recently used clean versions until under the limits.

        Returns the number of bytes freed.
        """
        used = self.usage()
        count = len(self.versions)
        if used <= self.limit_bytes and count <= self.max_versions:
            return 0
        freed = 0
        candidates = sorted(
            (v for v in self.versions.values() if not v.dirty and v.pins == 0 and not v.inflight),
            key=lambda v: v.last_access,
        )
        for v in candidates:
            if used - freed <= self.limit_bytes and count <= self.max_versions:
                break
            freed += v.cached_bytes
            count -= 1
            self.on_evict(v)
            self.discard(v)
        if freed:
            log.debug("evicted %d bytes from the cache", freed)
        return freed

    def sweep_orphans(self, keep: set[str]) -> int:
        """Delete cache files no version or journal record refers to."""
        removed = 0
        for entry in os.scandir(self.data_dir):
            if entry.name not in keep and entry.name not in self.versions:
                os.unlink(entry.path)
                removed += 1
        return removed
