"""Old path of :mod:`cosencfs.mount.control`, re-exported while fuse_ops.py still imports it.

Issue 13 moved the module; remove this file once fuse_ops.py imports
``cosencfs.mount.control``.
"""

from __future__ import annotations

from cosencfs.mount.control import XATTR_FORMAT, XATTR_PID, XATTR_STATS, XATTR_SYNC

__all__ = ["XATTR_FORMAT", "XATTR_PID", "XATTR_STATS", "XATTR_SYNC"]
