"""The cluster's Kueue (the local control plane's, built from Kueue's module; or the one on
$KUBECONFIG's cluster) admits Workloads within a ClusterQueue's quota, holds back the rest with
Kueue's reason, admits them when quota frees, and calls its own webhooks: what the operator's
queueing stands on. Then the operator's jobs through it: Queued with no pod until admitted, and
their quota given back when they end."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml

from api_cases import pretrain_job
from devcluster.nodes import NodePool, NodeShape, finish_pod
from devcluster.session import ClusterSession, KubectlError
from devcluster.waiting import wait_until
from operator_process import OperatorProcess

API = "kueue.x-k8s.io/v1beta2"
QUEUES = Path(__file__).resolve().parents[2] / "examples" / "kueue" / "queues.yaml"


@pytest.fixture
def queue(cluster: ClusterSession, namespace: str) -> Iterator[str]:
    """The README's queues (examples/kueue/queues.yaml: quota for one 8-GPU pod, preemption by
    priority), the cluster-scoped ones renamed for this test; the LocalQueue `gpus` is in
    `namespace`. Yields the LocalQueue's name."""
    if "workloads" not in cluster.kubectl("api-resources", f"--api-group={API.split('/')[0]}",
                                          "-o", "name", check=False).stdout:  # fmt: skip
        assert not cluster.local, "the local control plane runs Kueue"
        pytest.skip("this cluster has no Kueue")
    objects = list(yaml.safe_load_all(QUEUES.read_text()))
    suffix = f"-{namespace}"  # cluster-scoped: one per test
    for document in objects:
        meta = document["metadata"]
        if document["kind"] == "LocalQueue":
            meta["namespace"] = namespace
            document["spec"]["clusterQueue"] += suffix
        else:
            meta["name"] += suffix
        for group in document.get("spec", {}).get("resourceGroups", []):
            for flavor in group["flavors"]:
                flavor["name"] += suffix
    cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(objects))
    yield "gpus"
    names = [f"{d['kind'].lower()}/{d['metadata']['name']}" for d in objects
             if d["kind"] != "LocalQueue"]  # fmt: skip
    cluster.kubectl("delete", *names, "--wait=false", check=False)


def workload(name: str, namespace: str, queue: str, gpus: int = 8, **extra: str) -> dict[str, Any]:
    """A Workload of one pod asking for `gpus` GPUs (and `extra` resources), as an operator that
    owns its job's Workload creates it."""
    requests = {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": str(gpus), **extra}
    return {
        "apiVersion": API, "kind": "Workload",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"queueName": queue, "podSets": [{"name": "node", "count": 1, "template": {
            "spec": {"restartPolicy": "Never", "containers": [{
                "name": "trainer", "image": "trainer", "resources": {"requests": requests}}]},
        }}]},
    }  # fmt: skip


def condition(cluster: ClusterSession, namespace: str, name: str, kind: str) -> dict[str, Any]:
    body = yaml.safe_load(
        cluster.kubectl("get", "workload", name, "-n", namespace, "-o", "yaml").stdout
    )
    for found in body.get("status", {}).get("conditions", []):
        if found["type"] == kind:
            return dict(found)
    return {}


def test_kueue_admits_within_quota_and_the_next_workload_when_quota_frees(
    cluster: ClusterSession, namespace: str, queue: str
) -> None:
    for name in ("first", "second"):
        cluster.kubectl("create", "-f", "-", stdin=yaml.safe_dump(workload(name, namespace, queue)))
        if name == "first":  # the second is queued behind it, not beside it
            wait_until(lambda: condition(cluster, namespace, "first", "Admitted").get("status")
                       == "True", "the first Workload admitted", timeout=60)  # fmt: skip

    def held_back() -> dict[str, Any]:
        found = condition(cluster, namespace, "second", "QuotaReserved")
        return found if found.get("status") == "False" and found.get("message") else {}

    reason = wait_until(held_back, "Kueue's reason for not admitting the second", timeout=60)
    assert "insufficient unused quota for nvidia.com/gpu" in reason["message"], reason
    assert condition(cluster, namespace, "second", "Admitted").get("status") != "True"

    cluster.kubectl("delete", "workload", "first", "-n", namespace)
    wait_until(lambda: condition(cluster, namespace, "second", "Admitted").get("status") == "True",
               "the second Workload admitted once the first is gone", timeout=60)  # fmt: skip


def test_kueues_webhooks_judge_its_objects(
    cluster: ClusterSession, namespace: str, queue: str
) -> None:
    """`pods` is a resource only Kueue's own webhook reserves (no schema says so): the API
    server refuses it only if it calls that webhook."""
    refused = workload("counts-pods", namespace, queue, pods="1")
    with pytest.raises(KubectlError, match="reserved for internal kueue use"):
        cluster.kubectl("create", "-f", "-", stdin=yaml.safe_dump(refused))


def job_pods(cluster: ClusterSession, namespace: str, job: str) -> list[Any]:
    selector = f"pretrain.dev/job-name={job}"
    return list(cluster.core.list_namespaced_pod(namespace, label_selector=selector).items)


def job_status(cluster: ClusterSession, namespace: str, job: str) -> dict[str, Any]:
    body = cluster.kubectl("get", "ptj", job, "-n", namespace, "-o", "json").stdout
    return dict(json.loads(body).get("status") or {})


def phase_is(cluster: ClusterSession, namespace: str, job: str, phase: str) -> bool:
    return job_status(cluster, namespace, job).get("phase") == phase


def submit(cluster: ClusterSession, namespace: str, node_pool: NodePool, queue: str, name: str,
           priority: str = "", running: bool = False) -> None:  # fmt: skip
    """A one-node 8-GPU PretrainJob in `queue` (at WorkloadPriorityClass `priority`), awaited
    until Running if `running`."""
    job = pretrain_job(name, node_pool, scheduling={"queueName": queue})
    job["metadata"]["namespace"] = namespace
    if priority:
        job["metadata"]["labels"] = {"kueue.x-k8s.io/priority-class": priority}
    cluster.kubectl("create", "-f", "-", stdin=yaml.safe_dump(job))
    if running:
        wait_until(partial(phase_is, cluster, namespace, name, "Running"), f"{name} Running",
                   timeout=90)  # fmt: skip


@pytest.mark.usefixtures("operator")
def test_a_second_job_waits_queued_with_no_pod_until_the_first_frees_the_quota(
    cluster: ClusterSession, namespace: str, queue: str, node_pool: NodePool
) -> None:
    """The operator owns each queued job's Workload; Kueue admits one 8-GPU job at a time.
    On two 8-GPU kwok nodes, so the second is held back by the queue, not by the nodes."""
    node_pool.add(NodeShape(gpus=8))
    node_pool.add(NodeShape(gpus=8))
    submit(cluster, namespace, node_pool, queue, "first", running=True)
    submit(cluster, namespace, node_pool, queue, "second")

    def queued() -> dict[str, Any]:
        status = job_status(cluster, namespace, "second")
        return status if status.get("phase") == "Queued" else {}

    status = wait_until(queued, "the second job Queued", timeout=60)
    admitted = next(c for c in status["conditions"] if c["type"] == "Admitted")
    assert admitted["status"] == "False"
    assert f"LocalQueue {queue}" in admitted["message"], admitted
    assert "insufficient unused quota for nvidia.com/gpu" in admitted["message"], admitted
    time.sleep(5)  # what a job that ignored its queue would do in this time: make pods
    assert job_pods(cluster, namespace, "second") == []
    workload = yaml.safe_load(cluster.kubectl("get", "workload", "pretrainjob-first", "-n",
                                              namespace, "-o", "yaml").stdout)  # fmt: skip
    assert [p["count"] for p in workload["spec"]["podSets"]] == [1, 1]  # node pods, rendezvous
    assert workload["metadata"]["ownerReferences"][0]["kind"] == "PretrainJob"

    deleted = time.monotonic()
    cluster.kubectl("delete", "ptj", "first", "-n", namespace)
    wait_until(lambda: job_status(cluster, namespace, "second").get("phase") == "Running",
               "the second job Running once the first is gone", timeout=60)  # fmt: skip
    assert time.monotonic() - deleted < 60
    assert job_status(cluster, namespace, "second").get("restarts", 0) == 0


@pytest.mark.usefixtures("operator")
def test_a_finished_job_gives_its_quota_back(
    cluster: ClusterSession, namespace: str, queue: str, node_pool: NodePool
) -> None:
    """A job that ends (here its node pod exits 0 on kwok) marks its Workload Finished, and
    Kueue admits the next job, though the finished one is kept."""
    node_pool.add(NodeShape(gpus=8))
    submit(cluster, namespace, node_pool, queue, "done", running=True)
    submit(cluster, namespace, node_pool, queue, "next")
    wait_until(lambda: job_status(cluster, namespace, "next").get("phase") == "Queued",
               "the second job Queued", timeout=60)  # fmt: skip
    finish_pod(cluster.core, namespace, "done-node-0", "Succeeded", exit_code=0)
    wait_until(lambda: job_status(cluster, namespace, "done").get("phase") == "Succeeded",
               "the first job Succeeded", timeout=60)  # fmt: skip
    assert condition(cluster, namespace, "pretrainjob-done", "Finished").get("status") == "True"
    wait_until(lambda: job_status(cluster, namespace, "next").get("phase") == "Running",
               "the second job Running on the quota the first gave back", timeout=60)  # fmt: skip


def sample(text: str, name: str, labels: str) -> float:
    """The sum of a metric's samples whose labels include `labels` (0 if none)."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") and labels in line)  # fmt: skip


def test_a_higher_priority_job_preempts_a_running_one_which_queues_again_without_a_restart(
    cluster: ClusterSession, namespace: str, queue: str, node_pool: NodePool,
    operator: OperatorProcess,
) -> None:  # fmt: skip
    """WorkloadPriorityClasses as Kueue's own integrations honour them (the job's
    kueue.x-k8s.io/priority-class label). The victim's pods go (SIGTERM: a trainer saves its
    checkpoint), its quota is given back, and it is Queued, not Failed, until the preemptor
    ends; then it runs again, its restarts unchanged."""
    node_pool.add(NodeShape(gpus=8))
    node_pool.add(NodeShape(gpus=8))
    low, high = f"research-{namespace}", f"production-{namespace}"  # the README's classes
    submit(cluster, namespace, node_pool, queue, "victim", low, running=True)
    submit(cluster, namespace, node_pool, queue, "preemptor", high, running=True)
    status = job_status(cluster, namespace, "victim")
    assert status["phase"] == "Queued", status
    admitted = next(c for c in status["conditions"] if c["type"] == "Admitted")
    assert admitted["reason"] == "Preempted", admitted
    assert status.get("restarts", 0) == 0
    assert job_pods(cluster, namespace, "victim") == []
    preemptor = cluster.kubectl("get", "workload", "pretrainjob-preemptor", "-n", namespace,
                                "-o", "jsonpath={.spec.priority}").stdout  # fmt: skip
    assert preemptor == "1000"

    evictions = "pretrain_operator_kueue_evictions_total"
    assert sample(operator.metrics(), evictions, 'reason="Preempted"') >= 1

    admitted_before = sample(operator.metrics(), "pretrain_operator_kueue_admissions_total", "")
    finish_pod(cluster.core, namespace, "preemptor-node-0", "Succeeded", exit_code=0)
    wait_until(lambda: job_status(cluster, namespace, "victim").get("phase") == "Running",
               "the victim Running again once the preemptor is done", timeout=60)  # fmt: skip
    assert job_status(cluster, namespace, "victim").get("restarts", 0) == 0
    admitted = sample(operator.metrics(), "pretrain_operator_kueue_admissions_total", "")
    assert admitted > admitted_before  # the victim's second admission
    assert "pretrain_operator_kueue_queued_seconds_bucket" in operator.metrics()


@pytest.mark.usefixtures("operator")
def test_a_finetune_job_waits_in_the_same_queue_behind_a_pretrain_job(
    cluster: ClusterSession, namespace: str, queue: str, node_pool: NodePool
) -> None:
    node_pool.add(NodeShape(gpus=8))
    node_pool.add(NodeShape(gpus=8))
    submit(cluster, namespace, node_pool, queue, "pretrain", running=True)
    finetune = {
        "apiVersion": "pretrain.dev/v1alpha1", "kind": "FinetuneJob",
        "metadata": {"name": "classify", "namespace": namespace},
        "spec": {
            "base": {"checkpoint": {"uri": "s3://models/base/step-000000100"}},
            "task": {"type": "SequenceClassification", "numLabels": 2},
            "data": {"train": {"uri": "file:///data/train.jsonl"}},
            "training": {"maxSteps": 10, "globalBatchSize": 8, "microBatchSize": 8},
            "resources": {"accelerator": {"type": "nvidia.com/gpu", "count": 8}},
            "scheduling": {"queueName": queue},
            "template": {"nodeSelector": node_pool.selector},
        },
    }  # fmt: skip
    cluster.kubectl("create", "-f", "-", stdin=yaml.safe_dump(finetune))

    def finetune_phase() -> str:
        return str(cluster.kubectl("get", "ftj", "classify", "-n", namespace, "-o",
                                   "jsonpath={.status.phase}").stdout)  # fmt: skip

    wait_until(lambda: finetune_phase() == "Queued", "the FinetuneJob Queued", timeout=60)
    assert job_pods(cluster, namespace, "classify") == []
    reserved = condition(cluster, namespace, "finetunejob-classify", "QuotaReserved")
    assert "insufficient unused quota for nvidia.com/gpu" in reserved.get("message", ""), reserved

    cluster.kubectl("delete", "ptj", "pretrain", "-n", namespace)
    wait_until(lambda: finetune_phase() == "Running", "the FinetuneJob Running", timeout=60)
