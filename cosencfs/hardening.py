"""Keep the daemon's memory off the disk: no core dumps, not readable by ptrace.

The daemon holds the master key, unwrapped data keys and plaintext buffers.
A core dump (a crash, ``gcore``, systemd-coredump) would write them to disk
in the clear, so the process makes itself non-dumpable and sets its core
size limit to 0 before it loads any key.  Being non-dumpable also makes
``/proc/PID/{mem,environ,maps}`` and ptrace unavailable to other processes
of the same user that lack CAP_SYS_PTRACE.

Locking memory (mlockall) is not attempted: Python copies bytes objects
freely and a FUSE daemon's memory grows with its caches, so swap is
addressed by encrypting it (docs/security.md).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import resource
from dataclasses import dataclass

log = logging.getLogger(__name__)

PR_SET_DUMPABLE = 4
PR_GET_DUMPABLE = 3


@dataclass(slots=True, frozen=True)
class Hardening:
    dumpable: bool
    core_limit: int

    def as_dict(self) -> dict[str, object]:
        return {"dumpable": self.dumpable, "core_limit": self.core_limit}


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def harden_process() -> Hardening:
    """No core dumps, not dumpable; returns what the process ended up with."""
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (OSError, ValueError) as exc:
        log.warning("cannot set the core dump size limit to 0: %s", exc)
    libc = _libc()
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        log.warning("cannot make the process non-dumpable: errno %d", ctypes.get_errno())
    state = current()
    log.debug("core dumps off: dumpable=%s, RLIMIT_CORE=%d", state.dumpable, state.core_limit)
    return state


def current() -> Hardening:
    """The process's dumpable flag and core size limit, as the kernel has them."""
    dumpable = _libc().prctl(PR_GET_DUMPABLE, 0, 0, 0, 0)
    soft, _hard = resource.getrlimit(resource.RLIMIT_CORE)
    return Hardening(dumpable=dumpable != 0, core_limit=soft)
