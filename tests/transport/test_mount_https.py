"""A real mount over https: ``--ca-file`` trusts the local server's CA; without it, no mount."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from cosencfs.server import LocalCosServer
from cosencfs.server.tls import TlsFiles, ensure_self_signed
from tests.testlib import MountFactory, new_key_file, start_server

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse")


@pytest.fixture
def https_server(tmp_path: Path) -> Iterator[tuple[LocalCosServer, TlsFiles]]:
    files = ensure_self_signed(tmp_path / "tls")
    srv = start_server(tmp_path / "srv", tls=files)
    try:
        yield srv, files
    finally:
        srv.stop()


@pytest.fixture
def https_mounts(
    https_server: tuple[LocalCosServer, TlsFiles], tmp_path: Path
) -> Iterator[MountFactory]:
    factory = MountFactory(https_server[0].url, tmp_path, new_key_file(tmp_path / "k.key"))
    try:
        yield factory
    finally:
        factory.cleanup()


def test_a_mount_over_https_with_ca_file(
    https_server: tuple[LocalCosServer, TlsFiles], https_mounts: MountFactory
) -> None:
    server, files = https_server
    m = https_mounts(extra=["--ca-file", str(files.ca)])
    data = os.urandom(3 * 1024 * 1024 + 11)
    (m.mountpoint / "f.bin").write_bytes(data)
    (m.mountpoint / "d").mkdir()
    (m.mountpoint / "d" / "small").write_text("hello")
    assert m.umount() == 0
    m2 = https_mounts(extra=["--ca-file", str(files.ca)])
    assert (m2.mountpoint / "f.bin").read_bytes() == data
    assert (m2.mountpoint / "d" / "small").read_text() == "hello"
    assert m2.umount() == 0
    net = server.snapshot()["network"]
    assert isinstance(net, dict)
    assert net["tls_connections"] > 0
    assert net["plain_connections"] == 0


def test_no_mount_when_the_certificate_does_not_verify(
    https_server: tuple[LocalCosServer, TlsFiles], https_mounts: MountFactory, tmp_path: Path
) -> None:
    other = ensure_self_signed(tmp_path / "other-ca")
    m = https_mounts(extra=["--ca-file", str(other.ca)], start=False)
    with pytest.raises(RuntimeError, match="does not verify"):
        m.start()
