"""The journal's tag memories not yet written (``Journal``: event loop only).

A commit marks the object tag it just sealed as seen at its key
(``MountTags.wrote``): folding that into the key's memory needs the memory
first, one ``SELECT`` per file created (~30 us of the event loop, issue 18).
Marks are kept as they come and folded in when the memories are written
(``take``: one ``SELECT`` per ``_CHUNK`` keys) or when someone reads the
key's memory first (``get``).  They are written with the attribute records,
batched as before: a crash forgets at most the last second of either.
"""

from __future__ import annotations

import json
import sqlite3

from cosencfs.cache.records import TagMemory

#: Keys per ``SELECT ... IN`` (SQLite allows 32,766 parameters; far fewer suffice).
_CHUNK = 500
_NONE = TagMemory(None, ())


class TagBuffer:
    """Tag memories written (``put``) or marked seen (``saw``) since the last ``take``."""

    __slots__ = ("_db", "_pending", "_seen")

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._pending: dict[str, TagMemory] = {}
        #: Tags seen at keys whose memory was not read yet, oldest first.
        self._seen: dict[str, list[str]] = {}

    def __len__(self) -> int:
        return len(self._pending) + len(self._seen)

    def get(self, key: str) -> TagMemory:
        memory = self._pending.get(key)
        if memory is not None:
            return memory
        memory = self._read(key)
        seen = self._seen.pop(key, None)
        if seen is not None:
            memory = self._pending[key] = _fold(memory, seen)
        return memory

    def put(self, key: str, memory: TagMemory) -> None:
        self._seen.pop(key, None)  # (``memory`` was made from ``get``, which folded them)
        self._pending[key] = memory

    def saw(self, key: str, tag: str) -> None:
        """``get(key).seen(tag)`` put back, without reading the memory now."""
        memory = self._pending.get(key)
        if memory is not None:
            self._pending[key] = memory.seen(tag)
        else:
            self._seen.setdefault(key, []).append(tag)

    def take(self) -> dict[str, TagMemory]:
        """Every memory to write now (the marks folded in), and empty."""
        seen, self._seen = self._seen, {}
        keys = list(seen)
        for i in range(0, len(keys), _CHUNK):
            chunk = keys[i : i + _CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = {
                k: TagMemory(current, tuple(json.loads(older)))
                for k, current, older in self._db.execute(
                    f"SELECT key, current, older FROM tags WHERE key IN ({marks})",
                    chunk,
                )
            }
            for k in chunk:
                self._pending[k] = _fold(rows.get(k, _NONE), seen[k])
        out, self._pending = self._pending, {}
        return out

    def _read(self, key: str) -> TagMemory:
        row = self._db.execute("SELECT current, older FROM tags WHERE key=?", (key,)).fetchone()
        if row is None:
            return _NONE
        return TagMemory(row[0], tuple(json.loads(row[1])))


def _fold(memory: TagMemory, seen: list[str]) -> TagMemory:
    for tag in seen:
        memory = memory.seen(tag)
    return memory
