"""Client-side encryption in the COS Python SDK's format.

- :mod:`~cosencfs.crypto.ctr`: AES-256-CTR bodies at any offset, ``DataKey``.
- :mod:`~cosencfs.crypto.master`: master keys (AES, RSA) and key wrapping.
- :mod:`~cosencfs.crypto.envelope`: the metadata envelope, format detection.
- :mod:`~cosencfs.crypto.keyfiles`: key files in the SDK's formats.
- :mod:`~cosencfs.crypto.integrity`: integrity tags (import it by name; not
  used by the mount yet).

docs/format.md describes the byte format and its security properties.
"""

from __future__ import annotations

from cosencfs.crypto.ctr import (
    BLOCK_SIZE,
    IV_SIZE,
    KEY_SIZE,
    DataKey,
    counter_block,
    decrypt,
    encrypt,
)
from cosencfs.crypto.envelope import (
    ENVELOPE_FIELDS,
    EnvelopeCodec,
    EnvelopeInfo,
    ObjectFormat,
    classify,
    extract_envelope,
    inspect_envelope,
    is_envelope_field,
    key_check_value,
    strip_envelope,
)
from cosencfs.crypto.keyfiles import (
    SDK_DEFAULT_AES_KEY_PATH,
    SDK_DEFAULT_RSA_PRIVATE_KEY_PATH,
    SDK_DEFAULT_RSA_PUBLIC_KEY_PATH,
    aes_key_from_base64,
    generate_aes_key_file,
    generate_rsa_key_files,
    load_aes_key_file,
    load_rsa_key_files,
    rsa_key_from_pem,
)
from cosencfs.crypto.master import AesMasterKey, MasterKey, RsaMasterKey, WrapAlg

__all__ = [
    "BLOCK_SIZE",
    "ENVELOPE_FIELDS",
    "IV_SIZE",
    "KEY_SIZE",
    "SDK_DEFAULT_AES_KEY_PATH",
    "SDK_DEFAULT_RSA_PRIVATE_KEY_PATH",
    "SDK_DEFAULT_RSA_PUBLIC_KEY_PATH",
    "AesMasterKey",
    "DataKey",
    "EnvelopeCodec",
    "EnvelopeInfo",
    "MasterKey",
    "ObjectFormat",
    "RsaMasterKey",
    "WrapAlg",
    "aes_key_from_base64",
    "classify",
    "counter_block",
    "decrypt",
    "encrypt",
    "extract_envelope",
    "generate_aes_key_file",
    "generate_rsa_key_files",
    "inspect_envelope",
    "is_envelope_field",
    "key_check_value",
    "load_aes_key_file",
    "load_rsa_key_files",
    "rsa_key_from_pem",
    "strip_envelope",
]
