"""Every TOML example in the docs loads through the real config loader."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cosencfs.config import build_mount_settings, load_config_file

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
_BLOCK = re.compile(r"^```toml\n(.*?)^```", re.MULTILINE | re.DOTALL)


def examples() -> list[tuple[str, str]]:
    out = []
    for doc in DOCS:
        for n, m in enumerate(_BLOCK.finditer(doc.read_text()), 1):
            out.append((f"{doc.relative_to(REPO)}#{n}", m.group(1)))
    return out


EXAMPLES = examples()


def test_the_docs_have_examples() -> None:
    assert EXAMPLES, "no ```toml block found in README.md or docs/*.md"


@pytest.mark.parametrize(("where", "text"), EXAMPLES, ids=[w for w, _ in EXAMPLES])
def test_doc_example_loads(where: str, text: str, tmp_path: Path) -> None:
    path = tmp_path / "example.toml"
    path.write_text(text)
    path.chmod(0o600)
    values = load_config_file(path)
    assert values, where
    # The credentials file an example names is not on this machine (its own
    # loader is tested in tests/test_config.py); everything else is built.
    values.pop("credentials.file", None)
    values.setdefault("bucket", "example-1250000000")
    values.setdefault("mountpoint", "/mnt/example")
    build_mount_settings(values)
