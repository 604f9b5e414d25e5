"""Helpers of the store-layer tests (imported by conftest.py and the tests)."""

from __future__ import annotations

import hashlib

from cosencfs.faults import FaultKind
from cosencfs.store.retry import RetryPolicy

MIB = 1024 * 1024

#: Seed of the random-fault server, so a failure can be replayed.
FAULT_SEED = 20240607


def md5_hex(data: bytes | bytearray | memoryview) -> str:
    return hashlib.md5(data).hexdigest()


def quick_policy(max_attempts: int = 30, deadline: float = 30.0) -> RetryPolicy:
    """Many attempts with millisecond backoff: fault tests stay fast."""
    return RetryPolicy(
        max_attempts=max_attempts, deadline=deadline, base_delay=0.001, max_delay=0.01
    )


class ScriptedFaults:
    """Replaces the server's random fault picker: the next requests fail as scripted.

    ``script`` holds one entry per upcoming request (``None``: no fault);
    ``copy_script`` is consumed only by CopyObject requests (the one kind the
    server answers 200 with an ``<Error>`` body on its own).  Requests beyond
    the script get no fault.
    """

    def __init__(self) -> None:
        self.script: list[FaultKind | None] = []
        self.copy_script: list[FaultKind | None] = []
        self.injected: list[FaultKind] = []

    def pick(self, is_copy: bool) -> FaultKind | None:
        fault: FaultKind | None = None
        if is_copy and self.copy_script:
            fault = self.copy_script.pop(0)
        elif self.script:
            fault = self.script.pop(0)
        if fault is not None:
            self.injected.append(fault)
        return fault
