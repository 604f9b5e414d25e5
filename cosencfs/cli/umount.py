"""``cosencfs umount``: upload everything dirty through the control channel, then unmount."""

from __future__ import annotations

import argparse
import errno
import os
import shutil
import subprocess
import sys
import time

from cosencfs.fs.control import XATTR_PID, XATTR_SYNC


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("mountpoint")
    p.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        help="seconds to wait for the daemon to exit after unmounting",
    )
    p.add_argument("--lazy", "-z", action="store_true", help="lazy unmount (fusermount3 -z)")


def run(args: argparse.Namespace) -> int:
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
