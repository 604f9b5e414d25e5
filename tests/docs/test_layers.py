"""The imports allowed between layers (docs/architecture.md, "Layers and imports")."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "cosencfs"

#: layer -> project packages it must never import. A lower layer never reaches up;
#: the filesystem never reaches sideways into the command line or the daemon.
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "crypto": ("fs", "cache", "store", "server", "cli", "tools", "mount", "fuse_ops", "config"),
    "store": ("fs", "cache", "server", "cli", "tools", "mount", "fuse_ops", "config"),
    "cache": ("fs", "server", "cli", "tools", "mount", "fuse_ops", "config"),
    "fs": ("server", "cli", "tools", "mount", "fuse_ops", "config"),
    "server": ("fs", "cache", "cli", "tools", "mount", "fuse_ops"),
}

#: third-party packages only some modules may import.
CONFINED: dict[str, tuple[str, ...]] = {
    "pyfuse3": ("cosencfs/fuse_ops.py", "cosencfs/mount/"),
    "qcloud_cos": ("cosencfs/store/",),
}


def imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_no_layer_reaches_up() -> None:
    bad = []
    for path in modules():
        rel = path.relative_to(PACKAGE).parts
        layer = rel[0] if len(rel) > 1 else None
        if layer not in FORBIDDEN:
            continue
        for name in imports(path):
            parts = name.split(".")
            if parts[0] == "cosencfs" and len(parts) > 1 and parts[1] in FORBIDDEN[layer]:
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert bad == []


def test_third_party_packages_stay_where_they_belong() -> None:
    bad = []
    for path in modules():
        rel = path.relative_to(ROOT).as_posix()
        for name in imports(path):
            top = name.split(".")[0]
            if top in CONFINED and not rel.startswith(CONFINED[top]):
                bad.append(f"{rel} imports {name}")
    assert bad == []
