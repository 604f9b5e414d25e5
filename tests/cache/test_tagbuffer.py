"""The tag memory's marks are folded in when written, not read per commit
(cosencfs/cache/tagbuffer.py): the same memories, one SELECT per batch."""

from __future__ import annotations

from pathlib import Path

from cosencfs.cache.journal import Journal
from cosencfs.cache.records import TagMemory


def _selects(j: Journal) -> list[str]:
    seen: list[str] = []
    j._db.set_trace_callback(lambda sql: seen.append(sql) if "FROM tags" in sql else None)
    return seen


def test_marks_give_the_memories_get_and_put_gave(tmp_path: Path) -> None:
    j = Journal(tmp_path / "journal.db")
    try:
        j.put_tags("old", TagMemory("A", ("Z",)))
        j.flush_attrs()
        for key in ("old", "new"):
            j.saw_tag(key, "B")
            j.saw_tag(key, "C")
        j.saw_tag("old", "C")  # seen again: no change
        assert j.get_tags("new") == TagMemory("C", ("B",))  # folded before written
        j.flush_attrs()
        assert j.get_tags("old") == TagMemory("C", ("B", "A", "Z"))
        assert j.get_tags("new") == TagMemory("C", ("B",))
        # A mark after a put folds into the put memory.
        j.put_tags("gone", TagMemory("D", ()).gone())
        j.saw_tag("gone", "E")
        assert j.get_tags("gone") == TagMemory("E", ("D",))
        j.flush_attrs()
    finally:
        j.close()
    j = Journal(tmp_path / "journal.db")
    try:
        assert j.get_tags("old") == TagMemory("C", ("B", "A", "Z"))
        assert j.get_tags("gone") == TagMemory("E", ("D",))
    finally:
        j.close()


def test_a_thousand_commits_read_the_tag_memory_once(tmp_path: Path) -> None:
    j = Journal(tmp_path / "journal.db")
    try:
        j.put_tags("k5", TagMemory("X", ()))
        j.flush_attrs()
        selects = _selects(j)
        for i in range(600):
            j.saw_tag(f"k{i}", f"T{i}")
        assert not [s for s in selects if s.lstrip().upper().startswith("SELECT")]
        j.flush_attrs()
        reads = [s for s in selects if s.lstrip().upper().startswith("SELECT")]
        assert len(reads) == 2  # 500 keys per SELECT
        j._db.set_trace_callback(None)
        assert j.get_tags("k5") == TagMemory("T5", ("X",))
        assert j.get_tags("k599") == TagMemory("T599", ())
    finally:
        j.close()
