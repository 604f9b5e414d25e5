"""``metrics_addr`` / ``--metrics-addr``: off by default, a port alone on 127.0.0.1, checked."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from cosencfs.cli import helper_argv
from cosencfs.cli.mount import configure, settings_from_args
from cosencfs.errors import ConfigError
from cosencfs.mount.metrics import split_addr


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    configure(p)
    return p.parse_args(argv)


def test_off_unless_given() -> None:
    assert settings_from_args(parse("b-1250000000", "/m")).metrics_addr is None


@pytest.mark.parametrize(
    ("given", "addr", "split"),
    [
        ("9464", "127.0.0.1:9464", ("127.0.0.1", 9464)),
        (":9464", "127.0.0.1:9464", ("127.0.0.1", 9464)),
        ("0.0.0.0:9100", "0.0.0.0:9100", ("0.0.0.0", 9100)),
        ("[::1]:9464", "[::1]:9464", ("::1", 9464)),
        ("localhost:0", "localhost:0", ("localhost", 0)),
    ],
)
def test_command_line(given: str, addr: str, split: tuple[str, int]) -> None:
    s = settings_from_args(parse("b-1250000000", "/m", "--metrics-addr", given))
    assert s.metrics_addr == addr
    assert split_addr(addr) == split


def test_config_file_and_fstab(tmp_path: Path) -> None:
    cfg = tmp_path / "m.toml"
    cfg.write_text('bucket = "b-1250000000"\nmountpoint = "/m"\nmetrics_addr = 9464\n')
    assert settings_from_args(parse("--config", str(cfg))).metrics_addr == "127.0.0.1:9464"
    argv = helper_argv(["b-1250000000", "/m", "-o", "metrics_addr=127.0.0.1:9465,_netdev"])
    assert argv == ["mount", "--metrics-addr", "127.0.0.1:9465", "b-1250000000", "/m"]


@pytest.mark.parametrize("bad", ["", "host", "host:http", "1:65536", "9464/tcp"])
def test_bad_addresses_name_the_setting(bad: str) -> None:
    with pytest.raises(ConfigError, match="metrics_addr"):
        settings_from_args(parse("b-1250000000", "/m", "--metrics-addr", bad))
