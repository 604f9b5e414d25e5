"""The rig of the Filesystem model test: an event loop, mounts without FUSE, a small VFS.

``Loop`` runs trio in a thread of its own, so the Hypothesis state machine
(synchronous) drives it step by step while the filesystem's background
work (write-back, deletes) goes on between steps, as in a mount.

``FsMount`` is one Filesystem over a cache directory, started as
``cosencfs mount`` starts it (recover, then the background workers) and
ended by a *crash*: its nursery cancelled without flushing, the cache
manager closed without uploading; the next one opens the same directory.

``Vfs`` does what the kernel does between a system call and the Filesystem:
walks paths with lookups (and keeps their counts, to forget them as a
kernel does), checks what the VFS checks itself (EEXIST on O_EXCL, ENOTDIR,
EISDIR, a rename into itself), then calls the one Filesystem method.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
import threading
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any, TypeVar

import trio

from cosencfs.cache.manager import CacheManager
from cosencfs.crypto.envelope import EnvelopeCodec
from cosencfs.errors import FsError
from cosencfs.fs.context import FsOptions
from cosencfs.fs.core import Filesystem
from cosencfs.fs.entry import Entry
from cosencfs.fs.recovery import RecoveryReport
from cosencfs.store.base import ObjectStore

T = TypeVar("T")
ROOT = 1


class Hung(AssertionError):
    """A call did not return within the step timeout (a deadlock or a livelock)."""


class _Stop(BaseException):
    """Thrown into a loop that never yields: not an Exception, so that no
    ``except Exception`` of the filesystem (a write-back retry) keeps it going."""


class Loop:
    """A trio event loop in a thread; ``run`` calls an async function in it and waits.

    A call that does not return within ``timeout`` s fails with ``Hung`` and
    ends the loop: its tasks are cancelled, and if the thread still runs
    (a loop that never yields) an exception is thrown into it, so that a
    hang fails one example instead of stopping the whole test.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        #: Set once a call hung: nothing more runs in this loop.
        self.wedged = False
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._thread_main, daemon=True)
        self._thread.start()
        self._ready.wait()

    def _thread_main(self) -> None:
        try:
            trio.run(self._main)
        except BaseException:  # after a hang the failure is reported already
            if not self.wedged:
                raise

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        async with trio.open_nursery() as self.nursery:
            self._ready.set()
            await self._stop.wait()
            self.nursery.cancel_scope.cancel()

    def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        if self.wedged:
            raise Hung("the event loop hung in an earlier call")
        done: Future[T] = Future()

        async def call() -> None:
            try:
                done.set_result(await fn(*args))
            except Exception as exc:
                done.set_exception(exc)
            except BaseException as exc:
                done.set_exception(exc)
                raise

        self._token.run_sync_soon(self.nursery.start_soon, call)
        try:
            return done.result(self.timeout)
        except FutureTimeout:
            self._end_wedged()
            raise Hung(f"no answer within {self.timeout:g} s") from None

    def _end_wedged(self) -> None:
        self.wedged = True
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(self.nursery.cancel_scope.cancel)
        self._thread.join(5)
        ident = self._thread.ident
        for _ in range(100):
            if not self._thread.is_alive() or ident is None:
                return
            ctypes.pythonapi.PyThreadState_SetAsyncExc(
                ctypes.c_ulong(ident), ctypes.py_object(_Stop)
            )
            self._thread.join(0.1)

    def close(self) -> None:
        if self._thread.is_alive():
            with contextlib.suppress(trio.RunFinishedError):
                self._token.run_sync_soon(self._stop.set)
        self._thread.join(30)


class FsMount:
    """One Filesystem over ``cache_dir``, as a mount runs it."""

    def __init__(
        self,
        store: ObjectStore,
        codec: EnvelopeCodec,
        cache_dir: Path,
        options: FsOptions,
        cache_limit: int,
    ) -> None:
        self.cache = CacheManager(cache_dir, store, limit_bytes=cache_limit)
        self.cache_dir = cache_dir
        self.fs = Filesystem(store, codec, self.cache, options)
        self.vfs = Vfs(self.fs)
        #: What made the background work fail, if it did (a finding).
        self.died: BaseException | None = None
        self._scope = trio.CancelScope()
        self._done = trio.Event()

    async def start(self, nursery: trio.Nursery) -> RecoveryReport:
        """Recover what the last run left, then start the background work (as mount.py)."""
        report = await self.fs.recover()
        await nursery.start(self._serve)
        return report

    async def _serve(self, *, task_status: trio.TaskStatus[None]) -> None:
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    await self.fs.start(nursery)
                    task_status.started()
                    await trio.sleep_forever()
        except Exception as exc:
            self.died = exc
        finally:
            self._done.set()

    async def crash(self) -> None:
        """The process is gone: no flush, no upload, nothing more from this mount."""
        self._scope.cancel()
        await self._done.wait()
        # What the journal has not written yet is lost; its log is not.
        self.cache.journal._ahead.abandon()
        self.cache.close()

    def dirty(self) -> tuple[int, int]:
        """(dirty files, journal records) now, writing nothing: records logged and
        not yet applied to SQLite stay so for the crash that follows (counted
        once each, and those applied: an upper bound)."""
        journal = self.cache.journal
        applied = journal._db.execute("SELECT COUNT(*) FROM dirty").fetchone()[0]
        return len(self.fs.dirty_inodes()), int(applied) + len(journal._ahead)

    async def deletes_sent(self, patience: float = 0.6) -> None:
        """Wait until queued deletes are in COS: none pending, or none sent for
        ``patience`` s (those left wait for the last close of an unlinked file)."""
        last, since = -1, trio.current_time()
        while True:
            stats = self.fs.stats()["deletes"]
            assert isinstance(stats, dict)
            pending = int(stats["pending"])
            if pending != last:
                last, since = pending, trio.current_time()
            if not pending or trio.current_time() - since > patience:
                return
            await trio.sleep(0.01)


def fail(code: int) -> FsError:
    return FsError(code, os.strerror(code))


class Vfs:
    """The kernel's part: path walks and the checks the VFS makes itself."""

    def __init__(self, fs: Filesystem) -> None:
        self.fs = fs
        self.uid, self.gid = os.getuid(), os.getgid()
        self.lookups: Counter[int] = Counter()

    def counted(self, entry: Entry) -> Entry:
        self.lookups[entry.ino] += 1
        return entry

    def forget(self, keep: set[int]) -> None:
        """Drop the lookups of every inode but ``keep`` (the kernel dropping its dentries)."""
        self.fs.forget([(ino, n) for ino, n in self.lookups.items() if ino not in keep])
        self.lookups = Counter({ino: n for ino, n in self.lookups.items() if ino in keep})

    async def parent(self, path: str) -> tuple[int, bytes]:
        """(directory inode, last name) of ``path``."""
        *dirs, name = path.split("/")
        ino = ROOT
        for part in dirs:
            entry = self.counted(await self.fs.lookup(ino, part.encode()))
            if not stat.S_ISDIR(entry.mode):
                raise fail(errno.ENOTDIR)
            ino = entry.ino
        return ino, name.encode()

    async def child(self, path: str) -> tuple[int, bytes, Entry | None]:
        parent, name = await self.parent(path)
        try:
            return parent, name, self.counted(await self.fs.lookup(parent, name))
        except FsError as exc:
            if exc.errno != errno.ENOENT:
                raise
            return parent, name, None

    async def entry(self, path: str) -> Entry:
        if not path:
            return await self.fs.getattr(ROOT)
        _, _, entry = await self.child(path)
        if entry is None:
            raise fail(errno.ENOENT)
        return await self.fs.getattr(entry.ino)

    async def open(self, path: str, flags: int, mode: int = 0o644) -> tuple[int, int]:
        """(handle, inode) of ``open(path, flags, mode)``."""
        parent, name, entry = await self.child(path)
        if entry is None:
            if not flags & os.O_CREAT:
                raise fail(errno.ENOENT)
            fh, entry = await self.fs.create(parent, name, mode, flags, self.uid, self.gid)
            return fh, self.counted(entry).ino
        if flags & os.O_CREAT and flags & os.O_EXCL:
            raise fail(errno.EEXIST)
        if stat.S_ISDIR(entry.mode):
            raise fail(errno.EISDIR)
        fh, _ = await self.fs.open(entry.ino, flags & ~(os.O_CREAT | os.O_EXCL))
        return fh, entry.ino

    async def close(self, fh: int) -> None:
        await self.fs.flush(fh)
        await self.fs.release(fh)

    async def read_all(self, fh: int, chunk: int = 128 * 1024) -> bytes:
        out = bytearray()
        while data := await self.fs.read(fh, len(out), chunk):
            out += data
        return bytes(out)

    async def mkdir(self, path: str, mode: int) -> None:
        parent, name, entry = await self.child(path)
        if entry is not None:
            raise fail(errno.EEXIST)
        self.counted(await self.fs.mkdir(parent, name, mode, self.uid, self.gid))

    async def rmdir(self, path: str) -> None:
        parent, name, entry = await self.child(path)
        if entry is None:
            raise fail(errno.ENOENT)
        if not stat.S_ISDIR(entry.mode):
            raise fail(errno.ENOTDIR)
        await self.fs.rmdir(parent, name)

    async def unlink(self, path: str) -> None:
        parent, name, entry = await self.child(path)
        if entry is None:
            raise fail(errno.ENOENT)
        if stat.S_ISDIR(entry.mode):
            raise fail(errno.EISDIR)
        await self.fs.unlink(parent, name)

    async def rename(self, src: str, dst: str) -> None:
        sparent, sname = await self.parent(src)
        dparent, dname = await self.parent(dst)
        _, _, sentry = await self.child(src)
        if sentry is None:
            raise fail(errno.ENOENT)
        if src == dst:
            return
        if dst.startswith(src + "/"):
            raise fail(errno.EINVAL)
        if src.startswith(dst + "/"):
            raise fail(errno.ENOTEMPTY)
        _, _, dentry = await self.child(dst)
        if dentry is not None and stat.S_ISDIR(sentry.mode) != stat.S_ISDIR(dentry.mode):
            raise fail(errno.ENOTDIR if stat.S_ISDIR(sentry.mode) else errno.EISDIR)
        await self.fs.rename(sparent, sname, dparent, dname, 0)

    async def chmod(self, path: str, mode: int) -> None:
        await self.fs.setattr((await self.entry(path)).ino, mode=mode)

    async def truncate(self, path: str, size: int) -> None:
        entry = await self.entry(path)
        if stat.S_ISDIR(entry.mode):
            raise fail(errno.EISDIR)
        await self.fs.setattr(entry.ino, size=size)

    async def listdir(self, path: str) -> list[str]:
        entry = await self.entry(path)
        if not stat.S_ISDIR(entry.mode):
            raise fail(errno.ENOTDIR)
        dh = await self.fs.opendir(entry.ino)
        try:
            names = []
            for name, child, _ in self.fs.readdir(dh, 0):
                self.fs.readdir_looked_up(child.ino)
                self.counted(child)
                names.append(name.decode())
            return names
        finally:
            await self.fs.releasedir(dh)
