"""Directory attribute indexes: a cold ``ls -l`` with one GET instead of a HEAD per file.

Each directory this mount writes files in gets an index object,
``<dir prefix>.cosencfs-index`` (docs/format.md, section 14): per file, the
ETag, size and Last-Modified its listing showed and the cosfs attribute
fields of its metadata, MAC'd as a whole under the tag key.

- **reading** (:meth:`DirIndex.load`, from a listing that showed the
  index): entries are applied one by one, only to entries whose attributes
  are unknown and whose listing shows exactly the entry's ETag, size and
  Last-Modified; any other entry (the object rewritten by the SDK, cosfs,
  another mount; deleted) is ignored and gets its HEAD as before.  An index
  that is missing, larger than ``MAX_INDEX_BYTES``, forged or truncated is
  ignored as a whole, with one log line;
- **writing** (:meth:`DirIndex.changed` after a commit): batched with
  write-back, a directory's index (once it has ``MIN_FILES`` entries, or
  already has an index) is rewritten once its files have been
  quiet for ``QUIET`` seconds (at most ``MAX_DELAY``, or 10 ms per entry,
  after its first change), and at ``sync``/unmount: one LIST of the directory (for the
  Last-Modified values COS gave) and one PUT per batch, plus a GET of the
  old index when entries this mount has no metadata of must be carried over.
  HEADs of a directory's entries together (readdir, stat-ahead) schedule a rewrite
  too, so an index that went stale (other writers) or never covered the
  older files of a directory is repaired by the next cold ``ls -l``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import trio
import trio.lowlevel

from cosencfs.crypto.dirindex import HEAD_ROOM, TAIL_ROOM, AttrState, IndexEntry, entry_line
from cosencfs.crypto.integrity import ATTR_TAG_FIELD, OBJECT_TAG_FIELD, TagKey
from cosencfs.errors import CosEncFsError, CryptoError, IntegrityError
from cosencfs.fs.attrload import AttrLoader
from cosencfs.fs.attrs import META_GID, META_MODE, META_MTIME, META_RDEV, META_UID
from cosencfs.fs.context import FsContext
from cosencfs.fs.indexbuf import IndexLines, ReceivedIndex
from cosencfs.fs.inode import Inode
from cosencfs.fs.names import INDEX_NAME, valid_listed_name
from cosencfs.store.base import ObjectInfo

log = logging.getLogger(__name__)

#: An index larger than this is neither read nor written (about 200,000 entries).
MAX_INDEX_BYTES = 32 * 1024 * 1024
#: A directory gets its first index once it holds this many entries: below,
#: the parallel HEADs of stat-ahead (16 at a time) cost a few round trips,
#: less than the index's LIST and PUT after every batch of changes.
MIN_FILES = 64
#: A directory's index is rewritten once its files were quiet this long ...
QUIET = 1.0
#: ... or this long after its first change (or ``DELAY_PER_ENTRY`` per entry
#: if longer), whichever comes first: a rewrite costs work in proportion to
#: the directory, so spacing rewrites in proportion too keeps the cost per
#: new file constant while files keep coming.
MAX_DELAY = 30.0
DELAY_PER_ENTRY = 0.01
#: Entries applied between two checkpoints (other tasks run in between).
_STEP = 2000
_FIELDS = (META_MODE, META_UID, META_GID, META_MTIME, META_RDEV)
_CONTENT_TYPE = "application/octet-stream"


@dataclass(slots=True)
class IndexStats:
    loaded: int = 0
    applied: int = 0
    mismatched: int = 0
    refused: int = 0
    written: int = 0
    write_failures: int = 0


def _lines_bound() -> int:
    """Bytes of entry lines whose index (header and MAC line added) is read back."""
    return MAX_INDEX_BYTES - HEAD_ROOM - TAIL_ROOM


def _removed(d: Inode) -> bool:
    """(Read again after an await: mypy would take the earlier check as still holding.)"""
    return d.unlinked


@dataclass(slots=True)
class _Pending:
    node: Inode
    first: float
    last: float


class DirIndex:
    def __init__(self, ctx: FsContext, attrs: AttrLoader) -> None:
        self.ctx = ctx
        self.attrs = attrs
        self.stats = IndexStats()
        self._keys: dict[str, TagKey] = {}
        for master in ctx.codec.masters:
            try:
                self._keys[master.key_id] = TagKey.from_master(master)
            except CryptoError:
                pass  # a public-only RSA key: no index, HEADs as before
        self._kid = ctx.codec.key_id if ctx.codec.key_id in self._keys else None
        #: False: read indexes, write none (tests: a mount of an older version).
        self.writes = True
        # A directory whose entries had to be HEADed gets an index that covers them.
        attrs.on_headed = self.changed
        self._pending: dict[int, _Pending] = {}
        self._wake = trio.Event()
        self._lock = trio.Lock()
        self._warned: set[tuple[str, str]] = set()

    # -- reading ---------------------------------------------------------------

    async def load(self, d: Inode, info: ObjectInfo) -> None:
        """Apply the index ``info`` (seen in ``d``'s listing) to entries of unknown attributes."""
        children = d.as_dir.children
        if not self._keys or all(n.attrs_known or n.is_dir for n in children.values()):
            return
        if info.size > MAX_INDEX_BYTES:
            self._warn(info, f"larger than {MAX_INDEX_BYTES} bytes, not read")
            return
        prefix = self.ctx.key_of(d)
        received: ReceivedIndex | None = None
        try:
            received = self._received(info)
            await received.fetch(self.ctx.store, info.etag)
            entries = await received.entries(self._keys, prefix, self.ctx.cache.io_limiter)
            self.stats.loaded += 1
            applied = mismatched = 0
            for i, e in enumerate(entries, 1):
                node = children.get(e.name)
                if node is not None and self._applies(node, e):
                    applied += 1
                elif node is not None and not node.attrs_known:
                    mismatched += 1
                if i % _STEP == 0:
                    await trio.lowlevel.checkpoint()
        except IntegrityError as exc:
            self.stats.refused += 1
            self._warn(info, f"{exc}; HEADs instead")
            return
        except (CosEncFsError, OSError) as exc:
            log.info("directory index %r not read (%s); HEADs instead", info.key, exc)
            return
        except Exception:
            # (A bug here must cost HEADs, not the listing.)
            log.exception("directory index %r not read; HEADs instead", info.key)
            return
        finally:
            if received is not None:
                received.close()
        self.stats.applied += applied
        self.stats.mismatched += mismatched
        log.debug("index of %r: %d applied, %d stale", prefix, applied, mismatched)

    def _received(self, info: ObjectInfo) -> ReceivedIndex:
        """A private file of the cache to receive the index ``info`` into (indexbuf.py)."""
        return ReceivedIndex(self.ctx.cache.data_dir, info.key, info.size)

    def _lines(self) -> IndexLines:
        return IndexLines(self.ctx.cache.data_dir, _lines_bound())

    def _applies(self, node: Inode, e: IndexEntry) -> bool:
        """Apply ``e`` to ``node`` if it describes the object the listing showed."""
        r = node.remote
        if node.attrs_known or node.is_dir or node.dirty or r is None:
            return False
        if not e.matches(r.etag, r.size, r.last_modified):
            return False
        meta: dict[str, str] = {}
        if e.state is AttrState.AUTHENTIC or (
            e.state is AttrState.UNTAGGED and not self.ctx.tags.require
        ):
            meta = {k: v for k, v in zip(_FIELDS, e.fields, strict=True) if v is not None}
        self.attrs.from_index(node, meta, authentic=e.state is AttrState.AUTHENTIC)
        return True

    def _warn(self, info: ObjectInfo, what: str) -> None:
        if (info.key, info.etag) not in self._warned:
            self._warned.add((info.key, info.etag))
            log.warning("directory index %r: %s", info.key, what)

    # -- writing ---------------------------------------------------------------

    def changed(self, d: Inode | None) -> None:
        """A file in ``d`` was committed, or its entries HEADed: rewrite ``d``'s
        index in a while."""
        if d is None or d.dir is None or self._kid is None or not self.writes:
            return
        if not d.dir.index_seen and len(d.dir.children) < MIN_FILES:
            return
        now = trio.current_time()
        p = self._pending.get(d.ino)
        if p is None:
            self._pending[d.ino] = _Pending(d, now, now)
            self._wake.set()
        else:
            p.last = now

    @property
    def pending(self) -> int:
        """Directories whose index is due to be rewritten."""
        return len(self._pending)

    def _due(self, p: _Pending) -> float:
        entries = len(p.node.dir.children) if p.node.dir is not None else 0
        return min(p.last + QUIET, p.first + max(MAX_DELAY, entries * DELAY_PER_ENTRY))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            now = trio.current_time()
            due = [p for p in self._pending.values() if self._due(p) <= now]
            for p in due:
                # Taken from the queue one at a time, right before its write
                # waits for the lock: a flush() meanwhile either writes it
                # itself or waits for this write (see flush).
                if self._pending.get(p.node.ino) is not p:
                    continue  # written by a flush() meanwhile
                del self._pending[p.node.ino]
                await self._write_logged(p.node)
            self._wake = trio.Event()
            wake_at = min((self._due(p) for p in self._pending.values()), default=math.inf)
            with trio.move_on_at(wake_at):
                await self._wake.wait()

    async def flush(self) -> None:
        """Write every pending index now (sync, unmount)."""
        pending, self._pending = list(self._pending.values()), {}
        for p in pending:
            await self._write_logged(p.node)
        # A rewrite run() took from the queue may still be under way (or
        # waiting for the lock, ahead of this task: trio's locks are fair):
        # sync and unmount return only once it has ended.
        async with self._lock:
            pass

    async def _write_logged(self, d: Inode) -> None:
        try:
            # The directory's upload lock, as rmdir and rename take it: its
            # prefix stays the one listed, and rmdir sees the index it deletes.
            async with self._lock, d.upload_lock:
                await self.write(d)
        except Exception as exc:
            # An index is an optimisation: whatever goes wrong, the mount
            # goes on (HEADs instead), it must not take the nursery down.
            if not isinstance(exc, CosEncFsError | OSError):
                log.exception("unexpected error writing the directory index of %r", d.name)
            self.stats.write_failures += 1
            log.warning("directory index of %r not written (%s)", d.name, exc)

    async def write(self, d: Inode) -> None:
        """Rewrite ``d``'s index from a fresh listing (entries are never guessed).

        Each entry is made as its page of the listing arrives, and only its
        line is kept, in the listing's order (COS lists keys sorted, the
        order of the index), in an unlinked private file of the cache that
        is closed (and so gone) when the rewrite ends (cosencfs/fs/indexbuf.py):
        a rewrite of a 100,000-entry directory held every listed object and
        every entry at once (~100 MB at its peak), then its ~15 MB of lines
        in the daemon's memory, which set its peak RSS (issue 18).
        """
        tk = None if self._kid is None else self._keys[self._kid]
        if tk is None or self._kid is None or d.unlinked or d.dir is None:
            return
        prefix = self.ctx.key_of(d)
        lines = self._lines()
        try:
            await self._write(d, tk, self._kid, prefix, lines)
        finally:
            lines.close()

    async def _write(self, d: Inode, tk: TagKey, kid: str, prefix: str, lines: IndexLines) -> None:
        n = 0
        #: Objects this mount has no entry for, at their place in ``lines``.
        holes: list[tuple[int, str, ObjectInfo]] = []
        old: ObjectInfo | None = None
        last = ""
        children = d.as_dir.children
        async for page in self.ctx.store.list_all(prefix, "/"):
            for obj in page.objects:
                name = obj.key[len(prefix) :]
                if name == INDEX_NAME:
                    old = obj
                elif valid_listed_name(name):
                    if name <= last:
                        log.warning("directory %r listed out of order: no index written", prefix)
                        return
                    last = name
                    # (No await between the child's state and its entry.)
                    e = self._entry_of(name, children.get(name), obj)
                    if e is None:
                        holes.append((len(lines), name, obj))
                    else:
                        lines.append(entry_line(e))
                        n += 1
        if holes and old is not None:
            merged = self._lines()
            try:
                carried = await self._carry_over(prefix, old, holes, lines, merged)
                if carried:
                    holes.clear()
                    await self._send(d, tk, kid, prefix, merged, n + carried, old)
                    return
            finally:
                merged.close()
        holes.clear()
        await self._send(d, tk, kid, prefix, lines, n, old)

    async def _send(
        self,
        d: Inode,
        tk: TagKey,
        kid: str,
        prefix: str,
        lines: IndexLines,
        n: int,
        old: ObjectInfo | None,
    ) -> None:
        if not n:
            if old is not None:
                await self.ctx.store.delete(old.key)
            return
        if lines.overflowed:
            log.warning("directory %r: index over %d bytes not written (bound)", prefix, len(lines))
            return
        if _removed(d):
            return  # removed while listed: an index now would bring the prefix back
        # A delete of an earlier index (rmdir, then mkdir again) goes out first.
        await self.ctx.deleter.settle(prefix + INDEX_NAME)
        body = await lines.body(tk, kid=kid, prefix=prefix, n=n, limiter=self.ctx.cache.io_limiter)
        await self.ctx.store.put(prefix + INDEX_NAME, body, {}, content_type=_CONTENT_TYPE)
        d.as_dir.index_seen = True
        self.stats.written += 1

    def _entry_of(self, name: str, node: Inode | None, obj: ObjectInfo) -> IndexEntry | None:
        """An entry for ``obj`` from what this mount knows of it (its full metadata)."""
        if node is None or node.is_dir or node.dirty or node.unlinked:
            return None
        r = node.remote
        if r is None or r.etag != obj.etag or r.size != obj.size:
            return None
        # (Its tags are checked below as for any metadata; a record of the
        # journal that does not match gives no entry: carried over or HEADed.)
        meta = self.attrs.ns.meta.peek(node, r)
        if meta is None:
            return None
        key = self.ctx.key_of(node)
        if self.ctx.tags.attrs_authentic(key, meta):
            state = AttrState.AUTHENTIC
        elif ATTR_TAG_FIELD not in meta and OBJECT_TAG_FIELD not in meta:
            state = AttrState.UNTAGGED
        else:
            state = AttrState.FAILED
        got = tuple(None if state is AttrState.FAILED else meta.get(f) for f in _FIELDS)
        fields = (got[0], got[1], got[2], got[3], got[4])
        atag = meta.get(ATTR_TAG_FIELD)
        return IndexEntry(name, obj.etag, obj.size, obj.last_modified, fields, state, atag)

    async def _carry_over(
        self,
        prefix: str,
        old: ObjectInfo,
        holes: list[tuple[int, str, ObjectInfo]],
        lines: IndexLines,
        merged: IndexLines,
    ) -> int:
        """``lines`` into ``merged`` with, each at its object's place, the old
        index's entries that still match the listing (objects this mount has
        not HEADed: written by another mount, or loaded from the index); how
        many were carried over (0: ``merged`` is not to be used).

        The old index is read from a file a chunk at a time and merged as
        it goes: both it and ``holes`` are in name order (the listing's).
        """
        if old.size > MAX_INDEX_BYTES or lines.overflowed:
            return 0
        limiter = self.ctx.cache.io_limiter
        carried = at = 0
        received: ReceivedIndex | None = None
        try:
            received = self._received(old)
            await received.fetch(self.ctx.store, old.etag)
            entries = await received.entries(self._keys, prefix, limiter)
            e = next(entries, None)
            for i, (pos, name, obj) in enumerate(holes, 1):
                while e is not None and e.name < name:
                    e = next(entries, None)
                if (
                    e is not None
                    and e.name == name
                    and e.matches(obj.etag, obj.size, obj.last_modified)
                ):
                    await merged.copy_from(lines, at, pos, limiter)
                    merged.append(entry_line(e))
                    at = pos
                    carried += 1
                if i % _STEP == 0:
                    await trio.lowlevel.checkpoint()
            if carried:
                await merged.copy_from(lines, at, len(lines), limiter)
            return carried
        except IntegrityError as exc:
            self._warn(old, f"{exc}; not carried over")
        except (CosEncFsError, OSError) as exc:
            log.info("directory index %r not carried over (%s)", old.key, exc)
        finally:
            if received is not None:
                received.close()
        return 0
