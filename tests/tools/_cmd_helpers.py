"""Helpers of the keygen / rekey / fsck tests."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import requests
from qcloud_cos import CosConfig
from qcloud_cos.cos_encryption_client import CosEncryptionClient
from qcloud_cos.crypto import AESProvider, RSAProvider

from cosencfs.crypto.ctr import DataKey, decrypt
from cosencfs.crypto.envelope import EnvelopeCodec
from cosencfs.fs.attrs import FILE_CONTENT_TYPE
from cosencfs.server import LocalCosServer
from cosencfs.store.base import ObjectStore
from tests.testlib import BUCKET, REGION, SECRET_ID, SECRET_KEY

REPO = Path(__file__).resolve().parents[2]
ATTRS = {"mode": "33188", "uid": "1000", "gid": "1000", "mtime": "1700000000.5"}


def cos_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"COS_SECRET_ID": SECRET_ID, "COS_SECRET_KEY": SECRET_KEY})
    return env


def server_args(server: LocalCosServer) -> list[str]:
    return ["--endpoint", server.url, "--region", REGION]


def run_cli(
    *args: str, timeout: float = 60.0, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m cosencfs ARGS`` with the test credentials; never a TTY."""
    return subprocess.run(
        [sys.executable, "-m", "cosencfs", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(env) if env is not None else cos_env(),
        cwd=REPO,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def no_secrets(text: str, *key_files: Path) -> None:
    """Neither the COS secret nor any key file's content appears in ``text``."""
    assert SECRET_KEY not in text
    for path in key_files:
        for line in path.read_text().splitlines():
            if len(line) > 20 and not line.startswith("-----"):
                assert line not in text, f"key material of {path} printed"


async def put_encrypted(
    store: ObjectStore,
    codec: EnvelopeCodec,
    key: str,
    plain: bytes,
    *,
    extra: Mapping[str, str] | None = None,
    content_type: str = FILE_CONTENT_TYPE,
) -> DataKey:
    """An object as cosencfs writes it: CTR body, envelope + attributes."""
    dk = DataKey.generate()
    meta = {**ATTRS, **(extra or {}), **codec.seal(dk)}
    await store.put(key, decrypt(dk, 0, plain), meta, content_type=content_type)
    return dk


async def read_encrypted(store: ObjectStore, codec: EnvelopeCodec, key: str) -> bytes:
    info = await store.head(key)
    dk = codec.open(info.metadata, key=key)
    return decrypt(dk, 0, await store.get(key))


class Sdk:
    """The COS Python SDK's CosEncryptionClient against the local server."""

    def __init__(self, server: LocalCosServer) -> None:
        self.server = server
        self.sessions: list[requests.Session] = []

    def client(
        self,
        *,
        aes_key: Path | None = None,
        rsa_pub: Path | None = None,
        rsa_priv: Path | None = None,
    ) -> Any:
        if aes_key is not None:
            provider: Any = AESProvider(aes_key_path=str(aes_key))
        else:
            provider = RSAProvider(RSAProvider.get_rsa_key_pair_path(str(rsa_pub), str(rsa_priv)))
        conf = CosConfig(
            IP="127.0.0.1",
            Port=self.server.port,
            Region=REGION,
            Scheme="http",
            SecretId=SECRET_ID,
            SecretKey=SECRET_KEY,
        )
        session = requests.Session()
        self.sessions.append(session)
        return CosEncryptionClient(conf, provider, session=session)

    @staticmethod
    def put(client: Any, key: str, data: bytes) -> None:
        client.put_object(Bucket=BUCKET, Key=key, Body=data)

    @staticmethod
    def get(client: Any, key: str) -> bytes:
        body = client.get_object(Bucket=BUCKET, Key=key)["Body"]
        out = b""
        while chunk := body.read(65536):
            out += chunk
        return out

    def close(self) -> None:
        for s in self.sessions:
            s.close()
