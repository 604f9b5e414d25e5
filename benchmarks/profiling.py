"""py-spy profiles of the cosencfs daemon during chosen workloads.

``py-spy record --format raw`` writes collapsed stacks (one line per unique
stack: ``frame;frame;...;frame count``), loadable in speedscope.app or
flamegraph.pl; :func:`summarize` turns one into the top functions by own
and by inclusive samples. Only threads doing work are sampled (not idle
ones), so the percentages say where CPU time goes.

Run on its own: ``python -m benchmarks.profiling FILE.txt`` prints a summary.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

_LINE = re.compile(r"^(.*) (\d+)$")
_THREAD_ID = re.compile(r"^thread \(\d+\): ?")
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]*)(?::\d+)?\)$")


def py_spy() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


class Profiler:
    """Records the daemon during the named workloads into ``out_dir``."""

    def __init__(self, out_dir: Path, workloads: set[str], rate: int = 1000) -> None:
        self.out_dir = out_dir
        self.workloads = workloads
        self.rate = rate
        self.files: dict[str, str] = {}
        self.errors: list[str] = []

    def wants(self, peer: str, workload: str) -> bool:
        # "ls" selects both of its measurements, ls_cold and ls_warm.
        # cosencfs-base too: --baseline REV --profile compares CPU per request.
        return peer in ("cosencfs", "cosencfs-base") and any(
            workload == w or workload.startswith(w + "_") for w in self.workloads
        )

    @contextlib.contextmanager
    def record(self, pid: int, name: str) -> Iterator[None]:
        exe = py_spy()
        if exe is None:
            self.errors.append("py-spy is not installed (pip install py-spy)")
            yield
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        raw = self.out_dir / f"profile-{name}.txt"
        log = self.out_dir / f"profile-{name}.log"
        cmd = [exe, "record", "--pid", str(pid), "--format", "raw", "--rate", str(self.rate),
               "--nonblocking", "--threads", "--output", str(raw)]  # fmt: skip
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=out)
        try:
            yield
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if raw.exists():
            summary = summarize(raw)
            raw.with_suffix(".summary.txt").write_text(summary)
            self.files[name] = str(raw)
        else:
            self.errors.append(f"py-spy wrote no profile for {name}: {log.read_text()[-500:]}")


#: What the frame on top of a stack is doing, by function or file (first match).
CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("trio loop waiting in epoll (idle)", ("EpollIOManager.get_events", "_epoll_wait")),
    # A worker's own frame on top is its wait for the next job (a lock
    # acquire with a timeout, or the GIL right after it): py-spy's
    # --nonblocking sampling counts some of it as busy. Not a hand-off cost.
    ("worker threads waiting for a job (idle)", ("WorkerThread._work",)),
    ("cache file I/O (pwrite/pread of ciphertext)", ("_pwrite_all", "open_body", "read_small_body",
                                                     "read_plain", "FileRangeReader",
                                                     "store_cipher")),
    ("AES-CTR (cryptography)", ("crypto/ctr.py", "cryptography/")),
    ("HTTP, TLS and sockets (h11, trio streams, ssl; http.client, requests before)",
     ("socket.py", "http/client.py", "urllib3/", "requests/", "fasthttp.py", "ssl.py",
      "h11/", "store/transport.py", "trio/_ssl.py", "trio/_highlevel_socket.py")),
    ("COS SDK (signing, request building, XML)", ("qcloud_cos/", "hmac.py", "xml/")),
    ("thread hand-off (trio to_thread, wake-ups, worker threads)",
     ("trio/_core/_thread_cache.py", "_wakeup_socketpair.py", "_entry_queue.py",
      "trio/_threads.py", "threading.py")),
    ("pyfuse3 request dispatch", ("_pyfuse3.py", "pyfuse3")),
    ("SQLite journal", ("cache/journal.py", "sqlite3")),
    ("trio scheduler", ("trio/",)),
    ("cosencfs (everything else)", ("cosencfs/",)),
]  # fmt: skip

#: Frames every worker-thread stack starts with; left out of the inclusive list.
BOILERPLATE = ("threading.py", "trio/_core/_thread_cache.py", "outcome/_impl.py",
               "<frozen runpy>", "cosencfs/cli/__init__.py", "cosencfs/__main__.py",
               "cosencfs/cli/mount.py", "trio/_threads.py")  # fmt: skip


def category(func: str) -> str:
    for name, needles in CATEGORIES:
        if any(n in func for n in needles):
            return name
    return "other"


def _func(frame: str) -> str:
    m = _FRAME.match(frame)
    if not m:
        return frame
    return f"{m.group('func')} ({m.group('file')})"


def load(raw: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in raw.read_text(errors="replace").splitlines():
        m = _LINE.match(line)
        if m:
            stacks.append((m.group(1).split(";"), int(m.group(2))))
    return stacks


def summarize(raw: Path, top: int = 25) -> str:
    stacks = load(raw)
    total = sum(n for _, n in stacks) or 1
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    cats: Counter[str] = Counter()
    for frames, n in stacks:
        funcs = [_func(f) for f in frames if f]
        if funcs and funcs[0].startswith(("thread ", "process ")):
            # Trio names worker threads after the job they run; group by that.
            threads[_THREAD_ID.sub("", funcs[0]) or "(unnamed)"] += n
            funcs = [f for f in funcs[1:] if not f.startswith(("thread ", "process "))]
        if not funcs:
            continue
        own[funcs[-1]] += n
        cats[category(funcs[-1])] += n
        for f in set(funcs):
            if not any(b in f for b in BOILERPLATE):
                incl[f] += n
    lines = [f"{raw.name}: {total} samples (non-idle threads)", "", "by thread:"]
    lines += [f"  {n / total:6.1%}  {t}" for t, n in threads.most_common(12)]
    lines += ["", "own time by kind of work:"]
    lines += [f"  {n / total:6.1%}  {c}" for c, n in cats.most_common()]
    lines += ["", "own time (the frame on top of the stack):"]
    lines += [f"  {n / total:6.1%}  {f}" for f, n in own.most_common(top)]
    lines += ["", "inclusive time (the frame anywhere in the stack):"]
    lines += [f"  {n / total:6.1%}  {f}" for f, n in incl.most_common(top)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    for name in argv if argv is not None else sys.argv[1:]:
        print(summarize(Path(name)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
