"""Key files: SDK formats both ways, permission checks, no overwrites."""

from __future__ import annotations

import base64
import os
import stat
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from Crypto.PublicKey import RSA
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from qcloud_cos.crypto import AESCTRCipher, AESProvider, MetaHandle, RSAProvider

from cosencfs.crypto import (
    AesMasterKey,
    DataKey,
    EnvelopeCodec,
    RsaMasterKey,
    WrapAlg,
    aes_key_from_base64,
    decrypt,
    generate_aes_key_file,
    generate_rsa_key_files,
    load_aes_key_file,
    load_rsa_key_files,
    rsa_key_from_pem,
)
from cosencfs.errors import ConfigError
from tests.crypto._crypto_helpers import RsaPair


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _write(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _sdk_can_read(provider: AESProvider | RSAProvider, codec: EnvelopeCodec) -> bool:
    """Seal with cosencfs, open with the SDK provider, compare keys."""
    dk = DataKey.generate()
    headers = {"x-cos-meta-" + k: v for k, v in codec.seal(dk).items()}
    ek, eiv = MetaHandle().get_object_meta(headers)
    provider.init_data_cipter_by_user(ek, eiv, 0)
    plain = os.urandom(100)
    return bool(provider.data_cipher.decrypt(decrypt(dk, 0, plain)) == plain)


# -- AES: loading ---------------------------------------------------------------


@pytest.mark.parametrize("size", [16, 24, 32])
@pytest.mark.parametrize("layout", ["plain", "newline", "wrapped", "crlf", "spaces"])
def test_load_aes_formats(tmp_path: Path, size: int, layout: str) -> None:
    raw = os.urandom(size)
    text = base64.b64encode(raw)
    data = {
        "plain": text,
        "newline": text + b"\n",
        "wrapped": text[:10] + b"\n" + text[10:] + b"\n\n",
        "crlf": text + b"\r\n",
        "spaces": b"  " + text + b" \t\n",
    }[layout]
    path = _write(tmp_path / "aes.key", data)
    mk = load_aes_key_file(path)
    assert mk.key_id == AesMasterKey(raw).key_id
    assert mk.bits == size * 8
    assert mk.wrap_alg is WrapAlg.SDK_AES_CTR
    assert load_aes_key_file(path, hardened=True).wrap_alg is WrapAlg.AES_KW


def test_load_aes_missing(tmp_path: Path, fresh_home: Path) -> None:
    path = tmp_path / "nope.key"
    with pytest.raises(ConfigError, match="does not exist") as exc:
        load_aes_key_file(path)
    assert str(path) in str(exc.value)
    # Never generates anything (the SDK would, under ~/.cos_local_aes).
    assert not path.exists()
    assert list(fresh_home.iterdir()) == []


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"", "empty"),
        (b"\n \n", "empty"),
        (b"not base64 at all!!", "base64"),
        (base64.b64encode(os.urandom(32))[:-1], "base64"),  # broken padding
        (base64.urlsafe_b64encode(b"\xfb" * 32), "base64"),
        (base64.b64encode(os.urandom(31)), "31 bytes"),
        (base64.b64encode(os.urandom(64)), "64 bytes"),
        (b"-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----\n", "PEM"),
    ],
)
def test_load_aes_malformed(tmp_path: Path, data: bytes, problem: str) -> None:
    path = _write(tmp_path / "bad.key", data)
    with pytest.raises(ConfigError, match=problem) as exc:
        load_aes_key_file(path)
    assert str(path) in str(exc.value)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o602, 0o660, 0o666])
def test_load_aes_permissions(tmp_path: Path, mode: int) -> None:
    raw = os.urandom(32)
    path = _write(tmp_path / "aes.key", base64.b64encode(raw), mode)
    with pytest.raises(ConfigError, match="chmod 600") as exc:
        load_aes_key_file(path)
    message = str(exc.value)
    assert str(path) in message
    assert f"{mode:04o}" in message
    assert base64.b64encode(raw).decode() not in message
    assert load_aes_key_file(path, check_permissions=False).key_id == AesMasterKey(raw).key_id


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_load_aes_private_modes_ok(tmp_path: Path, mode: int) -> None:
    path = _write(tmp_path / "aes.key", base64.b64encode(os.urandom(32)), mode)
    load_aes_key_file(path)


def test_load_aes_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="regular file"):
        load_aes_key_file(tmp_path)


def test_load_aes_through_symlink_checks_target(tmp_path: Path) -> None:
    target = _write(tmp_path / "real.key", base64.b64encode(os.urandom(32)), 0o644)
    link = tmp_path / "link.key"
    link.symlink_to(target)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_aes_key_file(link)
    target.chmod(0o600)
    load_aes_key_file(link)


def test_aes_key_from_base64() -> None:
    raw = os.urandom(24)
    assert aes_key_from_base64(base64.b64encode(raw).decode()).key_id == AesMasterKey(raw).key_id
    with pytest.raises(ConfigError):
        aes_key_from_base64("é" * 44)


# -- AES: generation -----------------------------------------------------------------


def test_generate_aes_key_file(tmp_path: Path, umask_022: None) -> None:
    path = tmp_path / "sub" / "dir" / "aes.key"
    mk = generate_aes_key_file(path)
    assert _mode(path) == 0o600
    assert mk.bits == 256
    loaded = load_aes_key_file(path)
    assert loaded.key_id == mk.key_id
    assert len(base64.b64decode(path.read_bytes().strip(), validate=True)) == 32
    # The SDK reads it: cosencfs-sealed envelope opens with AESProvider.
    provider = AESProvider(aes_key_path=str(path), cipher=AESCTRCipher())
    assert _sdk_can_read(provider, EnvelopeCodec(loaded))


def test_generate_aes_mode_without_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        path = tmp_path / "aes.key"
        generate_aes_key_file(path)
    finally:
        os.umask(old)
    assert _mode(path) == 0o600


def test_generate_aes_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "aes.key"
    original = generate_aes_key_file(path)
    content = path.read_bytes()
    with pytest.raises(ConfigError, match="refusing to overwrite") as exc:
        generate_aes_key_file(path)
    assert str(path) in str(exc.value)
    assert path.read_bytes() == content
    assert load_aes_key_file(path).key_id == original.key_id
    # Nor through a (dangling) symlink.
    link = tmp_path / "link.key"
    link.symlink_to(tmp_path / "elsewhere.key")
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        generate_aes_key_file(link)
    assert not (tmp_path / "elsewhere.key").exists()


def test_generate_aes_fresh_each_time(tmp_path: Path) -> None:
    ids = {generate_aes_key_file(tmp_path / f"k{i}").key_id for i in range(20)}
    assert len(ids) == 20


# -- RSA: loading --------------------------------------------------------------------


def test_load_rsa_sdk_style_files(tmp_path: Path, rsa_a: RsaPair) -> None:
    pub, priv = rsa_a.write(tmp_path)
    assert rsa_a.private_pem_pkcs1.startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    assert rsa_a.public_pem_spki.startswith(b"-----BEGIN PUBLIC KEY-----")
    mk = load_rsa_key_files(pub, priv)
    assert mk.key_id == RsaMasterKey(rsa_a.private).key_id
    assert mk.can_unwrap
    public_only = load_rsa_key_files(pub, None)
    assert not public_only.can_unwrap
    assert public_only.key_id == mk.key_id
    assert load_rsa_key_files(None, priv).key_id == mk.key_id


def test_load_rsa_pkcs8_and_pkcs1_public(tmp_path: Path, rsa_a: RsaPair) -> None:
    pkcs8 = rsa_a.private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    pkcs1_pub = rsa_a.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.PKCS1
    )
    assert pkcs8.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert pkcs1_pub.startswith(b"-----BEGIN RSA PUBLIC KEY-----")
    priv = _write(tmp_path / "p8.pem", pkcs8)
    pub = _write(tmp_path / "p1pub.pem", pkcs1_pub, 0o644)
    assert load_rsa_key_files(pub, priv).key_id == RsaMasterKey(rsa_a.private).key_id


def test_load_rsa_passphrase(tmp_path: Path, rsa_a: RsaPair) -> None:
    # Both encrypted PKCS#8 and the SDK/pycryptodome legacy PEM encryption.
    pk8 = rsa_a.private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"s3cret"),
    )
    pycd = RSA.import_key(rsa_a.private_pem_pkcs1)
    # What the SDK writes for a generated key with a passphrase
    # (private_key.exportKey(passphrase=...)): encrypted PKCS#8 in current
    # pycryptodome; and the legacy PKCS#1 "Proc-Type" encryption.
    sdk_style = pycd.export_key(passphrase="s3cret")
    legacy = pycd.export_key(passphrase="s3cret", pkcs=1)
    assert b"Proc-Type: 4,ENCRYPTED" in legacy
    expected = RsaMasterKey(rsa_a.private).key_id
    cases = (("pk8.pem", pk8), ("sdk.pem", sdk_style), ("legacy.pem", legacy))
    for name, data in cases:
        path = _write(tmp_path / name, data)
        assert load_rsa_key_files(None, path, passphrase="s3cret").key_id == expected
        assert load_rsa_key_files(None, path, passphrase=b"s3cret").key_id == expected
        with pytest.raises(ConfigError, match="passphrase is needed"):
            load_rsa_key_files(None, path)
        with pytest.raises(ConfigError, match="wrong") as exc:
            load_rsa_key_files(None, path, passphrase="nope")
        assert str(path) in str(exc.value)
    plain = _write(tmp_path / "plain.pem", rsa_a.private_pem_pkcs1)
    with pytest.raises(ConfigError, match="not encrypted"):
        load_rsa_key_files(None, plain, passphrase="s3cret")


def test_load_rsa_private_permissions(tmp_path: Path, rsa_a: RsaPair) -> None:
    pub, priv = rsa_a.write(tmp_path)
    priv.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600") as exc:
        load_rsa_key_files(pub, priv)
    assert str(priv) in str(exc.value)
    assert load_rsa_key_files(pub, priv, check_permissions=False).can_unwrap
    # The public key may be world-readable.
    priv.chmod(0o600)
    pub.chmod(0o644)
    load_rsa_key_files(pub, priv)


def test_load_rsa_errors(tmp_path: Path, rsa_a: RsaPair, rsa_b: RsaPair) -> None:
    pub_a, priv_a = rsa_a.write(tmp_path / "a")
    pub_b, _ = rsa_b.write(tmp_path / "b")
    with pytest.raises(ConfigError, match="does not belong") as exc:
        load_rsa_key_files(pub_b, priv_a)
    assert str(pub_b) in str(exc.value)
    assert str(priv_a) in str(exc.value)
    with pytest.raises(ConfigError, match="does not exist"):
        load_rsa_key_files(tmp_path / "missing.pem", priv_a)
    garbage = _write(tmp_path / "garbage.pem", b"-----BEGIN RSA PRIVATE KEY-----\nAAAA\n")
    with pytest.raises(ConfigError, match="cannot be read"):
        load_rsa_key_files(None, garbage)
    with pytest.raises(ConfigError, match="cannot be read"):
        load_rsa_key_files(garbage, None)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ec_pem = ec_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    ec_path = _write(tmp_path / "ec.pem", ec_pem)
    with pytest.raises(ConfigError, match="not an RSA key"):
        load_rsa_key_files(None, ec_path)
    with pytest.raises(ConfigError):
        load_rsa_key_files(None, None)
    with pytest.raises(ConfigError):
        rsa_key_from_pem(None, None)
    assert rsa_key_from_pem(rsa_a.public_pem_spki, rsa_a.private_pem_pkcs1).can_unwrap
    assert pub_a.exists()


# -- RSA: generation -----------------------------------------------------------------


def test_generate_rsa_key_files(tmp_path: Path, umask_022: None) -> None:
    directory = tmp_path / "keys"
    mk = generate_rsa_key_files(directory)
    pub, priv = directory / "public_key.pem", directory / "private_key.pem"
    assert _mode(priv) == 0o600
    assert priv.read_bytes().startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    assert b"ENCRYPTED" not in priv.read_bytes()
    assert pub.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    assert mk.bits == 2048
    loaded = load_rsa_key_files(pub, priv)
    assert loaded.key_id == mk.key_id
    # pycryptodome (the SDK's RSA.importKey) reads both files.
    assert RSA.import_key(priv.read_bytes()).has_private()
    assert RSA.import_key(pub.read_bytes()).n == RSA.import_key(priv.read_bytes()).n
    # ... and the SDK's file-based provider opens what cosencfs seals.
    provider = RSAProvider(
        RSAProvider.get_rsa_key_pair_path(str(pub), str(priv)), cipher=AESCTRCipher()
    )
    assert _sdk_can_read(provider, EnvelopeCodec(loaded))
    values = RSAProvider(
        RSAProvider.get_rsa_key_pair(pub.read_bytes(), priv.read_bytes()), cipher=AESCTRCipher()
    )
    # The values provider decrypts with PKCS#1 v1.5 (implicit rejection in
    # pycryptodome too): it cannot open OAEP envelopes.  It either fails on
    # the bogus key length or decrypts to garbage.
    try:
        readable = _sdk_can_read(values, EnvelopeCodec(loaded))
    except (ValueError, struct.error):
        readable = False
    assert not readable


def test_generate_rsa_never_overwrites(tmp_path: Path) -> None:
    directory = tmp_path / "keys"
    directory.mkdir()
    (directory / "public_key.pem").write_bytes(b"keep me")
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        generate_rsa_key_files(directory)
    assert (directory / "public_key.pem").read_bytes() == b"keep me"
    assert not (directory / "private_key.pem").exists()

    other = tmp_path / "other"
    first = generate_rsa_key_files(other)
    before = {p.name: p.read_bytes() for p in other.iterdir()}
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        generate_rsa_key_files(other)
    assert {p.name: p.read_bytes() for p in other.iterdir()} == before
    assert load_rsa_key_files(other / "public_key.pem", other / "private_key.pem").key_id == (
        first.key_id
    )


@pytest.mark.parametrize("bits", [1024, 2047, 8192])
def test_generate_rsa_bad_size(tmp_path: Path, bits: int) -> None:
    with pytest.raises(ConfigError, match=r"2048\.\.4096"):
        generate_rsa_key_files(tmp_path, bits)
    assert list(tmp_path.iterdir()) == []


# -- The SDK's own (implicitly generated) key files --------------------------------------


def test_sdk_generated_aes_key_loads(fresh_home: Path, tmp_path: Path, umask_022: None) -> None:
    # A missing aes_key_path makes the SDK generate a key at its default path.
    provider = AESProvider(aes_key_path=str(tmp_path / "missing.key"), cipher=AESCTRCipher())
    provider.init_ed_obj()
    generated = fresh_home / ".cos_local_aes" / ".aes_key.pem"
    assert generated.exists()
    assert not (tmp_path / "missing.key").exists()
    # The SDK does not restrict the mode: with umask 022 the key is 0644 ...
    assert _mode(generated) == 0o644
    with pytest.raises(ConfigError, match="chmod 600"):
        load_aes_key_file(generated)
    # ... but the format is ours.
    mk = load_aes_key_file(generated, check_permissions=False)
    assert _sdk_can_read(provider, EnvelopeCodec(mk))


def test_sdk_silently_overwrites_default_aes_key(fresh_home: Path, tmp_path: Path) -> None:
    # The SDK weakness documented in docs/format.md: a typo in aes_key_path
    # replaces the key at the default path, which may hold a real key.
    default = fresh_home / ".cos_local_aes" / ".aes_key.pem"
    default.parent.mkdir()
    default.write_bytes(base64.b64encode(os.urandom(32)))
    before = default.read_bytes()
    AESProvider(aes_key_path=str(tmp_path / "tpyo.key"), cipher=AESCTRCipher()).init_ed_obj()
    assert default.read_bytes() != before


def test_sdk_generated_rsa_keys_load(fresh_home: Path) -> None:
    provider = RSAProvider(cipher=AESCTRCipher())  # no key: generates under ~/.cos_local_rsa
    pub = fresh_home / ".cos_local_rsa" / ".public_key.pem"
    priv = fresh_home / ".cos_local_rsa" / ".private_key.pem"
    assert pub.exists()
    assert priv.exists()
    mk = load_rsa_key_files(pub, priv, check_permissions=False)
    assert _sdk_can_read(provider, EnvelopeCodec(mk))
