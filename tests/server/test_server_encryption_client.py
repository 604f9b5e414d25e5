"""The SDK's CosEncryptionClient (AES and RSA master keys) against the local server."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from qcloud_cos.cos_encryption_client import CosEncryptionClient
from qcloud_cos.crypto import AESProvider, RSAProvider

from tests.server._server_helpers import BUCKET, ClientFactory


@pytest.fixture
def aes_provider(sdk_home: Path, tmp_path: Path) -> AESProvider:
    key_path = tmp_path / "aes.key"
    key_path.write_bytes(base64.b64encode(os.urandom(32)))
    return AESProvider(aes_key_path=str(key_path))


@pytest.fixture
def rsa_provider(sdk_home: Path, tmp_path: Path) -> RSAProvider:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pub_path, priv_path = tmp_path / "pub.pem", tmp_path / "priv.pem"
    priv_path.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    pub_path.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return RSAProvider(RSAProvider.get_rsa_key_pair_path(str(pub_path), str(priv_path)))


def _read(resp: dict[str, Any]) -> bytes:
    body = resp["Body"]
    out = b""
    while chunk := body.read(65536):
        out += chunk
    return out


@pytest.mark.parametrize("provider_name", ["aes_provider", "rsa_provider"])
def test_encrypted_round_trips(
    make_client: ClientFactory,
    client: Any,
    request: pytest.FixtureRequest,
    provider_name: str,
    sdk_home: Path,
) -> None:
    provider = request.getfixturevalue(provider_name)
    enc = make_client(cls=CosEncryptionClient, provider=provider)
    for size in (0, 15, 16, 1000, 200_000):
        plain = os.urandom(size)
        key = f"enc/{provider_name}/{size}"
        enc.put_object(Bucket=BUCKET, Key=key, Body=plain)
        assert _read(enc.get_object(Bucket=BUCKET, Key=key)) == plain
        # Stored encrypted, with the SDK's envelope headers, same length.
        head = client.head_object(Bucket=BUCKET, Key=key)
        assert head["Content-Length"] == str(size)
        assert "x-cos-meta-client-side-encryption-key" in head
        assert "x-cos-meta-client-side-encryption-iv" in head
        raw = client.get_object(Bucket=BUCKET, Key=key)["Body"].get_raw_stream().read()
        if size >= 16:
            assert raw != plain
    plain = os.urandom(200_000)
    enc.put_object(Bucket=BUCKET, Key="ranged", Body=plain)
    for first, last in [(0, 15), (16, 4095), (4096, 199_999), (160_000, 170_000)]:
        got = _read(enc.get_object(Bucket=BUCKET, Key="ranged", Range=f"bytes={first}-{last}"))
        assert got == plain[first : last + 1], (first, last)
    assert not list(sdk_home.iterdir()), "the SDK wrote into HOME"
