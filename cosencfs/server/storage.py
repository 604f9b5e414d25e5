"""On-disk store of the local COS server: a SQLite index plus data files.

Layout under the root directory::

    index.sqlite        buckets, objects, multipart uploads and parts (WAL)
    data/xx/<name>      immutable data files of objects and uploaded parts
    tmp/<name>          bodies being received; never referenced by the index
    .lock               flock'd by the running server

Crash safety rests on one rule: a body becomes visible only through an
index commit. A write goes tmp file -> rename into data/ -> commit the row
-> unlink the file the row used to point at. Whatever step a crash
interrupts, the index names either the old complete body or the new
complete one, and the start-up sweep deletes every file the index does not
name (and everything in tmp/).

Bodies up to ``INLINE_MAX`` bytes are stored in the index row itself
instead of a file: creating a file costs 0.1-0.7 ms on the ext4 of the
benchmark machines, more than the rest of a small PUT together, and an
inline body is committed atomically with its row for free.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cosencfs.server.datafiles import DataFiles, NewData
from cosencfs.server.errors import CosError
from cosencfs.server.listing import ListPage, list_keys
from cosencfs.server.perms import private_root

log = logging.getLogger(__name__)

#: Bodies up to this size live in the index row (see the module docstring).
INLINE_MAX = 64 * 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS buckets (
    name TEXT PRIMARY KEY,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS objects (
    bucket TEXT NOT NULL,
    key TEXT NOT NULL,
    size INTEGER NOT NULL,
    etag TEXT NOT NULL,
    mtime_ms INTEGER NOT NULL,
    content_type TEXT NOT NULL,
    meta TEXT NOT NULL,
    headers TEXT NOT NULL,
    data TEXT NOT NULL,  -- data file name; '' when the body is inline
    body BLOB,           -- last, so rows are read without it unless asked
    UNIQUE (bucket, key)
);
CREATE TABLE IF NOT EXISTS uploads (
    upload_id TEXT PRIMARY KEY,
    bucket TEXT NOT NULL,
    key TEXT NOT NULL,
    initiated_ms INTEGER NOT NULL,
    content_type TEXT NOT NULL,
    meta TEXT NOT NULL,
    headers TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS uploads_by_key ON uploads (bucket, key, upload_id);
CREATE TABLE IF NOT EXISTS parts (
    upload_id TEXT NOT NULL,
    part_number INTEGER NOT NULL,
    size INTEGER NOT NULL,
    etag TEXT NOT NULL,
    mtime_ms INTEGER NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (upload_id, part_number)
);
"""

_OBJ_COLS = "bucket, key, size, etag, mtime_ms, content_type, meta, headers, data"

#: An object's body as returned by ``open_object``: an open fd, or the inline bytes.
Body = int | bytes


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(slots=True, frozen=True)
class ObjectInfo:
    bucket: str
    key: str
    size: int
    etag: str  # unquoted
    mtime_ms: int
    content_type: str
    meta: dict[str, str]  # lowercase names without the x-cos-meta- prefix
    headers: dict[str, str]  # stored standard headers (Cache-Control, ...)
    data: str  # '' for an inline body

    @property
    def inline(self) -> bool:
        return not self.data


@dataclass(slots=True, frozen=True)
class WriteCondition:
    """Conditions a write checks atomically with its commit."""

    if_none_match_star: bool = False
    if_match: str | None = None  # unquoted ETag or '*'

    def check(self, current: ObjectInfo | None) -> None:
        if self.if_none_match_star and current is not None:
            raise CosError("PreconditionFailed")
        if self.if_match is not None:
            if current is None:
                raise CosError("NoSuchKey")
            if self.if_match not in ("*", current.etag):
                raise CosError("PreconditionFailed")


def _obj(row: tuple[str, str, int, str, int, str, str, str, str]) -> ObjectInfo:
    b, k, size, etag, mtime, ctype, meta, headers, data = row
    return ObjectInfo(b, k, size, etag, mtime, ctype, json.loads(meta), json.loads(headers), data)


class Storage:
    """The index plus data files. Thread-safe: one SQLite connection under a lock.

    SQLite calls are tens of microseconds, so one lock costs less than a
    connection per handler thread would (threads come and go with connections).
    """

    def __init__(self, root: str | os.PathLike[str], *, fsync: bool = False) -> None:
        self.root = Path(root)
        private_root(self.root)
        self._lock_fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            # Two servers on one root would sweep each other's fresh files.
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise RuntimeError(f"{self.root} is in use by another local COS server") from None
        self.files = DataFiles(self.root, fsync=fsync)
        self.lock = threading.Lock()
        self.db = sqlite3.connect(
            self.root / "index.sqlite", isolation_level=None, check_same_thread=False
        )
        self.db.execute("PRAGMA journal_mode=WAL")
        # Without fsync the promise is process-crash safety only, which WAL
        # keeps even with synchronous=OFF (the OS still holds every write).
        self.db.execute(f"PRAGMA synchronous={'FULL' if fsync else 'OFF'}")
        self.db.executescript(_SCHEMA)
        self._buckets = {row[0] for row in self.db.execute("SELECT name FROM buckets")}
        self._closed = False
        self._sweep()

    def close(self) -> None:
        with self.lock:
            if self._closed:
                return
            self._closed = True
            try:
                self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                log.warning("WAL checkpoint failed at close", exc_info=True)
            self.db.close()
            os.close(self._lock_fd)

    @contextmanager
    def txn(self) -> Iterator[sqlite3.Connection]:
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    def _sweep(self) -> None:
        referenced = {
            row[0]
            for row in self.db.execute("SELECT data FROM objects UNION ALL SELECT data FROM parts")
        }
        referenced.discard("")
        missing = self.files.sweep(referenced)
        if missing:
            # Only possible after an OS crash without fsync, or outside tampering.
            log.warning("dropping %d index entries whose data files are gone", len(missing))
            with self.txn() as db:
                for name in missing:
                    db.execute("DELETE FROM objects WHERE data = ?", (name,))
                    db.execute("DELETE FROM parts WHERE data = ?", (name,))

    # ------------------------------------------------------------ buckets

    def require_bucket(self, bucket: str) -> None:
        if bucket not in self._buckets:
            raise CosError("NoSuchBucket")

    def create_bucket(self, bucket: str, *, exist_ok: bool = False) -> None:
        with self.txn() as db:
            if bucket in self._buckets:
                if exist_ok:
                    return
                raise CosError("BucketAlreadyOwnedByYou")
            db.execute("INSERT INTO buckets (name, created_ms) VALUES (?, ?)", (bucket, now_ms()))
            self._buckets.add(bucket)

    def delete_bucket(self, bucket: str) -> None:
        with self.txn() as db:
            self.require_bucket(bucket)
            if db.execute("SELECT 1 FROM objects WHERE bucket = ? LIMIT 1", (bucket,)).fetchone():
                raise CosError("BucketNotEmpty")
            in_bucket = "SELECT upload_id FROM uploads WHERE bucket = ?"
            parts = [
                r[0]
                for r in db.execute(
                    f"SELECT data FROM parts WHERE upload_id IN ({in_bucket})", (bucket,)
                )
            ]
            db.execute(f"DELETE FROM parts WHERE upload_id IN ({in_bucket})", (bucket,))
            db.execute("DELETE FROM uploads WHERE bucket = ?", (bucket,))
            db.execute("DELETE FROM buckets WHERE name = ?", (bucket,))
            self._buckets.discard(bucket)
        self.files.unlink(parts)

    def list_buckets(self) -> list[tuple[str, int]]:
        with self.lock:
            return list(self.db.execute("SELECT name, created_ms FROM buckets ORDER BY name"))

    # ------------------------------------------------------------ objects

    def get(self, db: sqlite3.Connection, bucket: str, key: str) -> ObjectInfo | None:
        row = db.execute(
            f"SELECT {_OBJ_COLS} FROM objects WHERE bucket = ? AND key = ?", (bucket, key)
        ).fetchone()
        return None if row is None else _obj(row)

    def head(self, bucket: str, key: str) -> ObjectInfo | None:
        with self.lock:
            self.require_bucket(bucket)
            return self.get(self.db, bucket, key)

    def open_object(self, bucket: str, key: str) -> tuple[ObjectInfo, Body]:
        """The object's info and body: an open fd (the caller closes it) or inline bytes."""
        for _ in range(10):
            info, inline = self._fetch(bucket, key)
            if inline is not None:
                return info, inline
            try:
                return info, os.open(self.files.path(info.data), os.O_RDONLY)
            except FileNotFoundError:
                # Overwritten or deleted between the lookup and the open: look again.
                continue
        raise CosError("InternalError", "The object keeps changing; try again.")

    def _fetch(self, bucket: str, key: str) -> tuple[ObjectInfo, bytes | None]:
        """The object's info, plus its body when inline."""
        with self.lock:
            self.require_bucket(bucket)
            row = self.db.execute(
                f"SELECT {_OBJ_COLS}, CASE WHEN data = '' THEN body END FROM objects "
                "WHERE bucket = ? AND key = ?",
                (bucket, key),
            ).fetchone()
        if row is None:
            raise CosError("NoSuchKey")
        info = _obj(row[:9])
        return info, (bytes(row[9] or b"") if info.inline else None)

    def commit_object(
        self,
        bucket: str,
        key: str,
        body: NewData | bytes,
        *,
        size: int,
        etag: str,
        content_type: str,
        meta: dict[str, str],
        headers: dict[str, str],
        condition: WriteCondition | None = None,
    ) -> ObjectInfo:
        """Make a received body the object's (``bytes``: stored inline)."""
        if isinstance(body, bytes):
            return self.commit_row(
                bucket, key, "", size, etag, content_type, meta, headers, condition, inline=body
            )
        name = self.files.publish(body)
        try:
            return self.commit_row(
                bucket, key, name, size, etag, content_type, meta, headers, condition
            )
        except BaseException:
            self.files.unlink([name])
            raise

    def commit_row(
        self,
        bucket: str,
        key: str,
        name: str,
        size: int,
        etag: str,
        content_type: str,
        meta: dict[str, str],
        headers: dict[str, str],
        condition: WriteCondition | None,
        *,
        inline: bytes | None = None,
        in_same_commit: Callable[[sqlite3.Connection], list[str]] | None = None,
    ) -> ObjectInfo:
        """Insert or replace the object's row, then delete the data it replaced.

        ``in_same_commit`` runs inside the transaction (CompleteMultipartUpload
        removes its upload there) and returns more data files to delete.
        """
        info = ObjectInfo(bucket, key, size, etag, now_ms(), content_type, meta, headers, name)
        garbage: list[str] = []
        with self.txn() as db:
            self.require_bucket(bucket)
            old = self.get(db, bucket, key)
            if condition is not None:
                condition.check(old)
            if in_same_commit is not None:
                garbage += in_same_commit(db)
            db.execute(
                f"INSERT OR REPLACE INTO objects ({_OBJ_COLS}, body) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    bucket,
                    key,
                    size,
                    etag,
                    info.mtime_ms,
                    content_type,
                    json.dumps(meta),
                    json.dumps(headers),
                    name,
                    inline,
                ),
            )
            if old is not None:
                garbage.append(old.data)
        self.files.unlink(garbage)
        return info

    def delete_objects(self, bucket: str, keys: Iterable[str]) -> None:
        """Delete keys (missing ones are fine, as in COS)."""
        garbage: list[str] = []
        with self.txn() as db:
            self.require_bucket(bucket)
            for key in keys:
                row = db.execute(
                    "DELETE FROM objects WHERE bucket = ? AND key = ? RETURNING data",
                    (bucket, key),
                ).fetchone()
                if row is not None:
                    garbage.append(row[0])
        self.files.unlink(garbage)

    def copy_object(
        self,
        src_bucket: str,
        src_key: str,
        dst_bucket: str,
        dst_key: str,
        *,
        check_source: Callable[[ObjectInfo], None] | None,
        replace: tuple[str, dict[str, str], dict[str, str]] | None,
        condition: WriteCondition | None = None,
    ) -> ObjectInfo:
        """Copy by hard link (data files are immutable) or by value (inline bodies).

        ``replace`` = the new (content_type, meta, headers); None keeps the source's.
        """
        self.require_bucket(dst_bucket)
        for _ in range(10):
            try:
                src, body = self._fetch(src_bucket, src_key)
            except CosError as exc:
                if exc.code == "NoSuchKey":
                    exc.message = "The specified copy source does not exist."
                raise
            if check_source is not None:
                check_source(src)
            content_type, meta, headers = (
                replace if replace is not None else (src.content_type, src.meta, src.headers)
            )
            if body is not None:
                return self.commit_row(
                    dst_bucket,
                    dst_key,
                    "",
                    src.size,
                    src.etag,
                    content_type,
                    meta,
                    headers,
                    condition,
                    inline=body,
                )
            try:
                name = self.files.link(src.data)
            except FileNotFoundError:
                continue  # the source changed under us; look again
            try:
                return self.commit_row(
                    dst_bucket, dst_key, name, src.size, src.etag, content_type, meta, headers,
                    condition,
                )  # fmt: skip
            except BaseException:
                self.files.unlink([name])
                raise
        raise CosError("InternalError", "The copy source keeps changing; try again.")

    def list_objects(
        self, bucket: str, *, prefix: str, delimiter: str, after: str | None, max_keys: int
    ) -> ListPage:
        with self.lock:
            self.require_bucket(bucket)
            return list_keys(self.db, bucket, prefix, delimiter, after, max_keys)
