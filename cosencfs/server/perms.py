"""Permissions of the server root: private to the user running the server.

Object names, envelopes and (for plain uploads) bodies are all in the root,
so it is created 0700 and its index 0600.  A root made by an earlier release
(0755, index 0644) is tightened once, with a warning; a root owned by
someone else is left as it is, with a warning, since it is theirs.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)

#: The index and the files SQLite keeps next to it.
INDEX_FILES = ("index.sqlite", "index.sqlite-wal", "index.sqlite-shm")


def private_root(root: Path) -> None:
    """Create ``root`` (0700) and its index file (0600), or tighten them."""
    os.makedirs(root, mode=0o700, exist_ok=True)
    st = os.stat(root)
    if st.st_uid != os.geteuid():
        log.warning(
            "server root %s belongs to uid %d, not to this user: its permissions are left as "
            "they are (mode %04o)",
            root,
            st.st_uid,
            stat.S_IMODE(st.st_mode),
        )
        return
    tightened: list[str] = []
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(root, 0o700)
        tightened.append(str(root))
    # Made before SQLite opens it: SQLite would create it with the umask's
    # mode, and gives its -wal and -shm files the mode of the database.
    fd = os.open(
        root / INDEX_FILES[0], os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
    )
    os.close(fd)
    for name in INDEX_FILES:
        path = root / name
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) & 0o077:
            os.chmod(path, 0o600)
            tightened.append(str(path))
    if tightened:
        log.warning(
            "server root %s was readable by other users; made private: %s",
            root,
            ", ".join(tightened),
        )
