"""The block cache: clean object copies and dirty layers on local disk.

Clean copies (:class:`ObjectContent`) hold objects' own ciphertext, one per
(key, ETag), filled by 16-byte aligned ranged GETs of exactly what is missing
(plus the readahead the caller asks for); concurrent readers of the same
bytes share one request.  Dirty layers (:class:`DirtyLayer`) hold what users
wrote, as logs of AES-GCM records under cache-only keys.

Eviction is least-recently-used over clean, unpinned copies; dirty data is
never evicted.
"""

from __future__ import annotations

import fcntl
import logging
import os
import uuid
from collections.abc import Callable
from pathlib import Path

import trio

from cosencfs.cache.content import Inflight, ObjectContent, Source
from cosencfs.cache.dirtylog import DirtyLayer, LayerState, new_cache_key
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
        #: Clean copies by vid, and by the (key, ETag) of the object they copy.
        self.versions: dict[str, ObjectContent] = {}
        self._by_source: dict[tuple[str, str], ObjectContent] = {}
        self.layers: dict[str, DirtyLayer] = {}
        #: Called when a clean copy is evicted, so its owner forgets it.
        self.on_evict: Callable[[ObjectContent], None] = lambda v: None
        self.io_limiter = trio.CapacityLimiter(4)
        self.hits = 0
        self.misses = 0
        self.fetched_bytes = 0
        self._last_evict = -1e9
        #: Bytes present over all clean copies (shared with each copy).
        self._usage = [0]

    def close(self) -> None:
        for v in list(self.versions.values()):
            v.close()
        for layer in list(self.layers.values()):
            layer.close()
        self.versions.clear()
        self.layers.clear()
        self._by_source.clear()
        self.journal.close()
        os.close(self._lock_fd)

    # -- clean copies ------------------------------------------------------------

    def _path(self, vid: str) -> str:
        return str(self.data_dir / vid)

    def _new(self, dk: DataKey, size: int, source: Source | None) -> ObjectContent:
        vid = uuid.uuid4().hex
        v = ObjectContent(vid, self._path(vid), dk, size, source)
        v.account = self._usage
        self.versions[vid] = v
        return v

    def clean_for(self, source: Source) -> ObjectContent:
        """The clean copy of the object ``source`` names (made empty on first use).

        ``source.limit`` is the object's size: the bytes there are to fetch.
        """
        v = self._by_source.get((source.key, source.etag))
        if v is not None and not v.discarded:
            return v
        # A plaintext object is kept under a throw-away key of its own.
        dk = source.dk if source.dk is not None else DataKey.generate()
        src = Source(source.key, source.etag, source.dk, source.limit, dict(source.envelope))
        v = self._new(dk, source.limit, src)
        self._by_source[(source.key, source.etag)] = v
        return v

    def reopen_copy(self, vid: str, dk: DataKey, size: int) -> ObjectContent:
        """A direct copy left by an earlier run: ``[0, size)`` of it was written."""
        v = ObjectContent(vid, self._path(vid), dk, size, None, create=False)
        v.account = self._usage
        v.mark(0, size)
        v.holds += 1
        self.versions[vid] = v
        return v

    def _close_copy(self, v: ObjectContent) -> None:
        """Forget a copy but keep its file (the journal still names it)."""
        if self.versions.pop(v.vid, None) is not None:
            self._usage[0] -= v.present.total
        self._forget_source(v)
        v.close()

    def staged(self, dk: DataKey, size: int) -> ObjectContent:
        """An empty copy an upload produces under the new object's key ``dk``."""
        v = self._new(dk, size, None)
        v.holds += 1
        return v

    def adopt(self, v: ObjectContent, source: Source) -> None:
        """A produced copy is the object ``source`` now (its upload succeeded)."""
        v.source = source
        v.holds -= 1
        old = self._by_source.get((source.key, source.etag))
        if old is not None and old is not v:
            self._forget_source(old)
        self._by_source[(source.key, source.etag)] = v

    def rekey(self, v: ObjectContent, key: str, etag: str) -> None:
        """The object was copied to ``key`` (a rename): fetch from there now."""
        src = v.source
        if src is None:
            return
        self._forget_source(v)
        src.key, src.etag = key, etag
        self._by_source[(key, etag)] = v

    def _forget_source(self, v: ObjectContent) -> None:
        if v.source is not None:
            ident = (v.source.key, v.source.etag)
            if self._by_source.get(ident) is v:
                del self._by_source[ident]

    def discard(self, v: ObjectContent) -> None:
        """Forget a clean copy and delete its cache file."""
        if self.versions.pop(v.vid, None) is not None:
            self._usage[0] -= v.present.total
        self._forget_source(v)
        v.close()
        try:
            os.unlink(v.path)
        except FileNotFoundError:
            pass

    def touch(self, v: ObjectContent) -> None:
        v.last_access = trio.current_time()

    # -- dirty layers ------------------------------------------------------------

    def new_layer(
        self,
        *,
        size: int,
        limit: int,
        below: DirtyLayer | None = None,
        source: Source | None = None,
    ) -> DirtyLayer:
        vid = uuid.uuid4().hex
        layer = DirtyLayer(
            vid,
            self.layer_path(vid),
            new_cache_key(),
            size=size,
            limit=limit,
            below=below,
            source=source,
        )
        self.layers[vid] = layer
        return layer

    def reopen_layer(
        self,
        vid: str,
        cache_key: bytes,
        *,
        size: int,
        limit: int,
        log_end: int,
        below: DirtyLayer | None,
        source: Source | None,
    ) -> DirtyLayer:
        """A layer left by an earlier run (from the journal): its log replayed."""
        path = self.layer_path(vid)
        layer = DirtyLayer(
            vid,
            path,
            cache_key,
            size=size,
            limit=limit,
            below=below,
            source=source,
            # A layer that never had a record never had a log file.
            create=log_end == 0 and not os.path.exists(path),
        )
        self.layers[vid] = layer
        try:
            layer.replay(log_end)
        except BaseException:
            self.layers.pop(vid, None)
            layer.close()
            raise
        layer.size, layer.limit = size, limit
        return layer

    def layer_path(self, vid: str) -> str:
        return str(self.data_dir / f"{vid}.log")

    def retire_layer(self, layer: DirtyLayer) -> None:
        """Nobody needs this layer: delete its log (now, or when the last pin goes)."""
        layer.state = LayerState.RETIRED
        if layer.stream is not None:
            layer.stream.abandon()
            layer.stream = None
        if layer.pins == 0:
            self._drop_layer(layer)

    def retire_chain(self, layer: DirtyLayer | None) -> None:
        """Retire ``layer`` and everything below it (nobody reads them any more).

        Their log files go: call this only once the journal no longer names
        them (docs/concurrency.md, "files and the journal").
        """
        while layer is not None:
            below = layer.below
            self._drop_copies(layer)
            self.retire_layer(layer)
            layer = below

    def _drop_copies(self, layer: DirtyLayer) -> None:
        """The layer's upload and direct copies (not one already adopted as clean)."""
        for copy in {id(c): c for c in (layer.staged, layer.direct) if c is not None}.values():
            self.discard(copy)
        layer.staged = layer.direct = None

    def release_chain(self, layer: DirtyLayer | None) -> None:
        """Close ``layer`` and those below it but keep their files: the journal
        still names them (an upload that failed, a recovery that must wait)."""
        while layer is not None:
            below = layer.below
            for copy in (layer.staged, layer.direct):
                if copy is not None and not copy.discarded:
                    self._close_copy(copy)
            layer.staged = layer.direct = None
            self.layers.pop(layer.vid, None)
            layer.close()
            layer = below

    def unpin_layer(self, layer: DirtyLayer) -> None:
        layer.pins -= 1
        if layer.pins == 0 and layer.state is LayerState.RETIRED:
            self._drop_layer(layer)

    def _drop_layer(self, layer: DirtyLayer) -> None:
        if self.layers.pop(layer.vid, None) is None:
            return
        layer.close()
        layer.below = None
        try:
            os.unlink(layer.path)
        except FileNotFoundError:
            pass

    # -- reading -----------------------------------------------------------------

    async def read(self, v: ObjectContent, offset: int, length: int) -> bytes:
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

    async def ensure(self, v: ObjectContent, start: int, end: int) -> None:
        """Make ``[start, end)`` present: fetch it from the source."""
        end = min(end, v.size)
        if end > v.limit:
            raise CosEncFsError(f"cache copy {v.vid} has no source for bytes {v.limit}-{end}")
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

    def prefetch(self, nursery: trio.Nursery, v: ObjectContent, start: int, end: int) -> None:
        """Start fetching ``[start, end)`` in the background (readahead)."""
        end = min(end, v.limit)
        if end <= start:
            return
        for s, e in v.present.missing(start, end):
            for inf in self._begin(v, s, e, only_new=True):
                v.pins += 1
                nursery.start_soon(self._background_fill, v, inf)

    def _begin(
        self, v: ObjectContent, start: int, end: int, *, only_new: bool = False
    ) -> list[Inflight]:
        """Register the fetches that cover ``[start, end)``, split into chunks.

        Registration happens before any await, so a concurrent reader sees them
        and waits instead of fetching the same bytes again.
        """
        out: list[Inflight] = []
        limit = v.limit
        ranges: list[tuple[int, int]] = []
        if start < limit:
            # Aligned to the cipher block; clipped to the object's bytes.
            ranges.append((align_down(start), min(align_up(min(end, limit)), limit)))
        for s, e in ranges:
            for pos in range(s, e, FETCH_CHUNK):
                seg = (pos, min(e, pos + FETCH_CHUNK))
                if only_new and any(i.start < seg[1] and seg[0] < i.end for i in v.inflight):
                    continue
                inf = Inflight(*seg)
                v.inflight.append(inf)
                out.append(inf)
        return out

    async def _background_fill(self, v: ObjectContent, inf: Inflight) -> None:
        try:
            await self._fill(v, inf)
        except (CosEncFsError, OSError) as exc:
            # A foreground read of these bytes will try again and report it.
            log.debug("readahead of %s failed: %s", v.vid, exc)
        finally:
            v.pins -= 1

    async def _fill(self, v: ObjectContent, inf: Inflight) -> None:
        try:
            start, end = inf.start, inf.end
            src = v.source
            if src is None:
                raise CosEncFsError(f"cache copy {v.vid} has no source to fetch from")
            data = await self.store.get(src.key, start, end, if_match=src.etag or None)
            if len(data) != end - start:
                raise DamagedObjectError(
                    f"object {src.key!r} is shorter than expected "
                    f"({start + len(data)} < {end} bytes)"
                )
            self.fetched_bytes += len(data)
            async with v.lock:
                if v.discarded:
                    return
                if len(data) >= THREAD_THRESHOLD:
                    # Under v's lock: nothing else stores into v meanwhile.
                    await trio.to_thread.run_sync(
                        v.store_fetched, start, data, limiter=self.io_limiter
                    )
                else:
                    v.store_fetched(start, data)
        finally:
            v.inflight.remove(inf)
            inf.done.set()

    # -- space -----------------------------------------------------------------

    def usage(self) -> int:
        """Bytes in the cache directory's data: clean copies and dirty logs."""
        return self._usage[0] + sum(layer.log_size for layer in self.layers.values())

    def maybe_evict(self) -> int:
        """``evict``, at most twice a second: it walks every version."""
        now = trio.current_time()
        if now - self._last_evict < 0.5:
            return 0
        self._last_evict = now
        return self.evict()

    def evict(self) -> int:
        """Drop least recently used clean copies until under the limits (never dirty data).

        Returns the number of bytes freed.
        """
        used = self.usage()
        count = len(self.versions)
        if used <= self.limit_bytes and count <= self.max_versions:
            return 0
        freed = 0
        candidates = sorted(
            (v for v in self.versions.values() if v.pins == 0 and v.holds == 0 and not v.inflight),
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
        """Delete cache files no copy, layer or journal record refers to."""
        removed = 0
        for entry in os.scandir(self.data_dir):
            vid = entry.name.removesuffix(".log")
            if vid not in keep and vid not in self.versions and vid not in self.layers:
                os.unlink(entry.path)
                removed += 1
        return removed
