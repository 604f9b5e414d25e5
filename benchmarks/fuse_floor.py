"""What a pyfuse3 daemon's event loop spends per small file created, with nothing behind it.

Issue 18's creation target (>= 1000 files/s at 0 ms) and issue 17's target 3
are bound by the cosencfs event loop's CPU per file (``benchmarks.create_cpu``).
This measures the floor under that: an in-memory pyfuse3 filesystem with the
same FUSE stack and options as cosencfs (pyfuse3 + trio, one event loop,
``default_permissions``, 10 s entry and attribute timeouts, no writeback
cache) that answers ``lookup``, ``create``, ``getattr``, ``write``, ``flush``
and ``release`` from a dict: no storage, no crypto, no journal, no upload.
The client creates ``--files`` files of ``--size`` bytes one after the other
(open, write, close: as ``benchmarks.create_cpu`` and ``benchmarks.scale``),
and each run reports per file the daemon's loop-thread CPU, the client's CPU,
the rate and the FUSE requests the filesystem answered (read through the
extended attribute ``user.nullfs.requests`` of its root, so the comparison
with cosencfs's ``fuse.requests`` counters is request for request; like
cosencfs, it opens write-only handles with ``direct_io``, which spares the
kernel's ``security.capability`` lookup before each write). Add
``benchmarks.transport_cpu``'s PUT to get the loop's floor for a file that
goes to the bucket.

    python -m benchmarks.fuse_floor --files 3000 --runs 3
"""

from __future__ import annotations

import argparse
import collections
import errno
import json
import os
import stat
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pyfuse3
import trio

from benchmarks.cpurun import loop_cpu
from benchmarks.integrity_cost import cpu_seconds
from benchmarks.system import force_unmount, stop_process, wait_mounted

TIMEOUT = 10.0
COUNTS_XATTR = "user.nullfs.requests"


class NullFs(pyfuse3.Operations):
    """Names, attributes and sizes in dicts; writes are counted, not kept."""

    enable_writeback_cache = False

    def __init__(self) -> None:
        super().__init__()
        self.names: dict[tuple[int, bytes], int] = {}
        self.attrs: dict[int, pyfuse3.EntryAttributes] = {
            pyfuse3.ROOT_INODE: self._attrs(pyfuse3.ROOT_INODE, stat.S_IFDIR | 0o755)
        }
        self.next_ino = pyfuse3.ROOT_INODE + 1
        self.requests: collections.Counter[str] = collections.Counter()

    @staticmethod
    def _attrs(ino: int, mode: int) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = ino
        a.st_mode = mode
        a.st_nlink = 1
        a.st_uid = os.getuid()
        a.st_gid = os.getgid()
        a.st_size = 0
        a.st_blksize = 4096
        a.entry_timeout = TIMEOUT
        a.attr_timeout = TIMEOUT
        now = time.time_ns()
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = now
        return a

    def _new(self, parent: int, name: bytes, mode: int) -> pyfuse3.EntryAttributes:
        if (parent, name) in self.names:
            raise pyfuse3.FUSEError(errno.EEXIST)
        ino = self.next_ino
        self.next_ino += 1
        a = self._attrs(ino, mode)
        self.attrs[ino] = a
        self.names[(parent, name)] = ino
        return a

    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext | None = None
    ) -> pyfuse3.EntryAttributes:
        self.requests["lookup"] += 1
        ino = self.names.get((parent_inode, name))
        if ino is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self.attrs[ino]

    async def getattr(
        self, inode: int, ctx: pyfuse3.RequestContext | None = None
    ) -> pyfuse3.EntryAttributes:
        self.requests["getattr"] += 1
        return self.attrs[inode]

    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        return self._new(parent_inode, name, stat.S_IFDIR | (mode & 0o7777))

    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        self.requests["create"] += 1
        a = self._new(parent_inode, name, stat.S_IFREG | (mode & 0o7777))
        # As cosencfs/fs/handles.py's direct_io_wanted for a write-only handle.
        direct = flags & os.O_ACCMODE == os.O_WRONLY
        return pyfuse3.FileInfo(fh=a.st_ino, direct_io=direct), a

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        self.requests["write"] += 1
        a = self.attrs[fh]
        a.st_size = max(a.st_size, off + len(buf))
        return len(buf)

    async def flush(self, fh: int) -> None:
        self.requests["flush"] += 1

    async def release(self, fh: int) -> None:
        self.requests["release"] += 1

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        if inode == pyfuse3.ROOT_INODE and name == COUNTS_XATTR.encode():
            return json.dumps(self.requests).encode()
        self.requests["getxattr"] += 1
        raise pyfuse3.FUSEError(pyfuse3.ENOATTR)


def serve(mountpoint: str) -> None:
    """Mount :class:`NullFs` with cosencfs's FUSE options and run until unmounted."""
    opts = set(pyfuse3.default_options)
    opts.add("fsname=nullfs")
    pyfuse3.init(NullFs(), mountpoint, opts)
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close()


def _requests(mnt: Path) -> dict[str, int]:
    counts: dict[str, int] = json.loads(os.getxattr(mnt, COUNTS_XATTR))
    return counts


def one_run(files: int, size: int, base: Path) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="fuse-floor-", dir=base))
    mnt = work / "mnt"
    mnt.mkdir()
    log = work / "daemon.log"
    proc: subprocess.Popen[bytes] | None = None
    try:
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.fuse_floor", "--serve", str(mnt)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_mounted(mnt, proc, timeout=30.0, log=log)
        d = mnt / "d"
        d.mkdir()
        data = os.urandom(size)
        req0 = _requests(mnt)
        loop0, daemon0 = loop_cpu(proc.pid), cpu_seconds(proc.pid)
        client0, t0 = time.process_time(), time.perf_counter()
        for i in range(files):
            with open(d / f"f{i:06d}", "wb") as f:
                f.write(data)
        t1, client1 = time.perf_counter(), time.process_time()
        loop1, daemon1 = loop_cpu(proc.pid), cpu_seconds(proc.pid)
        req1 = _requests(mnt)
        requests = {k: v - req0.get(k, 0) for k, v in req1.items() if v - req0.get(k, 0)}
        return {
            "files": files,
            "fuse": requests,
            "fuse_per_file": sum(requests.values()) / files,
            "files_per_s": files / (t1 - t0),
            "loop_ms": 1000 * (loop1 - loop0) / files,
            "daemon_ms": 1000 * (daemon1 - daemon0) / files,
            "client_ms": 1000 * (client1 - client0) / files,
            "load": os.getloadavg()[0],
        }
    finally:
        force_unmount(mnt)
        stop_process(proc)
        for p in sorted(work.rglob("*"), reverse=True):
            if p.is_dir() and not p.is_mount():
                p.rmdir()
            elif not p.is_dir():
                p.unlink()
        work.rmdir()


def _line(tag: str, r: dict[str, Any]) -> str:
    return (
        f"{tag}: loop {r['loop_ms']:.3f} ms/file (daemon {r['daemon_ms']:.3f}), "
        f"client {r['client_ms']:.3f} ms/file, {r['files_per_s']:.0f} files/s, "
        f"FUSE {r['fuse_per_file']:.2f}/file, load {r['load']:.1f}"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--files", type=int, default=3000)
    p.add_argument("--size", type=int, default=2048, help="bytes per file")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--workdir-base", type=Path, default=Path("/var/tmp"))
    p.add_argument("--json", type=Path, help="write the runs and their medians here too")
    p.add_argument("--serve", metavar="MOUNTPOINT", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        serve(args.serve)
        return 0
    runs = []
    for r in range(args.runs):
        res = one_run(args.files, args.size, args.workdir_base)
        print(_line(f"null pyfuse3 run {r}", res), f"{res['fuse']}", flush=True)
        runs.append(res)
    numeric = [k for k, v in runs[0].items() if isinstance(v, float)]
    med: dict[str, Any] = {k: statistics.median(x[k] for x in runs) for k in numeric}
    print(_line(f"null pyfuse3 median of {len(runs)}", med))
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "median": med}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
