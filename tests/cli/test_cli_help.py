"""Every command's ``--help`` is the committed snapshot in tests/cli/help/.

The snapshots were made from the command line as it was before issue 13's
refactoring, so this proves that no command, flag, default or help text
changed. After an intended change, regenerate them explicitly with
``COSENCFS_UPDATE_HELP=1`` and review the diff.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cosencfs.cli import build_parser, helper_argv, main

HELP_DIR = Path(__file__).with_name("help")
UPDATE = os.environ.get("COSENCFS_UPDATE_HELP") == "1"
#: argparse wraps help to the terminal width: fix it, whatever runs the tests.
COLUMNS = "100"


def command_paths(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> list[tuple[str, ...]]:
    """The top level and every command and subcommand, depth first."""
    out = [path]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out += command_paths(sub, (*path, name))
    return out


PATHS = command_paths(build_parser())


def snapshot(path: tuple[str, ...]) -> Path:
    return HELP_DIR / ("-".join(("cosencfs", *path)) + ".txt")


@pytest.fixture(autouse=True)
def _fixed_width(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", COLUMNS)


def help_text(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main([*path, "--help"])
    assert exc.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "cosencfs")
def test_help_matches_snapshot(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    text = help_text(path, capsys)
    file = snapshot(path)
    if UPDATE:
        file.write_text(text)
    assert file.exists(), f"no snapshot {file}: run with COSENCFS_UPDATE_HELP=1 and review it"
    assert text == file.read_text(), f"`{' '.join(('cosencfs', *path))} --help` changed"


def test_no_snapshot_without_a_command() -> None:
    """A command that disappeared leaves its snapshot behind: that fails too."""
    expected = {snapshot(p).name for p in PATHS}
    assert {f.name for f in HELP_DIR.glob("*.txt")} == expected


@pytest.mark.parametrize(
    "program",
    [
        [sys.executable, "-m", "cosencfs"],
        [str(Path(sys.executable).with_name("cosencfs"))],
    ],
    ids=["python -m cosencfs", "console script"],
)
@pytest.mark.parametrize("path", [(), ("mount",), ("keygen", "rsa")], ids=" ".join)
def test_entry_points_print_the_same_help(program: list[str], path: tuple[str, ...]) -> None:
    done = subprocess.run(
        [*program, *path, "--help"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "COLUMNS": COLUMNS},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == snapshot(path).read_text()


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == "cosencfs 0.1.0\n"


def exit_status(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


@pytest.mark.parametrize(
    "argv",
    [[], ["mount", "--nosuch-flag"], ["keygen"], ["fsck", "--orphan-age", "x"], ["stats"]],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_status(argv) == 2
    assert "usage: cosencfs" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [["mount", "/mnt"], ["fsck"], ["rekey", "b-1250000000"], ["nosuch-1250000000"]],
)
def test_configuration_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Missing settings are reported by cosencfs, not argparse (no usage line)."""
    assert exit_status(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("cosencfs: ")
    assert "usage:" not in err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["photos-1/2026", "/mnt/p", "-o", "config=/etc/c.toml,_netdev,nofail,allow_other"],
            ["mount", "--config", "/etc/c.toml", "-o", "allow_other", "photos-1/2026", "/mnt/p"],
        ),
        (
            ["b-1", "/m", "-orw,region=ap-beijing,key_file=/k,cache_size=2G,x-systemd.after=n,ro"],
            [
                "mount",
                "--region",
                "ap-beijing",
                "--key-file",
                "/k",
                "--cache-size",
                "2G",
                "-o",
                "ro",
                "b-1",
                "/m",
            ],
        ),
        (
            [
                "b-1",
                "/m",
                "-o",
                "endpoint=http://h:1,cache_dir=/c,rsa_public_key=/p,rsa_private_key=/q",
            ],
            [
                "mount",
                "--endpoint",
                "http://h:1",
                "--cache-dir",
                "/c",
                "--rsa-public-key",
                "/p",
                "--rsa-private-key",
                "/q",
                "b-1",
                "/m",
            ],
        ),
    ],
)
def test_mount_helper_form(argv: list[str], expected: list[str]) -> None:
    """``cosencfs SOURCE MOUNTPOINT -o OPTS``, as mount.fuse3 runs it for fstab."""
    assert helper_argv(argv) == expected
