"""O_DIRECT writes of cache-file ranges (cosencfs/cache/direct.py): the aligned
middle past the page cache, the edges as before, and a writer that turns
itself off where the filesystem refuses O_DIRECT."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from cosencfs.cache.direct import DIRECT_ALIGN, DIRECT_BUFFER, DirectWriter


def o_direct_opens(path: Path) -> bool:
    """Whether ``path``'s file system lets a file be opened with O_DIRECT."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        dfd = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_DIRECT)
    except OSError:
        return False
    finally:
        os.close(fd)
    os.close(dfd)
    return True


def _write(tmp_path: Path, writer: DirectWriter, data: bytes, offset: int) -> bytes:
    path = tmp_path / "copy"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        writer.write(fd, memoryview(data), offset)
    finally:
        os.close(fd)
    return path.read_bytes()


@pytest.mark.parametrize(
    ("offset", "length"),
    [
        (0, 2 * DIRECT_BUFFER + 3 * DIRECT_ALIGN),  # aligned, more than one buffer
        (16, 5 * DIRECT_ALIGN + 100),  # unaligned edges
        (DIRECT_ALIGN - 16, 100),  # too short for O_DIRECT: all buffered
    ],
)
def test_ranges_land_where_they_belong(tmp_path: Path, offset: int, length: int) -> None:
    if not o_direct_opens(tmp_path / "probe"):
        pytest.skip("no O_DIRECT on this filesystem")
    writer = DirectWriter()
    data = os.urandom(length)
    on_disk = _write(tmp_path, writer, data, offset)
    assert on_disk == bytes(offset) + data
    end = offset + length
    aligned = end - end % DIRECT_ALIGN - -(-offset // DIRECT_ALIGN) * DIRECT_ALIGN
    assert writer.written == (aligned if aligned >= DIRECT_ALIGN else 0)
    assert writer.enabled


def test_filesystem_without_o_direct_turns_it_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open

    def refusing(path: str, flags: int, *args: int) -> int:
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "O_DIRECT refused")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", refusing)
    writer = DirectWriter()
    data = os.urandom(4 * DIRECT_ALIGN + 7)
    assert _write(tmp_path, writer, data, 0) == data
    assert not writer.enabled
    assert writer.written == 0


def test_alignment_refused_at_write_falls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not o_direct_opens(tmp_path / "probe"):
        pytest.skip("no O_DIRECT on this filesystem")
    real_pwrite = os.pwrite
    direct_fds: set[int] = set()
    real_open = os.open

    def opening(path: str, flags: int, *args: int) -> int:
        fd = real_open(path, flags, *args)
        if flags & os.O_DIRECT:
            direct_fds.add(fd)
        return fd

    def pwrite(fd: int, data: memoryview, offset: int) -> int:
        if fd in direct_fds:
            raise OSError(errno.EINVAL, "alignment")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "open", opening)
    monkeypatch.setattr(os, "pwrite", pwrite)
    writer = DirectWriter()
    data = os.urandom(8 * DIRECT_ALIGN)
    assert _write(tmp_path, writer, data, DIRECT_ALIGN) == bytes(DIRECT_ALIGN) + data
    assert not writer.enabled
