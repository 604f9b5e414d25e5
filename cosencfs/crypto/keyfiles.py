"""Loading and generating master key files in the COS Python SDK's formats.

AES key file
    The base64 text (standard alphabet, with padding) of 16, 24 or 32 raw
    bytes; the SDK's ``AESProvider(aes_key_path=...)`` reads exactly this
    (default ``~/.cos_local_aes/.aes_key.pem``).  Whitespace and newlines are
    tolerated.
RSA key files
    PEM: private key as PKCS#1 (``BEGIN RSA PRIVATE KEY``) or PKCS#8
    (``BEGIN PRIVATE KEY`` / ``BEGIN ENCRYPTED PRIVATE KEY``), optionally
    passphrase-protected; public key as SubjectPublicKeyInfo (``BEGIN PUBLIC
    KEY``) or PKCS#1 (``BEGIN RSA PUBLIC KEY``).  The SDK's
    ``RSAProvider(RSAProvider.get_rsa_key_pair_path(pub, priv))`` reads
    these (pycryptodome ``RSA.importKey``).

Unlike the SDK, nothing here ever creates a key as a side effect of loading:
a missing file is an error.  Secret key files must not be accessible by group
or others (like ssh); ``check_permissions=False`` turns that check off.
Errors are :class:`~cosencfs.errors.ConfigError` naming the file and the
problem, never its content.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import stat
import sys
from typing import Literal, Protocol

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from cosencfs.crypto.envelope import EnvelopeCodec
from cosencfs.crypto.master import AES_MASTER_KEY_SIZES, AesMasterKey, MasterKey, RsaMasterKey
from cosencfs.errors import ConfigError

__all__ = [
    "PRIVATE_KEY_FILENAME",
    "PUBLIC_KEY_FILENAME",
    "RSA_BITS_ALLOWED",
    "SDK_DEFAULT_AES_KEY_PATH",
    "SDK_DEFAULT_RSA_PRIVATE_KEY_PATH",
    "SDK_DEFAULT_RSA_PUBLIC_KEY_PATH",
    "aes_key_from_base64",
    "generate_aes_key_file",
    "generate_rsa_key_files",
    "load_aes_key_file",
    "load_codec",
    "load_master_key",
    "load_rsa_key_files",
    "rsa_key_from_pem",
]

#: Where the SDK looks (and silently generates keys) when given no path.
SDK_DEFAULT_AES_KEY_PATH = "~/.cos_local_aes/.aes_key.pem"
SDK_DEFAULT_RSA_PUBLIC_KEY_PATH = "~/.cos_local_rsa/.public_key.pem"
SDK_DEFAULT_RSA_PRIVATE_KEY_PATH = "~/.cos_local_rsa/.private_key.pem"

#: File names written by :func:`generate_rsa_key_files`.
PUBLIC_KEY_FILENAME = "public_key.pem"
PRIVATE_KEY_FILENAME = "private_key.pem"

#: RSA sizes we generate.  Below 2048 is too weak; above 4096 the two
#: wrapped values (base64 of one modulus each) no longer leave room for
#: file attributes in COS's 2 KB user-metadata limit.
RSA_BITS_ALLOWED = range(2048, 4097)

_AES_GENERATED_BYTES = 32
_MAX_KEY_FILE_BYTES = 64 * 1024
_GROUP_OTHER_BITS = 0o077
_PRIVATE_MODE = 0o600
_PUBLIC_MODE = 0o644

PathArg = str | os.PathLike[str]
Passphrase = str | bytes | None


def _describe_mode(mode: int) -> str:
    return f"{stat.S_IMODE(mode):04o}"


def _read_key_file(path: PathArg, *, what: str, secret: bool, check_permissions: bool) -> bytes:
    name = os.fspath(path)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        raise ConfigError(
            f"{what} {name!r} does not exist (cosencfs never creates a key when loading; "
            "generate one explicitly)"
        ) from None
    except PermissionError:
        raise ConfigError(f"{what} {name!r}: permission denied") from None
    except OSError as exc:
        raise ConfigError(f"{what} {name!r}: cannot open: {exc.strerror}") from None
    try:
        # fstat on the open descriptor: the file we check is the file we read.
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{what} {name!r} is not a regular file")
        if secret and check_permissions and st.st_mode & _GROUP_OTHER_BITS:
            raise ConfigError(
                f"{what} {name!r} is accessible by group or others "
                f"(mode {_describe_mode(st.st_mode)}); a secret key must be private to its "
                f"owner: run `chmod 600 {name}`"
            )
        data = b""
        while len(data) <= _MAX_KEY_FILE_BYTES:
            chunk = os.read(fd, _MAX_KEY_FILE_BYTES + 1 - len(data))
            if not chunk:
                break
            data += chunk
    except OSError as exc:
        raise ConfigError(f"{what} {name!r}: cannot read: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > _MAX_KEY_FILE_BYTES:
        raise ConfigError(f"{what} {name!r} is too large to be a key file")
    return data


# --------------------------------------------------------------------------
# AES


def aes_key_from_base64(
    text: str | bytes, *, hardened: bool = False, source: str = "AES key"
) -> AesMasterKey:
    """An :class:`AesMasterKey` from base64 text (the key-file content).

    Whitespace is ignored; anything else outside the standard base64
    alphabet is an error (the SDK silently drops such characters, which can
    turn a corrupted file into a different key).
    """
    data = text.encode("ascii", "replace") if isinstance(text, str) else bytes(text)
    compact = b"".join(data.split())
    if not compact:
        raise ConfigError(f"{source} is empty")
    if compact.startswith(b"-----BEGIN"):
        raise ConfigError(
            f"{source} looks like a PEM file; an AES key file holds only the base64 "
            "text of the raw key (16, 24 or 32 bytes)"
        )
    try:
        raw = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{source} is not valid base64") from None
    if len(raw) not in AES_MASTER_KEY_SIZES:
        raise ConfigError(
            f"{source} decodes to {len(raw)} bytes; an AES master key must be 16, 24 or 32 bytes"
        )
    return AesMasterKey(raw, hardened=hardened)


def load_aes_key_file(
    path: PathArg, *, hardened: bool = False, check_permissions: bool = True
) -> AesMasterKey:
    """Load an AES master key file (SDK format).

    ``hardened`` selects the wrap used for new objects (see
    :class:`AesMasterKey`).  Raises ConfigError for a missing file, bad
    base64, a wrong length, or (``check_permissions``) a file accessible by
    group or others.
    """
    data = _read_key_file(
        path, what="AES key file", secret=True, check_permissions=check_permissions
    )
    return aes_key_from_base64(data, hardened=hardened, source=f"AES key file {os.fspath(path)!r}")


# --------------------------------------------------------------------------
# RSA


def _passphrase_bytes(passphrase: Passphrase) -> bytes | None:
    if passphrase is None:
        return None
    if isinstance(passphrase, str):
        return passphrase.encode("utf-8")
    return bytes(passphrase)


def _parse_private(data: bytes, passphrase: Passphrase, source: str) -> rsa.RSAPrivateKey:
    password = _passphrase_bytes(passphrase)
    try:
        if data.lstrip().startswith(b"-----"):
            key = serialization.load_pem_private_key(data, password=password)
        else:
            key = serialization.load_der_private_key(data, password=password)
    except TypeError:
        # cryptography raises TypeError for a passphrase mismatch in kind.
        if password is None:
            raise ConfigError(f"{source} is encrypted: a passphrase is needed") from None
        raise ConfigError(f"{source} is not encrypted, but a passphrase was given") from None
    except (ValueError, UnsupportedAlgorithm):
        hint = " or the passphrase is wrong" if password is not None else ""
        raise ConfigError(f"{source} cannot be read: not a PEM/DER private key{hint}") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ConfigError(f"{source} is not an RSA key ({type(key).__name__})")
    return key


def _parse_public(data: bytes, source: str) -> rsa.RSAPublicKey:
    try:
        if data.lstrip().startswith(b"-----"):
            key = serialization.load_pem_public_key(data)
        else:
            key = serialization.load_der_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(f"{source} cannot be read: not a PEM/DER public key") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise ConfigError(f"{source} is not an RSA key ({type(key).__name__})")
    return key


def rsa_key_from_pem(
    public_pem: bytes | None,
    private_pem: bytes | None,
    *,
    passphrase: Passphrase = None,
) -> RsaMasterKey:
    """An :class:`RsaMasterKey` from PEM (or DER) values; either may be None."""
    if public_pem is None and private_pem is None:
        raise ConfigError("an RSA master key needs a public key, a private key or both")
    private = (
        None if private_pem is None else _parse_private(private_pem, passphrase, "RSA private key")
    )
    public = None if public_pem is None else _parse_public(public_pem, "RSA public key")
    return RsaMasterKey(private, public)


def load_rsa_key_files(
    public_path: PathArg | None,
    private_path: PathArg | None,
    *,
    passphrase: Passphrase = None,
    check_permissions: bool = True,
) -> RsaMasterKey:
    """Load an RSA key pair from PEM files (SDK format).

    With only ``public_path`` the key can wrap (write) but not unwrap
    (read).  When both are given they must belong together.
    """
    if public_path is None and private_path is None:
        raise ConfigError("an RSA master key needs a public key file, a private key file or both")
    private = None
    public = None
    if private_path is not None:
        source = f"RSA private key file {os.fspath(private_path)!r}"
        data = _read_key_file(
            private_path,
            what="RSA private key file",
            secret=True,
            check_permissions=check_permissions,
        )
        private = _parse_private(data, passphrase, source)
    if public_path is not None:
        source = f"RSA public key file {os.fspath(public_path)!r}"
        data = _read_key_file(
            public_path, what="RSA public key file", secret=False, check_permissions=False
        )
        public = _parse_public(data, source)
    try:
        return RsaMasterKey(private, public)
    except ConfigError:
        raise ConfigError(
            f"RSA public key file {os.fspath(public_path or '')!r} does not belong to "
            f"private key file {os.fspath(private_path or '')!r}"
        ) from None


# --------------------------------------------------------------------------
# Generation


def _fsync_dir(directory: str) -> None:
    # Makes the new directory entry durable; not every filesystem allows
    # opening a directory for fsync, and failing here must not fail the
    # generation of a key that is already written.
    with contextlib.suppress(OSError):
        dfd = os.open(directory or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def _create_exclusive(path: str, data: bytes, mode: int) -> None:
    """Create ``path`` with ``data``; never replaces anything that exists.

    O_EXCL also refuses an existing symlink (even a dangling one), so a
    planted link cannot redirect the key elsewhere.  The mode is given to
    open(2) so the file is never, even briefly, more permissive.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
    fd = os.open(path, flags, mode)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    os.close(fd)


def _refuse_existing(path: str) -> ConfigError:
    return ConfigError(f"refusing to overwrite existing key file {path!r}")


def generate_aes_key_file(path: PathArg, *, hardened: bool = False) -> AesMasterKey:
    """Create a new AES-256 master key file (mode 0600) and return the key.

    Never overwrites: an existing file (or symlink) at ``path`` gives
    ConfigError.  Missing parent directories are created with mode 0700.
    """
    name = os.fspath(path)
    parent = os.path.dirname(name)
    if parent:
        os.makedirs(parent, mode=0o700, exist_ok=True)
    raw = os.urandom(_AES_GENERATED_BYTES)
    # A trailing newline is friendlier to editors and `cat`; the SDK's
    # non-validating base64 decoder drops it.
    text = base64.b64encode(raw) + b"\n"
    try:
        _create_exclusive(name, text, _PRIVATE_MODE)
    except FileExistsError:
        raise _refuse_existing(name) from None
    except OSError as exc:
        raise ConfigError(f"cannot create key file {name!r}: {exc.strerror}") from None
    _fsync_dir(parent)
    return AesMasterKey(raw, hardened=hardened)


def generate_rsa_key_files(directory: PathArg, bits: int = 2048) -> RsaMasterKey:
    """Create ``public_key.pem`` and ``private_key.pem`` in ``directory``.

    The private key is PKCS#1 PEM (``BEGIN RSA PRIVATE KEY``), unencrypted,
    mode 0600; the public key SubjectPublicKeyInfo PEM.  Both load in the
    SDK's ``RSAProvider.get_rsa_key_pair_path``.  Never overwrites either
    file.
    """
    if bits not in RSA_BITS_ALLOWED:
        raise ConfigError(
            f"RSA key size {bits} not supported: use 2048..4096 bits (larger keys do not "
            "fit COS's 2 KB metadata limit)"
        )
    dname = os.fspath(directory)
    os.makedirs(dname, mode=0o700, exist_ok=True)
    pub_path = os.path.join(dname, PUBLIC_KEY_FILENAME)
    priv_path = os.path.join(dname, PRIVATE_KEY_FILENAME)
    for p in (priv_path, pub_path):
        if os.path.lexists(p):
            raise _refuse_existing(p)
    private = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    priv_pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    pub_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        _create_exclusive(priv_path, priv_pem, _PRIVATE_MODE)
    except FileExistsError:
        raise _refuse_existing(priv_path) from None
    except OSError as exc:
        raise ConfigError(f"cannot create key file {priv_path!r}: {exc.strerror}") from None
    try:
        _create_exclusive(pub_path, pub_pem, _PUBLIC_MODE)
    except BaseException as exc:
        # Leave no half pair behind: a lone private key would make the next
        # attempt refuse to run.
        with contextlib.suppress(OSError):
            os.unlink(priv_path)
        if isinstance(exc, FileExistsError):
            raise _refuse_existing(pub_path) from None
        if isinstance(exc, OSError):
            raise ConfigError(f"cannot create key file {pub_path!r}: {exc.strerror}") from None
        raise
    _fsync_dir(dname)
    return RsaMasterKey(private)


# ---------------------------------------------------------------------------
# The master key the settings name


class KeySource(Protocol):
    """Which key files to load (``cosencfs.config.KeySettings``)."""

    key_file: str | None
    rsa_public_key: str | None
    rsa_private_key: str | None
    rsa_passphrase: str | None
    aes_wrap: Literal["sdk", "kw"]
    create_if_missing: bool
    also_read: list[str]


def load_master_key(keys: KeySource) -> MasterKey:
    """The AES key file or RSA key pair ``keys`` names; creates the AES key file
    only when ``create_if_missing`` says so (``--local``)."""
    hardened = keys.aes_wrap == "kw"
    if keys.aes_wrap not in ("sdk", "kw"):
        raise ConfigError(f"aes_wrap must be 'sdk' or 'kw', not {keys.aes_wrap!r}")
    if keys.rsa_public_key or keys.rsa_private_key:
        if keys.key_file:
            raise ConfigError("give either an AES key file or an RSA key pair, not both")
        return load_rsa_key_files(
            keys.rsa_public_key, keys.rsa_private_key, passphrase=keys.rsa_passphrase
        )
    if not keys.key_file:
        raise ConfigError(
            "no master key: give --key-file FILE (AES) or "
            "--rsa-public-key/--rsa-private-key (RSA); create one with `cosencfs keygen`"
        )
    if keys.create_if_missing and not os.path.exists(keys.key_file):
        key = generate_aes_key_file(keys.key_file, hardened=hardened)
        print(
            f"cosencfs: created a new master key in {keys.key_file}; back it up: "
            "without it the data cannot be read",
            file=sys.stderr,
        )
        return key
    return load_aes_key_file(keys.key_file, hardened=hardened)


def load_codec(keys: KeySource) -> EnvelopeCodec:
    """The envelope codec of ``keys``: its master key, plus the older AES keys it may read."""
    hardened = keys.aes_wrap == "kw"
    old = [load_aes_key_file(path, hardened=hardened) for path in keys.also_read]
    return EnvelopeCodec(load_master_key(keys), also_read=old)
