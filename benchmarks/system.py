"""Process, mount and page-cache helpers of the benchmark suite (Linux only).

Every wait here is bounded: a benchmark that hangs is worse than one that
fails, because it leaves mounts and processes behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

#: Environment variables removed from the peers' environment: the machine's
#: AWS_CA_BUNDLE makes rclone's S3 backend fail on a plain-HTTP endpoint
#: ("LoadCustomCABundleError ... transport unsupported type"), and no AWS
#: profile or credential of the host must leak into a benchmark.
SCRUBBED_ENV_PREFIXES = ("AWS_", "RCLONE_")


class BenchError(RuntimeError):
    """A step of a benchmark failed; the message says which and why."""


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(SCRUBBED_ENV_PREFIXES)}
    if extra:
        env.update(extra)
    return env


def run(
    cmd: Sequence[str],
    *,
    timeout: float,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``cmd`` to completion (killed after ``timeout``), capturing output."""
    try:
        done = subprocess.run(
            list(cmd),
            capture_output=True,
            timeout=timeout,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{' '.join(cmd)}: timed out after {timeout:.0f} s") from exc
    if check and done.returncode != 0:
        err = done.stderr.decode(errors="replace").strip()[-2000:]
        raise BenchError(f"{' '.join(cmd)}: exit status {done.returncode}: {err}")
    return done


def timed(
    cmd: Sequence[str], *, timeout: float, env: Mapping[str, str] | None = None
) -> tuple[float, float]:
    """Run ``cmd``; returns (start, end) monotonic times."""
    start = time.monotonic()
    run(cmd, timeout=timeout, env=env)
    return start, time.monotonic()


def wait_until(
    pred: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    interval: float = 0.02,
    settle: float = 0.0,
) -> float:
    """Poll ``pred`` until it holds; returns the monotonic time it first held.

    With ``settle`` > 0 the predicate must keep holding for that long (for
    states that pass through the goal on their way, like an object count
    while a client renames temporary uploads); the time returned is still
    the start of the final streak, so settling adds nothing to a measurement.
    """
    deadline = time.monotonic() + timeout
    since: float | None = None
    while True:
        now = time.monotonic()
        if pred():
            if since is None:
                since = now
            if now - since >= settle:
                return since
        else:
            since = None
        if now > deadline:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def is_mounted(path: Path) -> bool:
    real = os.path.realpath(path)
    try:
        with open("/proc/mounts") as f:
            return any(line.split()[1] == real for line in f)
    except OSError:
        return False


def wait_mounted(path: Path, proc: subprocess.Popen[bytes], *, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not is_mounted(path):
        if proc.poll() is not None:
            raise BenchError(f"mount exited with status {proc.returncode}: {tail(log)}")
        if time.monotonic() > deadline:
            raise BenchError(f"mount did not come up in {timeout:.0f} s: {tail(log)}")
        time.sleep(0.02)


def fusermount() -> str:
    return shutil.which("fusermount3") or shutil.which("fusermount") or "fusermount3"


def force_unmount(path: Path) -> None:
    """``fusermount3 -u``, then ``-uz``: never leave a mount behind."""
    for args in (["-u"], ["-uz"]):
        if not is_mounted(path):
            return
        with contextlib.suppress(subprocess.TimeoutExpired, OSError):
            subprocess.run(
                [fusermount(), *args, str(path)], capture_output=True, timeout=30, check=False
            )
        deadline = time.monotonic() + 5
        while is_mounted(path) and time.monotonic() < deadline:
            time.sleep(0.05)


def stop_process(proc: subprocess.Popen[bytes] | None, *, timeout: float = 30.0) -> int | None:
    """Wait for ``proc`` to exit; SIGTERM, then SIGKILL, if it does not."""
    if proc is None:
        return None
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            return proc.returncode
        if sig is not None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
        try:
            return proc.wait(timeout if sig is None else 10)
        except subprocess.TimeoutExpired:
            continue
    return proc.poll()


def tail(path: Path, limit: int = 1500) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return text[-limit:].strip() or "(empty log)"


def can_drop_caches() -> bool:
    return os.geteuid() == 0 and os.access("/proc/sys/vm/drop_caches", os.W_OK)


def drop_caches() -> bool:
    """``sync; echo 3 > /proc/sys/vm/drop_caches``; False when not allowed (not root)."""
    bounded(os.sync, timeout=300, what="sync")
    if not can_drop_caches():
        return False
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")
    return True


def empty_dir(path: Path) -> None:
    """Remove everything inside ``path`` (which must not be a mount)."""
    if is_mounted(path):
        raise BenchError(f"refusing to empty {path}: it is mounted")
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of ``pid`` in bytes (empty once it exited)."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                name, _, rest = line.partition(":")
                if name in ("VmRSS", "VmHWM"):
                    out[name] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return out


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM of ``pid`` (``echo 5 > /proc/PID/clear_refs``)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5\n")
    except OSError:
        return False
    return True


class RssSampler:
    """Samples VmRSS of one process in a thread; ``peak`` also counts VmHWM."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid = pid
        self.interval = interval
        self.max_rss = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sample()

    def _sample(self) -> None:
        rss = proc_status(self.pid).get("VmRSS")
        if rss is not None:
            self.max_rss = max(self.max_rss, rss)
            self.samples += 1

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def peak(self) -> int:
        return max(self.max_rss, proc_status(self.pid).get("VmHWM", 0))


def _cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def cpu_busy(window: float = 1.0) -> float:
    """Fraction of all CPUs busy over the next ``window`` seconds."""
    b0, t0 = _cpu_times()
    time.sleep(window)
    b1, t1 = _cpu_times()
    return (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0


def wait_for_quiet(max_wait: float, *, threshold: float = 0.25) -> tuple[float, float]:
    """On a shared machine, wait (at most ``max_wait`` s) until the CPUs are
    mostly idle; returns (seconds waited, last busy fraction)."""
    start = time.monotonic()
    busy = cpu_busy(0.5)
    while busy > threshold and time.monotonic() - start < max_wait:
        busy = cpu_busy(1.0)
    return time.monotonic() - start, busy


def bounded(fn: Callable[[], T], *, timeout: float, what: str) -> T:
    """Run ``fn`` (file system calls into a mount) with a time limit.

    A call into a hung FUSE daemon blocks in the kernel and cannot be
    interrupted; it runs in a daemon thread, and on timeout the caller gets
    a BenchError and goes on to kill the daemon, which releases the call.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=target, name=f"bounded: {what}", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise BenchError(f"timed out after {timeout:.0f} s: {what}")
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]
