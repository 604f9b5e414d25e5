"""The cache directory's journal: a SQLite database in WAL mode.

It holds two things:

* ``dirty``: every file whose content or attributes are not yet in COS —
  the object key, the layers of its dirty content (each a log in the cache
  directory: its id, how many bytes of it count, its size and limit, and its
  cache key *wrapped* under a key derived from the master key), where the
  bytes below the layers come from, the attributes, and, once the content is
  sealed for upload, the new object's envelope and multipart upload.  A
  record is logged when the file is closed (so data whose ``close()``
  returned survives a crash of the daemon; closelog.py: many go into SQLite
  in one transaction) and removed once the object is committed.  The next
  mount finishes what it finds here.  Records of format 1 (written by
  releases before the dirty-log cache) name one cache file of ciphertext at
  object offsets instead; they are still read and uploaded.
* ``attrs``: attributes (object metadata) of objects seen or written, keyed by
  object key and validated by ETag and size (and Last-Modified when known),
  so a remount need not HEAD every object again to show ``ls -l``.
* ``tags``: per object key, the object tag of the version this mount last
  wrote or verified there, and the tags of the versions it replaced: the
  memory that refuses an object stripped of its tags (downgrade) or put back
  to an older version (rollback), docs/format.md section 12.10.

No plaintext and no unwrapped key is ever stored here.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import ParamSpec, TypeVar

from cosencfs.cache.closelog import WriteAhead
from cosencfs.cache.records import (
    FORMAT_LAYERS,
    FORMAT_LEGACY,
    AttrRecord,
    DirtyRecord,
    LayerRecord,
    SourceRecord,
    TagMemory,
    dirty_row,
    parse_dirty,
    parts_json,
)
from cosencfs.cache.tagbuffer import TagBuffer
from cosencfs.errors import ConfigError

#: The record types are part of the journal's interface (cosencfs/cache/records.py).
__all__ = [
    "FORMAT_LAYERS",
    "FORMAT_LEGACY",
    "SCHEMA_VERSION",
    "AttrRecord",
    "DirtyRecord",
    "Journal",
    "LayerRecord",
    "SourceRecord",
    "TagMemory",
]

log = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")


def _disk_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """A full disk is ENOSPC for the caller (a writer's close()), not an internal error."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except sqlite3.OperationalError as exc:
            if "full" in str(exc):
                raise OSError(errno.ENOSPC, "cache disk full (journal)") from exc
            raise OSError(errno.EIO, f"cache journal: {exc}") from exc

    return wrapper


def _best_effort(fn: Callable[P, None]) -> Callable[P, None]:
    """The attribute cache only saves requests: failing to write it is no error."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            fn(*args, **kwargs)
        except sqlite3.OperationalError as exc:
            log.debug("attribute cache not updated: %s", exc)

    return wrapper


SCHEMA_VERSION = 4  # 4: records may wait in journal.db-closes (older releases would miss them)

# A multipart upload stays recorded while its layer (vid) is the same: it can be resumed.
_PUT_DIRTY = (
    "INSERT INTO dirty (fid, key, vid, size, present, envelope, attrs, content_type,"
    " source, upload_id, parts, updated, format, layers, object_envelope)"
    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(fid) DO UPDATE SET"
    " key=excluded.key, vid=excluded.vid, size=excluded.size,"
    " present=excluded.present, envelope=excluded.envelope, attrs=excluded.attrs,"
    " content_type=excluded.content_type, source=excluded.source,"
    " upload_id=CASE WHEN dirty.vid=excluded.vid THEN dirty.upload_id"
    " ELSE excluded.upload_id END,"
    " parts=CASE WHEN dirty.vid=excluded.vid THEN dirty.parts ELSE excluded.parts END,"
    " updated=excluded.updated, format=excluded.format, layers=excluded.layers,"
    " object_envelope=excluded.object_envelope"
)

#: Deferred record deletes written at once beyond this many (``delete_dirty``).
_DEFERRED_MAX = 256

_SCHEMA = """
CREATE TABLE IF NOT EXISTS dirty (
    fid TEXT PRIMARY KEY,
    key TEXT NOT NULL,
    vid TEXT NOT NULL,
    size INTEGER NOT NULL,
    present TEXT NOT NULL,
    envelope TEXT NOT NULL,
    attrs TEXT NOT NULL,
    content_type TEXT NOT NULL DEFAULT '',
    source TEXT,
    upload_id TEXT,
    parts TEXT,
    updated REAL NOT NULL,
    format INTEGER NOT NULL DEFAULT 1,
    layers TEXT,
    object_envelope TEXT
);
CREATE TABLE IF NOT EXISTS attrs (
    key TEXT PRIMARY KEY,
    etag TEXT NOT NULL,
    size INTEGER NOT NULL,
    lm REAL,
    meta TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS deletes (
    key TEXT PRIMARY KEY,
    queued REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS tags (
    key TEXT PRIMARY KEY,
    current TEXT,
    older TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS settings (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path
        #: Records logged and deletes deferred, for the next write (``log_dirty``,
        #: ``delete_dirty``).
        self._ahead = WriteAhead(path.with_name(path.name + "-closes"), _PUT_DIRTY)
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._migrate()
        self._pending_attrs: dict[str, AttrRecord | None] = {}
        self._ahead.recover(self._db)  # what a crashed run logged goes in first
        self._tags = TagBuffer(self._db)
        self._attrs_flushed = time.monotonic()

    def close(self) -> None:
        try:
            self.flush_attrs()
            self.flush_deferred()
        finally:
            self._ahead.close()
            self._db.close()

    def _migrate(self) -> None:
        """Bring a journal of an older release up to this schema (dirty rows kept)."""
        found = self.get_setting("schema")
        if found is not None and found.isdigit() and int(found) > SCHEMA_VERSION:
            raise ConfigError(
                f"cache journal {self.path} has schema {found}, written by a newer cosencfs "
                f"(this one reads {SCHEMA_VERSION}); use that release, or another --cache-dir"
            )
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(dirty)")}
        for name, decl in (
            ("format", "INTEGER NOT NULL DEFAULT 1"),
            ("layers", "TEXT"),
            ("object_envelope", "TEXT"),
        ):
            if name not in columns:
                self._db.execute(f"ALTER TABLE dirty ADD COLUMN {name} {decl}")
        self._db.execute(
            "INSERT OR REPLACE INTO settings VALUES ('schema', ?)", (str(SCHEMA_VERSION),)
        )

    # -- settings ----------------------------------------------------------------

    def get_setting(self, name: str) -> str | None:
        row = self._db.execute("SELECT value FROM settings WHERE name=?", (name,)).fetchone()
        return None if row is None else str(row[0])

    @_disk_errors
    def set_setting(self, name: str, value: str) -> None:
        self._write("INSERT OR REPLACE INTO settings VALUES (?, ?)", (name, value))

    # -- dirty files -----------------------------------------------------------

    @_disk_errors
    def put_dirty(self, rec: DirtyRecord) -> None:
        """Write ``rec`` now, in a transaction of its own (``log_dirty`` is cheaper)."""
        self._write(_PUT_DIRTY, dirty_row(rec, time.time()))

    def log_dirty(self, rec: DirtyRecord) -> None:
        """Record ``rec``: in the log when this returns, in SQLite with the next
        transaction (cosencfs/cache/closelog.py); reads of the table see it."""
        self._ahead.put(dirty_row(rec, time.time()))
        if len(self._ahead) >= _DEFERRED_MAX:
            with contextlib.suppress(OSError):  # logged: a later transaction applies it
                self.flush_deferred()

    @_disk_errors
    def seal_dirty(self, fid: str, vid: str) -> bool:
        """Mark the newest layer of ``fid``'s record sealed; False if the record is not
        of layer ``vid`` (then write the whole record: ``log_dirty``).

        The record a commit writes when it seals a head already journaled at
        close differs from that one only in this flag (``DirtyRecords.record``
        decides when): one small UPDATE, the JSON edited by SQLite, instead of
        the whole record encoded again.
        """
        cur = self._write(
            "UPDATE dirty SET layers=json_set(layers, '$[0].sealed', json('true')), updated=?"
            " WHERE fid=? AND vid=? AND format=? AND json_array_length(layers) >= 1",
            (time.time(), fid, vid, FORMAT_LAYERS),
        )
        return cur.rowcount == 1

    @_disk_errors
    def set_upload(self, fid: str, upload_id: str | None, parts: Mapping[int, str]) -> None:
        self._write(
            "UPDATE dirty SET upload_id=?, parts=? WHERE fid=?",
            (upload_id, parts_json(parts), fid),
        )

    @_disk_errors
    def set_dirty_key(self, fid: str, key: str) -> None:
        self._write("UPDATE dirty SET key=? WHERE fid=?", (key, fid))

    def delete_dirty(self, fid: str) -> None:
        """Delete ``fid``'s record with the journal's next write (its commit is done).

        Not a transaction of its own (one per small file uploaded): logged
        like a record (closelog.py), it goes into the next write's
        transaction, before that write, so the journal on disk is always the
        result of a prefix of the writes asked for, in order; a crash keeps
        it (only a full disk leaves it unlogged: then a crash between an
        upload and its delete, which recovery recognises, docs/reliability.md).
        Reads of the dirty table, the write-back going idle
        (``flush_deferred``) and ``close`` write them too.
        """
        self._ahead.delete(fid)
        if len(self._ahead) >= _DEFERRED_MAX:
            self.flush_deferred()

    @_disk_errors
    def flush_deferred(self) -> None:
        """Write the records logged and the deletes deferred, now."""
        if self._ahead:
            with self._transaction():
                pass

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """A transaction that starts with the logged records and deferred deletes
        (so all stays in order); they are forgotten only once it committed."""
        n = len(self._ahead)
        with self._db:
            self._db.execute("BEGIN")
            if n:
                self._ahead.apply(self._db, n)
            yield
        self._ahead.applied(n)

    def _write(self, sql: str, params: Sequence[object]) -> sqlite3.Cursor:
        """One write in its own transaction, after the logged and deferred (in the same one)."""
        if not self._ahead:
            return self._db.execute(sql, params)
        with self._transaction():
            return self._db.execute(sql, params)

    def dirty_records(self) -> list[DirtyRecord]:
        self.flush_deferred()
        return list(self._iter_dirty())

    def get_dirty(self, fid: str) -> DirtyRecord | None:
        self.flush_deferred()
        for rec in self._iter_dirty(fid):
            return rec
        return None

    def dirty_count(self) -> int:
        try:
            self.flush_deferred()
        except OSError:
            pass  # (statistics: a full disk must not fail them; the count may be high)
        return int(self._db.execute("SELECT COUNT(*) FROM dirty").fetchone()[0])

    def _iter_dirty(self, fid: str | None = None) -> Iterator[DirtyRecord]:
        query = (
            "SELECT fid, key, vid, size, present, envelope, attrs, content_type, source,"
            " upload_id, parts, format, layers, object_envelope FROM dirty"
        )
        if fid is None:
            rows = self._db.execute(query + " ORDER BY updated").fetchall()
        else:
            rows = self._db.execute(query + " WHERE fid=?", (fid,)).fetchall()
        for row in rows:
            try:
                rec = parse_dirty(row)
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                # A record this code did not write (altered, or damaged):
                # kept untouched as evidence, and nothing is done because of it.
                log.error("cache journal record %r is malformed (%s): ignored", row[0], exc)
                continue
            if rec is not None:
                yield rec

    # -- deletes not yet done in COS ----------------------------------------------

    @_disk_errors
    def add_delete(self, key: str) -> None:
        self._write("INSERT OR REPLACE INTO deletes VALUES (?, ?)", (key, time.time()))

    @_disk_errors
    def remove_deletes(self, keys: Sequence[str]) -> None:
        if keys:
            with self._transaction():
                self._db.executemany("DELETE FROM deletes WHERE key=?", [(k,) for k in keys])

    def pending_deletes(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT key FROM deletes ORDER BY queued")]

    # -- attribute cache ---------------------------------------------------------

    # Attribute records are a cache: they are collected in memory and written
    # in one transaction now and then (flush_attrs), since one transaction
    # per uploaded or HEADed object costs more than the upload of a small file.

    def get_attrs(self, key: str) -> AttrRecord | None:
        if key in self._pending_attrs:
            return self._pending_attrs[key]
        row = self._db.execute(
            "SELECT etag, size, lm, meta FROM attrs WHERE key=?", (key,)
        ).fetchone()
        if row is None:
            return None
        return AttrRecord(row[0], int(row[1]), row[2], json.loads(row[3]))

    def put_attrs(
        self, key: str, etag: str, size: int, lm: float | None, meta: Mapping[str, str]
    ) -> None:
        self._pending_attrs[key] = AttrRecord(etag, size, lm, dict(meta))
        self._maybe_flush_attrs()

    def set_attrs_lm(self, key: str, lm: float) -> None:
        rec = self.get_attrs(key)
        if rec is not None and rec.lm is None:
            self._pending_attrs[key] = AttrRecord(rec.etag, rec.size, lm, rec.meta)
            self._maybe_flush_attrs()

    def delete_attrs(self, key: str) -> None:
        self._pending_attrs[key] = None
        self._maybe_flush_attrs()

    def forget_attrs_now(self, key: str) -> None:
        """Drop ``key``'s record at once, before its metadata changes in COS.

        A metadata-only change (a copy onto itself, a directory marker written
        again) keeps the ETag and size a record is matched by; if the daemon
        died before the new record was flushed, the old one would still match
        the changed object after a restart and bring the old attributes back.
        """
        self._pending_attrs.pop(key, None)
        self._attrs_write("DELETE FROM attrs WHERE key=?", [(key,)])

    def delete_attrs_prefix(self, prefix: str) -> None:
        self.flush_attrs()
        # Keys are text; a range scan instead of LIKE avoids escaping % and _.
        self._attrs_write(
            "DELETE FROM attrs WHERE key >= ? AND key < ?", [(prefix, prefix + "\U0010ffff")]
        )

    def _maybe_flush_attrs(self) -> None:
        now = time.monotonic()
        if len(self._pending_attrs) + len(self._tags) >= 1000 or now - self._attrs_flushed > 1.0:
            self.flush_attrs()

    # -- tags: what this mount wrote or verified at each key (format.md, 12.10) ---

    def get_tags(self, key: str) -> TagMemory:
        return self._tags.get(key)

    def put_tags(self, key: str, memory: TagMemory) -> None:
        """Batched like attribute records: a crash forgets at most the last second."""
        self._tags.put(key, memory)
        self._maybe_flush_attrs()

    def saw_tag(self, key: str, tag: str) -> None:
        """``put_tags(key, get_tags(key).seen(tag))``, its read deferred (cache/tagbuffer.py)."""
        self._tags.saw(key, tag)
        self._maybe_flush_attrs()

    def flush_attrs(self) -> None:
        if tags := self._tags.take():
            self._attrs_write(
                "INSERT OR REPLACE INTO tags VALUES (?,?,?)",
                [(k, m.current, json.dumps(list(m.older))) for k, m in tags.items()],
            )
        pending, self._pending_attrs = self._pending_attrs, {}
        self._attrs_flushed = time.monotonic()
        puts = [
            (k, r.etag, r.size, r.lm, json.dumps(dict(r.meta)))
            for k, r in pending.items()
            if r is not None
        ]
        deletes = [(k,) for k, r in pending.items() if r is None]
        if deletes:
            self._attrs_write("DELETE FROM attrs WHERE key=?", deletes)
        if puts:
            self._attrs_write("INSERT OR REPLACE INTO attrs VALUES (?,?,?,?,?)", puts)

    @_best_effort
    def _attrs_write(self, sql: str, rows: Sequence[tuple[object, ...]]) -> None:
        with self._transaction():
            self._db.executemany(sql, rows)
