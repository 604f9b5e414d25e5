"""The workloads (a)-(i), each run the same way on every filesystem.

A measurement resets the server's counters, runs the action, then (for the
writing workloads) waits until the bucket holds the result: cosencfs
promises it once ``fsync`` or its sync call returned, the others upload in
the background, so their time ends when the server's index first shows the
data. Counters are read half a second later, so trailing requests are
counted too (not timed). Reads are checked against the source afterwards,
untimed and uncounted.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.config import MIB, BenchConfig, Sizes
from benchmarks.datasets import random_bytes, random_offsets
from benchmarks.peers import Peer
from benchmarks.profiling import Profiler
from benchmarks.results import Row
from benchmarks.server import BucketState
from benchmarks.system import (
    BenchError,
    RssSampler,
    bounded,
    drop_caches,
    reset_peak_rss,
    run,
    wait_for_quiet,
    wait_until,
)

#: Seconds to wait after a measurement before reading the counters.
QUIESCE = 0.5
#: How long a bucket state must hold to count as reached (see wait_until).
SETTLE = 0.3


@dataclass(slots=True)
class Sources:
    big: Path
    huge: Path
    tree: Path
    tree_files: int
    tree_bytes: int
    rw: Path


@dataclass(slots=True)
class Ctx:
    cfg: BenchConfig
    src: Sources
    profiler: Profiler | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def sizes(self) -> Sizes:
        return self.cfg.sizes


@dataclass(slots=True)
class Measured:
    seconds: float
    row: Row


def _mib_s(size: int, seconds: float) -> float:
    return size / MIB / seconds if seconds > 0 else float("inf")


def _ops_s(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def warm_file(path: Path) -> None:
    """Read a source file so the timed copy reads it from the page cache."""
    with open(path, "rb") as f:
        while f.read(8 * MIB):
            pass


def ensure_mounted(peer: Peer) -> None:
    if not peer.mounted:
        peer.kill()
        peer.mount()


def cold_remount(peer: Peer, *, clear_cache: bool) -> bool:
    """Unmount, empty the cache if asked, drop the page cache, mount."""
    peer.unmount()
    dropped = drop_caches()
    peer.mount(clear_cache=clear_cache)
    return dropped


def loadavg() -> float | None:
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def client_delta(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, Any]:
    """Requests the daemon itself counted between two ``cosencfs stats``."""
    if not before or not after:
        return {}
    b, a = before["store"]["requests"], after["store"]["requests"]
    diff = {op: a.get(op, 0) - b.get(op, 0) for op in set(a) | set(b)}
    diff = {op: n for op, n in sorted(diff.items()) if n}
    return {"client_requests": diff, "client_total_requests": sum(diff.values())}


def measure(
    ctx: Ctx,
    peer: Peer,
    workload: str,
    action: Callable[[], object],
    *,
    variant: str = "",
    label: str = "",
    committed: Callable[[BucketState], bool] | None = None,
    what: str = "",
    timeout: float | None = None,
    sync: bool = False,
    settle: float = SETTLE,
) -> Measured:
    """Time ``action`` (and the commit), count the requests it caused."""
    timeout = timeout or ctx.sizes.timeout
    # Dirty pages of earlier steps (the generated input, the previous peer's
    # bucket) would otherwise be written back during this measurement.
    os.sync()
    waited, busy = wait_for_quiet(ctx.cfg.quiet_wait) if ctx.cfg.quiet_wait > 0 else (0.0, None)
    load = loadavg()
    peer.reset_stats()
    before = bounded(peer.client_stats, timeout=60, what="cosencfs stats")
    profile: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    if ctx.profiler is not None and ctx.profiler.wants(peer.name, workload):
        name = f"{peer.name}-{workload}" + (f"-{variant.replace(' ', '_')}" if variant else "")
        profile = ctx.profiler.record(peer.pid, name)
    with profile:
        start = time.monotonic()
        bounded(action, timeout=timeout, what=f"{workload} on {peer.name}")
        acted = time.monotonic()
        if sync:
            bounded(peer.sync, timeout=timeout, what=f"sync of {peer.name}")
        end = time.monotonic()
        if committed is not None and peer.server is not None:
            server = peer.server
            end = wait_until(
                lambda: committed(server.bucket()),
                timeout=timeout,
                what=what or f"{workload} to reach the bucket",
                settle=settle,
            )
    seconds = end - start
    time.sleep(QUIESCE)
    stats = peer.server_stats()
    row = Row(peer=peer.name, workload=workload, variant=variant, label=label, seconds=seconds)
    if stats is not None:
        row.requests = stats.requests
        row.bytes_up = stats.bytes_in
        row.bytes_down = stats.bytes_out
        # Connections and round trips the server charged for this workload.
        row.extra["net"] = {k: v for k, v in stats.network.items() if k != "lifetime"}
    after = bounded(peer.client_stats, timeout=60, what="cosencfs stats")
    row.extra.update(client_delta(before, after))
    # The machine may be shared: a high load before the run explains a slow one.
    row.extra["loadavg_before"] = load
    if busy is not None:
        row.extra["cpu_busy_before"] = round(busy, 3)
        row.extra["quiet_wait_s"] = round(waited, 1)
    # Where the time went: the action itself, then its sync call / the wait
    # for the bucket to show the result.
    row.extra["action_seconds"] = acted - start
    row.extra["commit_seconds"] = end - acted
    return Measured(seconds, row)


def _dd(src: Path, dst: Path, size: int, *, fsync: bool, timeout: float) -> None:
    cmd = ["dd", f"if={src}", f"of={dst}", "bs=1M", f"count={size // MIB}", "status=none"]
    if fsync:
        cmd.append("conv=fsync")
    run(cmd, timeout=timeout)


def _cmp(a: Path, b: Path, timeout: float) -> bool:
    return run(["cmp", "-s", str(a), str(b)], timeout=timeout, check=False).returncode == 0


# --------------------------------------------------------------------- (a)


def seq_write(ctx: Ctx, peer: Peer) -> list[Row]:
    size = ctx.sizes.big_file
    ensure_mounted(peer)
    warm_file(ctx.src.big)
    dst = peer.mnt / "big"
    m = measure(
        ctx, peer, "seq_write",
        lambda: _dd(ctx.src.big, dst, size, fsync=True, timeout=ctx.sizes.timeout),
        label=f"sequential write {size // MIB} MiB (dd bs=1M conv=fsync), until committed",
        committed=lambda s: s.largest >= size,
        what=f"an object of {size} bytes",
    )  # fmt: skip
    m.row.rate, m.row.unit = _mib_s(size, m.seconds), "MiB/s"
    got = bounded(lambda: dst.stat().st_size, timeout=60, what=f"stat {dst}")
    if got != size:
        m.row.error = f"size after write {got} != {size}"
    return [m.row]


# --------------------------------------------------------------------- (b)


def seq_read(ctx: Ctx, peer: Peer) -> list[Row]:
    size = ctx.sizes.big_file
    dropped = cold_remount(peer, clear_cache=True)
    src = peer.mnt / "big"
    m = measure(
        ctx, peer, "seq_read",
        lambda: run(["dd", f"if={src}", "of=/dev/null", "bs=1M", "status=none"],
                    timeout=ctx.sizes.timeout),
        label=f"cold sequential read {size // MIB} MiB (dd bs=1M)",
    )  # fmt: skip
    m.row.rate, m.row.unit = _mib_s(size, m.seconds), "MiB/s"
    m.row.extra["page_cache_dropped"] = dropped
    if not _cmp(src, ctx.src.big, ctx.sizes.timeout):
        m.row.error = "data read back differs from the source"
    return [m.row]


# --------------------------------------------------------------------- (c)


def small_create(ctx: Ctx, peer: Peer) -> list[Row]:
    n, size = ctx.sizes.small_files, ctx.sizes.small_size
    ensure_mounted(peer)
    d = peer.mnt / "small"
    # The directory itself is set-up: not timed, not counted.
    bounded(d.mkdir, timeout=60, what=f"mkdir {d}")
    time.sleep(QUIESCE)
    data = random_bytes(f"small-{ctx.cfg.seed}", n * size)
    base = peer.server.bucket() if peer.server is not None else BucketState(0, 0, 0)

    def create() -> None:
        for i in range(n):
            with open(d / f"f{i:05d}", "wb") as f:
                f.write(data[i * size : (i + 1) * size])

    m = measure(
        ctx, peer, "small_create", create,
        label=f"create {n} files of {size // 1024} KiB, until all are in the bucket",
        committed=lambda s: s.files >= base.files + n,
        what=f"{n} new objects", sync=True,
    )  # fmt: skip
    m.row.rate, m.row.unit = _ops_s(n, m.seconds), "files/s"
    if m.row.requests is not None:
        m.row.extra["requests_per_file"] = sum(m.row.requests.values()) / n
    return [m.row]


# --------------------------------------------------------------------- (d)


def _ls(d: Path, expect: int, timeout: float) -> Callable[[], None]:
    def action() -> None:
        out = subprocess.run(
            ["ls", "-l", "--color=never", str(d)], capture_output=True, timeout=timeout, check=True
        ).stdout
        lines = out.count(b"\n") - 1  # the "total" line
        if lines != expect:
            raise BenchError(f"ls -l {d} listed {lines} entries, expected {expect}")

    return action


def ls(ctx: Ctx, peer: Peer) -> list[Row]:
    n = ctx.sizes.small_files
    d = peer.mnt / "small"
    variants = [("empty cache", True)]
    if peer.name == "cosencfs":
        # The journal's attribute cache survives a remount with the same cache dir.
        variants.insert(0, ("same cache", False))
    rows = []
    for variant, clear in variants:
        dropped = cold_remount(peer, clear_cache=clear)
        what = (
            "remount, same cache dir"
            if not clear
            else ("remount, empty cache dir" if peer.has_cache else "remount")
        )
        cold = measure(ctx, peer, "ls_cold", _ls(d, n, ctx.sizes.timeout), variant=variant,
                       label=f"cold ls -l of {n} files ({what})")  # fmt: skip
        cold.row.rate, cold.row.unit = _ops_s(n, cold.seconds), "entries/s"
        cold.row.extra["page_cache_dropped"] = dropped
        warm = measure(ctx, peer, "ls_warm", _ls(d, n, ctx.sizes.timeout), variant=variant,
                       label=f"warm ls -l of {n} files (right after the cold one)")  # fmt: skip
        warm.row.rate, warm.row.unit = _ops_s(n, warm.seconds), "entries/s"
        if warm.row.requests is not None:
            warm.row.extra["zero_requests"] = sum(warm.row.requests.values()) == 0
        if "client_total_requests" in warm.row.extra:
            warm.row.extra["client_zero_requests"] = warm.row.extra["client_total_requests"] == 0
        rows += [cold.row, warm.row]
    return rows


# --------------------------------------------------------------------- (e)


def preads(path: Path, offsets: list[int], length: int = 4096) -> list[bytes]:
    """``length`` bytes at each offset, through one descriptor (random reads)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return [os.pread(fd, length, off) for off in offsets]
    finally:
        os.close(fd)


def rand_read(ctx: Ctx, peer: Peer) -> list[Row]:
    size, count = ctx.sizes.big_file, ctx.sizes.random_reads
    dropped = cold_remount(peer, clear_cache=True)
    offsets = random_offsets(size, count, seed=ctx.cfg.seed)
    got: list[bytes] = []

    def read() -> None:
        got.extend(preads(peer.mnt / "big", offsets))

    label = f"{count} random 4 KiB preads in the {size // MIB} MiB file, cold"
    m = measure(ctx, peer, "rand_read", read, label=label)
    m.row.rate, m.row.unit = _ops_s(count, m.seconds), "ops/s"
    m.row.extra["page_cache_dropped"] = dropped
    m.row.extra["bytes_read"] = 4096 * count
    with open(ctx.src.big, "rb") as f:
        want = [os.pread(f.fileno(), 4096, off) for off in offsets]
    bad = sum(1 for a, b in zip(want, got, strict=False) if a != b) + abs(len(want) - len(got))
    if bad:
        m.row.error = f"{bad} of {count} reads returned wrong data"
    return [m.row]


# --------------------------------------------------------------------- (f)


def rm_r(ctx: Ctx, peer: Peer) -> list[Row]:
    n = ctx.sizes.small_files
    ensure_mounted(peer)
    base = peer.server.bucket() if peer.server is not None else BucketState(0, 0, 0)
    m = measure(
        ctx, peer, "rm_r",
        lambda: run(["rm", "-r", str(peer.mnt / "small")], timeout=ctx.sizes.timeout),
        label=f"rm -r of the {n} files, until gone from the bucket",
        committed=lambda s: s.files <= base.files - n,
        what=f"{n} objects to be deleted",
    )  # fmt: skip
    m.row.rate, m.row.unit = _ops_s(n, m.seconds), "files/s"
    return [m.row]


# --------------------------------------------------------------------- (g)


def rsync(ctx: Ctx, peer: Peer) -> list[Row]:
    n = ctx.src.tree_files
    ensure_mounted(peer)
    dst = peer.mnt / "tree"
    base = peer.server.bucket() if peer.server is not None else BucketState(0, 0, 0)
    rows = []
    for i in (1, 2):
        m = measure(
            ctx, peer, "rsync",
            lambda: run(["rsync", "-a", f"{ctx.src.tree}/", f"{dst}/"], timeout=ctx.sizes.timeout),
            variant=("first", "second")[i - 1],
            label=f"rsync -a of {n} files in {ctx.sizes.tree_dirs * 2} dirs"
                  + (" (again, nothing changed)" if i == 2 else ", until in the bucket"),
            committed=lambda s: s.files == base.files + n,
            what=f"{n} objects of the rsync", sync=True,
        )  # fmt: skip
        m.row.rate, m.row.unit = _ops_s(n, m.seconds), "files/s"
        rows.append(m.row)
    found = bounded(lambda: sum(len(files) for _, _, files in os.walk(dst)),
                    timeout=ctx.sizes.timeout, what=f"walk {dst}")  # fmt: skip
    if found != n:
        rows[-1].error = f"{found} files in the mount after rsync, expected {n}"
    return rows


# --------------------------------------------------------------------- (h)


def big_write_rss(ctx: Ctx, peer: Peer) -> list[Row]:
    size = ctx.sizes.huge_file
    # A fresh daemon (peak RSS counts from its start) and room on the disk.
    peer.unmount()
    peer.mount(clear_cache=True)
    warm_file(ctx.src.huge)
    pid = peer.pid
    hwm_reset = reset_peak_rss(pid)
    dst = peer.mnt / "huge"
    with RssSampler(pid) as sampler:
        m = measure(
            ctx, peer, "big_write_rss",
            lambda: _dd(ctx.src.huge, dst, size, fsync=True, timeout=ctx.sizes.huge_timeout),
            label=f"write {size // MIB} MiB (dd bs=1M conv=fsync): peak RSS of the daemon",
            committed=lambda s: s.largest >= size,
            what=f"an object of {size} bytes", timeout=ctx.sizes.huge_timeout,
        )  # fmt: skip
    m.row.rate, m.row.unit = _mib_s(size, m.seconds), "MiB/s"
    m.row.extra.update(
        peak_rss=sampler.peak(),
        max_sampled_rss=sampler.max_rss,
        rss_samples=sampler.samples,
        vmhwm_reset=hwm_reset,
    )
    return [m.row]


# --------------------------------------------------------------------- (i)


def _newest(peer: Peer, size: int) -> int:
    assert peer.server is not None
    return peer.server.newest(size)


def _disk_usage(root: Path) -> int:
    """Bytes allocated under ``root`` (sparse files count what they hold)."""
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


def rand_write(ctx: Ctx, peer: Peer) -> list[Row]:
    """The sqlite case: random 4 KiB pwrites in place into a large file, fsync.

    Set-up (not timed): the file is written with dd conv=fsync and waited for
    in the bucket, so the timed part starts from a clean, uploaded file.
    "Until in the bucket" then means until the server holds a version of it
    newer than the set-up's (rclone crypt renames and pads: any object of at
    least the file's size counts).
    """
    size, count = ctx.sizes.rand_write_file, ctx.sizes.random_writes
    ensure_mounted(peer)
    dst = peer.mnt / "rw.bin"
    warm_file(ctx.src.rw)
    before = _newest(peer, size) if peer.server is not None else 0
    _dd(ctx.src.rw, dst, size, fsync=True, timeout=ctx.sizes.timeout)
    if peer.server is not None:
        wait_until(
            lambda: _newest(peer, size) > before,
            timeout=ctx.sizes.timeout,
            what=f"the {size}-byte file of the set-up in the bucket",
            settle=SETTLE,
        )
    bounded(peer.sync, timeout=ctx.sizes.timeout, what=f"sync of {peer.name}")
    time.sleep(QUIESCE)
    offsets = random_offsets(size, count, seed=ctx.cfg.seed + 1)
    blocks = random_bytes(f"rw-writes-{ctx.cfg.seed}", count * 4096)
    # A cache that copies the file for every write fills the disk long before
    # the end (the machine may be shared): stop it at a few times the file.
    limit = 4 * size + 256 * MIB

    def write() -> None:
        fd = os.open(dst, os.O_RDWR)
        try:
            for i, off in enumerate(offsets):
                if os.pwrite(fd, blocks[i * 4096 : (i + 1) * 4096], off) != 4096:
                    raise BenchError(f"short pwrite at {off}")
                if peer.has_cache and i % 16 == 15 and (used := _disk_usage(peer.cache)) > limit:
                    raise BenchError(
                        f"the cache directory holds {used // MIB} MiB after {i + 1} writes into"
                        f" a {size // MIB} MiB file: stopped at {limit // MIB} MiB"
                    )
            os.fsync(fd)
        finally:
            os.close(fd)

    base = _newest(peer, size) if peer.server is not None else 0
    m = measure(
        ctx, peer, "rand_write", write,
        label=f"{count} random 4 KiB pwrites in place into a {size // MIB} MiB file (O_RDWR,"
              " one descriptor) + fsync, until in the bucket",
        committed=lambda _s: _newest(peer, size) > base,
        what=f"the rewritten {size}-byte file",
    )  # fmt: skip
    m.row.rate, m.row.unit = _ops_s(count, m.seconds), "ops/s"
    m.row.extra["bytes_written"] = 4096 * count
    if peer.has_cache:
        m.row.extra["cache_bytes_after"] = _disk_usage(peer.cache)
    want = bytearray(ctx.src.rw.read_bytes())
    for i, off in enumerate(offsets):
        want[off : off + 4096] = blocks[i * 4096 : (i + 1) * 4096]
    got = bounded(dst.read_bytes, timeout=ctx.sizes.timeout, what=f"read {dst}")
    if got != want:
        m.row.error = "data read back differs from what was written"
    return [m.row]


WORKLOAD_FUNCS: dict[str, Callable[[Ctx, Peer], list[Row]]] = {
    "seq_write": seq_write,
    "seq_read": seq_read,
    "small_create": small_create,
    "ls": ls,
    "rand_read": rand_read,
    "rm_r": rm_r,
    "rsync": rsync,
    "big_write_rss": big_write_rss,
    "rand_write": rand_write,
}


@contextlib.contextmanager
def failure_row(rows: list[Row], peer: str, workload: str) -> Iterator[None]:
    """Turn an exception of a workload into an error row, so the run goes on."""
    try:
        yield
    except (BenchError, OSError, subprocess.SubprocessError) as exc:
        rows.append(Row(peer=peer, workload=workload, error=f"{type(exc).__name__}: {exc}"))
