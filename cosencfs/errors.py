"""The project's own exceptions.

Lower layers (store, crypto, cache) raise these; only the FUSE adapter turns
them into errno values, through the table in ``cosencfs.fuse_ops`` (``ERRNO_TABLE``).
Messages name the object key but never carry secrets, key material or
signed URLs.
"""

from __future__ import annotations

import os


class CosEncFsError(Exception):
    """Base class of every error cosencfs raises on purpose."""


class ConfigError(CosEncFsError):
    """Bad configuration, command line or key file; fatal at start-up."""


class CacheDirError(ConfigError):
    """The cache directory is not private to the mounting user (owner, symbolic links)."""


# --------------------------------------------------------------------------
# Object store


class StoreError(CosEncFsError):
    """A request to the object store failed.

    ``code`` is the COS error code (``NoSuchKey``, ``SlowDown`` ...) when the
    server sent one, ``status`` the HTTP status (0 when no answer arrived).
    """

    def __init__(
        self,
        message: str,
        *,
        op: str = "",
        key: str = "",
        code: str = "",
        status: int = 0,
        request_id: str = "",
    ) -> None:
        super().__init__(message)
        self.op = op
        self.key = key
        self.code = code
        self.status = status
        self.request_id = request_id

    def __str__(self) -> str:
        parts = [super().__str__()]
        if self.op:
            parts.append(f"op={self.op}")
        if self.key:
            parts.append(f"key={self.key!r}")
        if self.status:
            parts.append(f"status={self.status}")
        if self.code:
            parts.append(f"code={self.code}")
        if self.request_id:
            parts.append(f"request_id={self.request_id}")
        return " ".join(parts)


class NotFoundError(StoreError):
    """The object (or upload) does not exist."""


class NoSuchBucketError(StoreError):
    """The bucket does not exist."""


class NoSuchUploadError(NotFoundError):
    """The multipart upload does not exist (completed, aborted or never made)."""


class AccessDeniedError(StoreError):
    """403: wrong credentials, bad signature or missing permission."""


class PreconditionFailedError(StoreError):
    """412: an If-Match / If-None-Match condition did not hold."""


class InvalidRequestError(StoreError):
    """4xx the server will refuse again: key too long, metadata too large ..."""


class TransientError(StoreError):
    """5xx, throttling, connection failure or timeout that outlived the retries."""


# --------------------------------------------------------------------------
# Crypto / object format


class CryptoError(CosEncFsError):
    """The object's envelope cannot be opened."""

    def __init__(self, message: str, *, key: str = "") -> None:
        super().__init__(message)
        self.key = key

    def __str__(self) -> str:
        base = super().__str__()
        return f"{base} key={self.key!r}" if self.key else base


class NotEncryptedError(CryptoError):
    """The object has no client-side-encryption envelope (a plain upload)."""


class ForeignFormatError(CryptoError):
    """The envelope is of another SDK (Java/Go) that the Python format cannot read."""


class DamagedEnvelopeError(CryptoError):
    """Envelope headers are present but malformed (bad base64, wrong lengths ...)."""


class WrongKeyError(CryptoError):
    """The master key does not open this envelope (key check failed)."""


class KeyReuseError(CosEncFsError):
    """An upload copy was asked for under a data key that already has one.

    A second copy under one key would encrypt the layer's bytes a second time;
    if they are not the same bytes, that is a second plaintext under one
    keystream.  Raised instead of encrypting: it means a bug, never a
    condition of the bucket or the cache (and becomes EIO).
    """


class DamagedObjectError(CosEncFsError):
    """The object's body does not match what its listing or metadata promised."""


class CacheIntegrityError(CosEncFsError):
    """A cache file or a journal record does not verify: altered or damaged."""


class RefusedError(CosEncFsError):
    """An object the mount lists but will not serve: a plaintext body, a device
    node on a ``dev`` mount, a "symlink" too long to be one (see docs/security.md)."""

    def __init__(self, reason: str, *, key: str, hint: str = "") -> None:
        super().__init__(f"refused {key!r}: {reason}" + (f" ({hint})" if hint else ""))
        self.key = key
        self.reason = reason


# --------------------------------------------------------------------------
# Filesystem


class FsError(CosEncFsError):
    """A POSIX error the filesystem layer decided on (ENOENT, ENOTEMPTY ...)."""

    def __init__(self, errno: int, message: str = "") -> None:
        super().__init__(message or os.strerror(errno))
        self.errno = errno


class IntegrityError(CosEncFsError):
    """An object's integrity tags do not verify: altered, swapped, truncated or extended.

    ``key`` is the object key; ``chunk`` the index of the 64 KiB chunk that
    failed (None when the object or attribute tag did).  The message never
    carries a tag, a key or other key material.
    """

    def __init__(self, message: str, *, key: str = "", chunk: int | None = None) -> None:
        super().__init__(message)
        self.key = key
        self.chunk = chunk

    def __str__(self) -> str:
        parts = [super().__str__()]
        if self.chunk is not None:
            parts.append(f"chunk={self.chunk}")
        if self.key:
            parts.append(f"key={self.key!r}")
        return " ".join(parts)
