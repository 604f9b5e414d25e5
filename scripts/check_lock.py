"""Fail unless the running environment holds exactly what a lock file pins.

Usage: ``python scripts/check_lock.py requirements/lock.txt``.  Every pinned
distribution must be installed at its pinned version, and nothing else may be
installed but the project itself: a venv that drifted from the lock (a manual
``pip install``, an interrupted bootstrap) fails here instead of in a test.
"""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")
PROJECT = "cosencfs"


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(lock: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in lock.read_text().splitlines():
        m = PIN.match(line.strip())
        if m:
            out[normalize(m.group(1))] = m.group(2)
    return out


def main() -> int:
    lock = Path(sys.argv[1])
    wanted = pins(lock)
    if not wanted:
        print(f"{lock}: no pinned requirements found", file=sys.stderr)
        return 1
    installed = {
        normalize(d.metadata["Name"]): d.version
        for d in metadata.distributions()
        if d.metadata["Name"]
    }
    problems = []
    for name, version in sorted(wanted.items()):
        have = installed.get(name)
        if have is None:
            problems.append(f"{name}=={version} is not installed")
        elif have != version:
            problems.append(f"{name} is {have}, the lock says {version}")
    for name in sorted(set(installed) - set(wanted) - {normalize(PROJECT)}):
        problems.append(f"{name}=={installed[name]} is installed but not in the lock")
    if PROJECT not in installed:
        problems.append(f"{PROJECT} itself is not installed")
    check = subprocess.run(
        [sys.executable, "-m", "pip", "check"], capture_output=True, text=True, check=False
    )
    if check.returncode != 0:
        problems.append("pip check: " + check.stdout.strip())
    if problems:
        print(f"the environment differs from {lock}:", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        print("run `rm -rf .venv && make setup` to rebuild it", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
