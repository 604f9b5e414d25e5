"""Old path of :mod:`cosencfs.mount.hardening`, re-exported while fuse_ops.py still imports it.

Issue 13 moved the module; remove this file once fuse_ops.py imports
``cosencfs.mount.hardening``.
"""

from __future__ import annotations

from cosencfs.mount.hardening import Hardening, current, harden_process

__all__ = ["Hardening", "current", "harden_process"]
