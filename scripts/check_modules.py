"""Fail when a package module outgrows one job: over MAX_LINES lines, or no docstring.

Usage: ``python scripts/check_modules.py [PACKAGE_DIR]`` (default ``cosencfs``).
A module past the limit usually does two things; split it by job (see
docs/architecture.md).  Every module opens with a docstring whose first line
says what it owns.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

MAX_LINES = 450


def problems(package: Path) -> list[str]:
    out = []
    for path in sorted(package.rglob("*.py")):
        text = path.read_text()
        lines = text.count("\n")
        if lines > MAX_LINES:
            out.append(f"{path}: {lines} lines (at most {MAX_LINES}): split it by job")
        doc = ast.get_docstring(ast.parse(text, str(path)))
        if not doc or not doc.splitlines()[0].strip():
            out.append(f"{path}: no docstring saying what the module owns")
    return out


def main() -> int:
    package = Path(sys.argv[1] if len(sys.argv) > 1 else "cosencfs")
    found = problems(package)
    for line in found:
        print(line, file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
