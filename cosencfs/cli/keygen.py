"""``cosencfs keygen``: master key files in the COS Python SDK's formats (never overwrites).

Exit status: 0 created, 1 not created (the reason on stderr).
"""

from __future__ import annotations

import argparse
import os

from cosencfs.cli.bucket import EXIT_OK, EXIT_PROBLEMS, err
from cosencfs.crypto.keyfiles import (
    PRIVATE_KEY_FILENAME,
    PUBLIC_KEY_FILENAME,
    generate_aes_key_file,
    generate_rsa_key_files,
)
from cosencfs.errors import ConfigError

_BACKUP_REMINDER = (
    "Back up the key now, somewhere other than the bucket: without it the data cannot be "
    "decrypted, by cosencfs or by the COS SDK."
)


def configure(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="kind", metavar="KIND", required=True)
    aes = sub.add_parser(
        "aes",
        help="an AES-256 master key file (base64, read by the SDK's AESProvider)",
        description="Create an AES-256 master key file (mode 0600), in the format of the "
        "COS SDK's AESProvider(aes_key_path=FILE). Never overwrites a file.",
    )
    aes.add_argument("file", metavar="FILE", help="the key file to create")
    aes.add_argument(
        "--hardened",
        action="store_true",
        help="say how to use the key with AES key wrap (--aes-wrap kw): every object's data "
        "key wrapped independently, but not readable by the COS SDK",
    )
    rsa = sub.add_parser(
        "rsa",
        help="an RSA key pair (PEM, read by the SDK's RSAProvider)",
        description=f"Create {PUBLIC_KEY_FILENAME} (0644) and {PRIVATE_KEY_FILENAME} (0600) in "
        "DIR, loadable by the COS SDK's RSAProvider.get_rsa_key_pair_path. Never overwrites.",
    )
    rsa.add_argument("directory", metavar="DIR", help="directory for the two files")
    rsa.add_argument(
        "--bits",
        type=int,
        choices=[2048, 3072, 4096],
        default=2048,
        help="key size (default 2048; larger keys leave less of COS's 2 KB metadata for "
        "file attributes)",
    )


def run(args: argparse.Namespace) -> int:
    try:
        if args.kind == "aes":
            _keygen_aes(args.file, hardened=args.hardened)
        else:
            _keygen_rsa(args.directory, args.bits)
    except ConfigError as exc:
        err(str(exc))
        return EXIT_PROBLEMS
    except OSError as exc:
        err(f"cannot create the key: {exc.strerror or exc}")
        return EXIT_PROBLEMS
    print(_BACKUP_REMINDER)
    return EXIT_OK


def _keygen_aes(path: str, *, hardened: bool) -> None:
    key = generate_aes_key_file(path, hardened=hardened)
    print(
        f"created AES-{key.bits} master key file {os.path.abspath(path)} (mode 0600), "
        f"key id {key.key_id}"
    )
    if hardened:
        print(
            "Use it with AES key wrap: mount and rekey with --aes-wrap kw (config: "
            'keys.aes_wrap = "kw"). The key file is the same either way; objects wrapped '
            "that way cannot be read by the COS SDK."
        )


def _keygen_rsa(directory: str, bits: int) -> None:
    key = generate_rsa_key_files(directory, bits)
    where = os.path.abspath(directory)
    print(f"created RSA-{key.bits} key pair, key id {key.key_id}:")
    print(f"  {os.path.join(where, PRIVATE_KEY_FILENAME)} (private, mode 0600)")
    print(f"  {os.path.join(where, PUBLIC_KEY_FILENAME)} (public, mode 0644)")
    print("The public key alone can write (and be rotated to); reading needs the private key.")
