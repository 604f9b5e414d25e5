"""TLS for the local server: its server context, and a self-signed CA and certificate for tests.

``--tls-cert``/``--tls-key`` take a certificate the user has; ``--tls-dir``
makes (once, then reuses) a private CA and a server certificate signed by
it, for 127.0.0.1, ::1 and localhost, with ``cryptography``.  Clients trust
``ca.pem`` of that directory (``SSL_CERT_FILE`` for Python's ssl, rclone's
``--ca-cert``, ``CURL_CA_BUNDLE`` for s3fs).  A CA and a leaf rather than
one self-signed leaf: strict verifiers (Go, GnuTLS, OpenSSL 3's
X509_STRICT) reject a leaf used as its own CA.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger(__name__)

CA_FILE = "ca.pem"
CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"
_HOSTS = ("localhost",)
_ADDRESSES = ("127.0.0.1", "::1")
_VALID = datetime.timedelta(days=825)


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """A server certificate chain, its key, and the CA clients must trust (if made here)."""

    cert: Path
    key: Path
    ca: Path | None = None


def server_context(files: TlsFiles) -> ssl.SSLContext:
    """A server-side context: TLS 1.2 or 1.3, the client chooses (every peer picks 1.3)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(files.cert, files.key)
    return ctx


def ensure_self_signed(directory: str | os.PathLike[str]) -> TlsFiles:
    """The CA and server certificate in ``directory``, made on first use."""
    d = Path(directory)
    files = TlsFiles(cert=d / CERT_FILE, key=d / KEY_FILE, ca=d / CA_FILE)
    if files.cert.exists() and files.key.exists() and d.joinpath(CA_FILE).exists():
        return files
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cosencfs local-server CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALID)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    san = [x509.DNSName(h) for h in _HOSTS] + [
        x509.IPAddress(ipaddress.ip_address(a)) for a in _ADDRESSES
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALID)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    _write(files.key, key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ), 0o600)  # fmt: skip
    # The chain: leaf, then CA (clients that trust the CA find the path either way).
    _write(files.cert, cert.public_bytes(pem) + ca.public_bytes(pem), 0o644)
    _write(d / CA_FILE, ca.public_bytes(pem), 0o644)
    log.info("made a CA and a server certificate in %s", d)
    return files


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """A CA signs certificates; the server's key only signs its handshakes (ECDHE)."""
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
