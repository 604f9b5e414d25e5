"""Input data, generated once per run on local disk before anything is timed.

Random bytes come from AES-CTR keystreams of a seeded key (several GB/s),
so neither /dev/urandom's speed nor Python's is measured, and every run
writes the same bytes. Random data also defeats any compression.
"""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

MIB = 1024 * 1024
_CHUNK = 4 * MIB


def random_stream(seed: str) -> Cipher[modes.CTR]:
    key = hashlib.sha256(seed.encode()).digest()
    return Cipher(algorithms.AES(key), modes.CTR(b"\0" * 16))


def random_bytes(seed: str, n: int) -> bytes:
    return random_stream(seed).encryptor().update(b"\0" * n)


def write_random_file(path: Path, size: int, seed: str) -> None:
    """Write ``size`` pseudo-random bytes to ``path`` (skipped if it already has that size)."""
    if path.exists() and path.stat().st_size == size:
        return
    enc = random_stream(seed).encryptor()
    zeros = b"\0" * _CHUNK
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        left = size
        while left > 0:
            n = min(left, _CHUNK)
            f.write(enc.update(zeros[:n]))
            left -= n
    tmp.rename(path)


@dataclass(frozen=True, slots=True)
class TreeSpec:
    files: int
    dirs: int
    min_size: int = 1024
    max_size: int = 16 * 1024


def write_tree(root: Path, spec: TreeSpec, seed: str = "tree") -> int:
    """A tree of ``spec.files`` small files in ``spec.dirs`` subdirectories
    (two levels: ``dNN/`` and ``dNN/sub/``); returns the total size.

    Sizes are uniform in [min_size, max_size]; no file is empty, so every
    file is one object with a body in the bucket.
    """
    rng = random.Random(seed)
    data = random_bytes(seed, spec.max_size * 64)
    total = 0
    root.mkdir(parents=True, exist_ok=True)
    for i in range(spec.files):
        d = root / f"d{i % spec.dirs:02d}"
        if i % 3 == 2:
            d = d / "sub"
        d.mkdir(parents=True, exist_ok=True)
        size = rng.randint(spec.min_size, spec.max_size)
        start = rng.randrange(0, len(data) - size)
        (d / f"file{i:05d}.dat").write_bytes(data[start : start + size])
        total += size
    # Fixed times, so a second rsync has nothing to do whatever the clock says.
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            os.utime(os.path.join(dirpath, name), (1_700_000_000, 1_700_000_000))
    return total


def random_offsets(file_size: int, count: int, seed: int = 42, block: int = 4096) -> list[int]:
    """``count`` seeded random ``block``-aligned offsets of whole blocks in the file."""
    rng = random.Random(seed)
    blocks = file_size // block
    return [rng.randrange(blocks) * block for _ in range(count)]
