"""Clean files' metadata kept in the journal, not in memory (issue 18).

Every file a mount knows keeps its object's metadata (the envelope's wrapped
key and IV, the cosfs attributes, the integrity tags): ~250 bytes packed,
and the allocator's pools they pin, for each of 100,000 files of a
directory.  Nearly all of it is read only when the file's content is
fetched again or its object rewritten (reads, writes, rename, chmod, the
directory index).  The journal's attribute cache (cache/journal.py) already
holds the same metadata for every object this mount wrote or HEADed, so a
clean file whose clean copy is not held (evicted, or never made) holds none:
``Remote.metadata`` reads it back from there on use.

A record is used only for the object it was written for (the same ETag and
size as the inode's ``Remote``), and only if it is what the inode held: the
metadata is left there only when the record gives it back equal at that
moment, and the ``Remote`` keeps a keyed digest of it (60 bits under a key
of this process, 8 bytes of slot and a 32-byte int instead of ~250 bytes).
So a record read back is the metadata the mount had applied and trusted
(its attribute tag checked where it came from: a HEAD, the attribute
cache, our own upload; issue 11), envelope included.  A record that is not
(altered on disk, lost with a failed batch, replaced by another version)
is refused: the metadata is then None and the attributes of a clean file
unknown again, so the next use HEADs the object, as for an entry only a
listing showed.
Everything here runs in the event loop, without an await between a check
and what it guards.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass

from cosencfs.fs.context import FsContext
from cosencfs.fs.inode import Inode, Remote

log = logging.getLogger(__name__)


@dataclass(slots=True)
class MetaStats:
    stored: int = 0
    loaded: int = 0
    refused: int = 0


class JournalMeta:
    """The ``MetaLoader`` of one mount (``Remote.store``)."""

    def __init__(self, ctx: FsContext) -> None:
        self.ctx = ctx
        self.stats = MetaStats()
        #: Keys the digests: a record written by anyone else cannot match one.
        self._key = os.urandom(32)

    def digest(self, meta: Mapping[str, str]) -> int:
        """A keyed 60-bit digest of ``meta`` (names and values, order-free)."""
        h = hashlib.blake2b(key=self._key, digest_size=8)
        for k, v in sorted(meta.items()):
            h.update(f"{len(k)}:{k}{len(v)}:{v}".encode("utf-8", "surrogatepass"))
        return int.from_bytes(h.digest(), "little") >> 4

    def store(self, node: Inode) -> bool:
        """Hold ``node``'s metadata no more if the journal gives it back.

        Only for a clean file, not unlinked, whose clean copy is not held (a
        held copy's ``Source`` shares the packed metadata: nothing to save).
        """
        r = self._storable(node)
        if r is None:
            return False
        if r.stored:
            return True
        held = r.packed_metadata
        if held is None:
            return False
        meta = self._record(node, r)
        if meta is None or meta != held:
            return False
        r.store(node, self, self.digest(meta))
        self.stats.stored += 1
        return True

    def adopt(self, node: Inode) -> None:
        """``store`` for a caller that has just put or checked the journal's
        record of this very metadata (attrload: a HEAD's, the cache's)."""
        r = self._storable(node)
        held = None if r is None or r.stored else r.packed_metadata
        if r is not None and held is not None:
            r.store(node, self, self.digest(held))
            self.stats.stored += 1

    @staticmethod
    def _storable(node: Inode) -> Remote | None:
        r = node.remote
        if node.is_dir or r is None or node.dirty or node.unlinked:
            return None
        f = node.held_file  # (None: a clean file holding only defaults)
        if f is not None and (f.clean is not None or f.open_count or f.symlink_target is not None):
            return None
        return r

    def load(self, node: Inode, remote: Remote) -> dict[str, str] | None:
        """``remote``'s metadata from the journal (``Remote.metadata``)."""
        meta = self._record(node, remote)
        if meta is not None and self.digest(meta) == remote.check:
            self.stats.loaded += 1
            return meta
        self.stats.refused += 1
        log.warning(
            "%r: its metadata in the attribute cache was altered or is gone; asked again",
            self.ctx.key_of(node),
        )
        remote.metadata = None
        if node.remote is remote and not node.dirty:
            node.attrs_known = False  # (the next use HEADs it: attrload.ensure)
        return None

    def peek(self, node: Inode, remote: Remote) -> dict[str, str] | None:
        """``remote``'s metadata with no effect on ``node`` when refused (the
        directory index: no entry then)."""
        if not remote.stored:
            return remote.metadata
        meta = self._record(node, remote)
        return meta if meta is not None and self.digest(meta) == remote.check else None

    def _record(self, node: Inode, remote: Remote) -> dict[str, str] | None:
        key = self.ctx.key_of(node)
        try:
            rec = self.ctx.journal.get_attrs(key)
        except sqlite3.Error as exc:  # (closed at unmount, a disk error): as if gone
            log.debug("attribute cache not read: %s", exc)
            return None
        if rec is None or rec.etag != remote.etag or rec.size != remote.size:
            return None
        return dict(rec.meta)
