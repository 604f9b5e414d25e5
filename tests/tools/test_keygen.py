"""``cosencfs keygen``: key files the COS SDK reads, never overwritten, 0600."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from cosencfs.cli import main
from cosencfs.crypto.keyfiles import load_aes_key_file, load_rsa_key_files
from tests.tools._cmd_helpers import Sdk, no_secrets, run_cli


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_keygen_aes_subprocess_and_sdk_reads_it(tmp_path: Path, sdk: Sdk) -> None:
    path = tmp_path / "keys" / "master.key"
    done = run_cli("keygen", "aes", str(path))
    assert done.returncode == 0, done.stderr
    assert mode_of(path) == 0o600
    assert len(base64.b64decode(path.read_text().strip(), validate=True)) == 32
    key = load_aes_key_file(path)
    assert str(path) in done.stdout
    assert key.key_id in done.stdout
    assert "back up" in done.stdout.lower()
    no_secrets(done.stdout + done.stderr, path)
    # The SDK's AESProvider reads the file: what it encrypts, cosencfs reads
    # and the other way round is covered by the rekey tests; here, a round trip.
    client = sdk.client(aes_key=path)
    Sdk.put(client, "k", b"hello sdk" * 100)
    assert Sdk.get(client, "k") == b"hello sdk" * 100


def test_keygen_aes_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    path.write_text("precious\n")
    done = run_cli("keygen", "aes", str(path))
    assert done.returncode != 0
    assert "refusing to overwrite" in done.stderr
    assert path.read_text() == "precious\n"
    # A dangling symlink is refused too (O_EXCL): no key lands elsewhere.
    link = tmp_path / "link.key"
    link.symlink_to(tmp_path / "elsewhere.key")
    assert main(["keygen", "aes", str(link)]) == 1
    assert not (tmp_path / "elsewhere.key").exists()


def test_keygen_aes_hardened_explains_the_wrap(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "hard.key"
    assert main(["keygen", "aes", str(path), "--hardened"]) == 0
    out = capsys.readouterr().out
    assert "--aes-wrap kw" in out
    assert mode_of(path) == 0o600
    load_aes_key_file(path)


@pytest.mark.parametrize("bits", [2048, 3072])
def test_keygen_rsa(
    tmp_path: Path, sdk: Sdk, bits: int, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / f"rsa{bits}"
    assert main(["keygen", "rsa", str(d), "--bits", str(bits)]) == 0
    out = capsys.readouterr().out
    pub, priv = d / "public_key.pem", d / "private_key.pem"
    assert mode_of(priv) == 0o600
    assert mode_of(pub) == 0o644
    assert str(priv) in out
    assert str(pub) in out
    assert "back up" in out.lower()
    no_secrets(out, priv)
    key = load_rsa_key_files(pub, priv)
    assert key.bits == bits
    private = load_pem_private_key(priv.read_bytes(), password=None)
    assert isinstance(private, rsa.RSAPrivateKey)
    # Loadable by the SDK's RSAProvider.get_rsa_key_pair_path, and usable.
    client = sdk.client(rsa_pub=pub, rsa_priv=priv)
    Sdk.put(client, f"r{bits}", b"rsa data")
    assert Sdk.get(client, f"r{bits}") == b"rsa data"


def test_keygen_rsa_refuses_existing_and_bad_sizes(tmp_path: Path) -> None:
    d = tmp_path / "rsa"
    d.mkdir()
    (d / "public_key.pem").write_text("old public\n")
    done = run_cli("keygen", "rsa", str(d))
    assert done.returncode != 0
    assert "refusing to overwrite" in done.stderr
    assert (d / "public_key.pem").read_text() == "old public\n"
    assert not (d / "private_key.pem").exists()
    done = run_cli("keygen", "rsa", str(tmp_path / "other"), "--bits", "1024")
    assert done.returncode == 2
    assert "invalid choice" in done.stderr
    assert not (tmp_path / "other").exists()


def test_keygen_needs_a_kind() -> None:
    done = run_cli("keygen")
    assert done.returncode == 2
    assert "required: KIND" in done.stderr
