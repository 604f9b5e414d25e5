"""A local COS-compatible server over a directory, for tests, benchmarks and ``mount --local``.

Standard library only; see docs/local-server.md.
"""

from __future__ import annotations

from cosencfs.server.server import LocalCosServer

__all__ = ["LocalCosServer"]
