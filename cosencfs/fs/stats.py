"""What ``cosencfs stats`` shows: counters of the store, the cache, uploads, deletes, FUSE."""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cosencfs.fs.core import Filesystem


#: FUSE requests answered, by operation (counted by the operations layer,
#: cosencfs/fuse_ops.py). Event loop only.
FUSE_REQUESTS: Counter[str] = Counter()


def collect_stats(fs: Filesystem) -> dict[str, object]:
    ctx = fs.ctx
    cache = ctx.cache
    fetcher = cache.fetcher
    counters = ctx.store.counters.snapshot()
    dirty = fs.dirty_inodes()
    wb = fs.writeback.stats
    lookups = fetcher.hits + fetcher.misses
    return {
        "store": counters.as_dict(),
        "cache": {
            "bytes": cache.usage(),
            "limit": cache.limit_bytes,
            "versions": len(cache.versions),
            "dirty_layers": len(cache.layers),
            "hits": fetcher.hits,
            "misses": fetcher.misses,
            "hit_ratio": fetcher.hits / lookups if lookups else 0.0,
            "fetched_bytes": fetcher.fetched_bytes,
            # New cache files: made ahead by a worker thread, or (none ready)
            # by the event loop itself.
            "spare_files_taken": cache.spares.taken,
            "spare_files_missed": cache.spares.missed,
        },
        "dirty": {
            "files": len(dirty),
            "bytes": sum(n.file.current_size for n in dirty if n.file and n.data_dirty),
            "journal_records": cache.journal.dirty_count(),
            "oldest_age": fs.writeback.oldest_dirty_age(),
        },
        "uploads": {
            "queued": fs.writeback.queued,
            "done": wb.uploads,
            "failed": wb.failures,
            "failing_now": len(wb.failing),
            "last_error": wb.last_error,
            "part_buffers": ctx.part_buffers.stats(),
        },
        "deletes": {
            "pending": len(ctx.deleter),
            "done": ctx.deleter.deleted,
            "failed": ctx.deleter.failures,
        },
        "integrity": {
            "writing_tags": ctx.tags.writing,
            "require": ctx.tags.require,
            **dataclasses.asdict(ctx.tags.stats),
            "chunks_verified": fetcher.chunks_verified,
            "chunk_failures": fetcher.chunk_failures,
        },
        "inodes": len(ctx.table),
        #: Clean files' metadata left to the journal (fs/metastore.py).
        "metadata": dataclasses.asdict(fs.ns.meta.stats),
        "fuse": {
            "reads": fs.reader.reads,
            "read_bytes": fs.reader.read_bytes,
            "writes": fs.writer.writes,
            "write_bytes": fs.writer.write_bytes,
            "getxattrs": fs.getxattrs,
            "requests": dict(FUSE_REQUESTS),
        },
    }
