"""Listing algorithms over the SQLite index (objects and multipart uploads).

Object listing with a delimiter must not scan every key below a common
prefix (a directory with a million files would make every ``ls`` of its
parent slow), so after emitting prefix P the query restarts at
``successor(P)``, the smallest string greater than every string that starts
with P. SQLite's BINARY collation compares UTF-8 bytes, which orders like
Python's code-point comparison, so both sides agree on "greater".
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from cosencfs.server.xmlio import ListedObject, ListedUpload

_MAX_CODE_POINT = 0x10FFFF


def successor(s: str) -> str | None:
    """Smallest string greater than all strings starting with ``s`` (None: no such string)."""
    while s:
        c = ord(s[-1])
        if c < _MAX_CODE_POINT:
            n = c + 1
            if 0xD800 <= n <= 0xDFFF:  # surrogates cannot be stored as UTF-8
                n = 0xE000
            return s[:-1] + chr(n)
        s = s[:-1]
    return None


@dataclass(slots=True)
class ListPage:
    entries: list[ListedObject]
    prefixes: list[str]
    truncated: bool
    #: The last key or common prefix of the page (COS's NextMarker).
    next_marker: str | None


def list_keys(
    db: sqlite3.Connection,
    bucket: str,
    prefix: str,
    delimiter: str,
    after: str | None,
    max_keys: int,
) -> ListPage:
    """One page of keys > ``after`` starting with ``prefix``, grouped at ``delimiter``."""
    lower = prefix
    if after is not None and after >= prefix:
        lower = after + "\x00"  # the smallest string greater than ``after``
    upper = successor(prefix) if prefix else None
    entries: list[ListedObject] = []
    prefixes: list[str] = []
    last: str | None = None
    truncated = False
    plen = len(prefix)
    while True:
        if upper is None:
            cur = db.execute(
                "SELECT key, size, etag, mtime_ms FROM objects WHERE bucket = ? AND key >= ? "
                "ORDER BY key",
                (bucket, lower),
            )
        else:
            cur = db.execute(
                "SELECT key, size, etag, mtime_ms FROM objects WHERE bucket = ? AND key >= ? "
                "AND key < ? ORDER BY key",
                (bucket, lower, upper),
            )
        restart: str | None = None
        done = True
        try:
            # The cursor steps lazily, so breaking out early costs nothing.
            for key, size, etag, mtime_ms in cur:
                if delimiter:
                    i = key.find(delimiter, plen)
                    if i >= 0:
                        common = key[: i + len(delimiter)]
                        # A prefix at or before the marker was on an earlier page.
                        if after is None or common > after:
                            if len(entries) + len(prefixes) >= max_keys:
                                truncated = True
                                break
                            prefixes.append(common)
                            last = common
                        restart = successor(common)
                        done = restart is None
                        break
                if len(entries) + len(prefixes) >= max_keys:
                    truncated = True
                    break
                entries.append(ListedObject(key, size, etag, mtime_ms))
                last = key
        finally:
            cur.close()
        if truncated or done or restart is None:
            break
        lower = restart
    return ListPage(entries, prefixes, truncated, last if truncated else None)


@dataclass(slots=True)
class UploadPage:
    uploads: list[ListedUpload]
    prefixes: list[str]
    truncated: bool
    next_key_marker: str
    next_upload_id_marker: str


def list_upload_keys(
    db: sqlite3.Connection,
    bucket: str,
    prefix: str,
    delimiter: str,
    key_marker: str,
    upload_id_marker: str,
    max_uploads: int,
) -> UploadPage:
    """One page of in-progress uploads, ordered by key then initiation."""
    upper = successor(prefix) if prefix else None
    sql = "SELECT key, upload_id, initiated_ms FROM uploads WHERE bucket = ? AND key >= ?"
    args: list[object] = [bucket, max(prefix, key_marker)]
    if upper is not None:
        sql += " AND key < ?"
        args.append(upper)
    uploads: list[ListedUpload] = []
    prefixes: list[str] = []
    truncated = False
    next_key, next_id = "", ""
    cur = db.execute(sql + " ORDER BY key, upload_id", args)
    try:
        for key, upload_id, initiated_ms in cur:
            if key_marker:
                if upload_id_marker:
                    if key < key_marker or (key == key_marker and upload_id <= upload_id_marker):
                        continue
                elif key <= key_marker:
                    continue
            if delimiter:
                i = key.find(delimiter, len(prefix))
                if i >= 0:
                    common = key[: i + len(delimiter)]
                    if (key_marker and common <= key_marker) or (
                        prefixes and prefixes[-1] == common
                    ):
                        continue
                    if len(uploads) + len(prefixes) >= max_uploads:
                        truncated = True
                        break
                    prefixes.append(common)
                    next_key, next_id = common, ""
                    continue
            if len(uploads) + len(prefixes) >= max_uploads:
                truncated = True
                break
            uploads.append(ListedUpload(key, upload_id, initiated_ms))
            next_key, next_id = key, upload_id
    finally:
        cur.close()
    if not truncated:
        next_key, next_id = "", ""
    return UploadPage(uploads, prefixes, truncated, next_key, next_id)
