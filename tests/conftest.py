"""Fixtures shared by every suite: a local COS server, stores, filesystems, mounts."""

from __future__ import annotations

import contextlib
import gc
import os
import tempfile
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

# The keystream ledger must be on before cosencfs is imported (the CTR module
# reads the variable once), and every daemon a test starts inherits it: one
# file spans the whole run, remounts and crashes included.
if not os.environ.get("COSENCFS_KEYSTREAM_LEDGER"):
    os.environ["COSENCFS_KEYSTREAM_LEDGER"] = str(
        Path(tempfile.mkdtemp(prefix="cosencfs-ledger-")) / "ledger.bin"
    )

import pytest
import trio

from cosencfs.crypto import ledger
from cosencfs.crypto.envelope import EnvelopeCodec
from cosencfs.crypto.keyfiles import load_aes_key_file
from cosencfs.fs.core import Filesystem
from cosencfs.server import LocalCosServer
from cosencfs.store.cos import CosStore
from tests.testlib import BUCKET, FsFactory, MountFactory, make_store, new_key_file, start_server

_LEDGER_REPORT: list[ledger.Report] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if any keystream block was used for two plaintexts."""
    report = ledger.check(Path(os.environ[ledger.ENV]))
    _LEDGER_REPORT.append(report)
    if report.violations:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for report in _LEDGER_REPORT:
        terminalreporter.write_line(str(report), red=bool(report.violations))


@pytest.fixture(autouse=True, scope="session")
def _isolated_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    # The COS SDK writes key files into ~ when it misses one, and cosencfs
    # --local keeps its key in ~/.config: never touch the real home.
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(home))
        mp.setenv("XDG_CONFIG_HOME", str(home / ".config"))
        mp.setenv("XDG_CACHE_HOME", str(home / ".cache"))
        yield


def _open_sockets() -> set[str]:
    """The sockets this process has open ("socket:[inode]" of /proc/self/fd)."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # the listing's own descriptor, or one closed meanwhile
            continue
        if target.startswith("socket:"):
            found.add(target)
    return found


@contextlib.contextmanager
def no_socket_left_unclosed() -> Iterator[None]:
    """Fail (``pytest.fail``) if the body dropped a socket without closing it.

    A socket dropped in a reference cycle stays open until some later
    garbage collection, in whatever test runs then, whose ``__del__``
    ResourceWarning (an error here) then fails that unrelated test.  When
    a socket the test opened is still open after all its fixtures are torn
    down, collect now and fail this test if the collection closed one.  A
    whole collection per test would cost up to 0.4 s each in this suite's
    heap; the check of /proc/self/fd costs ~0.6 ms (46 descriptors, loaded machine).
    """
    before = _open_sockets()
    yield
    if not _open_sockets() - before:
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        gc.collect()
    leaked = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    if leaked:
        pytest.fail("left unclosed by this test: " + "; ".join(leaked), pytrace=False)


@pytest.fixture(autouse=True)
def _no_socket_left_unclosed() -> Iterator[None]:
    """Every test: a socket it dropped unclosed fails it, not a later one."""
    with no_socket_left_unclosed():
        yield


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LocalCosServer]:
    srv = start_server(tmp_path / "cos")
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def store(server: LocalCosServer) -> Iterator[CosStore]:
    s = make_store(server.url)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    return new_key_file(tmp_path / "master.key")


@pytest.fixture
def codec(key_file: Path) -> EnvelopeCodec:
    return EnvelopeCodec(load_aes_key_file(key_file))


@pytest.fixture
async def make_fs(
    store: CosStore, codec: EnvelopeCodec, tmp_path: Path
) -> AsyncIterator[FsFactory]:
    async with trio.open_nursery() as nursery:
        factory = FsFactory(store, codec, tmp_path, nursery)
        try:
            yield factory
        finally:
            nursery.cancel_scope.cancel()
    for c in factory.caches:
        c.close()


@pytest.fixture
async def fsys(make_fs: FsFactory) -> Filesystem:
    return await make_fs()


@pytest.fixture
def mounts(server: LocalCosServer, tmp_path: Path, key_file: Path) -> Iterator[MountFactory]:
    factory = MountFactory(server.url, tmp_path, key_file)
    try:
        yield factory
    finally:
        factory.cleanup()


__all__ = ["BUCKET"]
