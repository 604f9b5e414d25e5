"""Reproductions of the SDK behaviours docs/format.md says cosencfs avoids.

Each test pins a claim about cos-python-sdk-v5 (1.9.44) to the SDK's real
code, run offline.  If an SDK upgrade fixes one, its test fails and the
doc needs updating.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import pytest
from qcloud_cos import CosConfig
from qcloud_cos.cos_comm import client_can_retry
from qcloud_cos.cos_encryption_client import CosEncryptionClient
from qcloud_cos.cos_exception import CosClientError
from qcloud_cos.crypto import AESCTRCipher, AESProvider, RSAProvider

from cosencfs.crypto import EnvelopeCodec, decrypt, load_aes_key_file
from tests.crypto._crypto_helpers import FakeCos, FakeResponse

BUCKET = "examplebucket-1250000000"


@pytest.fixture
def aes_key_path(tmp_path: Path) -> Path:
    path = tmp_path / "aes.key"
    path.write_bytes(base64.b64encode(os.urandom(32)))
    path.chmod(0o600)
    return path


def _client(aes_key_path: Path) -> tuple[CosEncryptionClient, FakeCos]:
    provider = AESProvider(aes_key_path=str(aes_key_path), cipher=AESCTRCipher())
    conf = CosConfig(Region="ap-guangzhou", SecretId="AKIDtest", SecretKey="test")
    client = CosEncryptionClient(conf, provider)
    fake = FakeCos()
    fake.install(client)
    return client, fake


def _multipart(client: CosEncryptionClient, key: str, parts: list[tuple[int, bytes]]) -> str:
    upload_id: str = client.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    for number, data in parts:
        client.upload_part(Bucket=BUCKET, Key=key, Body=data, PartNumber=number, UploadId=upload_id)
    return upload_id


def test_multipart_retried_part_corrupts_object(aes_key_path: Path) -> None:
    client, fake = _client(aes_key_path)
    p1, p2 = os.urandom(4096), os.urandom(4096)
    upload_id = _multipart(client, "k", [(1, p1)])
    first_attempt = fake.uploads[upload_id][1][1]
    # The part "failed"; the caller retries it.  The shared CTR stream has
    # moved on, so the retry is encrypted with part 2's keystream.
    client.upload_part(Bucket=BUCKET, Key="k", Body=p1, PartNumber=1, UploadId=upload_id)
    assert fake.uploads[upload_id][1][1] != first_attempt
    client.upload_part(Bucket=BUCKET, Key="k", Body=p2, PartNumber=2, UploadId=upload_id)
    fake.complete(upload_id, "k")
    dk = EnvelopeCodec(load_aes_key_file(aes_key_path)).open(fake.metadata("k"))
    assert decrypt(dk, 0, fake.body("k")) != p1 + p2


def test_multipart_out_of_order_parts_corrupt_object(aes_key_path: Path) -> None:
    # What a multi-threaded upload_file does when threads interleave.
    client, fake = _client(aes_key_path)
    p1, p2 = os.urandom(4096), os.urandom(4096)
    upload_id = _multipart(client, "k", [(2, p2), (1, p1)])
    fake.complete(upload_id, "k")
    dk = EnvelopeCodec(load_aes_key_file(aes_key_path)).open(fake.metadata("k"))
    plain = decrypt(dk, 0, fake.body("k"))
    assert plain[:4096] != p1
    assert plain[4096:] != p2


def test_adapters_share_one_cipher_object(aes_key_path: Path) -> None:
    # make_data_encrypt_adapter uses copy.copy: a shallow copy that shares
    # the underlying pycryptodome CTR object, hence the shared stream.
    provider = AESProvider(aes_key_path=str(aes_key_path), cipher=AESCTRCipher())
    provider.init_data_cipher()
    a = provider.make_data_encrypt_adapter(b"a" * 16)
    b = provider.make_data_encrypt_adapter(b"b" * 16)
    assert a._data_cipher is not b._data_cipher
    assert a._data_cipher._AESCTRCipher__cipher is b._data_cipher._AESCTRCipher__cipher


def test_default_cipher_shared_between_providers(aes_key_path: Path, tmp_path: Path) -> None:
    # cipher=AESCTRCipher() is a default argument, evaluated once: every
    # provider built with the default shares one data cipher (and its state).
    p1 = AESProvider(aes_key_path=str(aes_key_path))
    p2 = AESProvider(aes_key_path=str(aes_key_path))
    assert p1.data_cipher is p2.data_cipher
    r = RSAProvider.__init__.__defaults__
    assert r is not None
    assert any(isinstance(d, AESCTRCipher) for d in r)


def test_put_object_replaces_user_metadata(aes_key_path: Path) -> None:
    client, fake = _client(aes_key_path)
    client.put_object(Bucket=BUCKET, Body=b"hello", Key="k", Metadata={"x-cos-meta-mode": "33188"})
    metadata = fake.metadata("k")
    assert "mode" not in metadata
    assert set(metadata) == {"client-side-encryption-key", "client-side-encryption-iv"}


def test_download_file_small_object_fails(aes_key_path: Path, tmp_path: Path) -> None:
    client, _ = _client(aes_key_path)
    client.put_object(Bucket=BUCKET, Body=b"x" * 100, Key="k")
    # CosS3Client.download_file passes KeySimplifyCheck positionally to
    # get_object, whose encrypted override does not take it.
    with pytest.raises(TypeError):
        client.download_file(Bucket=BUCKET, Key="k", DestFilePath=str(tmp_path / "out"))


def test_download_file_large_object_fails(aes_key_path: Path, tmp_path: Path) -> None:
    client, fake = _client(aes_key_path)
    client.put_object(Bucket=BUCKET, Body=os.urandom(2 * 1024 * 1024 + 1), Key="k")
    # Resumable path: every part calls get_object(KeySimplifyCheck=...),
    # which the encrypted override forwards to head_object's header mapping,
    # which rejects the unknown parameter.
    with pytest.raises(CosClientError, match="KeySimplifyCheck"):
        client.get_object(Bucket=BUCKET, Key="k", KeySimplifyCheck=True, Range="bytes=0-9")
    with pytest.raises(CosClientError, match="download_part fail"):
        client.download_file(
            Bucket=BUCKET,
            Key="k",
            DestFilePath=str(tmp_path / "out"),
            PartSize=1,
            MAXThread=1,
            DumpRecordDir=str(tmp_path),
        )
    assert not (tmp_path / "out").exists()
    assert all(method != "GET" for method, _, _ in fake.requests)


@pytest.mark.parametrize("chunk", [4, 10])
def test_ranged_get_with_short_first_chunk_returns_wrong_bytes(
    aes_key_path: Path, tmp_path: Path, chunk: int
) -> None:
    client, fake = _client(aes_key_path)
    plain = os.urandom(200)
    client.put_object(Bucket=BUCKET, Body=plain, Key="k")
    out = tmp_path / "out"

    # Large network chunks: correct.
    client.get_object(Bucket=BUCKET, Key="k", Range="bytes=42-120")["Body"].get_stream_to_file(
        str(out)
    )
    assert out.read_bytes() == plain[42:121]

    # The range starts 10 bytes into a block (42 = 32 + 10).  With a first
    # chunk no longer than those 10 bytes the adapter's trimming misfires.
    fake.max_chunk = chunk
    resp = client.get_object(Bucket=BUCKET, Key="k", Range="bytes=42-120")
    try:
        resp["Body"].get_stream_to_file(str(out))
        got = out.read_bytes()
    except OSError:  # "download failed with incomplete file"
        got = b""
    assert got != plain[42:121]


def test_chunked_response_downloads_nothing(aes_key_path: Path, tmp_path: Path) -> None:
    # Without Content-Length the decrypting adapter's length is 0 and its
    # first read returns '' - an empty file, no error.
    client, fake = _client(aes_key_path)
    plain = os.urandom(100)
    client.put_object(Bucket=BUCKET, Body=plain, Key="k")
    body = fake.body("k")

    def chunked_get(method: str, url: str, bucket: object = None, **kwargs: Any) -> object:
        if method == "GET":
            return FakeResponse(body, chunked=True)
        return fake(method, url, bucket, **kwargs)

    client.send_request = chunked_get
    out = tmp_path / "out"
    client.get_object(Bucket=BUCKET, Key="k")["Body"].get_stream_to_file(str(out))
    assert out.read_bytes() == b""


def test_encrypted_body_is_not_retryable(aes_key_path: Path) -> None:
    provider = AESProvider(aes_key_path=str(aes_key_path), cipher=AESCTRCipher())
    provider.init_data_cipher()
    adapter = provider.make_data_encrypt_adapter(b"x" * 100)
    assert not hasattr(adapter, "seek")
    assert not hasattr(adapter, "tell")
    assert client_can_retry(None, data=adapter) is False
    assert client_can_retry(None, data=b"plain bytes") is True


def test_suffix_range_not_supported(aes_key_path: Path) -> None:
    # get_object parses "bytes=first-last" with int(first): a suffix range
    # ("the last N bytes") crashes before any request.
    client, fake = _client(aes_key_path)
    client.put_object(Bucket=BUCKET, Body=os.urandom(100), Key="k")
    with pytest.raises(ValueError, match="invalid literal"):
        client.get_object(Bucket=BUCKET, Key="k", Range="bytes=-10")
    assert all(method != "GET" for method, _, _ in fake.requests)
