"""The chart's alert rules under Debian's promtool: they load, and every alert has a unit test
(tests/monitoring/rules_test.yaml) in which it fires, beside a look-alike where it must not."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from pretrain_operator.monitoring.rules import ALERTS

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "charts" / "pretrain-operator" / "rules" / "pretrain-operator.rules.yaml"
UNIT_TESTS = Path(__file__).resolve().parent / "rules_test.yaml"


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool is missing: `make debian` installs Debian's prometheus package"
    return subprocess.run([binary, *map(str, args)], capture_output=True, text=True, timeout=60)


def test_promtool_checks_the_rules() -> None:
    checked = promtool("check", "rules", RULES)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in checked.stdout


def test_promtool_unit_tests_pass() -> None:
    tested = promtool("test", "rules", UNIT_TESTS)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_has_a_unit_test_where_it_fires_and_one_where_it_does_not() -> None:
    cases = [
        case
        for group in yaml.safe_load(UNIT_TESTS.read_text())["tests"]
        for case in group["alert_rule_test"]
    ]
    firing = {case["alertname"] for case in cases if case["exp_alerts"]}
    quiet = {case["alertname"] for case in cases if not case["exp_alerts"]}
    names = {alert.name for alert in ALERTS}
    assert names - firing == set(), "alerts never shown to fire"
    assert names - quiet == set(), "alerts never shown to stay quiet"
