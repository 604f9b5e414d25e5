"""Master keys: SDK-exact AES-CTR wrap, AES-KW, RSA OAEP / PKCS#1 v1.5."""

from __future__ import annotations

import hashlib
import hmac
import os

import pytest
from Crypto.Cipher import AES, PKCS1_OAEP, PKCS1_v1_5
from Crypto.PublicKey import RSA
from Crypto.Util import Counter
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.keywrap import aes_key_wrap

from cosencfs.crypto import AesMasterKey, DataKey, MasterKey, RsaMasterKey, WrapAlg
from cosencfs.errors import ConfigError, DamagedEnvelopeError, WrongKeyError
from tests.crypto._crypto_helpers import RsaPair, seeded_randfunc

FIXED_DK = DataKey(bytes(range(32)), bytes(range(0xA0, 0xB0)))


def _sdk_aes_wrap(master: bytes, dk: DataKey) -> tuple[bytes, bytes]:
    """What AESProvider.init_data_cipher does, step by step (pycryptodome)."""
    ed = AES.new(master, AES.MODE_CTR, counter=Counter.new(128, initial_value=0))
    return ed.encrypt(dk.key), ed.encrypt(dk.iv)


# -- AES, SDK-compatible wrap -------------------------------------------------


@pytest.mark.parametrize("size", [16, 24, 32])
def test_sdk_aes_ctr_wrap_kat(size: int) -> None:
    master = bytes(range(0x40, 0x40 + size))
    expected = _sdk_aes_wrap(master, FIXED_DK)
    mk = AesMasterKey(master)
    wk, wiv, alg = mk.wrap(FIXED_DK)
    assert (wk, wiv) == expected
    assert alg is WrapAlg.SDK_AES_CTR
    assert mk.unwrap(wk, wiv) == FIXED_DK
    assert mk.unwrap(wk, wiv, WrapAlg.SDK_AES_CTR) == FIXED_DK


def test_sdk_aes_ctr_wrap_uses_one_pad_for_all_objects() -> None:
    # The SDK weakness documented in docs/format.md, shown with the SDK's own
    # construction: XOR of two wrapped keys equals XOR of the data keys.
    master = os.urandom(32)
    a, b = DataKey.generate(), DataKey.generate()
    wa, wb = _sdk_aes_wrap(master, a), _sdk_aes_wrap(master, b)
    xor = bytes(x ^ y for x, y in zip(wa[0] + wa[1], wb[0] + wb[1], strict=True))
    assert xor == bytes(x ^ y for x, y in zip(a.key + a.iv, b.key + b.iv, strict=True))
    # Hence one leaked data key reveals another object's key.
    pad = bytes(x ^ y for x, y in zip(wa[0] + wa[1], a.key + a.iv, strict=True))
    recovered = bytes(x ^ y for x, y in zip(wb[0] + wb[1], pad, strict=True))
    assert recovered == b.key + b.iv
    # cosencfs' compatible wrap has exactly the same property ...
    mk = AesMasterKey(master)
    assert mk.wrap(a)[:2] == wa
    # ... and the hardened one does not.
    hk = AesMasterKey(master, hardened=True)
    ka, kb = hk.wrap(a), hk.wrap(b)
    assert bytes(x ^ y for x, y in zip(ka[0][:32], kb[0][:32], strict=True)) != bytes(
        x ^ y for x, y in zip(a.key, b.key, strict=True)
    )


def test_sdk_aes_ctr_cannot_detect_wrong_key() -> None:
    # Documented limitation: the wrap itself never fails.
    wk, wiv, _ = AesMasterKey(os.urandom(32)).wrap(FIXED_DK)
    got = AesMasterKey(os.urandom(32)).unwrap(wk, wiv)
    assert got != FIXED_DK


# -- AES key wrap (hardened) ----------------------------------------------------


@pytest.mark.parametrize("size", [16, 24, 32])
def test_aes_kw_wrap(size: int) -> None:
    master = os.urandom(size)
    mk = AesMasterKey(master, hardened=True)
    dk = DataKey.generate()
    wk, wiv, alg = mk.wrap(dk)
    assert alg is WrapAlg.AES_KW
    assert (len(wk), len(wiv)) == (40, 24)
    assert wk == aes_key_wrap(master, dk.key)
    assert wiv == aes_key_wrap(master, dk.iv)
    assert mk.unwrap(wk, wiv) == dk
    # A non-hardened instance of the same key reads it too.
    assert AesMasterKey(master).unwrap(wk, wiv, WrapAlg.AES_KW) == dk


def test_aes_kw_wrong_key() -> None:
    wk, wiv, alg = AesMasterKey(os.urandom(32), hardened=True).wrap(DataKey.generate())
    other = AesMasterKey(os.urandom(32), hardened=True)
    for hint in (alg, None):
        with pytest.raises(WrongKeyError):
            other.unwrap(wk, wiv, hint)


def test_aes_unwrap_rejects_bad_lengths_and_rsa() -> None:
    mk = AesMasterKey(os.urandom(32))
    with pytest.raises(DamagedEnvelopeError):
        mk.unwrap(bytes(31), bytes(16))
    with pytest.raises(DamagedEnvelopeError):
        mk.unwrap(bytes(32), bytes(16), WrapAlg.AES_KW)
    with pytest.raises(WrongKeyError, match="RSA"):
        mk.unwrap(bytes(256), bytes(256))
    with pytest.raises(WrongKeyError, match="rsa-oaep"):
        mk.unwrap(bytes(32), bytes(16), WrapAlg.RSA_OAEP)


@pytest.mark.parametrize("size", [0, 15, 17, 33, 64])
def test_aes_master_key_size(size: int) -> None:
    with pytest.raises(ValueError, match="AES master key must be"):
        AesMasterKey(bytes(size))


def test_aes_key_id() -> None:
    raw = bytes(range(32))
    mk = AesMasterKey(raw)
    expected = hmac.new(raw, b"cosencfs key id v1", hashlib.sha256).hexdigest()[:16]
    assert mk.key_id == expected
    assert len(mk.key_id) == 16
    assert AesMasterKey(raw, hardened=True).key_id == mk.key_id
    assert AesMasterKey(os.urandom(32)).key_id != mk.key_id
    assert mk.key_id not in raw.hex()


def test_master_repr_hides_key() -> None:
    raw = bytes(range(32))
    mk = AesMasterKey(raw)
    for text in (repr(mk), str(mk)):
        assert raw.hex() not in text
        assert "\\x" not in text
        assert mk.key_id in text
    assert isinstance(mk, MasterKey)


# -- RSA -------------------------------------------------------------------


def test_rsa_oaep_wrap_readable_by_pycryptodome(rsa_a: RsaPair) -> None:
    mk = RsaMasterKey(rsa_a.private)
    dk = DataKey.generate()
    wk, wiv, alg = mk.wrap(dk)
    assert alg is WrapAlg.RSA_OAEP
    assert len(wk) == len(wiv) == 256
    # The SDK's file-based RSAProvider decrypts with PKCS1_OAEP.new(key):
    # SHA-1, MGF1-SHA-1, empty label.
    sdk = PKCS1_OAEP.new(RSA.import_key(rsa_a.private_pem_pkcs1))
    assert sdk.decrypt(wk) == dk.key
    assert sdk.decrypt(wiv) == dk.iv
    assert mk.unwrap(wk, wiv) == dk
    assert mk.unwrap(wk, wiv, WrapAlg.RSA_OAEP) == dk


def test_rsa_reads_sdk_oaep_and_pkcs1v15(rsa_a: RsaPair) -> None:
    pub = RSA.import_key(rsa_a.public_pem_spki)
    mk = RsaMasterKey(rsa_a.private)
    for scheme in (PKCS1_OAEP.new(pub), PKCS1_v1_5.new(pub)):
        dk = DataKey.generate()
        assert mk.unwrap(scheme.encrypt(dk.key), scheme.encrypt(dk.iv)) == dk
    v15 = PKCS1_v1_5.new(pub)
    dk = DataKey.generate()
    assert mk.unwrap(v15.encrypt(dk.key), v15.encrypt(dk.iv), WrapAlg.RSA_PKCS1V15) == dk
    # An explicit OAEP hint does not fall back to v1.5.
    with pytest.raises(WrongKeyError):
        mk.unwrap(v15.encrypt(dk.key), v15.encrypt(dk.iv), WrapAlg.RSA_OAEP)


def test_rsa_oaep_wrong_key(rsa_a: RsaPair, rsa_b: RsaPair) -> None:
    wk, wiv, alg = RsaMasterKey(rsa_a.private).wrap(DataKey.generate())
    other = RsaMasterKey(rsa_b.private)
    with pytest.raises(WrongKeyError):
        other.unwrap(wk, wiv, alg)
    # Without a hint the v1.5 fallback runs too; still no DataKey.
    with pytest.raises(WrongKeyError):
        other.unwrap(wk, wiv)


def test_rsa_pkcs1v15_wrong_key_never_returns_datakey(rsa_a: RsaPair, rsa_b: RsaPair) -> None:
    # cryptography's v1.5 decryption uses implicit rejection: a wrong key
    # gives pseudo-random output, not an exception.  Deterministic trials
    # (seeded keys, seeded padding) so the outcome is reproducible.
    encryptor = PKCS1_v1_5.new(RSA.import_key(rsa_a.public_pem_spki), randfunc=seeded_randfunc(7))
    keygen = seeded_randfunc(8)
    other = RsaMasterKey(rsa_b.private)
    synthetic_lengths = set()
    for _ in range(400):
        key, iv = keygen(32), keygen(16)
        wk, wiv = encryptor.encrypt(key), encryptor.encrypt(iv)
        for hint in (None, WrapAlg.RSA_PKCS1V15):
            with pytest.raises(WrongKeyError):
                other.unwrap(wk, wiv, hint)
        synthetic_lengths.add(len(rsa_b.private.decrypt(wk, padding.PKCS1v15())))
    # Shows the premise: many different lengths, no exception.
    assert len(synthetic_lengths) > 50


def test_rsa_wrong_modulus_size_and_aes_lengths(rsa_a: RsaPair) -> None:
    mk = RsaMasterKey(rsa_a.private)
    with pytest.raises(WrongKeyError, match="4096-bit"):
        mk.unwrap(bytes(512), bytes(512))
    with pytest.raises(WrongKeyError, match="AES"):
        mk.unwrap(bytes(32), bytes(16))
    with pytest.raises(WrongKeyError, match="aes-kw"):
        mk.unwrap(bytes(256), bytes(256), WrapAlg.AES_KW)
    with pytest.raises(DamagedEnvelopeError):
        mk.unwrap(bytes(200), bytes(256))


def test_rsa_oaep_ok_key_but_damaged_iv(rsa_a: RsaPair) -> None:
    mk = RsaMasterKey(rsa_a.private)
    wk, wiv, _ = mk.wrap(DataKey.generate())
    bad_iv = wiv[:-1] + bytes([wiv[-1] ^ 1])
    with pytest.raises(DamagedEnvelopeError):
        mk.unwrap(wk, bad_iv)


def test_rsa_public_only(rsa_a: RsaPair) -> None:
    pub = serialization.load_pem_public_key(rsa_a.public_pem_spki)
    mk = RsaMasterKey(None, pub)  # type: ignore[arg-type]
    full = RsaMasterKey(rsa_a.private)
    assert mk.key_id == full.key_id
    assert not mk.can_unwrap
    assert full.can_unwrap
    dk = DataKey.generate()
    wk, wiv, _ = mk.wrap(dk)
    assert full.unwrap(wk, wiv) == dk
    with pytest.raises(WrongKeyError, match="public key"):
        mk.unwrap(wk, wiv)


def test_rsa_mismatched_pair(rsa_a: RsaPair, rsa_b: RsaPair) -> None:
    with pytest.raises(ConfigError):
        RsaMasterKey(rsa_a.private, rsa_b.private.public_key())
    assert RsaMasterKey(rsa_a.private, rsa_a.private.public_key()).key_id == (
        RsaMasterKey(rsa_a.private).key_id
    )
    with pytest.raises(ValueError, match="needs a private key"):
        RsaMasterKey(None, None)


def test_rsa_key_id(rsa_a: RsaPair, rsa_b: RsaPair) -> None:
    der = rsa_a.private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    mk = RsaMasterKey(rsa_a.private)
    assert mk.key_id == hashlib.sha256(der).hexdigest()[:16]
    assert mk.key_id != RsaMasterKey(rsa_b.private).key_id
    assert "PRIVATE" not in repr(mk)
    assert isinstance(mk, MasterKey)
