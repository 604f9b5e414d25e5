"""Offline interoperability with the real cos-python-sdk-v5.

Two levels:

- provider level, exactly the calls ``CosEncryptionClient`` makes
  (``init_data_cipher``, ``MetaHandle``, ``make_data_encrypt_adapter``,
  ``init_data_cipter_by_user`` ...), fast enough for hypothesis;
- client level: a real ``CosEncryptionClient`` whose ``send_request`` is an
  in-memory fake, so its own put/get/multipart code (Range handling
  included) runs unchanged and no network is touched.
"""

from __future__ import annotations

import base64
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from qcloud_cos import CosConfig
from qcloud_cos.cos_encryption_client import CosEncryptionClient
from qcloud_cos.crypto import AESCTRCipher, AESProvider, MetaHandle, RSAProvider

from cosencfs.crypto import (
    DataKey,
    EnvelopeCodec,
    ObjectFormat,
    WrapAlg,
    classify,
    decrypt,
    inspect_envelope,
    load_aes_key_file,
    load_rsa_key_files,
)
from tests.crypto._crypto_helpers import (
    FakeCos,
    FakeResponse,
    RsaPair,
    ours_to_sdk_headers,
    sdk_metadata_to_ours,
)

BUCKET = "examplebucket-1250000000"


@dataclass
class Setup:
    kind: str
    make_provider: Callable[[], Any]
    codec: EnvelopeCodec
    # The values-configured RSAProvider decrypts with PKCS#1 v1.5 only, so it
    # cannot read OAEP envelopes (cosencfs' or the file-based SDK's).
    sdk_reads_cosencfs: bool
    sdk_wrap: WrapAlg


@pytest.fixture(scope="module", params=["aes", "rsa-files", "rsa-values"])
def sdk(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, rsa_a: RsaPair
) -> Setup:
    kind = request.param
    keydir = tmp_path_factory.mktemp(f"keys-{kind}")
    if kind == "aes":
        # Written the way the SDK writes its own key file.
        path = keydir / ".aes_key.pem"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with open(fd, "wb") as f:
            f.write(base64.b64encode(os.urandom(32)))
        return Setup(
            kind,
            lambda: AESProvider(aes_key_path=str(path), cipher=AESCTRCipher()),
            EnvelopeCodec(load_aes_key_file(path)),
            True,
            WrapAlg.SDK_AES_CTR,
        )
    pub, priv = rsa_a.write(keydir)
    codec = EnvelopeCodec(load_rsa_key_files(pub, priv))
    if kind == "rsa-files":
        pair = RSAProvider.get_rsa_key_pair_path(str(pub), str(priv))
        return Setup(
            kind,
            lambda: RSAProvider(pair, cipher=AESCTRCipher()),
            codec,
            True,
            WrapAlg.RSA_OAEP,
        )
    values = RSAProvider.get_rsa_key_pair(rsa_a.public_pem_spki, rsa_a.private_pem_pkcs1)
    return Setup(
        kind,
        lambda: RSAProvider(values, cipher=AESCTRCipher()),
        codec,
        False,
        WrapAlg.RSA_PKCS1V15,
    )


def _client(sdk: Setup) -> tuple[CosEncryptionClient, FakeCos, Any]:
    provider = sdk.make_provider()
    conf = CosConfig(Region="ap-guangzhou", SecretId="AKIDtest", SecretKey="test")
    client = CosEncryptionClient(conf, provider)
    fake = FakeCos()
    fake.install(client)
    return client, fake, provider


def _sdk_encrypt(provider: Any, plain: bytes) -> tuple[dict[str, str], bytes]:
    """CosEncryptionClient.put_object, minus the HTTP request."""
    encrypt_key, encrypt_start = provider.init_data_cipher()
    headers = MetaHandle(encrypt_key, encrypt_start).set_object_meta({})
    adapter = provider.make_data_encrypt_adapter(plain)
    body = adapter.read(len(plain)) if plain else b""
    return sdk_metadata_to_ours(headers), bytes(body)


def _sdk_decrypt_range(
    provider: Any, metadata: dict[str, str], body: bytes, first: int, last: int
) -> bytes:
    """CosEncryptionClient.get_object's crypto for Range bytes=first-last."""
    ek, eiv = MetaHandle().get_object_meta(ours_to_sdk_headers(metadata))
    real_start = provider.adjust_read_offset(first)
    offset = first - real_start
    provider.init_data_cipter_by_user(ek, eiv, real_start)
    plain = provider.data_cipher.decrypt(body[real_start : last + 1])
    return bytes(plain[offset:])


# -- SDK -> cosencfs -----------------------------------------------------------------


def test_sdk_put_object_read_by_cosencfs(sdk: Setup) -> None:
    client, fake, _ = _client(sdk)
    plain = os.urandom(100_003)
    client.put_object(Bucket=BUCKET, Body=plain, Key="dir/file.bin")
    metadata, body = fake.metadata("dir/file.bin"), fake.body("dir/file.bin")
    assert set(metadata) == {"client-side-encryption-key", "client-side-encryption-iv"}
    assert classify(metadata) is ObjectFormat.SDK
    assert len(body) == len(plain)
    assert body != plain
    dk = sdk.codec.open(metadata, key="dir/file.bin")
    assert decrypt(dk, 0, body) == plain
    for start, end in ((0, 1), (1, 17), (15, 33), (16, 32), (4095, 4099), (99_999, 100_003)):
        assert decrypt(dk, start, body[start:end]) == plain[start:end]


def test_sdk_put_file_object_read_by_cosencfs(sdk: Setup, tmp_path: Path) -> None:
    # A file body takes the adapter's seek/tell branch.
    client, fake, _ = _client(sdk)
    plain = os.urandom(70_000)
    src = tmp_path / "src"
    src.write_bytes(plain)
    with open(src, "rb") as fp:
        client.put_object(Bucket=BUCKET, Body=fp, Key="f")
    dk = sdk.codec.open(fake.metadata("f"), key="f")
    assert decrypt(dk, 0, fake.body("f")) == plain


@settings(max_examples=60, deadline=None, database=None)
@given(data=st.data())
def test_sdk_objects_any_range(sdk: Setup, data: st.DataObject) -> None:
    provider = sdk.make_provider()
    plain = data.draw(st.binary(min_size=0, max_size=3000), label="plain")
    metadata, body = _sdk_encrypt(provider, plain)
    dk = sdk.codec.open(metadata)
    assert decrypt(dk, 0, body) == plain
    for _ in range(5):
        start = data.draw(st.integers(0, len(plain)), label="start")
        end = data.draw(st.integers(start, len(plain)), label="end")
        assert decrypt(dk, start, body[start:end]) == plain[start:end]


def test_sdk_multipart_read_by_cosencfs(sdk: Setup) -> None:
    # The SDK shares one CTR stream across parts (serial only).  Every part
    # the SDK produced equals what cosencfs computes from the part's offset,
    # so cosencfs can produce SDK-identical parts independently.
    client, fake, _ = _client(sdk)
    sizes = [16 * 1000, 4096, 7, 12_345, 1]
    plain = os.urandom(sum(sizes))
    upload = client.create_multipart_upload(Bucket=BUCKET, Key="big")
    upload_id = upload["UploadId"]
    offsets = []
    pos = 0
    for number, size in enumerate(sizes, start=1):
        client.upload_part(
            Bucket=BUCKET,
            Key="big",
            Body=plain[pos : pos + size],
            PartNumber=number,
            UploadId=upload_id,
        )
        offsets.append(pos)
        pos += size
    fake.complete(upload_id, "big")
    metadata = fake.metadata("big")
    dk = sdk.codec.open(metadata, key="big")
    body = fake.body("big")
    assert decrypt(dk, 0, body) == plain
    parts = fake.uploads[upload_id][1]
    for number, (offset, size) in enumerate(zip(offsets, sizes, strict=True), start=1):
        assert parts[number] == decrypt(dk, offset, plain[offset : offset + size])


def test_sdk_envelope_wrap_detected(sdk: Setup) -> None:
    metadata, _ = _sdk_encrypt(sdk.make_provider(), b"x" * 10)
    info = inspect_envelope(metadata)
    assert info.format is ObjectFormat.SDK
    key_len = len(base64.b64decode(metadata["client-side-encryption-key"]))
    assert key_len == (32 if sdk.sdk_wrap is WrapAlg.SDK_AES_CTR else 256)


# -- cosencfs -> SDK -----------------------------------------------------------------


def _cosencfs_object(
    sdk: Setup, plain: bytes, *, part_size: int | None = None
) -> tuple[dict[str, str], bytes, DataKey]:
    dk = DataKey.generate()
    metadata = sdk.codec.seal(dk)
    if part_size is None:
        body = decrypt(dk, 0, plain)
    else:
        # Parts encrypted independently and in reverse order, as parallel
        # multipart upload does; part boundaries are multiples of 16.
        assert part_size % 16 == 0
        pieces = {}
        for off in reversed(range(0, len(plain), part_size)):
            pieces[off] = decrypt(dk, off, plain[off : off + part_size])
        body = b"".join(pieces[o] for o in sorted(pieces))
    return metadata, body, dk


def _sdk_get(client: CosEncryptionClient, key: str, out: Path, **kwargs: str) -> bytes:
    try:
        client.get_object(Bucket=BUCKET, Key=key, **kwargs)["Body"].get_stream_to_file(str(out))
    except (ValueError, struct.error):  # the values provider's bogus key/IV lengths
        return b"<error>"
    return out.read_bytes()


def test_cosencfs_object_read_by_sdk_get_object(sdk: Setup, tmp_path: Path) -> None:
    client, fake, _ = _client(sdk)
    plain = os.urandom(50_001)
    metadata, body, _ = _cosencfs_object(sdk, plain, part_size=16 * 1024)
    fake.put_raw("obj", {**metadata, "mode": "33188"}, body)
    out = tmp_path / "out"
    if not sdk.sdk_reads_cosencfs:
        assert _sdk_get(client, "obj", out) != plain
        return
    assert _sdk_get(client, "obj", out) == plain
    ranges = [(0, 0), (1, 1), (15, 16), (16, 31), (17, 1000), (5, 50_000), (50_000, 50_000)]
    for first, last in ranges:
        got = _sdk_get(client, "obj", out, Range=f"bytes={first}-{last}")
        assert got == plain[first : last + 1], (first, last)


@settings(max_examples=60, deadline=None, database=None)
@given(data=st.data())
def test_cosencfs_objects_any_range_via_sdk_provider(sdk: Setup, data: st.DataObject) -> None:
    if not sdk.sdk_reads_cosencfs:  # see test_values_provider_cannot_read_oaep
        return
    provider = sdk.make_provider()
    plain = data.draw(st.binary(min_size=1, max_size=3000), label="plain")
    metadata, body, _ = _cosencfs_object(sdk, plain)
    for _ in range(4):
        first = data.draw(st.integers(0, len(plain) - 1), label="first")
        last = data.draw(st.integers(first, len(plain) - 1), label="last")
        assert _sdk_decrypt_range(provider, metadata, body, first, last) == plain[first : last + 1]


def test_cosencfs_hardened_objects_not_readable_by_sdk(tmp_path: Path) -> None:
    # aes-kw is the option the SDK cannot read: its AES-CTR "unwrap" of the
    # 40/24-byte values yields a 40-byte key, which AES rejects.
    path = tmp_path / "k"
    path.write_bytes(base64.b64encode(os.urandom(32)))
    path.chmod(0o600)
    codec = EnvelopeCodec(load_aes_key_file(path, hardened=True))
    metadata = codec.seal(DataKey.generate())
    provider = AESProvider(aes_key_path=str(path), cipher=AESCTRCipher())
    ek, eiv = MetaHandle().get_object_meta(ours_to_sdk_headers(metadata))
    with pytest.raises((ValueError, struct.error)):
        provider.init_data_cipter_by_user(ek, eiv, 0)


def test_values_provider_cannot_read_oaep(rsa_a: RsaPair) -> None:
    # The SDK's get_rsa_key_pair provider decrypts only PKCS#1 v1.5; OAEP
    # envelopes (cosencfs, or the SDK's own file-based provider) give it a
    # bogus key.  cosencfs reads both.
    values = RSAProvider(
        RSAProvider.get_rsa_key_pair(rsa_a.public_pem_spki, rsa_a.private_pem_pkcs1),
        cipher=AESCTRCipher(),
    )
    from cosencfs.crypto import RsaMasterKey

    codec = EnvelopeCodec(RsaMasterKey(rsa_a.private))
    plain = os.urandom(64)
    for _ in range(5):
        dk = DataKey.generate()
        metadata = codec.seal(dk)
        try:
            got = _sdk_decrypt_range(values, metadata, decrypt(dk, 0, plain), 0, 63)
        except (ValueError, struct.error):
            got = b""
        assert got != plain


def test_sdk_reads_cosencfs_response_chunks_of_any_size(sdk: Setup, tmp_path: Path) -> None:
    # Whole-object GETs do not depend on chunk sizes (only ranged ones do,
    # see test_crypto_sdk_weaknesses).
    client, fake, _ = _client(sdk)
    plain = os.urandom(1000)
    metadata, body, _ = _cosencfs_object(sdk, plain)
    fake.put_raw("o", metadata, body)
    fake.max_chunk = 7
    got = _sdk_get(client, "o", tmp_path / "o")
    assert (got == plain) is sdk.sdk_reads_cosencfs


def test_fake_response_is_faithful() -> None:
    # Guard for the helper the tests above rely on.
    rt = FakeResponse(b"abcdefghij", max_chunk=3)
    assert next(rt.iter_content(100)) == b"abc"
    assert next(rt.iter_content(2)) == b"de"
    assert b"".join(rt.iter_content(100)) == b"fghij"
    assert rt.headers == {"Content-Length": "10"}


def test_sdk_rsa_providers_do_not_read_each_other(rsa_a: RsaPair, tmp_path: Path) -> None:
    # docs/format.md section 7: the SDK's two RSA provider kinds each read
    # only their own objects; cosencfs reads both.
    pub, priv = rsa_a.write(tmp_path)
    files = RSAProvider(
        RSAProvider.get_rsa_key_pair_path(str(pub), str(priv)), cipher=AESCTRCipher()
    )
    values = RSAProvider(
        RSAProvider.get_rsa_key_pair(rsa_a.public_pem_spki, rsa_a.private_pem_pkcs1),
        cipher=AESCTRCipher(),
    )
    codec = EnvelopeCodec(load_rsa_key_files(pub, priv))
    plain = os.urandom(100)
    v_meta, v_body = _sdk_encrypt(values, plain)
    with pytest.raises(ValueError, match="Incorrect decryption"):
        _sdk_decrypt_range(files, v_meta, v_body, 0, 99)
    dk = codec.open(v_meta)
    assert decrypt(dk, 0, v_body) == plain
    f_meta, f_body = _sdk_encrypt(files, plain)
    try:
        got = _sdk_decrypt_range(values, f_meta, f_body, 0, 99)
    except (ValueError, struct.error):
        got = b""
    assert got != plain
    assert decrypt(codec.open(f_meta), 0, f_body) == plain
