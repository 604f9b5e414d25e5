"""Finds plaintext that two ciphertexts sharing a keystream give away when XORed.

The attack: an observer who copies the cache directory at two moments (or
copies it once and reads the bucket) XORs every pair of blobs at every pair
of 16-byte aligned positions.  Where the same (data key, counter block)
encrypted two plaintexts, the XOR is the XOR of those plaintexts: the secret
itself when the other one was zeros, or ``S ^ P`` when S was overwritten
with a known pattern P.  :class:`Detector` does that search for given
secrets, and the direct one (a secret in clear in some blob).

A 32-byte window of a secret inside the XOR ``X`` always covers an aligned
16-byte block of ``X``, equal to a 16-byte window of the secret (at any
offset of the secret).  So the search is: all pairs of aligned blocks whose
XOR is such a window, then an exact check of a 32-byte window around each.

Quadratic in the number of distinct blocks, vectorized: every block gets a
64-bit key that is linear over XOR (``key(a ^ b) == key(a) ^ key(b)``), a
bitmap indexed by the low bits of the keys of the secrets' windows filters
the pairs, and the few candidates left are checked exactly.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

BLOCK = 16
WINDOW = 32
TABLE_BITS = 26
_MASK = np.uint64((1 << TABLE_BITS) - 1)
#: Rows of the pair matrix handled at once (memory: ROWS x distinct blocks).
ROWS = 256
U64 = npt.NDArray[np.uint64]


def _keys(lo: U64, hi: U64) -> U64:
    """A 64-bit key per 16-byte block, linear over XOR."""
    rot = (hi << np.uint64(29)) | (hi >> np.uint64(35))
    k = lo ^ rot
    out: npt.NDArray[np.uint64] = (
        k ^ (k >> np.uint64(TABLE_BITS)) ^ (k >> np.uint64(2 * TABLE_BITS))
    )
    return out


def _halves(blocks: npt.NDArray[np.uint8]) -> tuple[U64, U64]:
    v = np.ascontiguousarray(blocks).view("<u8").reshape(-1, 2)
    return v[:, 0].copy(), v[:, 1].copy()


@dataclass(frozen=True, slots=True)
class Leak:
    secret: str
    offset: int  # where the 32-byte window starts in the secret
    a: str
    a_pos: int
    b: str  # "" for plaintext found directly in ``a``
    b_pos: int

    def __str__(self) -> str:
        where = f"{self.a}@{self.a_pos}" + (f" ^ {self.b}@{self.b_pos}" if self.b else "")
        return f"{self.secret}[{self.offset}:{self.offset + WINDOW}] in {where}"


class Detector:
    def __init__(self, secrets: dict[str, bytes]) -> None:
        self.windows: dict[bytes, tuple[str, int]] = {}
        keys = []
        #: Every 16-byte window (as two little-endian uint64) -> its secret's name.
        self.exact: dict[tuple[int, int], str] = {}
        for name, s in secrets.items():
            assert len(s) >= WINDOW, name
            for off in range(len(s) - WINDOW + 1):
                self.windows.setdefault(s[off : off + WINDOW], (name, off))
            arr = np.frombuffer(s, dtype=np.uint8)
            win = np.lib.stride_tricks.sliding_window_view(arr, BLOCK)
            lo, hi = _halves(win)
            keys.append(_keys(lo, hi))
            for pair in zip(lo.tolist(), hi.tolist(), strict=True):
                self.exact.setdefault(pair, name)
        self.table = np.zeros(1 << TABLE_BITS, dtype=np.bool_)
        self.table[np.concatenate(keys) & _MASK] = True

    # -- the search ------------------------------------------------------------

    def _window_at(self, x: bytes) -> tuple[str, int, int] | None:
        """(secret, offset in it, offset in ``x``) of a 32-byte window of a secret in ``x``."""
        for k in range(len(x) - WINDOW + 1):
            hit = self.windows.get(x[k : k + WINDOW])
            if hit is not None:
                return hit[0], hit[1], k
        return None

    def plain(self, blobs: dict[str, bytes], limit: int = 10) -> list[Leak]:
        """32-byte windows of a secret stored in clear, at any offset of any blob.

        At most ``limit`` leaks of each secret are returned.
        """
        out: list[Leak] = []
        found: dict[str, int] = defaultdict(int)
        for name, blob in blobs.items():
            seen: set[int] = set()
            for phase in range(BLOCK):
                n = (len(blob) - phase) // BLOCK
                if n <= 0:
                    continue
                arr = np.frombuffer(blob, dtype=np.uint8, count=n * BLOCK, offset=phase)
                lo, hi = _halves(arr.reshape(n, BLOCK))
                cand = np.nonzero(self.table[_keys(lo, hi) & _MASK])[0]
                for i in cand.tolist():
                    secret = self.exact.get((int(lo[i]), int(hi[i])))
                    if secret is None or found[secret] >= limit:
                        continue
                    pos = phase + i * BLOCK
                    start = max(0, pos - BLOCK)
                    hit = self._window_at(blob[start : pos + WINDOW])
                    if hit is not None and start + hit[2] not in seen:
                        seen.add(start + hit[2])
                        found[hit[0]] += 1
                        out.append(Leak(hit[0], hit[1], name, start + hit[2], "", 0))
        return out

    def xor(self, blobs: dict[str, bytes], limit: int = 10) -> list[Leak]:
        """Every pair of aligned positions in every pair of blobs (a blob with itself too).

        At most ``limit`` leaks of each secret are returned.
        """
        names = list(blobs)
        padded = [blobs[n] + bytes(-len(blobs[n]) % BLOCK) for n in names]
        owner = np.concatenate(
            [np.full(len(p) // BLOCK, i, dtype=np.int64) for i, p in enumerate(padded)]
        )
        start = np.concatenate([[0], np.cumsum([len(p) // BLOCK for p in padded])])
        if len(owner) == 0:
            return []
        allb = np.frombuffer(b"".join(padded), dtype=np.uint8).reshape(-1, BLOCK)
        lo_all, hi_all = _halves(allb)
        pairs = np.stack([lo_all, hi_all], axis=1)
        uniq, inverse = np.unique(pairs, axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        ulo, uhi = uniq[:, 0].copy(), uniq[:, 1].copy()
        keys = _keys(ulo, uhi)
        matches: list[tuple[int, int, str]] = []
        n = len(keys)
        for r0 in range(0, n, ROWS):
            r1 = min(n, r0 + ROWS)
            m = keys[r0:r1, None] ^ keys[None, r0:]
            rows, cols = np.nonzero(self.table[m & _MASK])
            for i, j in zip((rows + r0).tolist(), (cols + r0).tolist(), strict=True):
                if i < j:
                    secret = self.exact.get((int(ulo[i] ^ ulo[j]), int(uhi[i] ^ uhi[j])))
                    if secret is not None:
                        matches.append((i, j, secret))
        if not matches:
            return []
        wanted = {u for i, j, _ in matches for u in (i, j)}
        where: dict[int, list[int]] = defaultdict(list)
        for g in np.nonzero(np.isin(inverse, list(wanted)))[0].tolist():
            where[int(inverse[g])].append(g)
        out: list[Leak] = []
        found: dict[str, int] = defaultdict(int)
        for i, j, secret in matches:
            if found[secret] >= limit:
                continue
            leak = self._confirm(where[i], where[j], owner, start, names, padded)
            if leak is not None:
                found[leak.secret] += 1
                out.append(leak)
        return out

    def _confirm(
        self,
        gs: list[int],
        hs: list[int],
        owner: npt.NDArray[np.int64],
        start: npt.NDArray[np.int64],
        names: list[str],
        padded: list[bytes],
        tries: int = 10_000,
    ) -> Leak | None:
        """A 32-byte window of a secret around one occurrence of the block pair."""
        for n, (g, h) in enumerate((g, h) for g in gs for h in hs):
            if n >= tries:
                return None
            a, b = int(owner[g]), int(owner[h])
            pa, pb = (g - int(start[a])) * BLOCK, (h - int(start[b])) * BLOCK
            back = min(BLOCK, pa, pb)
            ahead = min(2 * BLOCK, len(padded[a]) - pa, len(padded[b]) - pb)
            xa = padded[a][pa - back : pa + ahead]
            xb = padded[b][pb - back : pb + ahead]
            x = bytes(p ^ q for p, q in zip(xa, xb, strict=True))
            hit = self._window_at(x)
            if hit is not None:
                k = hit[2] - back
                return Leak(hit[0], hit[1], names[a], pa + k, names[b], pb + k)
        return None
