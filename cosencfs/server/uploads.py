"""Multipart uploads in the index: uploads, parts, completion."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from dataclasses import dataclass

from cosencfs.server.assembly import Assemblies, SlotData, part_offset
from cosencfs.server.datafiles import NewData, copy_range
from cosencfs.server.errors import CosError
from cosencfs.server.listing import UploadPage, list_upload_keys
from cosencfs.server.storage import ObjectInfo, Storage, WriteCondition, now_ms
from cosencfs.server.xmlio import ListedPart

MIN_PART_SIZE = 1024 * 1024


@dataclass(slots=True, frozen=True)
class UploadInfo:
    upload_id: str
    bucket: str
    key: str
    initiated_ms: int
    content_type: str
    meta: dict[str, str]
    headers: dict[str, str]


class Uploads:
    """Multipart uploads stored in the same index and data files as the objects."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        #: Parts received where their object's bytes will lie (no copy on completion).
        self.assemblies = Assemblies(storage.files)

    def create(
        self,
        bucket: str,
        key: str,
        content_type: str,
        meta: dict[str, str],
        headers: dict[str, str],
    ) -> str:
        # Ids sort by initiation time, which keeps ListMultipartUploads in COS order.
        upload_id = f"{time.time_ns():020d}{os.urandom(12).hex()}"
        row = (
            upload_id,
            bucket,
            key,
            now_ms(),
            content_type,
            json.dumps(meta),
            json.dumps(headers),
        )
        with self.storage.txn() as db:
            self.storage.require_bucket(bucket)
            db.execute("INSERT INTO uploads VALUES (?, ?, ?, ?, ?, ?, ?)", row)
        return upload_id

    def get(self, bucket: str, key: str, upload_id: str) -> UploadInfo:
        with self.storage.lock:
            return self._get(self.storage.db, bucket, key, upload_id)

    def _get(self, db: sqlite3.Connection, bucket: str, key: str, upload_id: str) -> UploadInfo:
        self.storage.require_bucket(bucket)
        row = db.execute(
            "SELECT upload_id, bucket, key, initiated_ms, content_type, meta, headers "
            "FROM uploads WHERE upload_id = ?",
            (upload_id,),
        ).fetchone()
        if row is None or row[1] != bucket or row[2] != key:
            raise CosError("NoSuchUpload")
        uid, b, k, initiated, ctype, meta, headers = row
        return UploadInfo(uid, b, k, initiated, ctype, json.loads(meta), json.loads(headers))

    def commit_part(
        self,
        bucket: str,
        key: str,
        upload_id: str,
        part_number: int,
        new: NewData,
        size: int,
        etag: str,
    ) -> int:
        """Record an uploaded part (replacing one with the same number); returns its mtime."""
        files = self.storage.files
        name = new.publish(files) if isinstance(new, SlotData) else files.publish(new)
        mtime = now_ms()
        try:
            with self.storage.txn() as db:
                self._get(db, bucket, key, upload_id)
                old = db.execute(
                    "SELECT data FROM parts WHERE upload_id = ? AND part_number = ?",
                    (upload_id, part_number),
                ).fetchone()
                db.execute(
                    "INSERT OR REPLACE INTO parts VALUES (?, ?, ?, ?, ?, ?)",
                    (upload_id, part_number, size, etag, mtime, name),
                )
        except BaseException:
            files.unlink([name])
            raise
        if old is not None:
            files.unlink([old[0]])
        return mtime

    def list_parts(
        self, bucket: str, key: str, upload_id: str, marker: int, max_parts: int
    ) -> tuple[list[ListedPart], bool]:
        with self.storage.lock:
            self._get(self.storage.db, bucket, key, upload_id)
            rows = self.storage.db.execute(
                "SELECT part_number, size, etag, mtime_ms FROM parts WHERE upload_id = ? "
                "AND part_number > ? ORDER BY part_number LIMIT ?",
                (upload_id, marker, max_parts + 1),
            ).fetchall()
        return [ListedPart(*r) for r in rows[:max_parts]], len(rows) > max_parts

    def complete(
        self,
        bucket: str,
        key: str,
        upload_id: str,
        wanted: list[tuple[int, str]],
        condition: WriteCondition | None,
    ) -> ObjectInfo:
        """Concatenate the chosen parts into a new data file and commit it as the object.

        The object row, and the removal of the upload and its parts, are one
        commit: a crash leaves either the upload or the object, never both
        or a torn object.
        """
        storage = self.storage
        with storage.lock:
            upload = self._get(storage.db, bucket, key, upload_id)
            stored: dict[int, tuple[int, str, str]] = {
                r[0]: (r[1], r[2], r[3])
                for r in storage.db.execute(
                    "SELECT part_number, size, etag, data FROM parts WHERE upload_id = ?",
                    (upload_id,),
                )
            }
        if condition is not None:
            condition.check(storage.head(bucket, key))
        chosen = _choose_parts(wanted, stored)
        md5s = hashlib.md5()
        for _size, etag, _name in chosen:
            md5s.update(bytes.fromhex(etag))
        final_etag = f"{md5s.hexdigest()}-{len(chosen)}"
        taken = self.assemblies.take(upload_id, [(size, n) for size, _e, n in chosen])
        name = taken if taken is not None else self._concatenate(chosen)

        def remove_upload(db: sqlite3.Connection) -> list[str]:
            if db.execute("SELECT 1 FROM uploads WHERE upload_id = ?", (upload_id,)).fetchone():
                parts = [
                    r[0]
                    for r in db.execute("SELECT data FROM parts WHERE upload_id = ?", (upload_id,))
                ]
                db.execute("DELETE FROM parts WHERE upload_id = ?", (upload_id,))
                db.execute("DELETE FROM uploads WHERE upload_id = ?", (upload_id,))
                return parts
            raise CosError("NoSuchUpload")  # completed or aborted meanwhile

        try:
            info = storage.commit_row(
                bucket,
                key,
                name,
                sum(size for size, _e, _n in chosen),
                final_etag,
                upload.content_type,
                upload.meta,
                upload.headers,
                condition,
                in_same_commit=remove_upload,
            )
        except BaseException:
            storage.files.unlink([name])
            raise
        self.assemblies.drop(upload_id)
        return info

    def _concatenate(self, chosen: list[tuple[int, str, str]]) -> str:
        """The chosen parts copied end to end into a new data file; its name."""
        storage = self.storage
        new = storage.files.new()
        try:
            for size, _etag, name in chosen:
                try:
                    fd = os.open(storage.files.path(name), os.O_RDONLY)
                except FileNotFoundError:
                    raise CosError(
                        "InvalidPart", "A part was replaced during completion."
                    ) from None
                try:
                    copy_range(fd, new.fd, part_offset(name), size)
                finally:
                    os.close(fd)
            return storage.files.publish(new)
        except BaseException:
            new.discard()
            raise

    def abort(self, bucket: str, key: str, upload_id: str) -> None:
        with self.storage.txn() as db:
            self._get(db, bucket, key, upload_id)
            garbage = [
                r[0] for r in db.execute("SELECT data FROM parts WHERE upload_id = ?", (upload_id,))
            ]
            db.execute("DELETE FROM parts WHERE upload_id = ?", (upload_id,))
            db.execute("DELETE FROM uploads WHERE upload_id = ?", (upload_id,))
        self.storage.files.unlink(garbage)
        self.assemblies.drop(upload_id)

    def list(
        self,
        bucket: str,
        *,
        prefix: str,
        delimiter: str,
        key_marker: str,
        upload_id_marker: str,
        max_uploads: int,
    ) -> UploadPage:
        with self.storage.lock:
            self.storage.require_bucket(bucket)
            return list_upload_keys(
                self.storage.db,
                bucket,
                prefix,
                delimiter,
                key_marker,
                upload_id_marker,
                max_uploads,
            )


def _choose_parts(
    wanted: list[tuple[int, str]], stored: dict[int, tuple[int, str, str]]
) -> list[tuple[int, str, str]]:
    """Validate a CompleteMultipartUpload part list the way COS does, in COS's order."""
    previous = 0
    chosen: list[tuple[int, str, str]] = []
    for number, etag in wanted:
        if number <= previous:
            raise CosError("InvalidPartOrder")
        previous = number
        part = stored.get(number)
        if part is None or part[1] != etag:
            raise CosError("InvalidPart", f"Part {number} was not uploaded or its ETag differs.")
        chosen.append(part)
    for (number, _etag), (size, _e, _n) in zip(wanted[:-1], chosen[:-1], strict=True):
        if size < MIN_PART_SIZE:
            raise CosError(
                "EntityTooSmall", f"Part {number} is {size} bytes; all but the last need 1 MiB."
            )
    return chosen
