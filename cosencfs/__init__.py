"""cosencfs: a FUSE filesystem on Tencent COS with SDK-compatible client-side encryption."""

from __future__ import annotations

__version__ = "0.1.0"
