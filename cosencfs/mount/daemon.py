"""The mount's process: hardening, detaching, telling the parent it is ready, ``--local``.

``run`` is what ``cosencfs mount`` calls. Without ``--foreground`` it forks:
the parent waits on a pipe until the child reports the mount ready (exit 0)
or why it failed (exit 1, the reason on stderr); the child then serves with
its stdio on the cache directory's log file.
"""

from __future__ import annotations

import logging
import os
import secrets
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from cosencfs.config import LOCAL_BUCKET, MountSettings
from cosencfs.errors import ConfigError, CosEncFsError
from cosencfs.hardening import harden_process
from cosencfs.mount.lifecycle import EXIT_FAILED, EXIT_OK, MountError, serve

if TYPE_CHECKING:
    from cosencfs.server import LocalCosServer

log = logging.getLogger(__name__)


def _start_local_server(settings: MountSettings) -> LocalCosServer:
    """``--local DIR``: an in-process COS server over DIR; returns it (to stop).

    Its TCP port is open to every local user, so it accepts only requests
    signed with a secret made here for this mount: the secret exists only in
    this process's memory (never in argv, the environment or a file), and the
    process is not dumpable, so no other process can read it.
    """
    from cosencfs.server import LocalCosServer  # noqa: PLC0415 - only for --local

    if settings.local_dir is None:
        raise MountError("--local needs a directory")
    os.makedirs(settings.local_dir, mode=0o700, exist_ok=True)
    secret_id = "cosencfs-local-" + secrets.token_hex(8)
    secret_key = secrets.token_urlsafe(32)
    server = LocalCosServer(
        settings.local_dir,
        buckets=[LOCAL_BUCKET],
        secret_id=secret_id,
        secret_key=secret_key,
    )
    server.start()
    settings.endpoint = server.url
    settings.bucket = LOCAL_BUCKET
    settings.secret_id, settings.secret_key, settings.token = secret_id, secret_key, None
    return server


def run(settings: MountSettings) -> int:
    """Entry point of ``cosencfs mount``: daemonize unless ``foreground``."""
    # Before any key is loaded; fork() keeps both settings for the daemon.
    harden_process()
    if settings.foreground:
        return _run_here(settings, lambda: None)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid:
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as pipe:
            answer = pipe.read().decode(errors="replace")
        if answer.startswith("ok"):
            return EXIT_OK
        os.waitpid(pid, 0)
        msg = answer.strip() or "the mount process exited before the mount was ready"
        print(f"cosencfs: {msg}", file=sys.stderr)
        return EXIT_FAILED
    # The child: detach, mount, report to the parent, serve.
    os.close(read_fd)
    os.setsid()
    pipe_open = [True]

    def ready() -> None:
        os.write(write_fd, b"ok\n")
        os.close(write_fd)
        pipe_open[0] = False
        _detach_stdio(settings)

    def report(message: str) -> None:
        if pipe_open[0]:
            os.write(write_fd, f"error: {message}\n".encode())

    code = EXIT_FAILED
    try:
        code = _run_here(settings, ready, report)
    finally:
        if pipe_open[0]:
            os.close(write_fd)
        os._exit(code)


def _detach_stdio(settings: MountSettings) -> None:
    log_path = settings.cache_root() / "cosencfs.log"
    log_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.close(null)


def _print_error(message: str) -> None:
    print(f"cosencfs: {message}", file=sys.stderr)


def _run_here(
    settings: MountSettings,
    ready: Callable[[], None],
    report: Callable[[str], None] = _print_error,
) -> int:
    server = None
    try:
        if settings.local_dir:
            server = _start_local_server(settings)
        return trio.run(serve, settings, ready)
    except (MountError, ConfigError) as exc:
        log.error("%s", exc)
        report(str(exc))
        return EXIT_FAILED
    except CosEncFsError as exc:
        log.error("cannot mount: %s", exc)
        report(f"cannot mount: {exc}")
        return EXIT_FAILED
    finally:
        if server is not None:
            server.stop()
