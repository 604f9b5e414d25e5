"""Giving the heap's free pages back to the system (glibc's ``malloc_trim``).

A daemon with 100,000 files allocates and frees a lot in bursts (write
buffers, ciphertext, listing pages, index bodies; some in worker threads,
whose allocations land in glibc arenas of their own).  glibc gives freed
memory back only from the top of a heap; free pages between live chunks
stay resident and count in the daemon's RSS (issue 18).  ``malloc_trim(0)``
releases them (``MADV_DONTNEED``) in every arena; it walks the heaps, so it
runs at most every ``INTERVAL`` seconds.  Python's own small-object arenas
are returned by Python when empty and are not touched.  Without glibc
(another libc), nothing is done.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

#: Seconds between two trims at least.
INTERVAL = 5.0


def _load() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_size_t,)
    fn.restype = ctypes.c_int
    return fn


_TRIM = _load()
_last = [-1e18]


def trim(*, now: float | None = None) -> bool:
    """Release free heap pages if the last trim is ``INTERVAL`` old; whether it ran."""
    t = time.monotonic() if now is None else now
    if _TRIM is None or t - _last[0] < INTERVAL:
        return False
    _last[0] = t
    _TRIM(0)
    return True
