"""Model-based test: a real cosencfs mount against an in-memory reference tree.

A Hypothesis ``RuleBasedStateMachine`` drives a real mount (``cosencfs mount
--foreground`` over a local COS server started for each example) with
ordinary syscalls — create, write at random offsets (holes included),
truncate (by descriptor and by path), rename (files and directories, with
and without a descriptor kept open), unlink (also of an open file), mkdir,
rmdir, chmod, read (through the page cache and with ``O_DIRECT``), fsync /
fdatasync, ``cosencfs sync`` — plus clean remounts and ``kill -9`` crashes,
and compares every step with an in-memory tree (``Model``): the errno of
invalid operations, then every name of a small universe (``lstat``),
every listing, size, mode and link count; contents are compared by the
``read``/``check_contents`` rules and after remounts.

Remounts and crashes check the durability contract of docs/semantics.md:

``remount``
    ``cosencfs umount`` must exit 0; a new mount with a *fresh* cache sees
    exactly the model (contents, modes, file mtimes): everything is in COS.
``crash``
    ``kill -9`` of the daemon, then a mount with the *same* cache directory:
    everything whose ``close()`` returned is there (journal recovery).  All
    rules close their descriptors, so that is every file.  Optionally a
    second mount with a fresh cache then checks that recovery reached COS.
``crash_lose_cache``
    ``kill -9``, then a mount with a fresh cache (the journal is lost): what
    ``fsync()`` (or ``cosencfs sync``) committed must be in COS; files
    changed since may show any state they had since then, or be absent if
    never committed.  mkdir and rename are done in COS when they return;
    unlink/rmdir send their (journaled) deletes about 0.2 s later, so the
    rule first waits until the mount reports no pending delete: names must
    then match exactly.

Not promised by the documentation, hence tolerated after a crash: a
``chmod`` and a ``truncate(path)`` without a later ``close()`` may be lost
(the file then shows one of the states it had since its last close).

Each example also draws mount options: write-back delay (0, 0.2 s or one
hour, so the journal path runs), ``--dir-ttl 0`` (listing every time),
kernel entry/attribute timeouts of 0, a tiny cache (eviction), a tiny
``single_put_max`` (every non-trivial file goes up as a multipart upload)
and mounting a prefix of the bucket.

Budgets (environment variables, all optional)::

    COSENCFS_MODEL_EXAMPLES   examples (default 10)
    COSENCFS_MODEL_STEPS      steps per example (default 30)
    COSENCFS_MODEL_REMOUNTS   remount/crash steps per example at most (default 3)
    COSENCFS_MODEL_SEED       Hypothesis seed (default 0; "random" picks one
                              and prints it)
    COSENCFS_MODEL_BLOB       replay one example: the blob of the
                              ``@reproduce_failure`` line a failure prints
    COSENCFS_MODEL_TIMEOUT    pytest timeout in seconds (default 900 with the
                              CI budget, none with a larger one)
    COSENCFS_MODEL_DEBUG      1: print every example's syscalls (use -s)

CI (the default budget, about a minute on 2 cores)::

    .venv/bin/python -m pytest tests/model

A larger hunt, e.g. 30+ minutes::

    COSENCFS_MODEL_SEED=random COSENCFS_MODEL_EXAMPLES=200 COSENCFS_MODEL_STEPS=60 \\
        COSENCFS_MODEL_REMOUNTS=6 .venv/bin/python -m pytest tests/model -x

A failure prints the shrunk example (``state.step(...)`` with its ``Draw N
(op|path|...)`` lines), the syscalls it made with the expected outcome of
each, the mount logs, and the command that replays it: the seed and the
``@reproduce_failure`` blob (``COSENCFS_MODEL_BLOB``).  The Hypothesis
database is in memory only: nothing is written into the repository.
"""

from __future__ import annotations

import errno
import functools
import itertools
import json
import os
import random
import shutil
import stat
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import hypothesis
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from tests.testlib import Mount, MountFactory, start_server, umask

# -- budget ----------------------------------------------------------------------

CI_EXAMPLES = 10
CI_STEPS = 30
CI_REMOUNTS = 3


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


EXAMPLES = _env_int("COSENCFS_MODEL_EXAMPLES", CI_EXAMPLES)
STEPS = _env_int("COSENCFS_MODEL_STEPS", CI_STEPS)
REMOUNTS = _env_int("COSENCFS_MODEL_REMOUNTS", CI_REMOUNTS)
LARGE = EXAMPLES * STEPS > CI_EXAMPLES * CI_STEPS
TIMEOUT = _env_int("COSENCFS_MODEL_TIMEOUT", 0 if LARGE else 900)

# -- what the machine draws ------------------------------------------------------

#: A small alphabet so that names collide; "a b" and "é" exercise key encoding
#: ("a b" also sorts before "a/" in listings).
NAMES = ("a", "b", "a b", "é")
MAX_DEPTH = 3
UNIVERSE = sorted(
    "/".join(p) for n in range(1, MAX_DEPTH + 1) for p in itertools.product(NAMES, repeat=n)
)

FILE_MODES = (0o644, 0o600, 0o640, 0o664, 0o755)
DIR_MODES = (0o755, 0o700, 0o750, 0o775)
UMASK = 0o022
#: Appended through a descriptor kept open across a rename or unlink.
TAIL = b"<tail written through an open fd>"

paths = st.lists(st.sampled_from(NAMES), min_size=1, max_size=MAX_DEPTH).map("/".join)
offsets = st.one_of(
    st.integers(0, 64), st.integers(0, 4096), st.integers(0, 65536), st.integers(0, 300_000)
)
lengths = st.one_of(st.integers(0, 64), st.integers(0, 4096), st.integers(0, 65536))
sizes = st.one_of(st.integers(0, 64), st.integers(0, 70_000), st.integers(0, 300_000))
seeds = st.integers(0, 255)


#: What the examples did (printed at the end, with -s): operation -> outcome count.
STATS: Counter[str] = Counter()


def payload(seed: int, length: int) -> bytes:
    """Deterministic bytes, distinct per seed (no zeros, so holes show)."""
    rnd = random.Random(seed)
    return bytes(b | 1 for b in rnd.randbytes(length))


def ename(code: int | None) -> str:
    return "success" if code is None else errno.errorcode.get(code, str(code))


# -- the reference model ---------------------------------------------------------


@dataclass
class MFile:
    data: bytes
    mode: int
    #: Contents acceptable after kill -9 and a remount with the same cache.
    crash_data: list[bytes] = field(default_factory=list)
    crash_modes: set[int] = field(default_factory=set)
    #: Contents in COS (None: no object at all) and their modes.
    cos_data: list[bytes | None] = field(default_factory=list)
    cos_modes: set[int] = field(default_factory=set)

    def changed(self, *, closed: bool) -> None:
        """The content changed; ``closed``: by a rule that closes it (journaled)."""
        self.cos_data.append(self.data)
        if closed:
            self.crash_data = [self.data]
        else:
            self.crash_data.append(self.data)

    def write(self, offset: int, data: bytes) -> None:
        d = bytearray(self.data)
        if offset > len(d):
            d.extend(bytes(offset - len(d)))
        d[offset : offset + len(data)] = data
        self.data = bytes(d)

    def truncate(self, size: int) -> None:
        self.data = self.data[:size] + bytes(max(0, size - len(self.data)))

    def chmod(self, mode: int) -> None:
        self.mode = mode
        self.crash_modes.add(mode)
        self.cos_modes.add(mode)

    def settle(self) -> None:
        """Everything known to be in COS (remount, recovery, fsync, sync)."""
        self.crash_data = [self.data]
        self.crash_modes = {self.mode}
        self.cos_data = [self.data]
        self.cos_modes = {self.mode}


@dataclass
class MDir:
    mode: int
    children: dict[str, MFile | MDir] = field(default_factory=dict)
    crash_modes: set[int] = field(default_factory=set)
    cos_modes: set[int] = field(default_factory=set)

    def chmod(self, mode: int) -> None:
        self.mode = mode
        self.crash_modes.add(mode)
        self.cos_modes.add(mode)

    def settle(self) -> None:
        self.crash_modes = {self.mode}
        self.cos_modes = {self.mode}


Node = MFile | MDir


class Model:
    def __init__(self) -> None:
        self.root = MDir(0o755)

    def parent_of(self, path: str) -> tuple[int | None, MDir, str]:
        """(errno of resolving the parent, parent, last name)."""
        parts = path.split("/")
        cur = self.root
        for name in parts[:-1]:
            child = cur.children.get(name)
            if child is None:
                return errno.ENOENT, cur, parts[-1]
            if isinstance(child, MFile):
                return errno.ENOTDIR, cur, parts[-1]
            cur = child
        return None, cur, parts[-1]

    def lookup(self, path: str) -> tuple[int | None, Node | None]:
        err, parent, name = self.parent_of(path)
        if err is not None:
            return err, None
        node = parent.children.get(name)
        if node is None:
            return errno.ENOENT, None
        return None, node

    def walk(self, d: MDir | None = None, prefix: str = "") -> Iterator[tuple[str, Node]]:
        d = d if d is not None else self.root
        for name, node in sorted(d.children.items()):
            path = f"{prefix}{name}"
            yield path, node
            if isinstance(node, MDir):
                yield from self.walk(node, path + "/")

    def files(self) -> Iterator[tuple[str, MFile]]:
        for path, node in self.walk():
            if isinstance(node, MFile):
                yield path, node

    def settle(self) -> None:
        self.root.settle()
        for _, node in self.walk():
            node.settle()


def is_ancestor(a: str, b: str) -> bool:
    """``a`` is a proper ancestor of path ``b``."""
    return b.startswith(a + "/")


# -- the machine -----------------------------------------------------------------


class ModelMismatch(AssertionError):
    pass


@dataclass(frozen=True)
class Op:
    name: str
    weight: int
    remount: bool
    run: Callable[[Any, st.DataObject], None]


#: The operations a step chooses from, with their weights.
OPS: list[Op] = []


OpFn = TypeVar("OpFn", bound=Callable[..., None])


def op(
    weight: int, *, remount: bool = False, **strategies: st.SearchStrategy[Any]
) -> Callable[[OpFn], OpFn]:
    """Register a machine method as an operation; its arguments are drawn by name.

    One ``step`` rule picks the operation by weight (Hypothesis's own rule
    choice would switch whole rules off per example, which a few expensive
    examples cannot afford).
    """

    def deco(fn: OpFn) -> OpFn:
        def run(machine: Any, data: st.DataObject) -> None:
            kwargs = {name: data.draw(s, label=name) for name, s in strategies.items()}
            getattr(machine, fn.__name__)(data, **kwargs)  # subclasses may override

        OPS.append(Op(fn.__name__, weight, remount, run))
        return fn

    return deco


class CosencfsMachine(RuleBasedStateMachine):
    """One example: its own COS server and bucket, mounts, and a model."""

    #: Set by the test before running (per-example resources live below it).
    tmp_root: Path
    key_file: Path
    max_remounts: int = CI_REMOUNTS

    def __init__(self) -> None:
        super().__init__()
        STATS["(examples)"] += 1
        self.dir = Path(tempfile.mkdtemp(prefix="ex", dir=self.tmp_root))
        self.server = start_server(self.dir / "cos")
        self.factory = MountFactory(self.server.url, self.dir, self.key_file)
        self.m: Mount | None = None
        self.model = Model()
        self.remounts = 0
        self.opts: dict[str, Any] = {}
        #: Every syscall of this example, for the failure report.
        self.ops: list[str] = []

    def teardown(self) -> None:
        if os.environ.get("COSENCFS_MODEL_DEBUG"):
            print("EXAMPLE", self.opts, *self.ops, sep="\n  ")
        try:
            self.factory.cleanup()
        finally:
            self.server.stop()
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- mounts ------------------------------------------------------------------

    def _mount(self, cache: str | None = None) -> Mount:
        return self.factory(cache=cache, prefix=self.opts["prefix"], extra=self.opts["extra"])

    @initialize(
        delay=st.sampled_from(["0.2", "3600", "0"]),
        dir_ttl0=st.booleans(),
        kernel_ttl0=st.booleans(),
        tiny_cache=st.booleans(),
        multipart=st.booleans(),
        prefix=st.sampled_from(["", "some/prefix"]),
    )
    def start(
        self,
        delay: str,
        dir_ttl0: bool,
        kernel_ttl0: bool,
        tiny_cache: bool,
        multipart: bool,
        prefix: str,
    ) -> None:
        extra = ["--writeback-delay", delay]
        if dir_ttl0:
            extra += ["--dir-ttl", "0"]
        if tiny_cache:
            extra += ["--cache-size", "64K"]
        conf: list[str] = []
        if kernel_ttl0:
            conf += ["entry_timeout = 0", "attr_timeout = 0"]
        if multipart:
            conf += ["single_put_max = 1024"]
        if conf:
            cfg = self.dir / "mount.toml"
            cfg.write_text("[fs]\n" + "\n".join(conf) + "\n")
            extra += ["--config", str(cfg)]
        self.opts = {"extra": extra, "prefix": prefix}
        self.m = self._mount()

    @property
    def mnt(self) -> Path:
        assert self.m is not None
        return self.m.mountpoint

    def p(self, path: str) -> Path:
        return self.mnt / path

    def fail(self, msg: str) -> NoReturn:
        logs = []
        for m in self.factory.mounts:
            text = m.log().strip()
            if text:
                tail = "\n".join(text.splitlines()[-25:])
                logs.append(f"--- log of {m.mountpoint.name} (last lines) ---\n{tail}")
        ops = "\n".join(self.ops[-60:])
        raise ModelMismatch(
            "\n".join([msg, f"mount options: {self.opts}", f"--- last syscalls ---\n{ops}", *logs])
        )

    # -- running syscalls against expectations ------------------------------------

    def expect(self, what: str, expected: int | None, fn: Callable[[], Any]) -> Any:
        """Run ``fn``; its errno (or success) must be ``expected``."""
        STATS[f"{what.split('(', maxsplit=1)[0].split(maxsplit=1)[0]}: {ename(expected)}"] += 1
        self.ops.append(f"{what} -> expecting {ename(expected)}")
        try:
            result = fn()
        except OSError as exc:
            if exc.errno != expected:
                self.fail(f"{what}: expected {ename(expected)}, got {ename(exc.errno)} ({exc})")
            return None
        if expected is not None:
            if isinstance(result, int) and what.startswith("open"):
                os.close(result)
            self.fail(f"{what}: expected {ename(expected)}, but it succeeded")
        return result

    def must(self, what: str, fn: Callable[[], Any]) -> Any:
        return self.expect(what, None, fn)

    def pwrite_all(self, fd: int, data: bytes, offset: int) -> None:
        view = memoryview(data)
        while view:
            n = os.pwrite(fd, view, offset)
            if n <= 0:
                self.fail(f"pwrite returned {n}")
            view = view[n:]
            offset += n

    def read_all(self, fd: int, size: int) -> bytes:
        out = bytearray()
        while True:
            chunk = os.pread(fd, max(65536, size - len(out) + 1), len(out))
            if not chunk:
                return bytes(out)
            out += chunk

    def read_file(self, path: str, direct: bool = False) -> bytes:
        flags = os.O_RDONLY | (os.O_DIRECT if direct else 0)
        fd = self.must(
            f"open({path!r}, O_RDONLY{'|O_DIRECT' if direct else ''})",
            lambda: os.open(self.p(path), flags),
        )
        try:
            data: bytes = self.must(f"read {path!r}", lambda: self.read_all(fd, 0))
            return data
        finally:
            os.close(fd)

    def pick(self, data: st.DataObject, *kinds: str) -> str:
        """A path: mostly one of ``kinds`` ("file", "dir", "new": a free name in an
        existing directory), sometimes any path of the universe (errors)."""
        files = [p for p, n in self.model.walk() if isinstance(n, MFile)]
        dirs = [p for p, n in self.model.walk() if isinstance(n, MDir)]
        groups: list[list[str]] = []
        if "file" in kinds:
            groups.append(files)
        if "dir" in kinds:
            groups.append(dirs)
        if "new" in kinds:
            parents = ["", *(d for d in dirs if d.count("/") < MAX_DEPTH - 1)]
            groups.append([f"{p}/{n}" if p else n for p in parents for n in NAMES])
        # Every draw has fixed bounds and the same sequence whatever exists:
        # after a crash that lost the cache the model adopts what the mount
        # shows, so the tree can differ between a run and its replay, and
        # Hypothesis needs the same kind of draws at the same places.
        branch = data.draw(st.integers(0, len(groups)), label="path kind")
        index = data.draw(st.integers(0, 255), label="path index")
        anywhere = data.draw(paths, label="path")
        if branch < len(groups) and groups[branch]:
            return groups[branch][index % len(groups[branch])]
        return anywhere

    @rule(data=st.data())
    def step(self, data: st.DataObject) -> None:
        ops = {o.name: o for o in OPS if not o.remount or self.can_remount()}
        name = data.draw(
            st.sampled_from([n for n, o in ops.items() for _ in range(o.weight)]), label="op"
        )
        self.ops.append(f"# {name}")
        STATS["(steps)"] += 1
        ops[name].run(self, data)

    # -- file rules ------------------------------------------------------------------

    def closed(self, f: MFile, *, wrote: bool, created: bool) -> None:
        """A rule closed its descriptor of ``f`` (``wrote``: it wrote through it;
        ``created``: it created the file): the state is journaled."""
        f.changed(closed=True)

    def _open_expectation(self, path: str, *, creat: bool) -> tuple[int | None, MFile | None]:
        """errno of open(path, O_WRONLY [|O_CREAT]) and the existing file."""
        err, parent, name = self.model.parent_of(path)
        if err is not None:
            return err, None
        node = parent.children.get(name)
        if node is None:
            return (None if creat else errno.ENOENT), None
        if isinstance(node, MDir):
            return errno.EISDIR, None
        return None, node

    @op(3, mode=st.sampled_from(FILE_MODES), length=lengths, seed=seeds)
    def create(self, data: st.DataObject, mode: int, length: int, seed: int) -> None:
        """open(O_CREAT|O_EXCL), write, close."""
        path = self.pick(data, "new")
        err, parent, name = self.model.parent_of(path)
        if err is None and name in parent.children:
            err = errno.EEXIST
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        fd = self.expect(
            f"open({path!r}, O_CREAT|O_EXCL)", err, lambda: os.open(self.p(path), flags, mode)
        )
        if err is not None:
            return
        f = MFile(b"", mode & ~UMASK, crash_modes={mode & ~UMASK}, cos_data=[None])
        f.cos_modes = {f.mode}
        parent.children[name] = f
        f.changed(closed=False)
        try:
            buf = payload(seed, length)
            self.must(f"write {path!r}", lambda: self.pwrite_all(fd, buf, 0))
            f.write(0, buf)
            f.changed(closed=False)
        finally:
            self.must(f"close {path!r}", lambda: os.close(fd))
        self.closed(f, wrote=length > 0, created=True)

    @op(
        5,
        offset=offsets,
        length=lengths,
        seed=seeds,
        how=st.sampled_from(["", "creat", "trunc", "append", "creat|trunc", "creat|append"]),
    )
    def write(self, data: st.DataObject, offset: int, length: int, seed: int, how: str) -> None:
        """open(O_WRONLY [flags]), pwrite at offset (or append), close."""
        path = self.pick(data, "file", "new")
        creat, trunc, append = "creat" in how, "trunc" in how, "append" in how
        err, f = self._open_expectation(path, creat=creat)
        flags = os.O_WRONLY
        flags |= os.O_CREAT if creat else 0
        flags |= os.O_TRUNC if trunc else 0
        flags |= os.O_APPEND if append else 0
        fd = self.expect(
            f"open({path!r}, {how or 'O_WRONLY'})", err, lambda: os.open(self.p(path), flags, 0o644)
        )
        if err is not None:
            return
        created = f is None
        if f is None:
            _, parent, name = self.model.parent_of(path)
            f = MFile(b"", 0o644 & ~UMASK, crash_modes={0o644 & ~UMASK}, cos_data=[None])
            f.cos_modes = {f.mode}
            parent.children[name] = f
            f.changed(closed=False)
        had_data = trunc and bool(f.data)
        buf = b""
        try:
            if trunc and f.data:
                f.truncate(0)
                f.changed(closed=False)
            buf = payload(seed, length)
            if append:
                n = self.must(f"append to {path!r}", lambda: os.write(fd, buf))
                if n != len(buf):
                    self.fail(f"short append: {n} of {len(buf)}")
                offset = len(f.data)
            else:
                self.must(f"pwrite {path!r} at {offset}", lambda: self.pwrite_all(fd, buf, offset))
            if buf:
                f.write(offset, buf)
                f.changed(closed=False)
        finally:
            self.must(f"close {path!r}", lambda: os.close(fd))
        self.closed(f, wrote=bool(buf) or had_data, created=created)

    @op(2, size=sizes, by_path=st.booleans())
    def truncate(self, data: st.DataObject, size: int, by_path: bool) -> None:
        """truncate(path, size), or open/ftruncate/close."""
        path = self.pick(data, "file")
        err, f = self._open_expectation(path, creat=False)
        if by_path:
            self.expect(f"truncate({path!r}, {size})", err, lambda: os.truncate(self.p(path), size))
            if f is not None:
                f.truncate(size)
                f.changed(closed=False)  # no close(): not promised to survive a crash
            return
        fd = self.expect(
            f"open({path!r}, O_WRONLY)", err, lambda: os.open(self.p(path), os.O_WRONLY)
        )
        if err is not None:
            return
        assert f is not None
        try:
            self.must(f"ftruncate({path!r}, {size})", lambda: os.ftruncate(fd, size))
            f.truncate(size)
            f.changed(closed=False)
        finally:
            self.must(f"close {path!r}", lambda: os.close(fd))
        self.closed(f, wrote=False, created=False)

    @op(2, offset=offsets, length=lengths, direct=st.booleans())
    def read(self, data: st.DataObject, offset: int, length: int, direct: bool) -> None:
        """open(O_RDONLY [|O_DIRECT]), pread, close; a directory gives EISDIR."""
        path = self.pick(data, "file", "dir")
        err, node = self.model.lookup(path)
        if isinstance(node, MDir):
            fd = self.must(f"open dir {path!r}", lambda: os.open(self.p(path), os.O_RDONLY))
            try:
                self.expect(f"pread dir {path!r}", errno.EISDIR, lambda: os.pread(fd, 10, 0))
            finally:
                os.close(fd)
            return
        flags = os.O_RDONLY | (os.O_DIRECT if direct else 0)
        fd = self.expect(f"open({path!r}, O_RDONLY)", err, lambda: os.open(self.p(path), flags))
        if err is not None:
            return
        assert isinstance(node, MFile)
        try:
            got = self.must(f"pread {path!r}", lambda: os.pread(fd, length, offset))
        finally:
            os.close(fd)
        want = node.data[offset : offset + length]
        if got != want:
            self.fail(f"pread({path!r}, {length}, {offset}): {describe_diff(want, got)}")

    @op(2, offset=offsets, length=lengths, seed=seeds, write=st.booleans(), datasync=st.booleans())
    def fsync(
        self, data: st.DataObject, offset: int, length: int, seed: int, write: bool, datasync: bool
    ) -> None:
        """open(O_RDWR), optionally pwrite, fsync/fdatasync, close: now in COS."""
        path = self.pick(data, "file")
        err, f = self._open_expectation(path, creat=False)
        fd = self.expect(f"open({path!r}, O_RDWR)", err, lambda: os.open(self.p(path), os.O_RDWR))
        if err is not None:
            return
        assert f is not None
        try:
            if write:
                buf = payload(seed, length)
                self.must(f"pwrite {path!r}", lambda: self.pwrite_all(fd, buf, offset))
                if buf:
                    f.write(offset, buf)
                    f.changed(closed=False)
            sync = os.fdatasync if datasync else os.fsync
            self.must(f"{sync.__name__}({path!r})", lambda: sync(fd))
            f.cos_data = [f.data]
            if not datasync:
                f.cos_modes = {f.mode}
        finally:
            self.must(f"close {path!r}", lambda: os.close(fd))
        f.changed(closed=True)

    @op(1)
    def sync_all(self, data: st.DataObject) -> None:
        """``cosencfs sync``: every dirty file and directory goes up now."""
        self.must(
            "setxattr user.cosencfs.sync",
            lambda: os.setxattr(self.mnt, b"user.cosencfs.sync", b"1"),
        )
        for _, node in self.model.walk():
            if isinstance(node, MFile):
                node.cos_data = [node.data]
            node.cos_modes = {node.mode}

    @op(2, mode=st.sampled_from(FILE_MODES + DIR_MODES))
    def chmod(self, data: st.DataObject, mode: int) -> None:
        path = self.pick(data, "file", "dir")
        err, node = self.model.lookup(path)
        if isinstance(node, MDir):
            mode |= 0o700
        self.expect(f"chmod({path!r}, {mode:o})", err, lambda: os.chmod(self.p(path), mode))
        if node is not None:
            node.chmod(mode)

    # -- namespace rules ---------------------------------------------------------------

    @op(3, mode=st.sampled_from(DIR_MODES))
    def mkdir(self, data: st.DataObject, mode: int) -> None:
        path = self.pick(data, "new")
        err, parent, name = self.model.parent_of(path)
        if err is None and name in parent.children:
            err = errno.EEXIST
        self.expect(f"mkdir({path!r}, {mode:o})", err, lambda: os.mkdir(self.p(path), mode))
        if err is None:
            m = mode & ~UMASK
            parent.children[name] = MDir(m, crash_modes={m}, cos_modes={m})

    @op(1)
    def rmdir(self, data: st.DataObject) -> None:
        path = self.pick(data, "dir")
        err, node = self.model.lookup(path)
        if isinstance(node, MFile):
            err = errno.ENOTDIR
        elif isinstance(node, MDir) and node.children:
            err = errno.ENOTEMPTY
        self.expect(f"rmdir({path!r})", err, lambda: os.rmdir(self.p(path)))
        if err is None:
            _, parent, name = self.model.parent_of(path)
            del parent.children[name]

    @op(2, keep_open=st.booleans())
    def unlink(self, data: st.DataObject, keep_open: bool) -> None:
        """unlink; with ``keep_open`` the file is open (and written) across it."""
        path = self.pick(data, "file")
        err, node = self.model.lookup(path)
        if isinstance(node, MDir):
            err = errno.EISDIR
        fd = None
        if keep_open and isinstance(node, MFile):
            fd = self.must(f"open({path!r}, O_RDWR)", lambda: os.open(self.p(path), os.O_RDWR))
        try:
            self.expect(f"unlink({path!r})", err, lambda: os.unlink(self.p(path)))
            if fd is not None:
                assert isinstance(node, MFile)
                end = len(node.data)
                self.must("pwrite to the unlinked file", lambda: self.pwrite_all(fd, TAIL, end))
                got = self.must("read the unlinked file", lambda: self.read_all(fd, end))
                want = node.data + TAIL
                if got != want:
                    self.fail(f"unlinked open file {path!r}: {describe_diff(want, got)}")
        finally:
            if fd is not None:
                self.must(f"close unlinked {path!r}", lambda: os.close(fd))
        if err is None:
            _, parent, name = self.model.parent_of(path)
            del parent.children[name]

    def _rename_expectation(self, src: str, dst: str) -> int | None:
        """What Linux's renameat2 (and then cosencfs) answers, in the kernel's order."""
        serr, sparent, sname = self.model.parent_of(src)
        if serr is not None:
            return serr
        derr, dparent, dname = self.model.parent_of(dst)
        if derr is not None:
            return derr
        snode = sparent.children.get(sname)
        if snode is None:
            return errno.ENOENT
        dnode = dparent.children.get(dname)
        if src == dst:
            return None
        if is_ancestor(src, dst):
            return errno.EINVAL  # a directory into itself
        if is_ancestor(dst, src):
            return errno.ENOTEMPTY  # onto an ancestor
        if dnode is not None:
            if isinstance(snode, MDir) and isinstance(dnode, MFile):
                return errno.ENOTDIR
            if isinstance(snode, MFile) and isinstance(dnode, MDir):
                return errno.EISDIR
            if isinstance(dnode, MDir) and dnode.children:
                return errno.ENOTEMPTY
        return None

    @op(4, keep_open=st.booleans())
    def rename(self, data: st.DataObject, keep_open: bool) -> None:
        """rename; with ``keep_open`` a file is open across it and written after."""
        src = self.pick(data, "file", "dir")
        dst = self.pick(data, "new", "file", "dir")
        err = self._rename_expectation(src, dst)
        _, snode = self.model.lookup(src)
        fd = None
        if keep_open and isinstance(snode, MFile):
            fd = self.must(f"open({src!r}, O_RDWR)", lambda: os.open(self.p(src), os.O_RDWR))
        try:
            self.expect(
                f"rename({src!r}, {dst!r})", err, lambda: os.rename(self.p(src), self.p(dst))
            )
            if err is None and src != dst:
                _, sparent, sname = self.model.parent_of(src)
                _, dparent, dname = self.model.parent_of(dst)
                node = sparent.children.pop(sname)
                old = dparent.children.get(dname)
                dparent.children[dname] = node
                if isinstance(node, MFile) and node.cos_data != [node.data]:
                    # Content not known to be in COS: the old object may be
                    # deleted before the new upload, and a replaced file's
                    # object stays under the name until that upload.
                    extra = old.cos_data if isinstance(old, MFile) else []
                    node.cos_data = [*node.cos_data, *extra, None]
                    if isinstance(old, MFile):
                        node.cos_modes |= old.cos_modes
            if fd is not None:
                assert isinstance(snode, MFile)
                end = len(snode.data)
                self.must("pwrite after rename", lambda: self.pwrite_all(fd, TAIL, end))
                snode.write(end, TAIL)
                snode.changed(closed=False)
        finally:
            if fd is not None:
                self.must("close after rename", lambda: os.close(fd))
                assert isinstance(snode, MFile)
                self.closed(snode, wrote=True, created=False)

    # -- whole-tree checks ---------------------------------------------------------------

    @invariant()
    def structure_matches(self) -> None:
        """Every name of the universe, every listing, size, mode and link count."""
        if self.m is None:
            return
        for path in UNIVERSE:
            err, node = self.model.lookup(path)
            try:
                st_ = os.lstat(self.p(path))
            except OSError as exc:
                if err is None:
                    self.fail(
                        f"lstat({path!r}): {ename(exc.errno)}, but the model has {kind(node)}"
                    )
                if exc.errno != err:
                    self.fail(f"lstat({path!r}): expected {ename(err)}, got {ename(exc.errno)}")
                continue
            if err is not None:
                self.fail(
                    f"lstat({path!r}) found {stat.filemode(st_.st_mode)}, expected {ename(err)}"
                )
            self.compare_stat(path, node, st_)
        for path, node in [("", self.model.root), *self.model.walk()]:
            if isinstance(node, MDir):
                got = sorted(
                    self.must(f"listdir({path!r})", functools.partial(os.listdir, self.p(path)))
                )
                if got != sorted(node.children):
                    self.fail(f"listdir({path!r}) = {got}, expected {sorted(node.children)}")

    def compare_stat(self, path: str, node: Node | None, st_: os.stat_result) -> None:
        if isinstance(node, MDir):
            if not stat.S_ISDIR(st_.st_mode):
                self.fail(f"{path!r} should be a directory: {stat.filemode(st_.st_mode)}")
        elif isinstance(node, MFile):
            if not stat.S_ISREG(st_.st_mode):
                self.fail(f"{path!r} should be a file: {stat.filemode(st_.st_mode)}")
            if st_.st_size != len(node.data):
                self.fail(f"{path!r}: size {st_.st_size}, expected {len(node.data)}")
        assert node is not None
        if stat.S_IMODE(st_.st_mode) != node.mode:
            self.fail(f"{path!r}: mode {stat.S_IMODE(st_.st_mode):o}, expected {node.mode:o}")
        if st_.st_nlink != 1:
            self.fail(f"{path!r}: st_nlink {st_.st_nlink}, expected 1")

    @op(1, direct=st.booleans())
    def check_contents(self, data: st.DataObject, direct: bool) -> None:
        self.verify_contents(direct)

    def verify_contents(self, direct: bool = False) -> None:
        for path, f in self.model.files():
            got = self.read_file(path, direct)
            if got != f.data:
                self.fail(f"content of {path!r}: {describe_diff(f.data, got)}")

    def file_mtimes(self) -> dict[str, int]:
        return {path: os.lstat(self.p(path)).st_mtime_ns for path, _ in self.model.files()}

    # -- remounts and crashes ------------------------------------------------------------

    def can_remount(self) -> bool:
        return self.m is not None and self.remounts < self.max_remounts

    @op(1, remount=True, verify=st.booleans())
    def remount(self, data: st.DataObject, verify: bool) -> None:
        """Clean unmount (exit 0), then a fresh cache: everything came from COS."""
        assert self.m is not None
        self.remounts += 1
        STATS["remount"] += 1
        self.ops.append("remount")
        mtimes = self.file_mtimes()
        status = self.m.umount()
        if status != 0:
            self.fail(f"cosencfs umount: the daemon exited with {status}")
        self.m = self._mount()
        self.structure_matches()
        if verify:
            self.verify_contents()
        after = self.file_mtimes()
        if after != mtimes:
            diff = {p: (mtimes.get(p), after.get(p)) for p in after if after[p] != mtimes.get(p)}
            self.fail(f"mtimes changed across a clean remount: {diff}")
        self.model.settle()

    @op(1, remount=True, verify=st.booleans(), verify_cos=st.booleans())
    def crash(self, data: st.DataObject, verify: bool, verify_cos: bool) -> None:
        """kill -9, then the same cache: whatever close() returned is back."""
        assert self.m is not None
        self.remounts += 1
        STATS["crash"] += 1
        self.ops.append("crash")
        self.kill()
        self.m = self._mount(cache=self.m.cache_dir.name)
        self.resolve("crash", verify)
        self.model.settle()  # recovery uploaded everything before the mount went live
        if verify_cos:
            self.wait_deletes()  # deletes left in the journal go out after mounting
            other = self._mount()
            try:
                saved, self.m = self.m, other
                self.structure_matches()
                self.verify_contents()
            finally:
                self.m = saved
            status = other.umount()
            if status != 0:
                self.fail(f"umount of the verifying mount exited with {status}")

    @op(1, remount=True)
    def crash_lose_cache(self, data: st.DataObject) -> None:
        """kill -9 and lose the cache: what fsync()/sync committed is in COS."""
        assert self.m is not None
        self.remounts += 1
        STATS["crash_lose_cache"] += 1
        self.ops.append("crash_lose_cache")
        # unlink/rmdir/rename send their deletes ~0.2 s later (journaled): a lost
        # journal may resurrect names deleted just before, which is documented.
        self.wait_deletes()
        self.kill()
        self.m = self._mount()
        self.resolve("cos", True)
        self.model.settle()

    def kill(self) -> None:
        """kill -9 the daemon, then let the server finish what it had received.

        Requests the daemon sent just before dying still complete (so would
        they on COS); a mount started meanwhile could see their effect late
        (e.g. a chmod's server-side copy landing after its first listing).
        The local server serves each connection in a thread named
        ``cos-conn``: once none is left, the dead daemon's requests are done.
        """
        assert self.m is not None
        self.m.kill()
        deadline = time.monotonic() + 10.0
        while any(t.name == "cos-conn" for t in threading.enumerate()):
            if time.monotonic() > deadline:
                self.fail("the server still serves the killed daemon's requests after 10 s")
            time.sleep(0.02)

    def mode_among(self, which: str, path: str, st_: os.stat_result, modes: set[int]) -> int:
        """The mode found after a remount, which must be one of ``modes``."""
        mode = stat.S_IMODE(st_.st_mode)
        if mode not in modes:
            self.fail(
                f"after {which}: {path!r} mode {mode:o},"
                f" expected one of {sorted(f'{m:o}' for m in modes)}"
            )
        return mode

    def wait_deletes(self, timeout: float = 10.0) -> None:
        """Wait until the mount has sent every queued delete to COS."""
        deadline = time.monotonic() + timeout
        while True:
            raw = self.must("getxattr stats", lambda: os.getxattr(self.mnt, b"user.cosencfs.stats"))
            pending = json.loads(raw).get("deletes", {}).get("pending", 0)
            if not pending:
                return
            if time.monotonic() > deadline:
                self.fail(f"{pending} deletes still not sent to COS after {timeout} s")
            time.sleep(0.05)

    def resolve(self, which: str, read_all: bool) -> None:
        """Compare the tree with the states allowed after a crash; adopt what is seen."""

        def allowed(f: MFile) -> tuple[list[bytes | None], set[int]]:
            if which == "crash":
                return list(f.crash_data), f.crash_modes
            return list(f.cos_data), f.cos_modes

        def walk(d: MDir, prefix: str) -> None:
            got = set(self.must(f"listdir({prefix!r})", lambda: os.listdir(self.p(prefix))))
            for name in sorted(set(d.children) | got):
                path = f"{prefix}/{name}" if prefix else name
                node = d.children.get(name)
                if node is None:
                    self.fail(f"after {which}: unexpected {path!r}")
                modes = node.crash_modes if which == "crash" else node.cos_modes
                if isinstance(node, MDir):
                    if name not in got:
                        self.fail(f"after {which}: directory {path!r} is missing")
                    st_ = os.lstat(self.p(path))
                    if not stat.S_ISDIR(st_.st_mode):
                        self.fail(f"after {which}: {path!r} is not a directory")
                    node.mode = self.mode_among(which, path, st_, modes)
                    walk(node, path)
                    continue
                assert isinstance(node, MFile)
                states, modes = allowed(node)
                if name not in got:
                    if None not in states:
                        self.fail(f"after {which}: file {path!r} is missing")
                    del d.children[name]
                    continue
                st_ = os.lstat(self.p(path))
                if not stat.S_ISREG(st_.st_mode):
                    self.fail(f"after {which}: {path!r} is not a file")
                contents = [s for s in states if s is not None]
                if not contents:
                    self.fail(f"after {which}: {path!r} exists but was never committed")
                node.mode = self.mode_among(which, path, st_, modes)
                if read_all or len(set(contents)) > 1:
                    data = self.read_file(path)
                    if data not in contents:
                        self.fail(
                            f"after {which}: content of {path!r} is none of the"
                            f" {len(set(contents))} allowed states; vs the latest: "
                            f"{describe_diff(contents[-1], data)}"
                        )
                    node.data = data
                else:
                    node.data = contents[0]
                    if st_.st_size != len(node.data):
                        self.fail(
                            f"after {which}: {path!r} size {st_.st_size}, expected {len(node.data)}"
                        )

        walk(self.model.root, "")
        self.structure_matches()


def kind(node: Node | None) -> str:
    if isinstance(node, MDir):
        return "a directory"
    if isinstance(node, MFile):
        return f"a file of {len(node.data)} bytes"
    return "nothing"


def describe_diff(want: bytes, got: bytes) -> str:
    if len(want) != len(got):
        head = f"{len(got)} bytes, expected {len(want)}"
    else:
        head = f"{len(got)} bytes as expected"
    for i, (a, b) in enumerate(zip(want, got, strict=False)):
        if a != b:
            zeros = got[i : i + 16] == bytes(len(got[i : i + 16]))
            return f"{head}; first difference at {i}{' (zeros)' if zeros else ''}"
    return head + ("; one is a prefix of the other" if want != got else "; equal")


# -- the test ----------------------------------------------------------------------------


def _seed() -> int:
    value = os.environ.get("COSENCFS_MODEL_SEED", "").strip()
    if value == "random":
        return random.SystemRandom().randrange(2**32)
    return int(value) if value else 0


def replay_command(seed: int, blob: str | None) -> str:
    env = [
        f"COSENCFS_MODEL_SEED={seed}",
        f"COSENCFS_MODEL_EXAMPLES={EXAMPLES}",
        f"COSENCFS_MODEL_STEPS={STEPS}",
        f"COSENCFS_MODEL_REMOUNTS={REMOUNTS}",
    ]
    if blob:
        env.append(f"COSENCFS_MODEL_BLOB='{blob}'")
    return " ".join(env) + " .venv/bin/python -m pytest tests/model/test_model.py"


def seeded_machine(machine: Any, seed: int, blob_env: str) -> Any:
    """``machine`` with Hypothesis's seed, replaying the blob in ``blob_env`` if set."""
    machine = hypothesis.seed(seed)(machine)
    blob = os.environ.get(blob_env, "").strip().strip("b'\"")
    if blob:
        machine = hypothesis.reproduce_failure(hypothesis.__version__, blob.encode())(machine)
    return machine


def model_settings(examples: int, steps: int, *, shrink: bool = True) -> settings:
    """One run of a model test: no database, no deadline, the blob printed to replay it."""
    return settings(
        max_examples=examples,
        stateful_step_count=steps,
        deadline=None,
        database=None,
        print_blob=True,
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
        phases=[p for p in Phase if shrink or p is not Phase.shrink],
    )


def _blob_of(exc: BaseException) -> str | None:
    text = "\n".join([str(exc), *getattr(exc, "__notes__", [])])
    marker = "@reproduce_failure("
    i = text.find(marker)
    if i < 0:
        return None
    args = text[i + len(marker) : text.find(")", i)]
    blob = args.split(",", 1)[1].strip() if "," in args else ""
    return blob.strip("b'\" ") or None


@pytest.mark.mount
@pytest.mark.timeout(TIMEOUT)
def test_model_against_real_mount(tmp_path: Path, key_file: Path) -> None:
    seed = _seed()
    print(f"model test: seed {seed}, {EXAMPLES} examples x {STEPS} steps, {REMOUNTS} remounts")
    machine: Any = type(
        "CosencfsMachine",
        (CosencfsMachine,),
        {"tmp_root": tmp_path, "key_file": key_file, "max_remounts": REMOUNTS},
    )
    machine = seeded_machine(machine, seed, "COSENCFS_MODEL_BLOB")
    conf = model_settings(EXAMPLES, STEPS)
    try:
        with umask(UMASK):
            run_state_machine_as_test(machine, settings=conf)
    except BaseException as exc:
        msg = f"replay with: {replay_command(seed, _blob_of(exc))}"
        print(msg)
        if isinstance(exc, Exception):
            exc.add_note(msg)
        raise
    finally:
        print("outcomes:", ", ".join(f"{k} x{v}" for k, v in sorted(STATS.items())))
