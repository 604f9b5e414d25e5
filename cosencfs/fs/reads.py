"""Reading file content: the clean copy of a file's object, or its dirty layers.

A clean file is read through a clean copy of its object in the cache (the
object's own ciphertext, fetched on demand, cosencfs/cache/fetch.py); a file
with changes not yet in COS through its dirty layers
(cosencfs/cache/assemble.py).  Either way a sequential reader gets the
object's next bytes fetched ahead (the handle's ``Readahead``).
"""

from __future__ import annotations

import logging

from cosencfs.cache import assemble
from cosencfs.cache.content import ObjectContent, Source
from cosencfs.crypto.envelope import ObjectFormat, classify
from cosencfs.errors import DamagedObjectError
from cosencfs.fs.attrload import AttrLoader
from cosencfs.fs.attrs import META_SIZE
from cosencfs.fs.context import FsContext
from cosencfs.fs.handles import Handle
from cosencfs.fs.inode import Inode
from cosencfs.fs.policy import check_servable

log = logging.getLogger(__name__)

#: Reads off the sequential path before a handle counts as random access.
RANDOM_AFTER = 2
#: Random access fetches the whole object when it takes at most this share of the cache.
WHOLE_SHARE = 0.5
#: A sequential window is fetched in GETs of a quarter of it (at least
#: ``readahead_min``, at most ``FETCH_CHUNK``), and topped up by one such GET
#: as soon as the reader has read a quarter (branch coldfetch: before, by two
#: once it had read half, so the bytes on their way fell to half a window
#: between top-ups).  An eighth made twice the GETs of a 256 MiB read for no
#: measurable gain on the benchmark machine.
PIECES = 4


async def remote_source(ctx: FsContext, node: Inode) -> Source | None:
    """The object ``node`` holds in COS, with its data key (None: empty).

    Its integrity tags are verified here, before any byte is fetched
    (IntegrityError when they fail or the object must not be untagged).
    """
    r = node.remote
    # One copy for every check below (each read of ``Remote.metadata`` unpacks
    # a new dict), and one view of it across the awaits.
    meta = None if r is None else r.metadata
    if r is None or r.size == 0 or meta is None:
        return None
    key = ctx.key_of(node)
    if node.unlinked and node.file is not None and node.file.pending_delete is not None:
        # Unlinked while open: its object stays at the name it had until the
        # last close, whatever became of that name's directory since.
        key = node.file.pending_delete
    written = meta.get(META_SIZE)
    if written is not None and written != str(r.size):
        # CTR has no integrity check: a truncated or extended body would
        # decrypt "fine". The size recorded at upload catches it.
        raise DamagedObjectError(f"object {key!r} is {r.size} bytes but was written with {written}")
    check_servable(ctx.options, key, meta, r.size)
    # The caller may hold the file's state (a truncate or a first write of a
    # closed file): not compacted while the tags are read (Inode.busy).
    with node.busy():
        if classify(meta) is ObjectFormat.PLAIN:
            await ctx.tags.verify(key, r.size, meta, current=not node.unlinked)
            log.info("%r has no encryption envelope; reading it as plaintext", key)
            return Source(key, r.etag, None, r.size, {})
        dk = ctx.codec.open(meta, key=key)
        # An unlinked file still open reads its own object, older than what the
        # name may hold now: no rollback to speak of.
        verified = await ctx.tags.verify(key, r.size, meta, current=not node.unlinked)
    return Source(key, r.etag, dk, r.size, meta, verified)


class Reader:
    def __init__(self, ctx: FsContext, attrs: AttrLoader) -> None:
        self.ctx = ctx
        self.attrs = attrs
        #: Requests served (average sizes tell how well the kernel batches).
        self.reads = self.read_bytes = 0
        # Decrypted read-ahead held for readers: room for two full windows.
        hold = ctx.cache.fetcher.hold
        hold.budget = max(hold.budget, 2 * ctx.options.readahead_max)
        #: The copy each open handle's read-ahead fetched into, by handle
        #: number: closing the handle cancels what is still speculative there.
        self._ahead: dict[int, tuple[Handle, ObjectContent]] = {}

    def check_open(self, node: Inode) -> None:
        """Raise RefusedError if ``node``'s object must not be served (``open``).

        Content that is local (dirty: written or truncated here) is ours; a
        node whose metadata is still unknown is checked when its content is
        first read (``remote_source``).
        """
        r = node.remote
        meta = None if r is None else r.metadata  # (a copy per read of it: read once)
        if node.is_dir or node.data_dirty or r is None or meta is None:
            return
        check_servable(self.ctx.options, self.ctx.key_of(node), meta, r.size)

    def release(self, fh: int) -> None:
        """Handle ``fh`` is being closed: its read-ahead's GETs not yet arrived,
        and those of its whole-object fetch, are cancelled (a reader that
        stops early does not leave a window, or the rest of the object,
        downloading for nobody).  Fetches another reader waits for or shares
        are not its own any more, so they go on."""
        entry = self._ahead.pop(fh, None)
        if entry is None:
            return
        h, v = entry
        fetcher = self.ctx.cache.fetcher
        # Its decrypted read-ahead too, unless another handle may be reading it.
        alone = h.node.as_file.open_count <= 1
        fetcher.cancel_ahead(v, h.readahead, (0, 0), forget=alone)

    async def clean_copy(self, node: Inode) -> ObjectContent | None:
        """The clean copy reads of an unchanged file come from (made on first use)."""
        f = node.as_file
        v = f.clean
        if v is not None and not v.discarded:
            return v
        r = node.remote
        if r is None or r.size == 0:
            return None
        if r.metadata is None:
            await self.attrs.ensure(node)
            # Another task may have made the copy while we waited.
            return await self.clean_copy(node) if node.remote is not None else None
        source = await remote_source(self.ctx, node)
        if source is None:
            return None
        if f.clean is not None and not f.clean.discarded:
            return f.clean  # made by another reader while this one verified
        if node.remote is None or node.remote.etag != source.etag:
            return await self.clean_copy(node)  # the object changed meanwhile
        v = self.ctx.cache.clean_for(source)
        v.owner = node
        f.clean = v
        return v

    async def read(self, h: Handle, offset: int, size: int) -> bytes | memoryview:
        cache = self.ctx.cache
        self.reads += 1
        head = h.node.as_file.head
        if head is not None:
            bottom = head.bottom
            if bottom.source is not None:
                # Bytes not rewritten come from the object: read ahead there
                # (into the cache file only: the layers are read from there).
                self._readahead(h, cache.clean_for(bottom.source), offset, size, serve=False)
            data = await assemble.read_plain(cache, head, offset, offset + size)
            self.read_bytes += len(data)
            return data
        v = await self.clean_copy(h.node)
        if v is None or offset >= v.size:
            return b""
        v.pins += 1
        try:
            self._readahead(h, v, offset, size, serve=True)
            got = await cache.fetcher.read(v, offset, size)
            self.read_bytes += len(got)
            return got
        finally:
            v.pins -= 1
            cache.maybe_evict()

    def _wants_whole(self, h: Handle, v: ObjectContent) -> bool:
        ra = h.readahead
        return (
            not ra.whole
            and ra.jumps >= RANDOM_AFTER
            and v.limit <= self.ctx.cache.limit_bytes * WHOLE_SHARE
            and not v.present.contains(0, v.limit)
        )

    def _readahead(
        self, h: Handle, v: ObjectContent, offset: int, size: int, *, serve: bool
    ) -> None:
        opts = self.ctx.options
        nursery = self.ctx.nursery
        fetcher = self.ctx.cache.fetcher
        ra = h.readahead
        span = ra.advance(
            offset,
            size,
            v.limit,
            smallest=opts.readahead_min,
            largest=opts.readahead_max,
            fetching=nursery is not None,
            pieces=PIECES,
        )
        if ra.moved_away and not ra.whole:
            # The reader left its window: the GETs still running there would
            # only fill the cache with bytes nobody reads (what already
            # arrived stays).  Its own range is kept: it waits for that.
            # (A whole-object fetch is for readers that jump: it stays.)
            fetcher.cancel_ahead(v, ra, (offset, offset + size))
        if span is not None and nursery is not None:
            # GETs in parallel, a quarter of the window each, so the
            # window's round trips overlap from the first megabytes on.
            piece = max(opts.readahead_min, ra.window // PIECES)
            # ``serve``: the reader takes them from memory, decrypted as they
            # were stored (cosencfs/cache/plainhold.py).
            fetcher.prefetch(nursery, v, *span, owner=ra, piece=piece, serve=serve)
            self._ahead[h.fh] = (h, v)
        elif nursery is not None and self._wants_whole(h, v):
            # Random access to a file that fits the cache: one pass of large
            # parallel GETs beats a round trip per read; readers wait only for
            # the part that holds their range, which goes first.
            ra.whole = True
            # Past the page cache: filling it with the whole object cost more
            # CPU than fetching it (cold pages of a VM); the reads that follow
            # are small, and O_DIRECT-written ranges read back just as well.
            # Owned by the handle: closed, it cancels what has not arrived.
            fetcher.prefetch(nursery, v, 0, v.limit, owner=ra, first=offset, direct=True)
            self._ahead[h.fh] = (h, v)
        # Fetched ahead and not read yet: kept by eviction (one window per copy).
        v.ahead = (offset + size, ra.ahead_until) if ra.window and ra.ahead_until else None
