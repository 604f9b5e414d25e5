"""Names of the control channel: extended attributes of a mount's root.

Answered by the filesystem (``fs/xattrs.py``) and used by the commands
(``umount``, ``stats``, ``sync``), which must not import pyfuse3: nothing
here imports it.
"""

from __future__ import annotations

#: The daemon's process id (``cosencfs umount`` waits for it to exit).
XATTR_PID = b"user.cosencfs.pid"
#: JSON statistics (``cosencfs stats``).
XATTR_STATS = b"user.cosencfs.stats"
#: On any file: how its object is stored (cosencfs, sdk, plain, foreign, damaged).
#: Not listed by listxattr, so tools copying xattrs do not carry it along.
XATTR_FORMAT = b"user.cosencfs.format"
#: Setting it uploads everything dirty and returns when done (EIO on failure).
XATTR_SYNC = b"user.cosencfs.sync"
#: Setting it on a file forgets that this mount knew its object tagged: an
#: untagged object another tool wrote there is then read (docs/format.md, 12.10).
XATTR_ACCEPT_UNTAGGED = b"user.cosencfs.accept-untagged"
