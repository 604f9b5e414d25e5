"""Model-based test of the Filesystem layer on the in-memory store: fast, and with crashes.

A Hypothesis ``RuleBasedStateMachine`` calls ``cosencfs.fs.core.Filesystem``
the way the kernel would (``_fs_model_rig.Vfs``) over a ``MemoryStore`` and
compares every step with a reference tree (``_fs_model_ref.Tree``), in the
manner of mountpoint-s3's reference-model tests and of the mount-level model
test (tests/model/test_model.py, which stays the end-to-end check).  Without
FUSE, HTTP or processes a step takes milliseconds, so a CI run makes
thousands of steps and a hundred crashes.

Steps: create; write at random offsets (holes, O_TRUNC, O_APPEND, O_CREAT;
now and then past 1 MiB); files over 1 MiB written front to back, their parts
streamed meanwhile, with a write back below a sent part;
truncate by path and by handle; read; fsync; ``sync_all``; chmod; mkdir;
rmdir; unlink (also of an open file, written and read after); rename of files
and directories (also with the file open and written after); handles kept
open across steps (written, read, closed later, or lost in a crash); *races*:
writes to disjoint ranges of one file at the same time as its fsync, a
``sync_all`` or a close; clean remounts; and crashes.  After every step the
names, listings, types, sizes and modes must match the reference (and the
kernel may drop its lookups: ``forget``).

A *crash* drops the process state: the filesystem's nursery is cancelled
without a flush and its cache manager closed without an upload; a new
CacheManager opens the same directory, a new Filesystem ``recover()``s, and
the tree must show, file by file, one of the states the durability contract
allows (docs/semantics.md): the state at the last close or truncate (or any
later one a background upload or journal record caught).  A crash that
*loses the cache directory* starts from an empty one: what fsync or sync
committed must be in COS, later states may be, unlinked files whose delete
was held by an open handle may come back.  Every write goes through the
keystream ledger; the records this test appended are checked on their own.

Budgets (environment variables, all optional)::

    COSENCFS_FSMODEL_EXAMPLES   examples (default 60)
    COSENCFS_FSMODEL_STEPS      steps per example at most (default 50)
    COSENCFS_FSMODEL_CRASHES    crash steps per example at most (default 8)
    COSENCFS_FSMODEL_SEED       Hypothesis seed (default 0; "random" picks one)
    COSENCFS_FSMODEL_BLOB       replay one failure: the @reproduce_failure blob
    COSENCFS_FSMODEL_HANG_S     seconds a call may take before it fails as hung (20)
    COSENCFS_FSMODEL_SHRINK     0: report the first failure unshrunk (hunts for races)
    COSENCFS_FSMODEL_DEBUG      1: print every example's calls (with -s)
    COSENCFS_FSMODEL_OPS        only these operations (comma-separated names of WEIGHTS)

A long hunt (docs/reliability.md)::

    COSENCFS_FSMODEL_SEED=random COSENCFS_FSMODEL_EXAMPLES=1000 COSENCFS_FSMODEL_SHRINK=0 \\
        .venv/bin/python -m pytest -p no:cacheprovider tests/model/test_fs_model.py -x
"""

from __future__ import annotations

import errno
import functools
import itertools
import os
import random
import shutil
import stat
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import pytest
import trio
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from cosencfs.crypto import ledger
from cosencfs.crypto.envelope import EnvelopeCodec
from cosencfs.errors import CosEncFsError, FsError
from cosencfs.fs.names import INDEX_NAME
from cosencfs.fs.tagcheck import COMPANION_DIR
from cosencfs.store.memory import MemoryStore
from tests.model._fs_model_ref import (
    MAX_DEPTH,
    NAMES,
    RefDir,
    RefFile,
    Tree,
    payload,
    put_bytes,
    resize,
)
from tests.model._fs_model_rig import FsMount, Loop
from tests.model.test_model import (
    DIR_MODES,
    FILE_MODES,
    UNIVERSE,
    _blob_of,
    _env_int,
    describe_diff,
    lengths,
    model_settings,
    seeded_machine,
    seeds,
    sizes,
)
from tests.testlib import fs_options

T = TypeVar("T")

# -- budget ------------------------------------------------------------------------

CI_EXAMPLES, CI_STEPS = 60, 50
EXAMPLES = _env_int("COSENCFS_FSMODEL_EXAMPLES", CI_EXAMPLES)
STEPS = _env_int("COSENCFS_FSMODEL_STEPS", CI_STEPS)
CRASHES = _env_int("COSENCFS_FSMODEL_CRASHES", 8)
#: Seconds one call may take before it counts as hung: a step takes milliseconds,
#: seconds on a loaded machine; shrinking a hang pays this for every attempt.
HANG_S = _env_int("COSENCFS_FSMODEL_HANG_S", 20)
#: 0: report the first failure as found (a hang costs HANG_S per shrinking attempt).
SHRINK = bool(_env_int("COSENCFS_FSMODEL_SHRINK", 1))
CI_BUDGET = (EXAMPLES, STEPS) == (CI_EXAMPLES, CI_STEPS) and not os.environ.get(
    "COSENCFS_FSMODEL_OPS"
)
#: What the CI budget must reach (the brief of issue 13): else the mix drifted.
MIN_STEPS, MIN_DIRTY_CRASHES = 2000, 50

# -- what the machine draws ---------------------------------------------------------

TAIL = b"<tail written through a handle kept open>"
paths = st.sampled_from(UNIVERSE)
MIN_PART = 1024**2
#: What cp writes at a time (a multiple of the part size divides it evenly).
STREAM_CHUNK = 128 * 1024
_near = st.one_of(st.integers(0, 64), st.integers(0, 4096), st.integers(0, 300_000))
#: Past 1 MiB: a file over single_put_max streams its parts while it is written
#: (stream.py), and a later write below a sent part needs a new layer.
_far = st.integers(MIN_PART, 2 * MIN_PART + 300_000)
offsets = st.integers(0, 15).flatmap(lambda k: _far if k == 0 else _near)
#: A race's writes: some large enough for a worker thread (256 KiB), which holds
#: the layer's lock across an await.
race_lengths = st.one_of(st.integers(1, 4096), st.integers(256 * 1024, 300_000))

#: Operation -> weight.  ``step`` draws one by weight (Hypothesis's own rule
#: choice would switch whole rules off in an example).
WEIGHTS = {
    "create": 3,
    "write": 5,
    "truncate": 2,
    "read": 2,
    "fsync": 2,
    "sync_all": 1,
    "chmod": 2,
    "mkdir": 3,
    "rmdir": 1,
    "unlink": 2,
    "rename": 4,
    "contents": 1,
    "hopen": 2,
    "hwrite": 3,
    "hread": 1,
    "hclose": 2,
    "race": 2,
    "stream": 1,
    "crash": 3,
    "crash_lose_cache": 2,
    "remount": 1,
}
CRASH_OPS = ("crash", "crash_lose_cache", "remount")
if os.environ.get("COSENCFS_FSMODEL_OPS"):  # a hunt on some operations only
    WEIGHTS = {
        k: v for k, v in WEIGHTS.items() if k in os.environ["COSENCFS_FSMODEL_OPS"].split(",")
    }

#: (writeback_delay, max_dirty_age): half the examples keep dirty data until a
#: close, fsync or sync, so that their crashes find data to lose; the others
#: race background uploads.
UPLOAD_TIMINGS = [(3600.0, 3600.0)] * 4 + [(0.0, 0.0), (0.02, 0.05), (0.02, 3600.0), (3600.0, 0.05)]

#: The mix of every example of the run: operation and outcome -> count.
STATS: Counter[str] = Counter()
#: The first failure of the run, as it was seen: a race may not fail again when
#: Hypothesis replays it, and it then reports only that the replay differed.
FIRST_FAILURE: list[str] = []


def remember(exc: BaseException) -> None:
    if not FIRST_FAILURE:
        FIRST_FAILURE.append("".join(traceback.format_exception_only(exc)))


def ename(code: int | None) -> str:
    return "ok" if code is None else errno.errorcode.get(code, str(code))


class Mismatch(AssertionError):
    pass


@dataclass
class Handle:
    """A descriptor kept open across steps, and the file it was opened on."""

    fh: int
    ino: int
    file: RefFile
    append: bool
    wrote: bool = False


class FsMachine(RuleBasedStateMachine):
    """One example: a bucket in memory, filesystems over it one after another, a reference."""

    tmp_root: Path
    codec: EnvelopeCodec
    max_crashes: int = CRASHES

    def __init__(self) -> None:
        super().__init__()
        STATS["(examples)"] += 1
        self.dir = Path(tempfile.mkdtemp(prefix="ex", dir=self.tmp_root))
        self.loop = Loop(HANG_S)
        self.store = MemoryStore()
        self.tree = Tree()
        self.handles: dict[int, Handle] = {}
        self.next_handle = 0
        self.mount: FsMount | None = None
        self.caches = 0
        self.crashes = 0
        self.options: dict[str, Any] = {}
        #: Every call of this example, for the failure report.
        self.log: list[str] = []
        #: Paths of files unlinked while open whose held delete a lost cache took
        #: along: their objects may stay in COS (under a directory of that name).
        self.leftovers: set[str] = set()

    def teardown(self) -> None:
        if os.environ.get("COSENCFS_FSMODEL_DEBUG"):
            print("EXAMPLE", self.options, *self.log, sep="\n  ")
        try:
            if self.mount is not None and not self.loop.wedged:
                self.loop.run(self.mount.crash)
        finally:
            self.loop.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- mounts ---------------------------------------------------------------------

    @initialize(
        timing=st.sampled_from(UPLOAD_TIMINGS),
        dir_ttl=st.sampled_from([60.0, 0.0]),
        single_put_max=st.sampled_from([16 * 1024 * 1024, 1024]),
        prefix=st.sampled_from(["", "some/prefix"]),
        forget=st.booleans(),
        tiny_cache=st.booleans(),
    )
    def start(
        self, timing: tuple[float, float], tiny_cache: bool, forget: bool, **options: Any
    ) -> None:
        options["writeback_delay"], options["max_dirty_age"] = timing
        self.options = {**options, "forget": forget, "tiny_cache": tiny_cache}
        self.fs_options = fs_options(**options)
        self.cache_limit = 64 * 1024 if tiny_cache else 1 << 30
        self.forget = forget
        self.mount = self.new_mount(keep_cache=False)

    def new_mount(self, *, keep_cache: bool) -> FsMount:
        if not keep_cache:
            self.caches += 1
        cache_dir = self.dir / f"cache{self.caches}"

        async def start() -> tuple[FsMount, Any]:
            mount = FsMount(self.store, self.codec, cache_dir, self.fs_options, self.cache_limit)
            return mount, await mount.start(self.loop.nursery)

        mount, report = self.loop.run(start)
        self.mount = mount
        if report.failed:
            self.fail(f"recovery could not upload: {report.failed}")
        return mount

    @property
    def m(self) -> FsMount:
        assert self.mount is not None
        return self.mount

    def fail(self, msg: str) -> NoReturn:
        calls = "\n".join(self.log[-80:])
        exc = Mismatch(f"{msg}\noptions: {self.options}\n--- last calls ---\n{calls}")
        remember(exc)
        raise exc

    # -- running calls against expectations -----------------------------------------

    def call(self, what: str, expected: int | None, fn: Callable[[], Awaitable[T]]) -> T | None:
        """Run ``fn`` in the loop; its errno (or success) must be ``expected``."""
        STATS[f"{what.split('(', 1)[0]}: {ename(expected)}"] += 1
        self.log.append(f"{what} -> expecting {ename(expected)}")
        try:
            result = self.loop.run(fn)
        except FsError as exc:
            if exc.errno != expected:
                self.fail(f"{what}: expected {ename(expected)}, got {ename(exc.errno)} ({exc})")
            return None
        except CosEncFsError as exc:  # EIO for the application
            self.fail(f"{what}: {type(exc).__name__}: {exc}")
        if expected is not None:
            self.fail(f"{what}: expected {ename(expected)}, but it succeeded")
        return result

    def must(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        result = self.call(what, None, fn)
        return result  # type: ignore[return-value]

    def pick(self, data: st.DataObject, *kinds: str) -> str:
        """A path of one of ``kinds`` ("file", "dir", "new": a free name in a
        directory), now and then any path at all.  The draws have the same
        shape whatever exists (a replay must draw the same way even where a
        crash made the tree differ)."""
        pool: list[str] = []
        if "file" in kinds:
            pool += [p for p, _ in self.tree.files()]
        if "dir" in kinds:
            pool += [p for p in self.tree.dirs() if p]
        if "new" in kinds:
            parents = [d for d in self.tree.dirs() if d.count("/") < MAX_DEPTH - 1]
            pool += [
                f"{d}/{n}" if d else n
                for d in parents
                for n in NAMES
                if (f"{d}/{n}" if d else n) not in self.tree.nodes
            ]
        index = data.draw(st.integers(0, 255), label="path index")
        wild = data.draw(paths, label="any path")
        use_wild = data.draw(st.integers(0, 9), label="wild?") == 0
        return wild if use_wild or not pool else pool[index % len(pool)]

    @rule(data=st.data())
    def step(self, data: st.DataObject) -> None:
        name = data.draw(
            st.sampled_from([n for n, w in WEIGHTS.items() for _ in range(w)]), label="op"
        )
        if name in CRASH_OPS and self.crashes >= self.max_crashes:
            name = "contents"
        self.log.append(f"# {name}")
        STATS["(steps)"] += 1
        try:
            getattr(self, f"do_{name}")(data)
        except Mismatch:
            raise
        except Exception as exc:
            calls = "\n".join(self.log[-80:])
            exc.add_note(f"options: {self.options}\n--- last calls ---\n{calls}")
            remember(exc)
            raise
        if self.m.died is not None:
            self.fail(f"the filesystem's background work failed: {self.m.died!r}")

    # -- files ------------------------------------------------------------------------

    def do_create(self, data: st.DataObject) -> None:
        path = self.pick(data, "new")
        mode = data.draw(st.sampled_from(FILE_MODES), label="mode")
        buf = payload(data.draw(seeds, label="seed"), data.draw(lengths, label="length"))
        vfs = self.m.vfs

        async def create() -> None:
            fh, _ = await vfs.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            if buf:
                await vfs.fs.write(fh, 0, buf)
            await vfs.close(fh)

        expected = self.tree.new_errno(path)
        self.call(f"create({path!r}, {mode:o}, {len(buf)} bytes)", expected, create)
        if expected is None:
            f = self.tree.nodes[path] = RefFile.created(mode)
            if buf:
                f.changed(buf)
            f.durable()

    def do_write(self, data: st.DataObject) -> None:
        path = self.pick(data, "file", "new")
        offset = data.draw(offsets, label="offset")
        buf = payload(data.draw(seeds, label="seed"), data.draw(lengths, label="length"))
        how = data.draw(
            st.sampled_from(["", "creat", "trunc", "append", "creat|trunc", "creat|append"]),
            label="flags",
        )
        flags = os.O_WRONLY
        flags |= os.O_CREAT if "creat" in how else 0
        flags |= os.O_TRUNC if "trunc" in how else 0
        flags |= os.O_APPEND if "append" in how else 0
        expected = self.tree.open_errno(path, creat="creat" in how, excl=False)
        vfs = self.m.vfs

        async def write() -> None:
            fh, _ = await vfs.open(path, flags)
            if buf and await vfs.fs.write(fh, offset, buf) != len(buf):
                raise AssertionError("short write")
            await vfs.close(fh)

        self.call(f"write({path!r}, {how or '-'}, {len(buf)} at {offset})", expected, write)
        if expected is not None:
            return
        f = self.tree.nodes.get(path)
        wrote = f is None
        if f is None:
            f = self.tree.nodes[path] = RefFile.created(0o644)
        assert isinstance(f, RefFile)
        if "trunc" in how and f.data:
            f.changed(b"")
            wrote = True
        if buf:
            f.write(len(f.data) if "append" in how else offset, buf)
            wrote = True
        if wrote:
            f.durable()

    def do_truncate(self, data: st.DataObject) -> None:
        path = self.pick(data, "file")
        size = data.draw(sizes, label="size")
        by_path = data.draw(st.booleans(), label="by path")
        vfs = self.m.vfs
        err, node = self.tree.get(path)
        if by_path:
            expected = errno.EISDIR if isinstance(node, RefDir) else err
            self.call(f"truncate({path!r}, {size})", expected, lambda: vfs.truncate(path, size))
        else:
            expected = self.tree.open_errno(path, creat=False, excl=False)

            async def ftruncate() -> None:
                fh, ino = await vfs.open(path, os.O_WRONLY)
                await vfs.fs.setattr(ino, size=size)
                await vfs.close(fh)

            self.call(f"ftruncate({path!r}, {size})", expected, ftruncate)
        if expected is None:
            assert isinstance(node, RefFile)
            node.changed(resize(node.data, size))
            node.durable()  # truncate journals the file (files.py), as a close would

    def do_read(self, data: st.DataObject) -> None:
        path = self.pick(data, "file")
        offset, length = data.draw(offsets, label="offset"), data.draw(lengths, label="length")
        vfs = self.m.vfs

        async def read() -> bytes:
            fh, _ = await vfs.open(path, os.O_RDONLY)
            try:
                return bytes(await vfs.fs.read(fh, offset, length))
            finally:
                await vfs.close(fh)

        expected = self.tree.open_errno(path, creat=False, excl=False)
        got = self.call(f"read({path!r}, {length} at {offset})", expected, read)
        f = self.tree.nodes.get(path)
        if expected is None and isinstance(f, RefFile):
            want = f.data[offset : offset + length]
            if got != want:
                self.fail(
                    f"read({path!r}, {length} at {offset}): {describe_diff(want, got or b'')}"
                )

    def do_fsync(self, data: st.DataObject) -> None:
        path = self.pick(data, "file")
        offset = data.draw(offsets, label="offset")
        buf = payload(data.draw(seeds, label="seed"), data.draw(lengths, label="length"))
        expected = self.tree.open_errno(path, creat=False, excl=False)
        vfs = self.m.vfs

        async def fsync() -> None:
            fh, _ = await vfs.open(path, os.O_RDWR)
            if buf:
                await vfs.fs.write(fh, offset, buf)
            await vfs.fs.fsync(fh, False)
            await vfs.close(fh)

        self.call(f"fsync({path!r}, after {len(buf)} at {offset})", expected, fsync)
        f = self.tree.nodes.get(path)
        if expected is None and isinstance(f, RefFile):
            if buf:
                f.write(offset, buf)
            f.committed()

    def do_sync_all(self, data: st.DataObject) -> None:
        self.must("sync_all()", self.m.fs.sync_all)
        for node in self.tree.nodes.values():
            node.committed()

    def do_chmod(self, data: st.DataObject) -> None:
        path = self.pick(data, "file", "dir")
        mode = data.draw(st.sampled_from(FILE_MODES + DIR_MODES), label="mode")
        err, node = self.tree.get(path)
        vfs = self.m.vfs
        self.call(f"chmod({path!r}, {mode:o})", err, lambda: vfs.chmod(path, mode))
        if node is not None:
            node.chmod(mode)

    def do_contents(self, data: st.DataObject) -> None:
        """Every file read whole and compared."""
        got = self.must("read every file", self.read_all)
        for path, f in self.tree.files():
            if got[path] != f.data:
                self.fail(f"content of {path!r}: {describe_diff(f.data, got[path])}")

    async def read_all(self) -> dict[str, bytes]:
        vfs = self.m.vfs
        out = {}
        for path, _ in self.tree.files():
            fh, _ = await vfs.open(path, os.O_RDONLY)
            try:
                out[path] = await vfs.read_all(fh)
            finally:
                await vfs.close(fh)
        return out

    # -- names --------------------------------------------------------------------------

    def do_mkdir(self, data: st.DataObject) -> None:
        path = self.pick(data, "new")
        mode = data.draw(st.sampled_from(DIR_MODES), label="mode")
        expected = self.tree.new_errno(path)
        vfs = self.m.vfs
        self.call(f"mkdir({path!r}, {mode:o})", expected, lambda: vfs.mkdir(path, mode))
        if expected is None:
            self.tree.nodes[path] = RefDir(mode)

    def do_rmdir(self, data: st.DataObject) -> None:
        path = self.pick(data, "dir")
        expected = self.tree.rmdir_errno(path)
        vfs = self.m.vfs
        self.call(f"rmdir({path!r})", expected, lambda: vfs.rmdir(path))
        if expected is None:
            self.tree.remove(path)

    def do_unlink(self, data: st.DataObject) -> None:
        """unlink; with ``keep_open`` the file is open across it, written and read after."""
        path = self.pick(data, "file")
        keep_open = data.draw(st.booleans(), label="keep open")
        expected = self.tree.unlink_errno(path)
        f = self.tree.nodes.get(path) if expected is None else None
        vfs = self.m.vfs
        if not (keep_open and isinstance(f, RefFile)):
            self.call(f"unlink({path!r})", expected, lambda: vfs.unlink(path))
            if expected is None:
                self.tree.remove(path)
            if any(h.file is f for h in self.handles.values()):
                # Its delete waits for the last close: a lost journal may bring it back.
                assert isinstance(f, RefFile)
                self.tree.ghosts.setdefault(path, []).extend(f.in_cos)
                self.tree.ghost_modes.setdefault(path, set()).update(f.cos_modes)
            return
        end = len(f.data)

        async def unlink_open() -> bytes:
            fh, _ = await vfs.open(path, os.O_RDWR)
            try:
                await vfs.fs.unlink(*(await vfs.parent(path)))
                await vfs.fs.write(fh, end, TAIL)
                return await vfs.read_all(fh)
            finally:
                await vfs.close(fh)

        got = self.must(f"unlink({path!r}) open, then write and read", unlink_open)
        self.tree.remove(path)
        if got != f.data + TAIL:
            self.fail(f"unlinked open file {path!r}: {describe_diff(f.data + TAIL, got)}")
        if any(h.file is f for h in self.handles.values()):
            # Held open still: its delete waits for the last close, and a lost
            # journal may bring it back.
            self.tree.ghosts.setdefault(path, []).extend(f.in_cos)
            self.tree.ghost_modes.setdefault(path, set()).update(f.cos_modes)
        f.write(end, TAIL)  # a descriptor still held on it reads the tail too

    def do_rename(self, data: st.DataObject) -> None:
        """rename; with ``keep_open`` a file is open across it and written after."""
        src = self.pick(data, "file", "dir")
        dst = self.pick(data, "new", "file", "dir")
        keep_open = data.draw(st.booleans(), label="keep open")
        expected = self.tree.rename_errno(src, dst)
        f = self.tree.nodes.get(src)
        vfs = self.m.vfs
        if not (keep_open and isinstance(f, RefFile)):
            self.call(f"rename({src!r}, {dst!r})", expected, lambda: vfs.rename(src, dst))
            if expected is None:
                self.tree.rename(src, dst)
            return
        end = len(f.data)

        async def rename_open() -> None:
            fh, _ = await vfs.open(src, os.O_RDWR)
            try:
                try:
                    await vfs.rename(src, dst)
                except FsError as exc:
                    if exc.errno != expected:
                        raise
                await vfs.fs.write(fh, end, TAIL)
            finally:
                await vfs.close(fh)

        self.call(f"rename({src!r}, {dst!r}) open, then write", None, rename_open)
        if expected is None:
            self.tree.rename(src, dst)
        f.write(end, TAIL)
        f.durable()

    # -- handles kept open across steps -----------------------------------------------

    def held(self, data: st.DataObject) -> Handle | None:
        index = data.draw(st.integers(0, 255), label="handle")
        if not self.handles:
            STATS["(no handle open)"] += 1
            return None
        return self.handles[sorted(self.handles)[index % len(self.handles)]]

    def do_hopen(self, data: st.DataObject) -> None:
        path = self.pick(data, "file")
        append = data.draw(st.booleans(), label="append")
        flags = os.O_RDWR | (os.O_APPEND if append else 0)
        expected = self.tree.open_errno(path, creat=False, excl=False)
        vfs = self.m.vfs
        opened = self.call(
            f"hopen({path!r}{', append' if append else ''})",
            expected,
            lambda: vfs.open(path, flags),
        )
        f = self.tree.nodes.get(path)
        if opened is not None and isinstance(f, RefFile):
            self.handles[self.next_handle] = Handle(*opened, f, append)
            self.log.append(f"  = handle {self.next_handle}")
            self.next_handle += 1

    def do_hwrite(self, data: st.DataObject) -> None:
        h = self.held(data)
        offset = data.draw(offsets, label="offset")
        buf = payload(data.draw(seeds, label="seed"), data.draw(lengths, label="length"))
        if h is None:
            return
        fs = self.m.fs
        n = self.must(
            f"hwrite(fh {h.fh}, {len(buf)} at {offset})", lambda: fs.write(h.fh, offset, buf)
        )
        if n != len(buf):
            self.fail(f"short write: {n} of {len(buf)}")
        if buf:  # writing nothing changes nothing, not even the size (POSIX)
            h.file.write(len(h.file.data) if h.append else offset, buf)
        h.wrote = h.wrote or bool(buf)

    def do_hread(self, data: st.DataObject) -> None:
        h = self.held(data)
        offset, length = data.draw(offsets, label="offset"), data.draw(lengths, label="length")
        if h is None:
            return
        fs = self.m.fs
        got = self.must(
            f"hread(fh {h.fh}, {length} at {offset})", lambda: fs.read(h.fh, offset, length)
        )
        got = bytes(got)
        want = h.file.data[offset : offset + length]
        if got != want:
            self.fail(f"hread(fh {h.fh}, {length} at {offset}): {describe_diff(want, got)}")

    def do_hclose(self, data: st.DataObject) -> None:
        h = self.held(data)
        if h is None:
            return
        self.close_handle(h)

    def close_handle(self, h: Handle) -> None:
        vfs = self.m.vfs
        self.must(f"hclose(fh {h.fh})", lambda: vfs.close(h.fh))
        del self.handles[next(i for i, x in self.handles.items() if x is h)]
        if h.wrote and any(n is h.file for n in self.tree.nodes.values()):
            h.file.durable()

    def do_stream(self, data: st.DataObject) -> None:
        """A file over 1 MiB written front to back through one descriptor (as cp
        does), its parts streamed to COS meanwhile; now and then a write goes back
        below the part sent (a header fixed up at the end)."""
        path = self.pick(data, "file", "new")
        size = data.draw(st.integers(MIN_PART + 1, 2 * MIN_PART + 300_000), label="size")
        body = payload(data.draw(seeds, label="seed"), size)
        patch_after = data.draw(st.sampled_from([None, MIN_PART, 2 * MIN_PART]), label="patch")
        patch_at = data.draw(st.integers(0, MIN_PART), label="patch offset")
        patch = payload(data.draw(seeds, label="seed"), data.draw(lengths, label="length"))
        expected = self.tree.open_errno(path, creat=True, excl=False)
        vfs = self.m.vfs

        async def stream() -> None:
            fh, _ = await vfs.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            try:
                for at in range(0, size, STREAM_CHUNK):
                    await vfs.fs.write(fh, at, body[at : at + STREAM_CHUNK])
                    if at + STREAM_CHUNK == patch_after and patch:
                        await vfs.fs.write(fh, patch_at, patch)
            finally:
                await vfs.close(fh)

        patched = patch_after is not None and patch_after < size and bool(patch)
        what = f"stream({path!r}, {size} bytes{f', {len(patch)} at {patch_at}' if patched else ''})"
        self.call(what, expected, stream)
        if expected is not None:
            return
        f = self.tree.nodes.get(path)
        if f is None:
            f = self.tree.nodes[path] = RefFile.created(0o644)
        assert isinstance(f, RefFile)
        # Every state on the way may have been caught by a journal record or an upload.
        f.changed(b"")
        for at in range(0, size, STREAM_CHUNK):
            f.write(at, body[at : at + STREAM_CHUNK])
            if at + STREAM_CHUNK == patch_after and patch:
                f.write(patch_at, patch)
        f.durable()

    def do_race(self, data: st.DataObject) -> None:
        """Writes to disjoint ranges of one file at once, and its fsync, a sync_all
        or a close (flush) at the same time; then close: every write is there."""
        path = self.pick(data, "file")
        at = data.draw(offsets, label="offset")
        writes = []
        for i in range(data.draw(st.integers(1, 3), label="writes")):
            length = data.draw(race_lengths, label="length")
            writes.append((at, payload(data.draw(seeds, label="seed") + i, length)))
            at += length + data.draw(st.integers(0, 5000), label="gap")
        other = data.draw(st.sampled_from(["fsync", "sync_all", "flush", "-"]), label="with")
        first = data.draw(st.booleans(), label="other first")
        expected = self.tree.open_errno(path, creat=False, excl=False)
        vfs = self.m.vfs

        async def race() -> None:
            fh, _ = await vfs.open(path, os.O_RDWR)
            try:
                jobs: list[Callable[[], Awaitable[object]]] = [
                    functools.partial(vfs.fs.write, fh, o, b) for o, b in writes
                ]
                extra: Callable[[], Awaitable[object]] | None = {
                    "fsync": lambda: vfs.fs.fsync(fh, False),
                    "sync_all": vfs.fs.sync_all,
                    "flush": lambda: vfs.fs.flush(fh),
                }.get(other)
                if extra is not None:
                    jobs.insert(0 if first else len(jobs), extra)
                async with trio.open_nursery() as nursery:
                    for job in jobs:
                        nursery.start_soon(job)
            finally:
                await vfs.close(fh)

        spans = ", ".join(f"{len(b)} at {o}" for o, b in writes)
        self.call(f"race({path!r}: {spans}; {other})", expected, race)
        f = self.tree.nodes.get(path)
        if expected is not None or not isinstance(f, RefFile):
            return
        start = f.data
        # COS may hold the file with any of the writes done when the upload sealed it.
        for k in range(len(writes) + 1):
            for done in itertools.combinations(writes, k):
                state = start
                for o, b in done:
                    state = put_bytes(state, o, b)
                f.in_cos.append(state)
        for o, b in writes:
            f.write(o, b)
        f.durable()
        got = self.must(f"read-back({path!r}) after the race", lambda: self.read_one(path))
        if got != f.data:
            self.fail(f"after race({path!r}): {describe_diff(f.data, got)}")

    async def read_one(self, path: str) -> bytes:
        vfs = self.m.vfs
        fh, _ = await vfs.open(path, os.O_RDONLY)
        try:
            return await vfs.read_all(fh)
        finally:
            await vfs.close(fh)

    # -- crashes and remounts ---------------------------------------------------------

    def do_crash(self, data: st.DataObject) -> None:
        """The process dies; a new one recovers from the same cache directory."""
        verify = data.draw(st.booleans(), label="read everything")
        self.crash("crash", keep_cache=True)
        self.resolve(keep_cache=True, read_all=verify)

    def do_crash_lose_cache(self, data: st.DataObject) -> None:
        """The process dies and its cache directory is lost: COS is all there is."""
        self.must("deletes sent", self.m.deletes_sent)
        self.crash("crash_lose_cache", keep_cache=False)
        self.resolve(keep_cache=False, read_all=True)

    def crash(self, what: str, *, keep_cache: bool) -> None:
        self.crashes += 1
        files, records = self.m.dirty()
        STATS[what] += 1
        if files or records:
            STATS["crash with dirty data"] += 1
            STATS[f"dirty data at {what}"] += 1
        if records:
            STATS["crash with journal records"] += 1
        self.log.append(f"{what} ({files} dirty files, {records} journal records)")
        self.loop.run(self.m.crash)
        self.mount = None
        self.handles.clear()  # gone with the process
        self.new_mount(keep_cache=keep_cache)

    def do_remount(self, data: st.DataObject) -> None:
        """A clean unmount (handles closed, everything synced) and a mount on a fresh
        cache: everything is in COS, exactly."""
        for h in list(self.handles.values()):
            self.close_handle(h)
        self.must("sync_all() at unmount", self.m.fs.sync_all)
        self.must("deletes sent", self.m.deletes_sent)
        self.crashes += 1
        STATS["remount"] += 1
        self.log.append("remount")
        self.loop.run(self.m.crash)
        self.new_mount(keep_cache=False)
        self.tree.settle()
        self.do_contents(data)

    def resolve(self, *, keep_cache: bool, read_all: bool) -> None:
        """Compare the tree a crash left with the states allowed; adopt what is seen."""
        which = "crash" if keep_cache else "crash_lose_cache"
        seen = self.must(f"walk the tree after {which}", self.walk)
        contents = self.must("read the files", lambda: self.read_paths(seen, read_all, keep_cache))
        for path in sorted(set(self.tree.nodes) | set(seen)):
            node, got = self.tree.nodes.get(path), seen.get(path)
            if not path or (node is None and path not in seen):
                continue
            if isinstance(node, RefDir) or (got is not None and got[0]):
                if not isinstance(node, RefDir) or got is None or not got[0]:
                    self.fail(f"after {which}: {path!r} is {got}, expected {node}")
                self.adopt_mode(which, path, node, keep_cache, got[1])
                continue
            states = [] if node is None else node.journaled if keep_cache else node.in_cos
            if not keep_cache:
                states = states + self.tree.ghosts.get(path, [])
            if got is None:
                if None not in states:
                    self.fail(f"after {which}: file {path!r} is missing")
                self.tree.remove(path)
                continue
            allowed = [s for s in states if s is not None]
            data = contents.get(path)
            if data is None:  # not read: the only allowed state of its size
                data = next(s for s in allowed if len(s) == got[2])
            if data not in allowed:
                latest = describe_diff(allowed[-1], data) if allowed else "never written"
                self.fail(
                    f"after {which}: {path!r} is none of {len(allowed)} allowed states "
                    f"(vs the latest: {latest})"
                )
            if node is None:  # an unlinked file back from COS
                node = self.tree.nodes[path] = RefFile(data, got[1], [], [], {got[1]}, {got[1]})
            assert isinstance(node, RefFile)
            node.data = data
            # A file unlinked while open may be back with its own mode (its
            # held delete was lost with the cache, or handed to this one).
            ghost = self.tree.ghost_modes.get(path, set()) if not keep_cache else set()
            self.adopt_mode(which, path, node, keep_cache, got[1], ghost)
        if not keep_cache:
            self.leftovers |= set(self.tree.ghosts)
        self.tree.settle()  # recovery uploaded what the journal held before going live

    def adopt_mode(
        self,
        which: str,
        path: str,
        node: RefFile | RefDir,
        keep_cache: bool,
        mode: int,
        also: frozenset[int] | set[int] = frozenset(),
    ) -> None:
        modes = (node.crash_modes if keep_cache else node.cos_modes) | also
        if mode not in modes:
            self.fail(f"after {which}: {path!r} mode {mode:o}, allowed {sorted(map(oct, modes))}")
        node.mode = mode

    async def walk(self) -> dict[str, tuple[bool, int, int]]:
        """Every path of the filesystem -> (is a directory, permission bits, size)."""
        vfs = self.m.vfs
        out: dict[str, tuple[bool, int, int]] = {}
        todo = [""]
        while todo:
            d = todo.pop()
            for name in await vfs.listdir(d):
                path = f"{d}/{name}" if d else name
                e = await vfs.entry(path)
                out[path] = (stat.S_ISDIR(e.mode), stat.S_IMODE(e.mode), e.size)
                if stat.S_ISDIR(e.mode):
                    todo.append(path)
        return out

    async def read_paths(
        self, seen: dict[str, tuple[bool, int, int]], every: bool, keep_cache: bool
    ) -> dict[str, bytes]:
        """The files found, read; unless ``every``, only those their size cannot tell."""
        out = {}
        for path, (is_dir, _, size) in seen.items():
            node = self.tree.nodes.get(path)
            if is_dir:
                continue
            if not every and isinstance(node, RefFile):
                states = node.journaled if keep_cache else node.in_cos
                if len({s for s in states if s is not None and len(s) == size}) == 1:
                    continue
            out[path] = await self.read_one(path)
        return out

    # -- after every step ---------------------------------------------------------------

    @invariant()
    def tree_matches(self) -> None:
        """Listings, names, types, sizes, modes; then the kernel may forget its lookups."""
        if self.mount is None:
            return
        problems = self.loop.run(self.compare_tree)
        if problems:
            self.fail("; ".join(problems))

    async def compare_tree(self) -> list[str]:
        vfs, tree = self.m.vfs, self.tree
        problems: list[str] = []
        for d in tree.dirs():
            got = sorted(await vfs.listdir(d))
            if got != tree.children(d):
                problems.append(f"listdir({d!r}) = {got}, expected {tree.children(d)}")
            for name in NAMES:
                path = f"{d}/{name}" if d else name
                node = tree.nodes.get(path)
                try:
                    e = await vfs.entry(path)
                except FsError as exc:
                    if node is not None or exc.errno != errno.ENOENT:
                        problems.append(f"stat({path!r}): {ename(exc.errno)}, expected {node}")
                    continue
                if node is None:
                    problems.append(
                        f"stat({path!r}) found {stat.filemode(e.mode)}, expected ENOENT"
                    )
                elif isinstance(node, RefDir) != stat.S_ISDIR(e.mode):
                    problems.append(f"{path!r} is {stat.filemode(e.mode)}, expected {node}")
                elif isinstance(node, RefFile) and e.size != len(node.data):
                    problems.append(f"{path!r}: size {e.size}, expected {len(node.data)}")
                elif stat.S_IMODE(e.mode) != node.mode or e.nlink != 1:
                    problems.append(
                        f"{path!r}: mode {e.mode:o} nlink {e.nlink}, expected {node.mode:o}"
                    )
        problems += await self.orphans()
        if self.forget:
            vfs.forget({h.ino for h in self.handles.values()})
        return problems

    async def orphans(self) -> list[str]:
        """Every object under the mount's prefix is a name of the reference, or its
        delete is pending: else a crash or a listing would bring a removed name back
        (an object outliving its delete), whether or not a crash comes at the right
        moment to show it."""
        fs = self.m.fs
        prefix, deleter = fs.ctx.options.prefix, fs.ctx.deleter
        problems = []
        async for page in fs.ctx.store.list_all(prefix):
            for obj in page.objects:
                rest = obj.key[len(prefix) :]
                if not rest or rest.startswith(f"{COMPANION_DIR}/") or rest.endswith(INDEX_NAME):
                    continue
                path, is_dir = rest.removesuffix("/"), rest.endswith("/")
                if path in self.leftovers and not is_dir:
                    continue
                node = self.tree.nodes.get(path)
                if (node is None or isinstance(node, RefDir) != is_dir) and not (
                    deleter.is_pending(obj.key)
                ):
                    problems.append(f"object {obj.key!r} is in COS, no delete pending, for {node}")
        return problems


# -- the test ----------------------------------------------------------------------------


def _seed() -> int:
    value = os.environ.get("COSENCFS_FSMODEL_SEED", "").strip()
    if value == "random":
        return random.SystemRandom().randrange(2**32)
    return int(value) if value else 0


def replay_command(seed: int, blob: str | None) -> str:
    env = [
        f"COSENCFS_FSMODEL_SEED={seed}",
        f"COSENCFS_FSMODEL_EXAMPLES={EXAMPLES}",
        f"COSENCFS_FSMODEL_STEPS={STEPS}",
        f"COSENCFS_FSMODEL_CRASHES={CRASHES}",
        *([f"COSENCFS_FSMODEL_BLOB='{blob}'"] if blob else []),
    ]
    return (
        " ".join(env)
        + " .venv/bin/python -m pytest -p no:cacheprovider tests/model/test_fs_model.py"
    )


@pytest.mark.timeout(0 if not CI_BUDGET else 600)
def test_filesystem_model(
    tmp_path: Path, codec: EnvelopeCodec, capsys: pytest.CaptureFixture[str]
) -> None:
    ledger_file = Path(os.environ[ledger.ENV])
    ledger_start = ledger_file.stat().st_size if ledger_file.exists() else 0
    STATS.clear()
    FIRST_FAILURE.clear()
    started = time.monotonic()
    seed = _seed()
    machine: Any = type(
        "FsModel", (FsMachine,), {"tmp_root": tmp_path, "codec": codec, "max_crashes": CRASHES}
    )
    machine = seeded_machine(machine, seed, "COSENCFS_FSMODEL_BLOB")
    blob = os.environ.get("COSENCFS_FSMODEL_BLOB", "").strip()
    conf = model_settings(EXAMPLES, STEPS, shrink=SHRINK)
    try:
        run_state_machine_as_test(machine, settings=conf)
    except BaseException as exc:
        msg = f"replay with: {replay_command(seed, _blob_of(exc))}"
        if isinstance(exc, Exception):
            if FIRST_FAILURE:
                msg = f"first failure seen:\n{FIRST_FAILURE[0]}\n{msg}"
            exc.add_note(msg)
        raise
    finally:
        with capsys.disabled():
            print(
                f"\nfilesystem model: seed {seed}, {EXAMPLES} examples x {STEPS} steps at most,"
                f" {time.monotonic() - started:.0f} s"
            )
            print("mix:", ", ".join(f"{k} x{v}" for k, v in sorted(STATS.items())))
    part = tmp_path / "ledger-slice.bin"
    part.write_bytes(ledger_file.read_bytes()[ledger_start:])
    report = ledger.check(part)
    assert report.records, str(report)
    assert not report.violations, str(report)
    if CI_BUDGET and not blob:
        assert STATS["(steps)"] >= MIN_STEPS, STATS
        assert STATS["crash with dirty data"] >= MIN_DIRTY_CRASHES, STATS
