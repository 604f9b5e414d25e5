"""Helpers shared by the test suites: a local server, stores, filesystems, mounts."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import trio
from qcloud_cos import CosConfig

from cosencfs.cache.manager import CacheManager
from cosencfs.crypto.envelope import EnvelopeCodec
from cosencfs.crypto.keyfiles import generate_aes_key_file
from cosencfs.fs.attrs import Defaults
from cosencfs.fs.context import FsOptions
from cosencfs.fs.core import Filesystem
from cosencfs.server import LocalCosServer
from cosencfs.store.cos import CosSettings, CosStore
from cosencfs.store.memory import MemoryStore
from cosencfs.store.retry import RetryPolicy

BUCKET = "test-1250000000"
SECRET_ID = "AKIDtestsecretid"
SECRET_KEY = "testsecretkey0123456789"
REGION = "ap-guangzhou"

#: Short write-back delay so mount tests do not wait long for uploads.
TEST_WRITEBACK_DELAY = "0.2"


def make_store(
    url: str,
    *,
    bucket: str = BUCKET,
    secret_key: str = SECRET_KEY,
    retry: RetryPolicy | None = None,
    timeout: float = 10.0,
) -> CosStore:
    return CosStore(
        CosSettings(
            bucket=bucket,
            region=REGION,
            endpoint=url,
            secret_id=SECRET_ID,
            secret_key=secret_key,
            timeout=timeout,
            retry=retry or RetryPolicy(max_attempts=6, deadline=20.0, base_delay=0.02),
        )
    )


def start_server(root: Path | str, port: int = 0, **kw: object) -> LocalCosServer:
    server = LocalCosServer(
        root,
        port=port,
        buckets=[BUCKET],
        secret_id=SECRET_ID,
        secret_key=SECRET_KEY,
        region=REGION,
        **kw,  # type: ignore[arg-type]
    )
    server.start()
    return server


def is_mounted(path: Path) -> bool:
    real = os.path.realpath(path)
    with open("/proc/mounts") as f:
        return any(line.split()[1] == real for line in f)


def force_unmount(path: Path) -> None:
    """Last resort in teardown: never leave a dead mount behind."""
    if not is_mounted(path):
        return
    for args in (["-u"], ["-uz"]):
        subprocess.run(["fusermount3", *args, str(path)], check=False, capture_output=True)
        if not is_mounted(path):
            return


@dataclass
class Mount:
    """A real ``cosencfs mount`` process over the local server."""

    url: str
    mountpoint: Path
    cache_dir: Path
    key_file: Path | None  # None: the key options come in ``extra`` (RSA)
    bucket: str = BUCKET
    prefix: str = ""
    extra: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    def command(self) -> list[str]:
        target = self.bucket + (f"/{self.prefix}" if self.prefix else "")
        return [
            sys.executable,
            "-m",
            "cosencfs",
            "mount",
            target,
            str(self.mountpoint),
            "--endpoint",
            self.url,
            "--region",
            REGION,
            *(["--key-file", str(self.key_file)] if self.key_file is not None else []),
            "--cache-dir",
            str(self.cache_dir),
            "--foreground",
            "--writeback-delay",
            TEST_WRITEBACK_DELAY,
            *self.extra,
        ]

    def start(self, timeout: float = 20.0) -> None:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update({"COS_SECRET_ID": SECRET_ID, "COS_SECRET_KEY": SECRET_KEY})
        env.update(self.env)
        self.log_path = self.cache_dir.parent / f"mount-{self.mountpoint.name}.log"
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=log, env=env)
        log.close()
        deadline = time.monotonic() + timeout
        while not is_mounted(self.mountpoint):
            if self.proc.poll() is not None:
                raise RuntimeError(f"mount exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"mount did not come up in {timeout} s:\n{self.log()}")
            time.sleep(0.02)

    def log(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def umount(self, timeout: float = 60.0) -> int:
        """``cosencfs umount``; returns the daemon's exit status."""
        assert self.proc is not None
        done = subprocess.run(
            [sys.executable, "-m", "cosencfs", "umount", str(self.mountpoint)],
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"umount failed: {done.stderr.decode()}\n{self.log()}")
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """kill -9 the daemon, then clear the dead mount."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        force_unmount(self.mountpoint)

    def cleanup(self) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None and is_mounted(self.mountpoint):
                subprocess.run(
                    ["fusermount3", "-u", str(self.mountpoint)], check=False, capture_output=True
                )
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(30)
        finally:
            self.kill()


class MountFactory:
    def __init__(self, url: str, tmp: Path, key_file: Path) -> None:
        self.url = url
        self.tmp = tmp
        self.key_file = key_file
        self.mounts: list[Mount] = []
        self._n = 0

    def __call__(
        self,
        *,
        name: str | None = None,
        cache: str | None = None,
        start: bool = True,
        **kw: object,
    ) -> Mount:
        self._n += 1
        m = Mount(
            url=self.url,
            mountpoint=self.tmp / (name or f"mnt{self._n}"),
            cache_dir=self.tmp / (cache or f"cache{self._n}"),
            key_file=kw.pop("key_file", self.key_file),  # type: ignore[arg-type]
            **kw,  # type: ignore[arg-type]
        )
        self.mounts.append(m)
        if start:
            m.start()
        return m

    def cleanup(self) -> None:
        for m in self.mounts:
            m.cleanup()


def new_key_file(path: Path) -> Path:
    generate_aes_key_file(path)
    return path


@contextlib.contextmanager
def cd(path: Path) -> Iterator[None]:
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def have(tool: str) -> bool:
    return shutil.which(tool) is not None


def fs_options(**kw: object) -> FsOptions:
    kw.setdefault("writeback_delay", 0.05)
    return FsOptions(
        defaults=Defaults(uid=os.getuid(), gid=os.getgid()),
        **kw,  # type: ignore[arg-type]
    )


class FsFactory:
    """Filesystems over the same bucket, each with its own cache (like remounts)."""

    def __init__(self, store: CosStore, codec: EnvelopeCodec, tmp: Path, nursery: trio.Nursery):
        self.store = store
        self.codec = codec
        self.tmp = tmp
        self.nursery = nursery
        self.caches: list[CacheManager] = []
        self.n = 0

    async def __call__(self, *, cache: str | None = None, **kw: object) -> Filesystem:
        self.n += 1
        root = self.tmp / (cache or f"fscache{self.n}")
        mgr = CacheManager(root, self.store, limit_bytes=1 << 30)
        self.caches.append(mgr)
        fs = Filesystem(self.store, self.codec, mgr, fs_options(**kw))
        await fs.start(self.nursery)
        return fs

    def close(self, fs: Filesystem) -> None:
        self.caches.remove(fs.ctx.cache)
        fs.ctx.cache.close()


def sdk_config(port: int, *, timeout: int = 30) -> CosConfig:
    """The COS SDK's configuration for the local server on ``port`` (IP mode, http)."""
    return CosConfig(
        IP="127.0.0.1",
        Port=port,
        Region=REGION,
        Scheme="http",
        SecretId=SECRET_ID,
        SecretKey=SECRET_KEY,
        Timeout=timeout,
    )


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    """The process umask set to ``mask`` for the block (tests of modes)."""
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@contextlib.asynccontextmanager
async def idle_memory_fs(codec: EnvelopeCodec, cache_dir: Path) -> AsyncIterator[Filesystem]:
    """A started ``Filesystem`` on an in-memory store whose write-back never
    fires by itself (an hour's delay): a test commits with ``fsync``/``sync``."""
    store = MemoryStore()
    mgr = CacheManager(cache_dir, store, limit_bytes=1 << 30)
    try:
        fs = Filesystem(store, codec, mgr, fs_options(writeback_delay=3600.0, max_dirty_age=3600.0))
        async with trio.open_nursery() as nursery:
            await fs.start(nursery)
            yield fs
            nursery.cancel_scope.cancel()
    finally:
        mgr.close()
