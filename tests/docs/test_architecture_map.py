"""docs/architecture.md's module map names every module of the package, and only those."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "cosencfs"

#: A package line of the map ("cosencfs/fs/  ...") or a module line ("├─ core.py  ...",
#: "cosencfs/config.py  ...").
_PACKAGE_LINE = re.compile(r"(?:^|\s)(cosencfs/(?:[a-z_]+/)*)(?:\s|$)")
_MODULE_LINE = re.compile(r"(?:[├└]─\s+|(?:^|\s)(cosencfs/(?:[a-z_]+/)*))([a-z_]+\.py)\b")


def map_block() -> str:
    text = (ROOT / "docs" / "architecture.md").read_text()
    blocks: list[str] = re.findall(r"```\n(.*?)```", text, re.S)
    maps = [b for b in blocks if "cosencfs/fuse_ops.py" in b]
    assert len(maps) == 1, "docs/architecture.md must hold exactly one module map"
    return maps[0]


def modules_in_map(block: str) -> set[str]:
    found: set[str] = set()
    package = "cosencfs/"
    for line in block.splitlines():
        m = _MODULE_LINE.search(line)
        if m:
            if m.group(1):  # a module named by its full path
                found.add(m.group(1) + m.group(2))
            else:  # "├─ a.py, b.py   description": every name before the description
                names = line[m.start(2) :].split("  ")[0]
                found.update(package + n.strip() for n in names.split(","))
            continue
        p = _PACKAGE_LINE.search(line)
        if p:
            package = p.group(1)
    return found


def modules_in_tree() -> set[str]:
    return {
        p.relative_to(ROOT).as_posix()
        for p in PACKAGE.rglob("*.py")
        if "__pycache__" not in p.parts and p.name != "__init__.py"
    }


def test_map_parser_reads_both_forms() -> None:
    block = (
        "cosencfs/fs/   filesystem\n  ├─ core.py   x\n  ├─ a.py, b.py  w\n"
        "  └─ inode.py  y\ncosencfs/config.py  z\n"
    )
    assert modules_in_map(block) == {
        "cosencfs/fs/core.py",
        "cosencfs/fs/a.py",
        "cosencfs/fs/b.py",
        "cosencfs/fs/inode.py",
        "cosencfs/config.py",
    }


def test_map_names_every_module_and_nothing_else() -> None:
    in_map, in_tree = modules_in_map(map_block()), modules_in_tree()
    assert sorted(in_tree - in_map) == [], "modules missing from docs/architecture.md's map"
    assert sorted(in_map - in_tree) == [], "docs/architecture.md names modules that do not exist"
