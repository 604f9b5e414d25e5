"""What every master key shares: the wrap algorithms (``WrapAlg``) and their wrapped lengths.

Kept apart from :mod:`cosencfs.crypto.master` so that the AES and RSA key
modules can use it while ``master`` re-exports them (no import cycle).
"""

from __future__ import annotations

from enum import Enum

from cosencfs.crypto.ctr import IV_SIZE, KEY_SIZE

#: Domain of the secrets the cache journal keeps wrapped (cache keys).
JOURNAL_LABEL = b"cosencfs journal secret v1"
#: HKDF ``info`` of the integrity tag key (docs/format.md, section 12),
#: followed by a NUL and the master key's kind (``aes`` / ``rsa``).
INTEGRITY_LABEL = b"cosencfs integrity key v1"
#: Length of the integrity tag key (HMAC-SHA256 key), in bytes.
INTEGRITY_KEY_SIZE = 32
#: Length of a master key's public fingerprint, in hex digits.
KEY_ID_HEX_DIGITS = 16

# RFC 3394 adds one 8-byte integrity block.
_KW_OVERHEAD = 8
# Smallest and largest RSA moduli (in bytes) we accept as plausible when
# judging whether wrapped lengths could be RSA at all: 512..16384 bits.
_RSA_MIN_BYTES = 64
_RSA_MAX_BYTES = 2048


class WrapAlg(Enum):
    """How a data key and IV are wrapped under the master key."""

    SDK_AES_CTR = "aes-ctr"
    AES_KW = "aes-kw"
    RSA_OAEP = "rsa-oaep"
    RSA_PKCS1V15 = "rsa-pkcs1v15"

    @property
    def is_rsa(self) -> bool:
        return self in (WrapAlg.RSA_OAEP, WrapAlg.RSA_PKCS1V15)

    @property
    def is_aes(self) -> bool:
        return not self.is_rsa


def wrapped_lengths_plausible(key_len: int, iv_len: int, alg: WrapAlg | None = None) -> bool:
    """Whether wrapped key/IV lengths can come from ``alg`` (any alg if None).

    Used to tell a damaged envelope (truncated value) from a wrong key
    before spending an RSA operation on it.
    """
    aes_ctr = key_len == KEY_SIZE and iv_len == IV_SIZE
    aes_kw = key_len == KEY_SIZE + _KW_OVERHEAD and iv_len == IV_SIZE + _KW_OVERHEAD
    rsa_ok = key_len == iv_len and _RSA_MIN_BYTES <= key_len <= _RSA_MAX_BYTES
    if alg is None:
        return aes_ctr or aes_kw or rsa_ok
    if alg is WrapAlg.SDK_AES_CTR:
        return aes_ctr
    if alg is WrapAlg.AES_KW:
        return aes_kw
    return rsa_ok
