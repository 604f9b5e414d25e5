"""Immutable data files of the local COS server (``data/xx/<name>``, ``tmp/``).

A data file is written in ``tmp/``, renamed into ``data/`` under a fresh
random name, and only then referenced by an index commit; it is never
modified afterwards, so a copy can hard-link it and a reader holding it
open is never disturbed by an overwrite (which commits a new name and
unlinks the old one).
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from cosencfs.server.errors import CosError

log = logging.getLogger(__name__)

_COPY_CHUNK = 64 * 1024 * 1024


class NewData:
    """A body being written to tmp/; it becomes an object or part only by a commit."""

    __slots__ = ("_fd", "_fsync", "path")

    def __init__(self, path: Path, fsync: bool) -> None:
        self.path = path
        self._fsync = fsync
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)

    @property
    def fd(self) -> int:
        if self._fd is None:
            raise ValueError("data file already closed")
        return self._fd

    def write(self, data: memoryview | bytes) -> None:
        fd = self.fd
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]

    def finish(self) -> None:
        """Close the file, making it durable first when the server runs with fsync."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                if self._fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)

    def discard(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def copy_range(src_fd: int, dst_fd: int, offset: int, count: int) -> None:
    """Copy ``count`` bytes at ``offset`` of ``src_fd`` to ``dst_fd``'s position, in-kernel."""
    use_cfr = True
    while count > 0:
        chunk = min(count, _COPY_CHUNK)
        n = 0
        if use_cfr:
            try:
                n = os.copy_file_range(src_fd, dst_fd, chunk, offset)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                    raise
                use_cfr = False
                continue
        else:
            data = os.pread(src_fd, min(chunk, 8 * 1024 * 1024), offset)
            if data:
                n = os.write(dst_fd, data)
        if n == 0:
            raise CosError("InternalError", "A data file is shorter than the index says.")
        offset += n
        count -= n


class DataFiles:
    def __init__(self, root: Path, *, fsync: bool) -> None:
        self.fsync = fsync
        self.data_dir = root / "data"
        self.tmp_dir = root / "tmp"
        self.tmp_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        for i in range(256):
            (self.data_dir / f"{i:02x}").mkdir(mode=0o700, exist_ok=True)

    def path(self, name: str) -> Path:
        return self.data_dir / name[:2] / name

    def new(self) -> NewData:
        return NewData(self.tmp_dir / f"{os.urandom(16).hex()}.tmp", self.fsync)

    def publish(self, new: NewData) -> str:
        """Move a finished body into data/ under a fresh name (still unreferenced)."""
        new.finish()
        name = os.urandom(16).hex()
        target = self.path(name)
        os.rename(new.path, target)
        if self.fsync:
            _fsync_dir(target.parent)
        return name

    def link(self, name: str) -> str:
        """A new name for the immutable data file ``name`` (hard link; copy as fallback)."""
        new_name = os.urandom(16).hex()
        src, dst = self.path(name), self.path(new_name)
        try:
            os.link(src, dst)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                raise
            tmp = self.new()
            try:
                with open(src, "rb") as f:
                    copy_range(f.fileno(), tmp.fd, 0, os.fstat(f.fileno()).st_size)
                return self.publish(tmp)
            except BaseException:
                tmp.discard()
                raise
        if self.fsync:
            _fsync_dir(dst.parent)
        return new_name

    def unlink(self, names: Iterable[str]) -> None:
        for name in names:
            if not name:
                continue
            try:
                os.unlink(self.path(name))
            except FileNotFoundError:
                pass
            except OSError:
                # The start-up sweep removes it later.
                log.warning("cannot remove data file %s", name, exc_info=True)

    def sweep(self, referenced: set[str]) -> set[str]:
        """Delete tmp/ and unreferenced data files; returns referenced names that are missing."""
        removed_tmp = 0
        for entry in os.scandir(self.tmp_dir):
            os.unlink(entry.path)
            removed_tmp += 1
        present: set[str] = set()
        removed = 0
        for sub in os.scandir(self.data_dir):
            if not sub.is_dir():
                continue
            for entry in os.scandir(sub.path):
                if entry.name in referenced:
                    present.add(entry.name)
                else:
                    os.unlink(entry.path)
                    removed += 1
        if removed or removed_tmp:
            log.info(
                "start-up sweep removed %d temp and %d orphan data files", removed_tmp, removed
            )
        return referenced - present


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
