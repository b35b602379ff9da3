"""Debian's Prometheus scrapes a real CPU training run (the trainer's loop and metrics endpoint)
and the operator (running as the chart's ServiceAccount, reconciling a job), with the chart's
alert rules loaded. Then every query the chart ships, with its variables substituted, must
return data without error: dashboard panels, dashboard variables, and each alert's signal (an
alert whose signal has no data can never fire)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from api_cases import pretrain_job
from devcluster.controlplane import free_port
from devcluster.nodes import NodePool, NodeShape
from devcluster.session import ClusterSession
from devcluster.waiting import wait_until
from operator_process import OperatorProcess
from pretrain_operator.api import PretrainJobSpec
from pretrain_operator.monitoring.rules import ALERTS
from pretrain_trainer import metrics as trainer_metrics
from pretrain_trainer.corpus import build_text_corpus
from pretrain_trainer.train import run
from shipped_queries import CHART, dashboard_queries, dashboard_variables, rule_expressions

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("crds")]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "gpt-tiny-cpu.yaml"
NAMESPACE, JOB, STEPS = "ml", "gpt-tiny", 30
# What Grafana would put in: the job dashboard's variables and its interval macros.
VARIABLES = {"$namespace": NAMESPACE, "$job": JOB, "$__rate_interval": "1m", "$__range": "5m"}
# MFU needs a device whose peak FLOP/s is known; on a CPU the trainer leaves it absent.
EMPTY_ON_CPU = "pretrain_mfu_ratio"


class Prometheus:
    def __init__(self, directory: Path, targets: dict[str, int]) -> None:
        self.port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(CHART / "rules" / "pretrain-operator.rules.yaml")],
            # honor_labels, as the chart's PodMonitor: the trainer's `job` label is the job's name.
            "scrape_configs": [
                {"job_name": name, "honor_labels": name == "training",
                 "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
                for name, port in targets.items()
            ],
        }  # fmt: skip
        (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
        binary = shutil.which("prometheus")
        assert binary, "prometheus is missing: `make debian` installs Debian's package"
        self.log = (directory / "prometheus.log").open("wb")
        self.process = subprocess.Popen(
            [binary, f"--config.file={directory / 'prometheus.yml'}",
             f"--storage.tsdb.path={directory / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait_until(self.ready, "Prometheus ready", timeout=60)

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2):
                return True
        except OSError:
            return False

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:  # 400/422: a bad query; the body says why
            return json.loads(error.read())

    def value(self, query: str) -> float | None:
        result = self.api("query", query=query)["data"]["result"]
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        self.log.close()


@pytest.fixture
def prometheus_run(
    operator: OperatorProcess, cluster: ClusterSession, namespace: str, node_pool: NodePool,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Prometheus]:  # fmt: skip
    """Prometheus that scraped a whole training run and the operator reconciling a job."""
    # The operator reconciles a job to Running (jobs by phase, pods created, time to Running).
    node_pool.add(NodeShape(gpus=8))
    reconciled = pretrain_job("reconciled", node_pool)
    reconciled["metadata"]["namespace"] = namespace
    cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(reconciled))

    # A real CPU training run, the trainer's metrics served as a node pod serves them. It runs
    # here rather than as `pretrain train` so that its endpoint stays up after the last step:
    # on a loaded machine scrapes time out while torch holds the CPU, and the final state must
    # be scraped whatever the speed. 30 steps, an evaluation every 6, a checkpoint every 10.
    build_text_corpus(tmp_path / "pvc" / "corpus")
    monkeypatch.setenv("PRETRAIN_PVC_ROOT", str(tmp_path / "pvc"))
    job = yaml.safe_load(EXAMPLE.read_text())
    job["spec"]["tokenizer"] = {"type": "Byte"}
    job["spec"]["data"]["sequenceLength"] = 64
    job["spec"]["training"].update(globalBatchSize=8, microBatchSize=8, maxSteps=STEPS)
    job["spec"]["checkpoint"]["everySteps"] = 10
    served = trainer_metrics.create(NAMESPACE, JOB, "PretrainJob")
    trainer_port = trainer_metrics.serve(served, 0)
    prometheus = Prometheus(tmp_path, {"training": trainer_port,
                                       "pretrain-operator": operator.metrics_port})  # fmt: skip
    try:
        # Scraped once before the first step: a run that ends before Prometheus's first scrape
        # would look stalled (its step never changes), as on a loaded machine it did.
        wait_until(lambda: prometheus.value(f'pretrain_train_step{{job="{JOB}"}}') == 0,
                   "Prometheus scraping the trainer before it starts", timeout=60)  # fmt: skip
        run(PretrainJobSpec.model_validate(job["spec"]), tmp_path / "out", metrics=served)
        wait_until(lambda: prometheus.value(f'pretrain_train_step{{job="{JOB}"}}') == STEPS,
                   "Prometheus scraping the last step", timeout=60)  # fmt: skip
        wait_until(lambda: cluster.kubectl("get", "ptj", "reconciled", "-n", namespace, "-o",
                                           "jsonpath={.status.phase}").stdout == "Running",
                   "the reconciled job Running")  # fmt: skip
        time.sleep(3)  # a few more scrapes of the operator, and rule evaluations
        yield prometheus
    finally:
        prometheus.stop()


def substitute(expr: str) -> str:
    for variable, value in sorted(VARIABLES.items(), key=lambda item: -len(item[0])):
        expr = expr.replace(variable, value)
    return expr


def test_every_shipped_query_returns_data_from_a_real_run(
    prometheus_run: Prometheus,
) -> None:
    prometheus, moment = prometheus_run, time.time()
    targets = prometheus.api("targets")["data"]["activeTargets"]
    assert {t["labels"]["job"]: t["health"] for t in targets} == {
        "training": "up",
        "pretrain-operator": "up",
    }

    signals = [(f"signal of {a.name}", a.signal) for a in ALERTS]
    queries = [(q.where, q.expr) for q in dashboard_queries()] + signals
    failures: list[str] = []
    empty_on_cpu: list[str] = []
    for where, expr in queries:
        answer = prometheus.api("query", query=substitute(expr), time=str(moment))
        if answer["status"] != "success":
            failures.append(f"{where}: {answer.get('error')}")
        elif not answer["data"]["result"]:
            (empty_on_cpu if EMPTY_ON_CPU in expr else failures).append(f"{where}: no data")
    assert failures == []
    assert len(empty_on_cpu) == 2  # the two MFU panels, and nothing else

    for where, selector, label in dashboard_variables():
        series = prometheus.api("series", **{"match[]": substitute(selector)},
                                start=str(moment - 300), end=str(moment))  # fmt: skip
        values = {s.get(label) for s in series["data"]}
        assert VARIABLES[f"${label}"] in values, where

    # The whole alert expressions evaluate (and, on a healthy run, none fires).
    for rule in rule_expressions():
        answer = prometheus.api("query", query=rule.expr, time=str(moment))
        assert answer["status"] == "success", f"{rule.where}: {answer.get('error')}"
        assert answer["data"]["result"] == [], f"{rule.where} fires on a healthy run"
    groups = prometheus.api("rules")["data"]["groups"]
    evaluated = {r["name"]: r["health"] for g in groups for r in g["rules"]}
    assert evaluated == {a.name: "ok" for a in ALERTS}
