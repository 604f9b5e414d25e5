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
size as the inode's ``Remote``) and only if its attribute tag verifies
(``TagChecker.attrs_hold``, as any record of the attribute cache: issue 11);
metadata is stored only when the record gives it back unchanged at that
moment.  A record that no longer does (a row altered on disk, lost with a
failed batch, replaced by another version of the object) is refused: the
metadata is then None and the attributes of a clean file unknown again, so
the next use HEADs the object, as for an entry only a listing showed.
Everything here runs in the event loop, without an await between a check
and what it guards.
"""

from __future__ import annotations

import logging
import sqlite3
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
        meta = self._record(node, r, check=True)
        if meta is None or meta != held:
            return False
        r.store(node, self)
        self.stats.stored += 1
        return True

    def adopt(self, node: Inode) -> None:
        """``store`` for a caller that has just put or checked the journal's
        record of this very metadata (attrload: a HEAD's, the cache's)."""
        r = self._storable(node)
        if r is not None and not r.stored and r.packed_metadata is not None:
            r.store(node, self)
            self.stats.stored += 1

    @staticmethod
    def _storable(node: Inode) -> Remote | None:
        f = node.file
        r = node.remote
        if f is None or r is None or f.clean is not None or node.dirty or node.unlinked:
            return None
        if f.open_count or f.symlink_target is not None:
            return None
        return r

    def load(self, node: Inode, remote: Remote) -> dict[str, str] | None:
        """``remote``'s metadata from the journal (``Remote.metadata``)."""
        meta = self._record(node, remote, check=True)
        if meta is not None:
            self.stats.loaded += 1
            return meta
        self.stats.refused += 1
        log.warning(
            "%r: its metadata in the attribute cache does not verify or is gone; asked again",
            self.ctx.key_of(node),
        )
        remote.metadata = None
        if node.remote is remote and not node.dirty:
            node.attrs_known = False  # (the next use HEADs it: attrload.ensure)
        return None

    def peek(self, node: Inode, remote: Remote) -> dict[str, str] | None:
        """``remote``'s metadata for a caller that checks its tags itself (the
        directory index: attrs_authentic), with no effect on ``node``."""
        if not remote.stored:
            return remote.metadata
        return self._record(node, remote, check=False)

    def _record(self, node: Inode, remote: Remote, *, check: bool) -> dict[str, str] | None:
        key = self.ctx.key_of(node)
        try:
            rec = self.ctx.journal.get_attrs(key)
        except sqlite3.Error as exc:  # (closed at unmount, a disk error): as if gone
            log.debug("attribute cache not read: %s", exc)
            return None
        if rec is None or rec.etag != remote.etag or rec.size != remote.size:
            return None
        if check and not self.ctx.tags.attrs_hold(key, rec.meta, is_dir=False):
            return None
        return dict(rec.meta)
