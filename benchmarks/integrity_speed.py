"""CPU cost of integrity chunk tags next to AES-CTR encryption of the same bytes.

    python -m benchmarks.integrity_speed [--mib 64] [--repeat 5] [--threads 2]

Prints MB/s (best of ``--repeat`` interleaved runs, one core) for: the body encryption
(``ctr.encrypt``), the uploader's tagging (``ChunkTagger`` fed 8 MiB parts cut
at odd sizes, as multipart parts arrive), the same HMAC-SHA256 done with
``hashlib``/``hmac`` instead of ``cryptography`` (the choice the module made),
bare SHA-256 as the floor, and Poly1305 over the same 64 KiB chunks (what a
cheaper chunk MAC would cost; not used by the format).  With ``--threads N``
the MAC rows also run in N threads at once: the aggregate rate shows whether
the library releases the GIL (N threads on N free cores: ~N times one).
See docs/format.md, section 12.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import os
import threading
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.poly1305 import Poly1305

from cosencfs.crypto import integrity
from cosencfs.crypto.ctr import DataKey, encrypt

_PART = 8 * 1024 * 1024 + 12345  # not a multiple of the chunk size


def _best(cases: list[tuple[str, Callable[[], object]]], repeat: int) -> dict[str, float]:
    """Best time of each case, the cases interleaved (a loaded machine slows all alike)."""
    best = {name: float("inf") for name, _ in cases}
    for _ in range(repeat):
        for name, fn in cases:
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)
    return best


def _in_threads(fn: Callable[[], object], n: int) -> Callable[[], object]:
    """``fn`` run in ``n`` threads at once (the time is until the last ends)."""

    def run() -> None:
        threads = [threading.Thread(target=fn) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    return run


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--mib", type=int, default=64, help="bytes to process, in MiB")
    ap.add_argument("--repeat", type=int, default=5, help="runs per measurement (best kept)")
    ap.add_argument("--threads", type=int, default=1, help="also run the MACs in N threads")
    args = ap.parse_args(argv)

    dk = DataKey.generate()
    plain = os.urandom(args.mib * 1024 * 1024)
    body = encrypt(dk, 0, plain)
    view = memoryview(body)
    ck = integrity.ChunkKey(dk)
    hkey = os.urandom(32)
    c = integrity.CHUNK_SIZE

    def tagger() -> None:
        t = integrity.ChunkTagger(ck)
        for o in range(0, len(view), _PART):
            t.update(view[o : o + _PART])
        t.finish()

    def stdlib_hmac() -> None:
        base = hmac.new(hkey, b"\x01prefix", hashlib.sha256)
        for o in range(0, len(view), c):
            h = base.copy()
            h.update(view[o : o + c])
            h.digest()

    def sha256_only() -> None:
        for o in range(0, len(view), c):
            hashlib.sha256(view[o : o + c]).digest()

    def poly1305() -> None:
        for o in range(0, len(view), c):
            Poly1305.generate_tag(hkey, view[o : o + c])

    cases: list[tuple[str, Callable[[], object]]] = [
        ("AES-256-CTR encrypt (ctr.encrypt)", lambda: encrypt(dk, 0, plain)),
        ("chunk tags, ChunkTagger (cryptography HMAC)", tagger),
        ("chunk tags, hashlib/hmac HMAC-SHA256", stdlib_hmac),
        ("SHA-256 alone, 64 KiB pieces", sha256_only),
        ("Poly1305, 64 KiB pieces (not used)", poly1305),
    ]
    size = len(plain)
    sizes = dict.fromkeys((name for name, _ in cases), size)
    if args.threads > 1:
        for name, fn in list(cases[1:]):
            label = f"{name[:30]}.. x{args.threads} threads"
            cases.append((label, _in_threads(fn, args.threads)))
            sizes[label] = size * args.threads
    results = {name: sizes[name] / t / 1e6 for name, t in _best(cases, args.repeat).items()}
    enc = results[cases[0][0]]
    print(f"{args.mib} MiB, best of {args.repeat}, one core")
    for name, mbps in results.items():
        print(f"  {name:48s} {mbps:8.0f} MB/s  ({mbps / enc:4.2f}x encryption)")
    both = 1 / (1 / enc + 1 / results[cases[1][0]])
    print(f"  {'encrypt + tag, one core, in sequence':48s} {both:8.0f} MB/s")


if __name__ == "__main__":
    main()
