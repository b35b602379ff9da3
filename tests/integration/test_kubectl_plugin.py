"""`kubectl pretrain` against the real API server and the operator, with kwok nodes: found by
kubectl's own plugin discovery, reading a running job, suspending and resuming it, and failing
clearly for a job or a rank that does not exist. kwok pods run no container, so no log can be
read from them: `logs` is tested for its pod selection and its error, not for a log's content."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from api_cases import pretrain_job
from devcluster.nodes import NodePool, NodeShape
from devcluster.session import ClusterSession
from devcluster.waiting import wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("operator")]

PLUGIN_DIR = Path(sys.executable).parent  # where the venv installed kubectl-pretrain


def kubectl_pretrain(cluster: ClusterSession, namespace: str, *args: str
                     ) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """`kubectl pretrain ARGS -n NAMESPACE`: kubectl finds kubectl-pretrain on PATH."""
    env = {**cluster.env, "PATH": f"{PLUGIN_DIR}{os.pathsep}{cluster.env['PATH']}",
           "XDG_CACHE_HOME": str(Path(cluster.kubeconfig).parent / "plugin-cache")}  # fmt: skip
    return subprocess.run(
        [str(cluster.binaries.kubectl), "pretrain", *args, "-n", namespace],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip


def phase(cluster: ClusterSession, namespace: str, name: str) -> str:
    body = client.CustomObjectsApi(cluster.api).get_namespaced_custom_object(
        "pretrain.dev", "v1alpha1", namespace, "pretrainjobs", name
    )
    return str((body.get("status") or {}).get("phase", ""))


def create(cluster: ClusterSession, namespace: str, manifest: dict[str, Any]) -> None:
    client.CustomObjectsApi(cluster.api).create_namespaced_custom_object(
        "pretrain.dev", "v1alpha1", namespace, "pretrainjobs", manifest
    )


def test_status_and_watch_of_a_running_job(
    cluster: ClusterSession, namespace: str, node_pool: NodePool
) -> None:
    for _ in range(2):
        node_pool.add(NodeShape(gpus=8))
    create(cluster, namespace, pretrain_job("shown", node_pool, 2, 2))
    wait_until(lambda: phase(cluster, namespace, "shown") == "Running", "shown Running")

    status = kubectl_pretrain(cluster, namespace, "status", "shown")
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert lines[0].startswith(f"PretrainJob {namespace}/shown  phase Running")
    assert "Nodes       2/2  ready 2" in status.stdout
    assert "world size 16" in status.stdout
    assert "0/1000" in status.stdout  # the bar, at step 0 of maxSteps
    assert "Checkpoint  none yet" in status.stdout
    conditions = lines[lines.index("Conditions") + 1 :]
    assert conditions[0].split()[:2] == ["TYPE", "STATUS"]
    assert any(line.split()[:2] == ["Running", "True"] for line in conditions)

    watch = kubectl_pretrain(cluster, namespace, "watch", "--once")
    assert watch.returncode == 0, watch.stderr
    rows = watch.stdout.splitlines()
    assert rows[0].split()[:3] == ["KIND", "NAME", "PHASE"]
    assert rows[1].split()[:4] == ["ptj", "shown", "Running", "2/2"]


def test_suspend_deletes_the_pods_and_resume_brings_the_job_back(
    cluster: ClusterSession, namespace: str, node_pool: NodePool
) -> None:
    node_pool.add(NodeShape(gpus=8))
    create(cluster, namespace, pretrain_job("paused", node_pool, 1, 1))
    wait_until(lambda: phase(cluster, namespace, "paused") == "Running", "paused Running")

    suspended = kubectl_pretrain(cluster, namespace, "suspend", "paused")
    assert suspended.returncode == 0, suspended.stderr
    assert suspended.stdout.strip() == "pretrainjob.pretrain.dev/paused suspended"
    wait_until(lambda: phase(cluster, namespace, "paused") == "Suspended", "paused Suspended")
    nodes = "pretrain.dev/job-name=paused,pretrain.dev/role=node"
    wait_until(lambda: not cluster.core.list_namespaced_pod(namespace, label_selector=nodes).items,
               "no node pods while suspended")  # fmt: skip
    assert "phase Suspended  (suspended)" in kubectl_pretrain(
        cluster, namespace, "status", "paused").stdout  # fmt: skip

    resumed = kubectl_pretrain(cluster, namespace, "resume", "paused")
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.strip() == "pretrainjob.pretrain.dev/paused resumed"
    wait_until(lambda: phase(cluster, namespace, "paused") == "Running", "paused Running again")


def test_a_missing_job_and_a_missing_rank_are_clear_errors(
    cluster: ClusterSession, namespace: str, node_pool: NodePool
) -> None:
    missing = kubectl_pretrain(cluster, namespace, "status", "nope")
    assert missing.returncode == 1
    assert missing.stderr.strip() == (
        f"error: no PretrainJob or FinetuneJob named 'nope' in namespace '{namespace}'"
    )
    assert kubectl_pretrain(cluster, namespace, "suspend", "nope", "--kind", "ftj").stderr.strip(
    ) == f"error: no FinetuneJob named 'nope' in namespace '{namespace}'"  # fmt: skip

    node_pool.add(NodeShape(gpus=8))
    node_pool.add(NodeShape(gpus=8))
    create(cluster, namespace, pretrain_job("logged", node_pool, 2, 2))
    wait_until(lambda: phase(cluster, namespace, "logged") == "Running", "logged Running")
    no_rank = kubectl_pretrain(cluster, namespace, "logs", "logged", "--rank", "5")
    assert no_rank.returncode == 1
    assert no_rank.stderr.strip() == (
        "error: --rank: PretrainJob logged has no node pod of rank 5 (ranks with pods: 0, 1)"
    )
    # kwok pods have no kubelet behind them: the API server's refusal is passed on, naming
    # the pod that rank 1 selected.
    no_log = kubectl_pretrain(cluster, namespace, "logs", "logged", "--rank", "1")
    assert no_log.returncode == 1
    assert no_log.stderr.startswith("error: cannot read the log of pod logged-node-1: ")
