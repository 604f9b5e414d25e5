"""``cosencfs mount`` and ``cosencfs umount``."""

from __future__ import annotations

import argparse
import errno
import os
import shutil
import subprocess
import sys
import time

from cosencfs.config import KeySettings, MountSettings, config_home, parse_size, split_target
from cosencfs.errors import ConfigError
from cosencfs.fs.attrs import Defaults
from cosencfs.fs.context import FsOptions
from cosencfs.logsetup import setup_logging


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "args",
        nargs="+",
        metavar="BUCKET[/PREFIX] MOUNTPOINT",
        help="what to mount and where (with --local DIR: only MOUNTPOINT)",
    )
    p.add_argument("--local", metavar="DIR", help="serve DIR with a built-in local COS server")
    p.add_argument("--endpoint", help="http://HOST:PORT of a COS-compatible server, or a domain")
    p.add_argument("--region", default="ap-guangzhou", help="COS region (default: %(default)s)")
    p.add_argument("--key-file", help="AES master key file (base64, as the COS SDK reads it)")
    p.add_argument("--rsa-public-key", help="RSA public key (PEM)")
    p.add_argument("--rsa-private-key", help="RSA private key (PEM)")
    p.add_argument(
        "--aes-wrap",
        choices=["sdk", "kw"],
        default="sdk",
        help="how new data keys are wrapped with an AES master key: 'sdk' (readable "
        "by the COS SDK; weak, see docs/format.md) or 'kw' (AES key wrap)",
    )
    p.add_argument("--cache-dir", default="", help="cache directory (default ~/.cache/cosencfs)")
    p.add_argument("--cache-size", default="1G", help="cache size limit (default %(default)s)")
    p.add_argument("-f", "--foreground", action="store_true", help="do not detach")
    p.add_argument(
        "-o",
        dest="fuse_options",
        action="append",
        default=[],
        metavar="OPTS",
        help="FUSE mount options, e.g. allow_other",
    )
    p.add_argument(
        "--writeback-delay",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="upload a closed file this long after its last change",
    )
    p.add_argument(
        "--dir-ttl",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="reuse a directory listing this long",
    )
    p.add_argument("--uid", type=int, default=None, help="owner of objects without metadata")
    p.add_argument("--gid", type=int, default=None, help="group of objects without metadata")
    p.add_argument("--log-level", default="INFO")
    p.add_argument(
        "--debug",
        action="append",
        default=[],
        metavar="SUBSYSTEM",
        help="debug logging for store, cache, fs, fuse, mount, server or all",
    )


def settings_from_args(args: argparse.Namespace) -> MountSettings:
    positional: list[str] = args.args
    if args.local:
        if len(positional) != 1:
            raise ConfigError("with --local DIR give only the MOUNTPOINT")
        bucket, prefix, mountpoint = "", "", positional[0]
    else:
        if len(positional) != 2:
            raise ConfigError("give BUCKET[/PREFIX] and MOUNTPOINT")
        (bucket, prefix), mountpoint = split_target(positional[0]), positional[1]
    keys = KeySettings(
        key_file=args.key_file,
        rsa_public_key=args.rsa_public_key,
        rsa_private_key=args.rsa_private_key,
        aes_wrap=args.aes_wrap,
    )
    if args.local and not (keys.key_file or keys.rsa_public_key or keys.rsa_private_key):
        keys.key_file = str(config_home() / "local.key")
        keys.create_if_missing = True
    uid = os.getuid() if args.uid is None else args.uid
    gid = os.getgid() if args.gid is None else args.gid
    settings = MountSettings(
        bucket=bucket,
        prefix=prefix,
        mountpoint=mountpoint,
        endpoint=args.endpoint,
        region=args.region,
        keys=keys,
        cache_dir=args.cache_dir,
        cache_size=parse_size(args.cache_size),
        foreground=args.foreground,
        fuse_options=args.fuse_options,
        fs=FsOptions(
            prefix=prefix,
            defaults=Defaults(uid=uid, gid=gid),
            writeback_delay=args.writeback_delay,
            dir_ttl=args.dir_ttl,
        ),
        local_dir=os.path.abspath(args.local) if args.local else None,
        log_level=args.log_level,
        debug=args.debug,
    )
    if not args.local:
        settings.credentials_from_env()
    return settings


def run(args: argparse.Namespace) -> int:
    from cosencfs import mount  # noqa: PLC0415 - pyfuse3 only when mounting

    setup_logging(args.log_level, args.debug)
    try:
        settings = settings_from_args(args)
    except ConfigError as exc:
        print(f"cosencfs: {exc}", file=sys.stderr)
        return 2
    return mount.run(settings)


# ---------------------------------------------------------------------------
# umount


def configure_umount(p: argparse.ArgumentParser) -> None:
    p.add_argument("mountpoint")
    p.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        help="seconds to wait for the daemon to exit after unmounting",
    )
    p.add_argument("--lazy", "-z", action="store_true", help="lazy unmount (fusermount3 -z)")


def run_umount(args: argparse.Namespace) -> int:
    from cosencfs.fuse_ops import XATTR_PID, XATTR_SYNC  # noqa: PLC0415

    mp = args.mountpoint
    pid = 0
    status = 0
    try:
        pid = int(os.getxattr(mp, XATTR_PID))
    except OSError as exc:
        if exc.errno != errno.ENOTCONN:
            print(f"cosencfs: {mp} is not a cosencfs mount ({exc.strerror})", file=sys.stderr)
            return 1
        # The daemon is gone; only the kernel's side of the mount is left.
        print(f"cosencfs: the daemon of {mp} is not running; unmounting", file=sys.stderr)
        status = 1
    try:
        if pid:
            os.setxattr(mp, XATTR_SYNC, b"1")
    except OSError as exc:
        status = 1
        why = "uploads failed" if exc.errno == errno.EIO else exc.strerror
        print(
            f"cosencfs: could not upload everything ({why}); unmounting anyway, the "
            "dirty files stay in the cache journal for the next mount",
            file=sys.stderr,
        )
    fusermount = shutil.which("fusermount3") or shutil.which("fusermount") or "fusermount3"
    cmd = [fusermount, "-u"] + (["-z"] if args.lazy else []) + [mp]
    done = subprocess.run(cmd, check=False)
    if done.returncode != 0:
        print(f"cosencfs: {' '.join(cmd)} failed", file=sys.stderr)
        return 1
    deadline = time.monotonic() + args.timeout
    while pid and _alive(pid):
        if time.monotonic() > deadline:
            print(f"cosencfs: daemon {pid} still running after {args.timeout} s", file=sys.stderr)
            return 1
        time.sleep(0.05)
    return status


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"
