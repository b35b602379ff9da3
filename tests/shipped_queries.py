"""Every PromQL query the chart ships, read back from the generated files (what users get):
the dashboards' panel targets and variable queries, and the alert rules."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

CHART = Path(__file__).resolve().parent.parent / "charts" / "pretrain-operator"
METRIC = re.compile(r"\b(pretrain_[a-z0-9_]+)")
LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+), (?P<label>\w+)\)$")


@dataclass(frozen=True, slots=True)
class Shipped:
    where: str
    """`dashboard job.json, panel "Loss"` or `rule PretrainLossNaN`."""
    expr: str


def dashboard_queries() -> list[Shipped]:
    found = []
    for path in sorted((CHART / "dashboards").glob("*.json")):
        model = json.loads(path.read_text())
        for panel in model["panels"]:
            for target in panel.get("targets", []):
                found.append(Shipped(f'{path.name}, panel "{panel["title"]}"', target["expr"]))
    return found


def dashboard_variables() -> list[tuple[str, str, str]]:
    """(where, series selector, label) of every `label_values` variable."""
    found = []
    for path in sorted((CHART / "dashboards").glob("*.json")):
        for variable in json.loads(path.read_text())["templating"]["list"]:
            if variable["type"] == "query":
                match = LABEL_VALUES.match(variable["query"])
                assert match, f"{path.name}: ${variable['name']} is no label_values() query"
                where = f"{path.name}, ${variable['name']}"
                found.append((where, match["selector"], match["label"]))
    return found


def rule_expressions() -> list[Shipped]:
    rules = yaml.safe_load((CHART / "rules" / "pretrain-operator.rules.yaml").read_text())
    return [
        Shipped(f"rule {rule['alert']}", rule["expr"])
        for group in rules["groups"]
        for rule in group["rules"]
    ]


def metric_names(expr: str) -> set[str]:
    return set(METRIC.findall(expr))
