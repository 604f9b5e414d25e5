"""One mount's life in the event loop: check, mount, serve, flush, unmount.

Everything that can fail is checked before the mount goes live (key file,
credentials, bucket, cache directory, mountpoint), and — without
``--foreground`` — before the process detaches (``daemon``), so ``cosencfs
mount`` exits non-zero with the reason instead of leaving a daemon that failed.

When the kernel connection ends (``fusermount3 -u``, ``cosencfs umount``,
SIGTERM/SIGINT), every dirty file is uploaded before the process exits;
whatever cannot be uploaded stays in the cache journal and the exit status
says so.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable

import pyfuse3
import trio

from cosencfs.cache.manager import CacheManager
from cosencfs.config import MountSettings
from cosencfs.crypto.keyfiles import load_codec
from cosencfs.errors import CosEncFsError, TransientError
from cosencfs.fs.attrs import Defaults
from cosencfs.fs.context import FsOptions
from cosencfs.fs.core import Filesystem
from cosencfs.fuse_ops import ControlledOperations
from cosencfs.mount import metrics
from cosencfs.mount.notify import Notifier
from cosencfs.store.cos import CosStore
from cosencfs.tools import bucket

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
#: Unmounted, but some files could not be uploaded (they stay in the journal).
EXIT_DIRTY = 3


class MountError(CosEncFsError):
    """The mount could not be made; the message says why, for a person."""


def check_mountpoint(path: str) -> str:
    real = os.path.realpath(path)
    if not os.path.isdir(real):
        raise MountError(f"mountpoint {path} is not a directory")
    if os.path.ismount(real):
        raise MountError(f"mountpoint {path} is busy (something is already mounted there)")
    return real


def fuse_options(settings: MountSettings) -> set[str]:
    opts = set(pyfuse3.default_options)
    opts.add(f"fsname=cosencfs:{settings.target()}")
    opts.add("subtype=cosencfs")
    for item in settings.fuse_options:
        for opt in item.split(","):
            if opt.strip():
                opts.add(opt.strip())
    return opts


def fs_options(settings: MountSettings) -> FsOptions:
    """The filesystem's options: the ``[fs]`` settings given, its defaults for the rest."""
    given = settings.fs.given()
    attrs = {k: given.pop(k) for k in ("file_mode", "dir_mode") if k in given}
    defaults = Defaults(
        uid=given.pop("uid", os.getuid()), gid=given.pop("gid", os.getgid()), **attrs
    )
    return FsOptions(
        prefix=settings.prefix,
        devices=settings.devices_live(),
        defaults=defaults,
        connections=settings.concurrency,
        **given,
    )


async def open_store(settings: MountSettings) -> CosStore:
    """Connect and check the bucket; errors name what is wrong."""
    store = bucket.open_store(settings)
    try:
        await bucket.check_bucket(store, settings, unusable=MountError, unreachable=TransientError)
    except MountError:
        store.close()
        raise
    return store


async def serve(settings: MountSettings, ready: Callable[[], None] = lambda: None) -> int:
    """Mount and serve until unmounted; returns the exit status."""
    mountpoint = check_mountpoint(settings.mountpoint)
    codec = load_codec(settings.keys)
    store = await open_store(settings)
    cache = CacheManager(settings.cache_root(), store, limit_bytes=settings.cache_size)
    fs = Filesystem(store, codec, cache, fs_options(settings))
    try:
        report = await fs.recover()
    except BaseException:
        cache.close()
        store.close()
        raise
    if report.failed:
        log.error(
            "%d files from the last run could not be uploaded (kept in the journal): %s",
            len(report.failed),
            ", ".join(sorted(report.failed)),
        )
    endpoint = None
    try:
        if settings.metrics_addr is not None:
            target = (settings.bucket, settings.prefix, mountpoint)
            endpoint = metrics.start(fs, settings.metrics_addr, target)
    except OSError as exc:
        cache.close()
        store.close()
        raise MountError(f"cannot serve metrics on {settings.metrics_addr}: {exc}") from None
    ops = ControlledOperations(fs)
    try:
        pyfuse3.init(ops, mountpoint, fuse_options(settings))
    except RuntimeError as exc:
        if endpoint is not None:
            await endpoint.close()
        cache.close()
        store.close()
        raise MountError(f"cannot mount on {settings.mountpoint}: {exc}") from None
    stop = _Stop()
    notifier = Notifier()
    status = EXIT_OK
    try:
        async with trio.open_nursery() as nursery:
            await fs.start(nursery)
            nursery.start_soon(_signals, stop, fs, notifier)
            nursery.start_soon(_tune_readahead, mountpoint)
            log.info("mounted %s on %s", settings.bucket, mountpoint)
            ready()
            notifier.ready(f"mounted {settings.bucket} on {mountpoint}")
            await pyfuse3.main()
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            fs.ctx.nursery = None
            if not stop.by_signal:
                notifier.stopping("unmounted; uploading what is left")
            # After a signal the kernel still has us mounted: leave it, so no
            # new request arrives while the last uploads run.
            pyfuse3.close(unmount=stop.by_signal)
            status = await _final_flush(fs, notifier)
            if endpoint is not None:
                await endpoint.close()
            cache.close()
            store.close()
    return status


#: Kernel readahead for the mount (KiB). The default 128 KiB makes sequential
#: reads cost a FUSE round trip per 256 KiB; cosencfs prefetches from COS on
#: its own, so larger kernel requests only save overhead.
READ_AHEAD_KB = 1024


async def _tune_readahead(mountpoint: str) -> None:
    """Raise the mount's read_ahead_kb (root only; best effort)."""
    try:
        # stat goes through our own getattr: run it off the event loop.
        st = await trio.to_thread.run_sync(os.stat, mountpoint)
        path = f"/sys/class/bdi/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/read_ahead_kb"
        await trio.to_thread.run_sync(_write_text, path, str(READ_AHEAD_KB))
    except OSError as exc:
        log.debug("kernel readahead left as is: %s", exc)


def _write_text(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


class _Stop:
    by_signal = False


async def _signals(stop: _Stop, fs: Filesystem, notifier: Notifier) -> None:
    """SIGTERM/SIGINT: upload everything dirty while still mounted, then unmount."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            if signum == signal.SIGHUP:
                continue
            dirty = len(fs.dirty_inodes())
            log.info("signal %d: uploading %d dirty files, then unmounting", signum, dirty)
            notifier.stopping(f"uploading {dirty} dirty files before unmounting")
            try:
                await fs.sync_all()
            except Exception as exc:
                log.error("uploads before unmount failed: %s", exc)
            stop.by_signal = True
            pyfuse3.terminate()
            return


async def _final_flush(fs: Filesystem, notifier: Notifier) -> int:
    await fs.ctx.deleter.drain()
    pending = fs.dirty_inodes()
    if not pending:
        return EXIT_OK
    log.info("uploading %d dirty files before exit", len(pending))
    notifier.status(f"uploading {len(pending)} dirty files before exit")
    try:
        await fs.sync_all()
    except Exception as exc:
        log.error("could not upload everything: %s", exc)
    left = fs.dirty_inodes()
    if left:
        log.error(
            "%d files could not be uploaded; they stay in the cache journal and "
            "will be uploaded by the next mount with the same cache directory",
            len(left),
        )
        return EXIT_DIRTY
    return EXIT_OK
