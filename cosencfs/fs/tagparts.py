"""Pure parts of the mount's integrity tags (cosencfs/fs/tags.py has the policy).

- ``bare``: which objects bind an *empty* object tag into their attribute
  tag: directory markers and special files (fifos, sockets, device nodes),
  which have no content and no envelope, hence no object tag;
- ``tag_ciphertext``: chunk tags of a cache file's ciphertext.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from cosencfs.crypto.integrity import CHUNK_SIZE, OBJECT_TAG_FIELD, ChunkKey, ChunkTagger
from cosencfs.fs.policy import SPECIALS, file_type, meta_mode

#: Ciphertext read per step when tagging an upload copy, into one reused
#: buffer: small enough to stay in the CPU's cache between the read and the
#: MAC. A fresh 4 MiB ``bytes`` per step (page faults, cache misses) cost
#: ~60 % on top of the MAC itself (docs/format.md, 12.11).
_TAG_READ = 256 * 1024


def bare(meta: Mapping[str, str], *, is_dir: bool) -> bool:
    """Whether the object's attribute tag binds an empty object tag.

    A directory marker, and a special file: a metadata-only object whose
    mode says fifo, socket or device and that carries no object tag (it has
    no envelope to tag).  The mode is covered by the attribute tag, so a
    forger cannot turn one kind into the other.
    """
    if is_dir:
        return True
    return OBJECT_TAG_FIELD not in meta and file_type(meta_mode(meta)) in SPECIALS


def tag_ciphertext(path: str, ck: ChunkKey, start: int, end: int) -> list[bytes]:
    """Chunk tags of ``[start, end)`` of a cache file of ciphertext at object offsets.

    Runs in a worker thread; it holds no lock: the range was produced (sealed)
    before and nothing writes it again.  ``start`` is a multiple of the chunk size.
    """
    if start % CHUNK_SIZE:
        raise ValueError(f"tagging must start on a chunk boundary, not {start}")
    tagger = ChunkTagger(ck, first_chunk=start // CHUNK_SIZE)
    buf = memoryview(bytearray(min(_TAG_READ, max(0, end - start))))
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        pos = start
        while pos < end:
            n = os.preadv(fd, [buf[: min(len(buf), end - pos)]], pos)
            if not n:
                raise OSError(f"cache file {path} is short at {pos} (tagging up to {end})")
            # The tagger absorbs the piece at once (keeps no reference to it).
            tagger.update(buf[:n])
            pos += n
    finally:
        os.close(fd)
    return tagger.finish()
