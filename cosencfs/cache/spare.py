"""Empty cache files made ahead of need, in a worker thread.

Every new file written through the mount gets a cache file (its upload
copy, cosencfs/cache/manager.py), and so does every object fetched. Making a
file is the filesystem's costliest metadata operation: on the benchmark
machine's ext4 an ``open(O_CREAT | O_EXCL)`` took 150-900 us of kernel CPU,
a quarter of the daemon's event loop per small file created (docs/
performance.md, "Small files"). The event loop is the daemon's one thread
doing FUSE requests, so that time comes straight off files per second.

Here files are made in batches by a worker thread, while the loop does
other work, and handed out empty: ``take`` returns the name of a file that
exists, is empty, has mode 0600 and was created by this process with
``O_EXCL`` in the private data directory (nobody else wrote it). A file
handed out is never handed out again. Files still spare at exit are
removed by ``close``; after a crash, by the start-up sweep of files nothing
names (``CacheManager.sweep_orphans``).

Deleting a file costs the loop as much (an ``unlink`` of a small file took
about 200 us on the same machine): clean copies the cache evicts (beyond
``max_unread`` new files' copies never read, one per file created) are
``dispose``d here and unlinked by a worker thread too, in batches of
whatever came while the previous batch ran; the sweep keeps its hands off
them, ``close`` deletes what is left.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from pathlib import Path

import trio

from cosencfs.cache.layout import new_vid

log = logging.getLogger(__name__)

#: Files made per batch, and the count under which a new batch starts.  Under
#: load a file made in the cache directory took the thread 1-3 ms, and with 16
#: left (2.3 ms of the loop per file created) 2-4 % of the creates found none
#: ready and made their file on the loop (create_cpu, load 6.5: 42-84 of 2000).
BATCH = 64
LOW = 64

_FLAGS = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_CREAT | os.O_EXCL


def make_files(data_dir: Path, vids: list[str]) -> list[str]:
    """Create empty private files of these names; the ones made (all, unless an error).

    Worker thread: touches only the files it is given, no shared state.
    """
    out = []
    for vid in vids:
        try:
            os.close(os.open(data_dir / vid, _FLAGS, 0o600))
        except OSError as exc:  # a full disk: copies are made one by one as before
            log.debug("spare cache files not made: %s", exc)
            break
        out.append(vid)
    return out


def remove_files(paths: list[str]) -> None:
    """Unlink these cache files (worker thread: touches only the files it is given)."""
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:  # the start-up sweep deletes it next time
            log.debug("cache file %s not removed: %s", path, exc)


class SpareFiles:
    """A few empty cache files, ready for the next copies (event loop only)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._ready: deque[str] = deque()
        #: Names a worker thread is creating now (the start-up sweep keeps them).
        self._pending: frozenset[str] = frozenset()
        self._filling = False
        self._closed = False
        #: Files handed out, and asks that found none ready (stats, tests).
        self.taken = 0
        self.missed = 0
        #: Files to delete (``dispose``: name -> path), and the names being deleted now.
        self._trash: dict[str, str] = {}
        self._emptying: frozenset[str] = frozenset()
        self._emptier = False

    def take(self) -> str | None:
        """The name of an empty file made for this, or None (make one yourself)."""
        vid = self._ready.popleft() if self._ready else None
        if vid is None:
            self.missed += 1
        else:
            self.taken += 1
        if len(self._ready) < LOW and not self._filling and not self._closed:
            self._start_fill()
        return vid

    def prime(self) -> None:
        """Start making the first batch now (the mount starts), not at the first copy."""
        if not self._ready and not self._filling and not self._closed:
            self._start_fill()

    def _start_fill(self) -> None:
        try:
            trio.lowlevel.current_task()
        except RuntimeError:
            return  # not in the event loop (tools, tests without trio): no spares
        # Checked and set with no await in between: one batch at a time.
        self._filling = True
        self._pending = frozenset(new_vid() for _ in range(BATCH))
        trio.lowlevel.spawn_system_task(self._fill, name="cosencfs-spare-files")

    async def _fill(self) -> None:
        try:
            vids = await trio.to_thread.run_sync(make_files, self.data_dir, list(self._pending))
        except Exception as exc:
            self._filling, self._pending = False, frozenset()
            log.debug("spare cache files not made: %s", exc)
            return
        except BaseException:  # cancelled (the mount ends): the sweep takes the files
            self._filling, self._pending = False, frozenset()
            raise
        self._filling, self._pending = False, frozenset()
        if self._closed:
            self._remove(vids)
        else:
            self._ready.extend(vids)

    def dispose(self, path: str) -> None:
        """Delete the cache file at ``path`` (nobody uses it any more) soon, off the loop."""
        self._trash[os.path.basename(path)] = path
        if self._emptier:
            return  # goes with the next batch, when this one is done
        try:
            trio.lowlevel.current_task()
        except RuntimeError:
            self._empty_now()  # not in the event loop (tools, tests without trio)
            return
        if self._closed:
            self._empty_now()
            return
        # Checked and set with no await in between: one emptier at a time.
        self._emptier = True
        trio.lowlevel.spawn_system_task(self._empty, name="cosencfs-cache-trash")

    async def _empty(self) -> None:
        try:
            while self._trash and not self._closed:
                # Set with no await since the check: the sweep skips these names.
                batch, self._trash = self._trash, {}
                self._emptying = frozenset(batch)
                try:
                    await trio.to_thread.run_sync(remove_files, list(batch.values()))
                except Exception as exc:  # (a system task must not fail the mount)
                    log.warning("cache files not removed: %s", exc)
        finally:
            self._emptier, self._emptying = False, frozenset()

    @property
    def disposing(self) -> int:
        """Files disposed of and not deleted yet (tests, stats)."""
        return len(self._trash) + len(self._emptying)

    def _empty_now(self) -> None:
        batch, self._trash = self._trash, {}
        remove_files(list(batch.values()))

    def __contains__(self, vid: str) -> bool:
        """Whether ``vid`` is a spare file (or one being made, or deleted): not an orphan."""
        return (
            vid in self._pending
            or vid in self._ready
            or vid in self._emptying
            or vid in self._trash
        )

    def close(self) -> None:
        """Remove the files not handed out, and those disposed of not deleted yet."""
        self._closed = True
        vids, self._ready = list(self._ready), deque()
        self._remove(vids)
        self._empty_now()

    def _remove(self, vids: list[str]) -> None:
        for vid in vids:
            try:
                os.unlink(self.data_dir / vid)
            except OSError:
                pass
