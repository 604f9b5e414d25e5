"""Multipart parts received straight into their object's file, so completing copies nothing.

Completing an upload used to concatenate its parts into a new data file:
256 MiB of page-cache copying (0.09-0.7 s of CPU, 0.2-1.5 s of wall on the
benchmark VM) while the client waits, on the two CPUs the client shares
with this server.  Real COS makes no client wait for, or pay for, such a
copy, so the local server avoids it where it can (branch seqcpu).

Each upload gets one *assembly* file in ``tmp/`` the first time a part
arrives with a declared length of at least ``MIN_SLOT``: that length is the
upload's slot size ``S``, and part ``n`` of length ``L <= S`` is received
into the assembly at ``(n - 1) * S`` (its *slot*).  A slot is written at
most once, ever: a part number received again (a retry, a replacement), a
part longer than ``S``, a chunked body, or a part of an upload whose
assembly is sealed goes to a data file of its own as before.  A part in a
slot is committed under a name of its own in ``data/``: a hard link to the
assembly, with its offset in the name (:func:`part_offset`), so every rule
of the data files holds for it (linked, unlinked, swept by name) and
reading it back (the copying completion) reads its range.

Completion takes the assembly itself as the object's data file, with no
copy, when the chosen parts are links to it lying end to end from offset 0,
no slot is being received, and the file holds exactly their bytes; it then
seals the assembly (no slot is ever written again: the file is an object's
now, immutable like every data file).  Otherwise it copies as before.  The
state is in memory: after a restart (``tmp/`` swept) the parts' links stay
valid, and completion copies.  What is checked is unchanged: every part is
received, counted and MD5-summed as before; only where its bytes land.

Thread-safe: one lock for every upload's state (claims and sealing are
check-and-act under it).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from cosencfs.server.datafiles import DataFiles, NewData, _fsync_dir
from cosencfs.server.errors import CosError

#: Parts shorter than this never start an assembly (a slot per tiny part is not worth it).
MIN_SLOT = 1024 * 1024


def part_offset(name: str) -> int:
    """Where a part's bytes start in its data file: 0, or the offset a slot's link names."""
    _, sep, off = name.partition("-")
    return int(off, 16) if sep else 0


@dataclass(slots=True)
class _Assembly:
    path: Path
    slot: int
    #: Slots claimed so far (written, being written, or failed: never again).
    claimed: set[int] = field(default_factory=set)
    #: Slots being received now.
    active: int = 0
    sealed: bool = False
    #: Committed links to it: name -> offset.
    links: dict[str, int] = field(default_factory=dict)


class SlotData(NewData):
    """A part received into its slot of an assembly (written like a ``NewData``)."""

    __slots__ = ("_asm", "_left", "_owner", "offset")

    def __init__(self, owner: Assemblies, asm: _Assembly, number: int, fsync: bool) -> None:
        # (Not NewData's __init__: the file exists, and is not this part's alone.)
        self._owner = owner
        self._asm = asm
        self.path = asm.path
        self.offset = (number - 1) * asm.slot
        self._left = asm.slot
        self._fsync = fsync
        # Its own open file description: its position is this slot's.
        self._fd = os.open(asm.path, os.O_WRONLY | os.O_CLOEXEC)
        os.lseek(self._fd, self.offset, os.SEEK_SET)

    def write(self, data: memoryview | bytes) -> None:
        view = memoryview(data)
        if len(view) > self._left:
            # Never into the next slot (the declared length bounds the body).
            raise CosError("InternalError", "A part ran past its slot.")
        self._left -= len(view)
        super().write(view)

    def finish(self) -> None:
        if self._fd is not None:
            try:
                super().finish()
            finally:
                self._owner._done(self._asm)

    def discard(self) -> None:
        """Receiving failed: the slot stays claimed (its bytes are nobody's)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
            self._owner._done(self._asm)

    def publish(self, files: DataFiles) -> str:
        """A name in ``data/`` for this part: a link to the assembly, offset in the name."""
        self.finish()
        name = f"{os.urandom(16).hex()}-{self.offset:x}"
        try:
            os.link(self.path, files.path(name))
        except FileNotFoundError:
            raise CosError("NoSuchUpload") from None  # aborted while it was received
        if files.fsync:
            _fsync_dir(files.path(name).parent)
        self._owner._linked(self._asm, name, self.offset)
        return name


class Assemblies:
    """Every open upload's assembly (in memory; see the module docstring)."""

    def __init__(self, files: DataFiles) -> None:
        self.files = files
        self._lock = threading.Lock()
        self._by_upload: dict[str, _Assembly] = {}
        #: Completions that took the assembly as it was, and that copied (tests).
        self.taken = 0
        self.copied = 0

    def claim(self, upload_id: str, number: int, length: int | None) -> SlotData | None:
        """Part ``number``'s slot, if it may be received there (else None: its own file)."""
        if length is None or number < 1:
            return None
        with self._lock:
            asm = self._by_upload.get(upload_id)
            if asm is None:
                if length < MIN_SLOT:
                    return None
                path = self.files.tmp_dir / f"{os.urandom(16).hex()}.asm"
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                asm = self._by_upload[upload_id] = _Assembly(path, length)
            if asm.sealed or length > asm.slot or number in asm.claimed:
                return None
            asm.claimed.add(number)
            asm.active += 1
        return SlotData(self, asm, number, self.files.fsync)

    def _done(self, asm: _Assembly) -> None:
        with self._lock:
            asm.active -= 1

    def _linked(self, asm: _Assembly, name: str, offset: int) -> None:
        with self._lock:
            asm.links[name] = offset

    def take(self, upload_id: str, parts: list[tuple[int, str]]) -> str | None:
        """The assembly as the data file of an object of ``parts`` (size, name), in
        order; a new name for it in ``data/``, or None (not whole: copy)."""
        with self._lock:
            asm = self._by_upload.get(upload_id)
            if asm is None or asm.sealed or asm.active:
                self.copied += 1
                return None
            pos = 0
            for size, name in parts:
                if asm.links.get(name) != pos:
                    self.copied += 1
                    return None
                pos += size
            if os.stat(asm.path).st_size != pos:
                self.copied += 1
                return None
            # No slot is written from here on: the file is an object's.
            asm.sealed = True
            self.taken += 1
        new_name = os.urandom(16).hex()
        os.link(asm.path, self.files.path(new_name))
        if self.files.fsync:
            _fsync_dir(self.files.path(new_name).parent)
        return new_name

    def drop(self, upload_id: str) -> None:
        """The upload ended (completed or aborted): its assembly's own name goes."""
        with self._lock:
            asm = self._by_upload.pop(upload_id, None)
        if asm is not None:
            try:
                os.unlink(asm.path)
            except FileNotFoundError:
                pass
