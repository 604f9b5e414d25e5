"""Dirty records ahead of the journal: one append each, applied to SQLite in batches.

A dirty file's record must be with the kernel before its ``close()`` returns
(a crash of the daemon must not lose it), and a SQLite transaction of its
own per record (WAL frames, the shared-memory index, its locks) cost 40-140
us of the event loop's CPU per small file created.  So ``Journal.log_dirty``
appends the record to this log first (one ``write`` of one line: a sequence
number and the row), and the ``dirty`` table gets it with the journal's next
transaction, many records in one (cosencfs/cache/journal.py).

``WriteAhead`` keeps the writes of the ``dirty`` table not yet in SQLite in
the order they were asked for, records and deletes (``Journal.delete_dirty``:
a commit done, an unlink), logs each (a crash must not bring back a record an
unlink removed), and applies them in that order at the start of a
transaction, together with the sequence number of the last one applied
(setting ``close_log``).  Once that transaction has committed and nothing
logged is left unapplied, the log is emptied.  Opening the journal applies
what a crashed run left in the log: the lines with a larger sequence number
than the setting, in order (so a record applied and deleted since is not
brought back).  A line that does not parse ends the log (a write a full disk
cut short is taken back, at the latest before the next line is written;
anything after such a line was never acknowledged); a line of the wrong
shape, or with None in a NOT NULL column, is skipped.  Rows are read back as
any row of the table is, by ``records.parse_dirty`` with its checks
(cosencfs/cache/layout.py): the log is in the private cache directory like
the database, and is trusted no more than it.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import sqlite3
import stat
import threading
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)

#: The setting that holds the sequence number of the last record applied.
MARK = "close_log"
#: Columns of a ``dirty`` row (records.dirty_row).
_COLUMNS = 15
#: Its NOT NULL columns (fid, key, vid, size, present, envelope, attrs,
#: content_type, updated, format: journal._SCHEMA): a line with None in one
#: of them failed the recovery's one transaction, so the mount could not start.
_NOT_NULL = (0, 1, 2, 3, 4, 5, 6, 7, 11, 12)


def _is_row(row: object) -> bool:
    """Whether ``row`` can be a ``dirty`` row (SQLite can bind and store every column)."""
    return (
        isinstance(row, list)
        and len(row) == _COLUMNS
        and all(x is None or isinstance(x, str | int | float) for x in row)
        and all(row[i] is not None for i in _NOT_NULL)
    )


class WriteAhead:
    """Writes of the ``dirty`` table not yet in SQLite, in order; logged records first in a log."""

    def __init__(self, path: Path, put_sql: str) -> None:
        self.path = path
        self._put_sql = put_sql
        flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
        self._fd = os.open(path, flags, 0o600)
        st = os.fstat(self._fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            os.close(self._fd)
            raise OSError(errno.EPERM, f"{path} is not a private file of this user")
        #: ("put", row, seq) or ("delete", fid, seq), oldest first (seq 0: not logged).
        self._ops: list[tuple[str, object, int]] = []
        self._unapplied = 0  # logged writes among _ops
        self._seq = 0
        #: The log's size before a line cut short that could not be taken back.
        self._torn: int | None = None
        # Appends and the emptying of the log under one lock: a record logged
        # while an older batch is being applied must not be cut off with it.
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._ops)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def abandon(self) -> None:
        """Queue and write nothing more, as if the process died here (tests): the
        log keeps what it holds, for the next journal opened on it."""
        with self._lock:
            self._ops.clear()
            self.close()

    def recover(self, db: sqlite3.Connection) -> int:
        """Apply the records a crashed run left in the log (one transaction); how many."""
        row = db.execute("SELECT value FROM settings WHERE name=?", (MARK,)).fetchone()
        mark = int(row[0]) if row is not None and str(row[0]).isdigit() else 0
        entries = self._read()
        self._seq = max([mark, *(seq for seq, _ in entries)])
        todo = [e for e in entries if e[0] > mark]
        if todo:
            self._ops = [("delete" if isinstance(x, str) else "put", x, seq) for seq, x in todo]
            with db:
                db.execute("BEGIN")
                self.apply(db, len(todo))
            self._ops = []
            log.info("cache journal: %d writes logged before a crash recovered", len(todo))
        os.ftruncate(self._fd, 0)
        return len(todo)

    def _read(self) -> list[tuple[int, list[object] | str]]:
        with open(self._fd, "rb", closefd=False) as f:
            f.seek(0)
            data = f.read()
        out: list[tuple[int, list[object] | str]] = []
        lines = data.split(b"\n")  # the last is b"" unless a line was cut short
        for n, line in enumerate(lines):
            try:
                seq, row = json.loads(line)
            except (ValueError, TypeError):
                if line or n != len(lines) - 1:
                    log.error(
                        "cache journal log %s: line %d is not whole: read to it", self.path, n
                    )
                break
            if isinstance(seq, int) and (isinstance(row, str) or _is_row(row)):
                out.append((seq, row))  # a record's row, or the fid of a delete
            else:
                log.error("cache journal log %s: line %d is not a record: skipped", self.path, n)
        return out

    def put(self, row: Sequence[object]) -> None:
        """Log ``row`` (with the kernel when this returns) and queue it for SQLite."""
        self._log("put", row, list(row))

    def delete(self, fid: str) -> None:
        """Log and queue the delete of ``fid``'s record.  Logged so that a crash
        cannot bring back a record an unlink removed; on a full disk it is only
        queued (a crash may then lose it, as it may lose the unlink's reply)."""
        try:
            self._log("delete", fid, fid)
        except OSError as exc:
            log.debug("cache journal log: a delete not logged (%s)", exc)
            self._ops.append(("delete", fid, 0))

    def _log(self, op: str, what: object, item: object) -> None:
        with self._lock:
            if self._torn is not None:
                # A line cut short is still at the end (taking it back failed):
                # nothing is appended to it, or the line this makes would not
                # parse and end the log at recovery, with every record after it.
                os.ftruncate(self._fd, self._torn)
                self._torn = None
            seq = self._seq + 1
            line = json.dumps([seq, item], separators=(",", ":")).encode() + b"\n"
            n = os.write(self._fd, line)
            if n != len(line):
                # Cut short (a full disk): taken back, so the next line starts clean.
                good = os.fstat(self._fd).st_size - n
                try:
                    os.ftruncate(self._fd, good)
                except OSError:
                    self._torn = good  # taken back before the next line, or that fails
                    raise
                raise OSError(errno.ENOSPC, "cache disk full (journal log)")
            self._seq = seq
            self._ops.append((op, what, seq))
            self._unapplied += 1

    def apply(self, db: sqlite3.Connection, n: int) -> None:
        """Write the first ``n`` queued writes, in order, inside the caller's transaction."""
        run: list[object] = []
        kind = ""
        last = 0
        for op, what, seq in self._ops[:n]:
            if op != kind and run:
                self._run(db, kind, run)
                run = []
            kind = op
            run.append(what)
            last = max(last, seq)
        if run:
            self._run(db, kind, run)
        if last:
            db.execute("INSERT OR REPLACE INTO settings VALUES (?, ?)", (MARK, str(last)))

    def _run(self, db: sqlite3.Connection, kind: str, run: list[object]) -> None:
        if kind == "put":
            db.executemany(self._put_sql, run)  # type: ignore[arg-type]
        else:
            db.executemany("DELETE FROM dirty WHERE fid=?", [(f,) for f in run])

    def applied(self, n: int) -> None:
        """The first ``n`` queued writes are committed: forgotten, and the log emptied
        once no logged record is left unapplied."""
        with self._lock:
            self._unapplied -= sum(1 for _, _, seq in self._ops[:n] if seq)
            del self._ops[:n]
            if self._unapplied == 0 and self._fd >= 0:
                try:
                    os.ftruncate(self._fd, 0)
                    self._torn = None
                except OSError as exc:  # applied already; emptied at the next chance
                    log.debug("cache journal log not emptied: %s", exc)
