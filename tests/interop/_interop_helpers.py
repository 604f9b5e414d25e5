"""Helpers of the SDK-over-HTTP interop tests (imported by conftest.py and the tests)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from qcloud_cos.cos_encryption_client import CosEncryptionClient
from qcloud_cos.crypto import AESCTRCipher, AESProvider, RSAProvider

from cosencfs.crypto.envelope import EnvelopeCodec
from cosencfs.crypto.keyfiles import (
    generate_aes_key_file,
    generate_rsa_key_files,
    load_aes_key_file,
    load_rsa_key_files,
)
from cosencfs.crypto.master import WrapAlg
from cosencfs.fs.core import Filesystem

KINDS = ("aes", "rsa-files", "rsa-values")


@dataclass(frozen=True)
class Setup:
    kind: str
    codec: EnvelopeCodec
    #: A fresh SDK provider (each gets its own AESCTRCipher: the SDK's default
    #: argument is one cipher object shared by every provider).
    make_provider: Callable[[], Any]
    #: The values-configured RSAProvider decrypts PKCS#1 v1.5 only, and
    #: cosencfs writes OAEP: that SDK setup cannot read cosencfs objects.
    sdk_reads_cosencfs: bool
    #: What the SDK's provider wraps data keys with.
    sdk_wrap: WrapAlg
    key_path: Path


def make_setup(kind: str, keydir: Path) -> Setup:
    if kind == "aes":
        path = keydir / "aes.key"
        generate_aes_key_file(path)
        return Setup(
            kind,
            EnvelopeCodec(load_aes_key_file(path)),
            lambda: AESProvider(aes_key_path=str(path), cipher=AESCTRCipher()),
            True,
            WrapAlg.SDK_AES_CTR,
            path,
        )
    rsa_dir = keydir / "rsa"
    generate_rsa_key_files(rsa_dir)
    pub, priv = rsa_dir / "public_key.pem", rsa_dir / "private_key.pem"
    codec = EnvelopeCodec(load_rsa_key_files(pub, priv))
    if kind == "rsa-files":
        pair = RSAProvider.get_rsa_key_pair_path(str(pub), str(priv))
        return Setup(
            kind,
            codec,
            lambda: RSAProvider(pair, cipher=AESCTRCipher()),
            True,
            WrapAlg.RSA_OAEP,
            rsa_dir,
        )
    values = RSAProvider.get_rsa_key_pair(pub.read_text(), priv.read_text())
    return Setup(
        kind,
        codec,
        lambda: RSAProvider(values, cipher=AESCTRCipher()),
        False,
        WrapAlg.RSA_PKCS1V15,
        rsa_dir,
    )


class TrackingEncryptionClient(CosEncryptionClient):  # type: ignore[misc]
    """``CosEncryptionClient`` that remembers its HTTP responses, so every one
    (also those the SDK leaves open when it raises) is closed at teardown."""

    def __init__(self, conf: Any, provider: Any, session: requests.Session) -> None:
        super().__init__(conf, provider, retry=1, session=session)
        self.responses: list[requests.Response] = []

    def send_request(self, *args: Any, **kwargs: Any) -> Any:
        rt = super().send_request(*args, **kwargs)
        if isinstance(rt, requests.Response):
            self.responses.append(rt)
        return rt

    def close(self) -> None:
        for rt in self.responses:
            rt.close()
        self._session.close()


SdkFactory = Callable[[Any], TrackingEncryptionClient]
FsWith = Callable[..., Awaitable[Filesystem]]


def rsa_padding_of(setup: Setup, wrapped_key: bytes) -> str:
    """Which RSA padding wrapped this 32-byte data key: "oaep" or "pkcs1v15".

    OAEP decryption raises on a v1.5 block; v1.5 decryption in ``cryptography``
    uses implicit rejection (random bytes, no error), so it is tried last and
    its result's length checked.
    """
    pem = (setup.key_path / "private_key.pem").read_bytes()
    private = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(private, rsa.RSAPrivateKey)
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
    try:
        key = private.decrypt(wrapped_key, oaep)
    except ValueError:
        key = private.decrypt(wrapped_key, padding.PKCS1v15())
        assert len(key) == 32
        return "pkcs1v15"
    assert len(key) == 32
    return "oaep"


# ---------------------------------------------------------------------------- SDK calls
# Synchronous (the SDK is); async tests run them in a worker thread.


def sdk_get_file(
    client: CosEncryptionClient, bucket: str, key: str, dest: Path, rng: tuple[int, int] | None
) -> bytes:
    """``get_object`` (``Range: bytes=first-last`` if given) + ``get_stream_to_file``."""
    kwargs = {} if rng is None else {"Range": f"bytes={rng[0]}-{rng[1]}"}
    resp = client.get_object(Bucket=bucket, Key=key, **kwargs)
    resp["Body"].get_stream_to_file(str(dest), disable_tmp_file=True)
    data = dest.read_bytes()
    dest.unlink()
    return data


def sdk_get_read(
    client: CosEncryptionClient,
    bucket: str,
    key: str,
    rng: tuple[int, int] | None = None,
    chunk: int = 1024 * 1024,
) -> bytes:
    """``get_object`` + ``resp['Body'].read(chunk)`` until it returns nothing."""
    kwargs = {} if rng is None else {"Range": f"bytes={rng[0]}-{rng[1]}"}
    resp = client.get_object(Bucket=bucket, Key=key, **kwargs)
    out = bytearray()
    while True:
        piece = resp["Body"].read(chunk)
        if not piece:
            return bytes(out)
        out += piece


def sdk_serial_multipart(
    client: CosEncryptionClient, bucket: str, key: str, parts: list[bytes]
) -> dict[str, Any]:
    """create_multipart_upload + upload_part in order + complete (the SDK's one CTR stream)."""
    upload_id = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    done = []
    for n, body in enumerate(parts, start=1):
        resp = client.upload_part(
            Bucket=bucket, Key=key, Body=body, PartNumber=n, UploadId=upload_id
        )
        done.append({"PartNumber": n, "ETag": resp["ETag"]})
    result: dict[str, Any] = client.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Part": done}
    )
    return result
