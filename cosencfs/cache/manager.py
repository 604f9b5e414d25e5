"""The block cache: its directory, clean object copies, and the space they take.

Clean copies (:class:`ObjectContent`) hold objects' own ciphertext, one per
(key, ETag); they are filled by ranged GETs (cosencfs/cache/fetch.py).
Dirty layers (:class:`DirtyLayer`) hold what users wrote, as logs of AES-GCM
records under cache-only keys (cosencfs/cache/layers.py).

Eviction is least-recently-used over clean, unpinned copies; dirty data is
never evicted.  At start-up, files of the data directory that nothing uses
or names are swept.
"""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import os
from collections.abc import Callable
from pathlib import Path

import trio

from cosencfs.cache import memtrim
from cosencfs.cache.content import ObjectContent, Source
from cosencfs.cache.dirtylog import DirtyLayer
from cosencfs.cache.evict import RangeEvictor
from cosencfs.cache.fetch import Fetcher
from cosencfs.cache.journal import Journal
from cosencfs.cache.layers import Layers
from cosencfs.cache.layout import new_vid, prepare_cache_dir
from cosencfs.cache.spare import SpareFiles
from cosencfs.crypto.ctr import DataKey
from cosencfs.errors import CacheIntegrityError, ConfigError, CosEncFsError, KeyReuseError
from cosencfs.store.base import ObjectStore

log = logging.getLogger(__name__)


class CacheManager:
    def __init__(
        self,
        root: Path,
        store: ObjectStore,
        *,
        limit_bytes: int,
        max_versions: int = 20_000,
        max_unread: int = 2_048,
    ) -> None:
        self.root = root
        self.store = store
        self.limit_bytes = limit_bytes
        self.max_versions = max_versions
        #: Of these, copies an upload produced that nobody read since (a
        #: directory of 100,000 new files kept 20,000 of them, ~1 KB of
        #: memory each, for files written once; issue 18).  One read back
        #: beyond these costs a GET, verified as every fetch is.
        self.max_unread = max_unread
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
        #: Called when a clean copy is evicted, so its owner forgets it.
        self.on_evict: Callable[[ObjectContent], None] = lambda v: None
        self.io_limiter = trio.CapacityLimiter(4)
        self.fetcher = Fetcher(store, self.io_limiter)
        self.layers = Layers(self.data_dir, self)
        #: Empty files made ahead by a worker thread (creating one on the loop is slow).
        self.spares = SpareFiles(self.data_dir)
        self._last_evict = -1e9
        #: Clean bytes at which the next eviction runs without waiting (below).
        self._evict_mark = 0
        self.ranges = RangeEvictor()
        self.fetcher.on_stored = self.maybe_evict
        #: Bytes present over all clean copies (shared with each copy).
        self._usage = [0]

    def close(self) -> None:
        self.spares.close()
        for v in list(self.versions.values()):
            v.close()
        self.layers.close()
        self.versions.clear()
        self._by_source.clear()
        self.journal.close()
        os.close(self._lock_fd)

    # -- clean copies ------------------------------------------------------------

    def file_path(self, vid: str) -> Path:
        """Where the cache file of copy ``vid`` is (or was)."""
        return self.data_dir / vid

    def _path(self, vid: str) -> str:
        return str(self.file_path(vid))

    def _new(self, dk: DataKey, size: int, source: Source | None) -> ObjectContent:
        spare = self.spares.take()
        vid = new_vid() if spare is None else spare
        v = ObjectContent(vid, self._path(vid), dk, size, source, create=spare is None)
        v.account = self._usage
        self.versions[vid] = v
        return v

    def clean_for(self, source: Source) -> ObjectContent:
        """The clean copy of the object ``source`` names (made empty on first use).

        ``source.limit`` is the object's size: the bytes there are to fetch.
        """
        v = self._by_source.get((source.key, source.etag))
        if v is not None and not v.discarded:
            held = v.source.dk if v.source is not None else None
            if source.dk is not None and (
                held is None or held.key != source.dk.key or held.iv != source.dk.iv
            ):
                # Same key and ETag, another data key: one of the two is not
                # that object; its bytes would decrypt to garbage.
                raise CacheIntegrityError(
                    f"cache copy {v.vid} of {source.key!r} (ETag {source.etag}) is under "
                    "another data key than the object it is asked for"
                )
            if v.source is not None and v.source.verified is None and source.verified is not None:
                # Checked since (recovery makes sources before it can verify):
                # every chunk fetched from now on is checked.
                v.source = dataclasses.replace(v.source, verified=source.verified)
            return v
        # A plaintext object is kept under a throw-away key of its own.
        dk = source.dk if source.dk is not None else DataKey.generate()
        src = dataclasses.replace(source, envelope=dict(source.envelope))
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

    def close_copy(self, v: ObjectContent) -> None:
        """Forget a copy but keep its file (the journal still names it)."""
        self._forget(v)
        v.close()

    def staged(self, dk: DataKey, size: int) -> ObjectContent:
        """An empty copy an upload produces under the new object's key ``dk``."""
        v = self._new(dk, size, None)
        v.holds += 1
        return v

    def upload_copy(self, layer: DirtyLayer, size: int) -> ObjectContent:
        """The copy ``layer``'s upload is produced into, under ``layer.object_dk``.

        One per key, ever, in this process: a layer whose copy went (retired,
        released) must not get a second one under the same key, whose bytes
        would be encrypted again (KeyReuseError instead).  After a restart the
        journal's sealed layer holds the same bytes, so its copy is made anew.
        """
        if layer.staged is not None:
            return layer.staged
        dk = layer.object_dk
        if dk is None:
            raise CosEncFsError(f"layer {layer.vid} has no object key to produce under")
        if layer.copy_dk == dk:
            raise KeyReuseError(
                f"layer {layer.vid} asks for a second upload copy under its object key"
            )
        v = layer.staged = self.staged(dk, size)
        layer.copy_dk = dk
        return v

    def adopt(self, v: ObjectContent, source: Source) -> None:
        """A produced copy is the object ``source`` now (its upload succeeded)."""
        v.source = source
        v.holds -= 1
        v.unread = True
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

    def _forget(self, v: ObjectContent) -> None:
        if self.versions.pop(v.vid, None) is not None:
            self._usage[0] -= v.present.total
        self._forget_source(v)

    def discard(self, v: ObjectContent) -> None:
        """Forget a clean copy and delete its cache file (by a worker thread: spare.py)."""
        self.close_copy(v)
        self.spares.dispose(v.path)

    # -- space -----------------------------------------------------------------

    def usage(self) -> int:
        """Bytes in the cache directory's data: clean copies and dirty logs."""
        return self._usage[0] + self.layers.log_bytes()

    @property
    def _slack(self) -> int:
        # How far clean bytes may grow between two evictions: the cache's
        # overshoot while a reader streams faster than twice a second.
        return max(1 << 20, min(self.limit_bytes // 16, 8 << 20))

    def maybe_evict(self) -> int:
        """``evict``, at most twice a second unless clean bytes grew by the slack since."""
        now = trio.current_time()
        if now - self._last_evict < 0.5 and self._usage[0] < self._evict_mark:
            return 0
        self._last_evict = now
        freed = self.evict()
        self._evict_mark = self._usage[0] + self._slack
        # Called on every release and stored fetch: the heap's free pages
        # go back to the system every few seconds (cache/memtrim.py).
        memtrim.trim()
        return freed

    def evict(self) -> int:
        """Free space until under the limits (never dirty data); the bytes freed.

        First whole clean copies nobody uses, least recently used first
        (beyond ``max_unread`` unread ones, the oldest of those); then, if
        still over the limit, clean ranges of copies in use that no reader
        needs now (cosencfs/cache/evict.py).
        """
        used = self.usage()
        count = len(self.versions)
        # (Counted only when there can be too many: this runs twice a second.)
        unread = (
            sum(1 for v in self.versions.values() if v.unread) if count > self.max_unread else 0
        )
        if used <= self.limit_bytes and count <= self.max_versions and unread <= self.max_unread:
            return 0
        freed = 0
        # Bases of dirty files stay until their upload: once it lands, the
        # base's ETag is gone from COS, and a dirty read still planned on it
        # could not fetch a dropped range again (412).
        bases = {id(self._by_source.get((s.key, s.etag))) for s in self.layers.sources()}
        by_age = [
            v
            for v in sorted(self.versions.values(), key=lambda v: v.last_access)
            if id(v) not in bases
        ]
        for v in by_age:
            over = used - freed > self.limit_bytes or count > self.max_versions
            if not over and unread <= self.max_unread:
                break
            if not over and not v.unread:
                continue  # only unread copies are too many
            if v.pins or v.holds or not v.idle:
                continue
            freed += v.cached_bytes
            count -= 1
            unread -= v.unread
            self.on_evict(v)
            self.discard(v)
        if used - freed > self.limit_bytes:
            freed += self.ranges.free(
                (v for v in by_age if not v.discarded), used - freed - self.limit_bytes
            )
        if freed:
            log.debug("evicted %d bytes from the cache", freed)
        return freed

    def sweep_orphans(self, keep: set[str]) -> int:
        """Delete cache files no copy, layer or journal record refers to."""
        removed = 0
        for entry in os.scandir(self.data_dir):
            vid = entry.name.removesuffix(".log")
            if vid in self.spares:
                continue
            if vid not in keep and vid not in self.versions and vid not in self.layers:
                os.unlink(entry.path)
                removed += 1
        return removed
