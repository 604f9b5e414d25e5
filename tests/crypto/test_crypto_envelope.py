"""Envelope fields, format detection and error reporting."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

import pytest
from Crypto.Cipher import AES, PKCS1_v1_5
from Crypto.PublicKey import RSA
from Crypto.Util import Counter
from hypothesis import given, settings
from hypothesis import strategies as st
from qcloud_cos.crypto import MetaHandle

from cosencfs.crypto import (
    ENVELOPE_FIELDS,
    AesMasterKey,
    DataKey,
    EnvelopeCodec,
    ObjectFormat,
    RsaMasterKey,
    WrapAlg,
    classify,
    extract_envelope,
    inspect_envelope,
    is_envelope_field,
    key_check_value,
    strip_envelope,
)
from cosencfs.errors import (
    CryptoError,
    DamagedEnvelopeError,
    ForeignFormatError,
    NotEncryptedError,
    WrongKeyError,
)
from tests.crypto._crypto_helpers import RsaPair, sdk_metadata_to_ours, seeded_randfunc

MASTER = bytes(range(0x20, 0x40))
FIXED_DK = DataKey(bytes(range(32)), bytes(range(0xA0, 0xB0)))
OBJ = "photos/2024/cat.jpg"


def _expected_kcv(dk: DataKey) -> str:
    tag = hmac.new(dk.key, b"cosencfs-kcv-v1" + dk.iv, hashlib.sha256).digest()[:16]
    return base64.b64encode(tag).decode()


def _assert_no_secrets(exc: BaseException, *secrets: bytes) -> None:
    text = str(exc) + repr(exc)
    for s in secrets:
        assert s.hex() not in text
        assert base64.b64encode(s).decode() not in text


# -- sealing: exact field values ---------------------------------------------


def test_seal_kat_matches_sdk_metahandle() -> None:
    # Expected SDK fields computed the way the SDK does it: pycryptodome
    # AES-CTR from counter 0, then MetaHandle.set_object_meta.
    ed = AES.new(MASTER, AES.MODE_CTR, counter=Counter.new(128, initial_value=0))
    wk, wiv = ed.encrypt(FIXED_DK.key), ed.encrypt(FIXED_DK.iv)
    sdk_fields = sdk_metadata_to_ours(MetaHandle(wk, wiv).set_object_meta({}))

    sealed = EnvelopeCodec(AesMasterKey(MASTER)).seal(FIXED_DK)
    kid = hmac.new(MASTER, b"cosencfs key id v1", hashlib.sha256).hexdigest()[:16]
    assert sealed == {
        **sdk_fields,
        "cosencfs-version": "1",
        "cosencfs-wrap": "aes-ctr",
        "cosencfs-kid": kid,
        "cosencfs-kcv": _expected_kcv(FIXED_DK),
    }
    assert set(sdk_fields) == {"client-side-encryption-key", "client-side-encryption-iv"}
    assert all(isinstance(v, str) for v in sealed.values())
    assert set(sealed) <= ENVELOPE_FIELDS


def test_key_check_value_kat() -> None:
    assert key_check_value(FIXED_DK) == _expected_kcv(FIXED_DK)
    other = DataKey(FIXED_DK.key, bytes(16))
    assert key_check_value(other) != key_check_value(FIXED_DK)


def test_seal_hardened_and_rsa(rsa_a: RsaPair) -> None:
    for master, wrap in (
        (AesMasterKey(MASTER, hardened=True), "aes-kw"),
        (RsaMasterKey(rsa_a.private), "rsa-oaep"),
    ):
        codec = EnvelopeCodec(master)
        dk = DataKey.generate()
        sealed = codec.seal(dk)
        assert sealed["cosencfs-wrap"] == wrap
        assert sealed["cosencfs-kid"] == master.key_id
        assert classify(sealed) is ObjectFormat.COSENCFS
        assert codec.open(sealed, key=OBJ) == dk


@settings(max_examples=100, deadline=None, database=None)
@given(key=st.binary(min_size=32, max_size=32), iv=st.binary(min_size=16, max_size=16))
def test_roundtrip(key: bytes, iv: bytes) -> None:
    dk = DataKey(key, iv)
    for hardened in (False, True):
        codec = EnvelopeCodec(AesMasterKey(MASTER, hardened=hardened))
        sealed = codec.seal(dk)
        assert codec.open(sealed) == dk
        # The SDK's two fields alone are an SDK-format envelope that opens too
        # (for aes-kw only via cosencfs, but the format is still "SDK").
        sdk_only = {
            k: sealed[k] for k in ("client-side-encryption-key", "client-side-encryption-iv")
        }
        assert classify(sdk_only) is ObjectFormat.SDK
        assert codec.open(sdk_only) == dk


# -- classification ------------------------------------------------------------


def _sealed() -> dict[str, str]:
    return EnvelopeCodec(AesMasterKey(MASTER)).seal(DataKey.generate())


def test_classify_plain() -> None:
    assert classify({}) is ObjectFormat.PLAIN
    assert classify({"mode": "33188", "uid": "0", "mtime": "1700000000"}) is ObjectFormat.PLAIN


def test_classify_sdk_and_ours() -> None:
    sealed = _sealed()
    assert classify(sealed) is ObjectFormat.COSENCFS
    sdk = {k: v for k, v in sealed.items() if not k.startswith("cosencfs-")}
    assert classify(sdk) is ObjectFormat.SDK
    # Names are case-insensitive (HTTP headers).
    assert classify({k.upper(): v for k, v in sealed.items()}) is ObjectFormat.COSENCFS
    assert classify({**sdk, "mode": "33188"}) is ObjectFormat.SDK


JAVA_ENVELOPE = {
    # cos-java-sdk-v5 ContentCryptoMaterial.toObjectMetadata
    "client-side-encryption-key": base64.b64encode(os.urandom(256)).decode(),
    "client-side-encryption-start": base64.b64encode(os.urandom(256)).decode(),
    "client-side-encryption-cek-alg": "AES/CTR/NoPadding",
    "client-side-encryption-wrap-alg": "RSA/ECB/OAEPWithSHA-256AndMGF1Padding",
    "client-side-encryption-matdesc": '{"desc":"x"}',
}
GO_ENVELOPE = {
    # cos-go-sdk-v5 crypto: key, start, cek-alg, wrap-alg, matdesc, lengths
    "Client-Side-Encryption-Key": base64.b64encode(os.urandom(64)).decode(),
    "Client-Side-Encryption-Start": base64.b64encode(os.urandom(64)).decode(),
    "Client-Side-Encryption-Cek-Alg": "AES/CTR/NoPadding",
    "Client-Side-Encryption-Wrap-Alg": "KMS/TencentCloud",
    "Client-Side-Encryption-Unencrypted-Content-Length": "1234",
    "Client-Side-Encryption-Data-Size": "1234",
    "Client-Side-Encryption-Part-Size": "5242880",
}
JAVA_LEGACY_ENVELOPE = {
    # the AWS-derived envelope of older Java SDKs, stored as x-cos-meta-x-cos-*
    "x-cos-key-v2": base64.b64encode(os.urandom(40)).decode(),
    "x-cos-iv": base64.b64encode(os.urandom(12)).decode(),
    "x-cos-cek-alg": "AES/GCM/NoPadding",
    "x-cos-wrap-alg": "AESWrap",
    "x-cos-tag-len": "128",
    "x-cos-matdesc": "{}",
}


@pytest.mark.parametrize("envelope", [JAVA_ENVELOPE, GO_ENVELOPE, JAVA_LEGACY_ENVELOPE])
def test_foreign(envelope: dict[str, str]) -> None:
    assert classify(envelope) is ObjectFormat.FOREIGN
    with pytest.raises(ForeignFormatError) as info:
        EnvelopeCodec(AesMasterKey(MASTER)).open({**envelope, "mode": "33188"}, key=OBJ)
    assert info.value.key == OBJ
    assert OBJ in str(info.value)
    assert "Java/Go" in str(info.value)
    for value in envelope.values():
        if len(value) > 40:  # wrapped keys are not echoed
            assert value not in str(info.value)


def test_foreign_single_marker() -> None:
    # A Python-SDK-looking envelope plus one foreign field is not ours.
    sealed = _sealed()
    for name in (
        "client-side-encryption-start",
        "client-side-encryption-cek-alg",
        "client-side-encryption-whatever-next",
        "x-cos-key-v2",
    ):
        assert classify({**sealed, name: "x"}) is ObjectFormat.FOREIGN


def test_foreign_message_names_algorithms() -> None:
    with pytest.raises(ForeignFormatError, match="AES/CTR/NoPadding"):
        EnvelopeCodec(AesMasterKey(MASTER)).open(JAVA_ENVELOPE, key=OBJ)


def _damaged_cases() -> list[tuple[str, dict[str, str]]]:
    sealed = _sealed()
    sdk = {k: sealed[k] for k in ("client-side-encryption-key", "client-side-encryption-iv")}
    raw_key = base64.b64decode(sdk["client-side-encryption-key"])
    return [
        ("missing iv", {"client-side-encryption-key": sdk["client-side-encryption-key"]}),
        ("missing key", {"client-side-encryption-iv": sdk["client-side-encryption-iv"]}),
        ("bad base64 key", {**sdk, "client-side-encryption-key": "not*base64!"}),
        ("bad base64 iv", {**sdk, "client-side-encryption-iv": "AAAA="}),
        (
            "truncated key",
            {**sdk, "client-side-encryption-key": base64.b64encode(raw_key[:-1]).decode()},
        ),
        ("empty key", {**sdk, "client-side-encryption-key": ""}),
        (
            "truncated ours",
            {**sealed, "client-side-encryption-key": base64.b64encode(raw_key[:20]).decode()},
        ),
        ("unknown version", {**sealed, "cosencfs-version": "2"}),
        ("missing version", {k: v for k, v in sealed.items() if k != "cosencfs-version"}),
        ("unknown wrap", {**sealed, "cosencfs-wrap": "rot13"}),
        ("wrap/length mismatch", {**sealed, "cosencfs-wrap": "aes-kw"}),
        ("bad kcv", {**sealed, "cosencfs-kcv": "AAAA"}),
        ("missing kcv", {k: v for k, v in sealed.items() if k != "cosencfs-kcv"}),
        ("bad kid", {**sealed, "cosencfs-kid": "XYZ"}),
        ("ours without key/iv", {k: v for k, v in sealed.items() if k.startswith("cosencfs-")}),
    ]


@pytest.mark.parametrize(("case", "metadata"), _damaged_cases())
def test_damaged(case: str, metadata: dict[str, str]) -> None:
    assert classify(metadata) is ObjectFormat.DAMAGED, case
    info = inspect_envelope(metadata)
    assert info.format is ObjectFormat.DAMAGED
    assert info.reason
    with pytest.raises(DamagedEnvelopeError) as exc:
        EnvelopeCodec(AesMasterKey(MASTER)).open(metadata, key=OBJ)
    assert exc.value.key == OBJ
    assert OBJ in str(exc.value)
    assert info.reason in str(exc.value)


def test_plain_raises_not_encrypted() -> None:
    with pytest.raises(NotEncryptedError) as exc:
        EnvelopeCodec(AesMasterKey(MASTER)).open({"mode": "33188"}, key=OBJ)
    assert exc.value.key == OBJ


# -- wrong master key ------------------------------------------------------------


def test_wrong_aes_ctr_key_caught_for_cosencfs_objects() -> None:
    writer, reader = AesMasterKey(MASTER), AesMasterKey(os.urandom(32))
    dk = DataKey.generate()
    sealed = EnvelopeCodec(writer).seal(dk)
    with pytest.raises(WrongKeyError) as exc:
        EnvelopeCodec(reader).open(sealed, key=OBJ)
    message = str(exc.value)
    assert "key check failed" in message
    assert writer.key_id in message
    assert reader.key_id in message
    assert OBJ in message
    _assert_no_secrets(exc.value, dk.key, dk.iv, MASTER)


def test_kcv_catches_garbage_even_with_forged_key_id() -> None:
    # Someone copies our key id onto an envelope wrapped under another key:
    # the aes-ctr unwrap "succeeds" with a garbage key and the KCV rejects it.
    writer, reader = AesMasterKey(MASTER), AesMasterKey(os.urandom(32))
    sealed = EnvelopeCodec(writer).seal(DataKey.generate())
    forged = {**sealed, "cosencfs-kid": reader.key_id}
    with pytest.raises(DamagedEnvelopeError, match="key check failed"):
        EnvelopeCodec(reader).open(forged, key=OBJ)


def test_altered_wrapped_key_caught_by_kcv() -> None:
    codec = EnvelopeCodec(AesMasterKey(MASTER))
    sealed = codec.seal(DataKey.generate())
    raw = bytearray(base64.b64decode(sealed["client-side-encryption-key"]))
    raw[5] ^= 0x40
    altered = {**sealed, "client-side-encryption-key": base64.b64encode(bytes(raw)).decode()}
    with pytest.raises(DamagedEnvelopeError):
        codec.open(altered, key=OBJ)


def test_wrong_aes_ctr_key_undetectable_for_sdk_objects() -> None:
    # Documented: an SDK-written aes-ctr envelope has no check value.
    sealed = EnvelopeCodec(AesMasterKey(MASTER)).seal(FIXED_DK)
    sdk = {k: sealed[k] for k in ("client-side-encryption-key", "client-side-encryption-iv")}
    got = EnvelopeCodec(AesMasterKey(os.urandom(32))).open(sdk, key=OBJ)
    assert got != FIXED_DK


def test_wrong_key_aes_kw() -> None:
    dk = DataKey.generate()
    sealed = EnvelopeCodec(AesMasterKey(MASTER, hardened=True)).seal(dk)
    other = EnvelopeCodec(AesMasterKey(os.urandom(32), hardened=True))
    with pytest.raises(WrongKeyError):
        other.open(sealed, key=OBJ)
    # Without the cosencfs fields the key wrap itself detects it.
    sdk = {k: sealed[k] for k in ("client-side-encryption-key", "client-side-encryption-iv")}
    with pytest.raises(WrongKeyError) as exc:
        other.open(sdk, key=OBJ)
    assert OBJ in str(exc.value)
    _assert_no_secrets(exc.value, dk.key, dk.iv, MASTER)


def test_wrong_key_rsa_oaep(rsa_a: RsaPair, rsa_b: RsaPair) -> None:
    sealed = EnvelopeCodec(RsaMasterKey(rsa_a.private)).seal(DataKey.generate())
    other = EnvelopeCodec(RsaMasterKey(rsa_b.private))
    with pytest.raises(WrongKeyError):
        other.open(sealed, key=OBJ)
    sdk = {k: sealed[k] for k in ("client-side-encryption-key", "client-side-encryption-iv")}
    with pytest.raises(WrongKeyError):
        other.open(sdk, key=OBJ)


def test_wrong_key_rsa_pkcs1v15_with_kcv(rsa_a: RsaPair, rsa_b: RsaPair) -> None:
    # A v1.5 envelope carrying a check value (and, worst case, a forged key
    # id): over many trials a wrong key never yields a DataKey.
    enc = PKCS1_v1_5.new(RSA.import_key(rsa_a.public_pem_spki), randfunc=seeded_randfunc(11))
    keygen = seeded_randfunc(12)
    reader = RsaMasterKey(rsa_b.private)
    codec = EnvelopeCodec(reader)
    for _ in range(300):
        dk = DataKey(keygen(32), keygen(16))
        metadata = {
            "client-side-encryption-key": base64.b64encode(enc.encrypt(dk.key)).decode(),
            "client-side-encryption-iv": base64.b64encode(enc.encrypt(dk.iv)).decode(),
            "cosencfs-version": "1",
            "cosencfs-wrap": WrapAlg.RSA_PKCS1V15.value,
            "cosencfs-kid": reader.key_id,
            "cosencfs-kcv": key_check_value(dk),
        }
        with pytest.raises((WrongKeyError, DamagedEnvelopeError)):
            codec.open(metadata, key=OBJ)
        sdk = {k: metadata[k] for k in ("client-side-encryption-key", "client-side-encryption-iv")}
        with pytest.raises(WrongKeyError):
            codec.open(sdk, key=OBJ)


def test_wrong_kind_of_master(rsa_a: RsaPair) -> None:
    aes_sealed = EnvelopeCodec(AesMasterKey(MASTER)).seal(DataKey.generate())
    rsa_sealed = EnvelopeCodec(RsaMasterKey(rsa_a.private)).seal(DataKey.generate())
    with pytest.raises(WrongKeyError):
        EnvelopeCodec(RsaMasterKey(rsa_a.private)).open(aes_sealed, key=OBJ)
    with pytest.raises(WrongKeyError):
        EnvelopeCodec(AesMasterKey(MASTER)).open(rsa_sealed, key=OBJ)
    for md in (aes_sealed, rsa_sealed):
        sdk = {k: md[k] for k in ("client-side-encryption-key", "client-side-encryption-iv")}
        other = AesMasterKey(MASTER) if md is rsa_sealed else RsaMasterKey(rsa_a.private)
        with pytest.raises(WrongKeyError):
            EnvelopeCodec(other).open(sdk, key=OBJ)


def test_errors_are_crypto_errors_with_key() -> None:
    for md in ({}, JAVA_ENVELOPE, {"client-side-encryption-key": "AAAA"}):
        with pytest.raises(CryptoError) as exc:
            EnvelopeCodec(AesMasterKey(MASTER)).open(md, key=OBJ)
        assert exc.value.key == OBJ


# -- rotation, extra readers, stripping -------------------------------------------


def test_rewrap_keeps_body_key_and_attributes(rsa_a: RsaPair) -> None:
    old = EnvelopeCodec(AesMasterKey(MASTER))
    dk = DataKey.generate()
    metadata = {**old.seal(dk), "mode": "33188", "mtime": "1700000000.5"}
    chain = [
        EnvelopeCodec(RsaMasterKey(rsa_a.private)),
        EnvelopeCodec(AesMasterKey(os.urandom(32), hardened=True)),
        EnvelopeCodec(AesMasterKey(os.urandom(16))),
    ]
    current = old
    for new in chain:
        metadata = current.rewrap(metadata, new, key=OBJ)
        assert metadata["mode"] == "33188"
        assert metadata["mtime"] == "1700000000.5"
        assert metadata["cosencfs-kid"] == new.key_id
        assert new.open(metadata, key=OBJ) == dk
        with pytest.raises(WrongKeyError):
            old.open(metadata, key=OBJ)
        current = new


def test_also_read_picks_key_by_id() -> None:
    old_key, new_key = AesMasterKey(os.urandom(32)), AesMasterKey(os.urandom(32), hardened=True)
    dk_old, dk_new = DataKey.generate(), DataKey.generate()
    old_md = EnvelopeCodec(old_key).seal(dk_old)
    codec = EnvelopeCodec(new_key, also_read=[old_key])
    assert codec.open(old_md) == dk_old
    new_md = codec.seal(dk_new)
    assert new_md["cosencfs-kid"] == new_key.key_id
    assert codec.open(new_md) == dk_new
    with pytest.raises(WrongKeyError):
        EnvelopeCodec(new_key).open(old_md)
    # SDK-format envelopes carry no key id: the primary is tried first, then
    # the others.  40/24-byte values mean aes-kw, which the old key rejects
    # by itself, so the second reader opens it.
    sdk = {k: new_md[k] for k in ("client-side-encryption-key", "client-side-encryption-iv")}
    assert EnvelopeCodec(old_key, also_read=[new_key]).open(sdk) == dk_new
    with pytest.raises(WrongKeyError):
        EnvelopeCodec(old_key).open(sdk)


def test_strip_and_extract_envelope() -> None:
    sealed = _sealed()
    metadata = {**sealed, "Mode": "33188", "uid": "1000", **{"client-side-encryption-cek-alg": "x"}}
    stripped = strip_envelope(metadata)
    assert stripped == {"Mode": "33188", "uid": "1000"}
    assert extract_envelope(metadata) == {**sealed, "client-side-encryption-cek-alg": "x"}
    for name in sealed:
        assert name in ENVELOPE_FIELDS
        assert is_envelope_field(name.upper())
    for name in JAVA_ENVELOPE | JAVA_LEGACY_ENVELOPE:
        assert is_envelope_field(name)
    assert not is_envelope_field("mode")
    assert not is_envelope_field("cosencfs-something-else")
