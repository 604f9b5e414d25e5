"""``cosencfs local-server``: the local COS server's own command line, under ``cosencfs``.

The server package owns its arguments and its run loop (cosencfs/server/cli.py).
"""

from __future__ import annotations

from cosencfs.server.cli import configure, run

__all__ = ["configure", "run"]
