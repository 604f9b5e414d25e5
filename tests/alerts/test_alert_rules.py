"""The alert rules in contrib/prometheus: valid; promtool sees each fire and stay quiet."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

RULES_DIR = Path(__file__).parents[2] / "contrib" / "prometheus"
RULES = RULES_DIR / "cosencfs-alerts.yml"
TESTS = RULES_DIR / "cosencfs-alerts.test.yml"


def promtool(*args: str) -> str:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.fail("promtool is missing: `make setup` installs Debian's prometheus package")
    done = subprocess.run(
        [tool, *args], cwd=RULES_DIR, capture_output=True, text=True, check=False, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_rules_are_valid() -> None:
    assert "SUCCESS: 5 rules found" in promtool("check", "rules", RULES.name)


def test_each_alert_fires_when_it_should_and_stays_quiet_otherwise() -> None:
    assert "SUCCESS" in promtool("test", "rules", TESTS.name)


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    alerts = set(re.findall(r"^\s+- alert: (\w+)$", RULES.read_text(), re.M))
    assert len(alerts) == 5
    text = TESTS.read_text()
    cases = re.findall(r"alertname: (\w+)\n\s+exp_alerts:( \[\])?", text)
    quiet = {name for name, empty in cases if empty}
    firing = {name for name, empty in cases if not empty}
    assert alerts == quiet == firing
