"""Cache files of format 1 (releases before the dirty-log cache), read once to convert them.

A format-1 journal record names one cache file holding the file's
ciphertext at object offsets, under the data key of the version being
written, and the ranges of it that count.  Recovery (cosencfs/fs/recovery.py)
reads the plaintext of those ranges once and appends it as records of a new
layer; that old key never encrypts anything again.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from cosencfs.cache.extents import Extents
from cosencfs.crypto.ctr import DataKey, decrypt
from cosencfs.errors import CosEncFsError

#: Plaintext is handed on in pieces this big (memory bound).
CHUNK = 4 * 1024 * 1024


def read_legacy(
    path: Path,
    dk: DataKey,
    present: Sequence[Sequence[int]],
    size: int,
    put: Callable[[int, bytes], None],
) -> None:
    """Call ``put(offset, plaintext)`` for the recorded ranges below ``size``, in order."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        # Only the recorded ranges count; the rest is fetched again.
        for s, e in Extents.from_list(present):
            end = min(e, size)
            for pos in range(s, end, CHUNK):
                n = min(CHUNK, end - pos)
                data = os.pread(fd, n, pos)
                if len(data) != n:
                    raise CosEncFsError(f"cache file {path.name} is short at {pos}+{n}")
                put(pos, decrypt(dk, pos, data))
    finally:
        os.close(fd)
