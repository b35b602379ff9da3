"""Preempted with its work kept, on real kubelet nodes and the local cluster's Kueue: a queued
PretrainJob preempted mid-run, between periodic checkpoints, by a higher-priority job saves a
checkpoint at the step it is on before its pods go, waits Queued (not Failed, not restarted)
while the preemptor trains, and resumes from that step when Kueue admits it again: every step
trained once, the loss curve and the model those of the uninterrupted `pretrain run`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_disruptions import GRACE_SECONDS, apply
from test_pretrain_job import assert_matches_reference

from devcluster.realnode.pool import RealNodePool
from devcluster.session import ClusterSession
from devcluster.waiting import wait_until
from e2e_support import job_manifest

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.usefixtures("operator")]
API = "kueue.x-k8s.io/v1beta2"


def queues(namespace: str) -> list[dict[str, Any]]:
    """Quota for one job of two 2 GiB node pods (and its rendezvous pod), not for two jobs;
    a higher priority preempts. Cluster-scoped names carry the namespace."""
    suffix = f"-{namespace}"
    return [
        {"apiVersion": API, "kind": "ResourceFlavor", "metadata": {"name": "nodes" + suffix}},
        {"apiVersion": API, "kind": "ClusterQueue", "metadata": {"name": "nodes" + suffix},
         "spec": {"namespaceSelector": {}, "preemption": {"withinClusterQueue": "LowerPriority"},
                  "resourceGroups": [{"coveredResources": ["cpu", "memory"], "flavors": [
                      {"name": "nodes" + suffix, "resources": [
                          {"name": "cpu", "nominalQuota": "2"},
                          {"name": "memory", "nominalQuota": "5Gi"}]}]}]}},
        {"apiVersion": API, "kind": "LocalQueue",
         "metadata": {"name": "nodes", "namespace": namespace},
         "spec": {"clusterQueue": "nodes" + suffix}},
        {"apiVersion": API, "kind": "WorkloadPriorityClass",
         "metadata": {"name": "research" + suffix}, "value": 10},
        {"apiVersion": API, "kind": "WorkloadPriorityClass",
         "metadata": {"name": "production" + suffix}, "value": 1000},
    ]  # fmt: skip


def test_a_preempted_job_checkpoints_its_step_waits_queued_and_resumes_from_it(
    cluster: ClusterSession, namespace: str, real_nodes: RealNodePool, checkpoints: Path,
    reference: Path,
) -> None:  # fmt: skip
    real_nodes.add()
    real_nodes.add()
    objects = queues(namespace)
    cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(objects))
    try:
        victim = job_manifest("tiny", real_nodes.selector, replicas={"min": 2, "max": 2},
                              scheduling={"queueName": "nodes"})  # fmt: skip
        victim["metadata"]["labels"] = {"kueue.x-k8s.io/priority-class": f"research-{namespace}"}
        victim["spec"]["checkpoint"]["everySteps"] = 1000  # only the preemption's checkpoint
        run = apply(cluster, namespace, victim, checkpoints)
        run.wait_step(6)

        urgent = job_manifest("urgent", real_nodes.selector, replicas={"min": 1, "max": 1},
                              scheduling={"queueName": "nodes"})  # fmt: skip
        urgent["metadata"]["labels"] = {
            "kueue.x-k8s.io/priority-class": f"production-{namespace}"}  # fmt: skip
        urgent["spec"]["training"]["maxSteps"] = 4
        preempted_at = max(r["step"] for r in run.records if "loss" in r)
        started = time.monotonic()
        preemptor = apply(cluster, namespace, urgent, checkpoints)

        queued = run.wait_phase("Queued", timeout=GRACE_SECONDS)
        admitted = next(c for c in queued["conditions"] if c["type"] == "Admitted")
        assert admitted["reason"] == "Preempted", admitted
        saved = wait_until(lambda: run.status().get("checkpoint", {}).get("step"),
                           "the checkpoint in status", timeout=GRACE_SECONDS)  # fmt: skip
        assert preempted_at <= saved <= preempted_at + 2  # the step it was on (one more at most)
        assert (run.directory / f"step-{saved:09d}").is_dir()
        preemptor.wait_phase("Running", timeout=GRACE_SECONDS)
        print(f"preempted at step {preempted_at}: checkpoint of step {saved}, preemptor "
              f"Running {time.monotonic() - started:.1f}s after it was created")  # fmt: skip
        assert run.pods() == []  # its quota went to the preemptor with its pods

        preemptor.wait_phase("Succeeded", timeout=300)
        done = run.wait_phase("Succeeded", timeout=600)
        assert done.get("restarts", 0) == 0  # a preemption is neither a failure nor a loss
        [resumed] = [r for r in run.records if "restart" in r]
        assert resumed["step"] == saved  # from the preemption's checkpoint, not from scratch
        assert_matches_reference(run, reference)
    finally:
        names = [f"{o['kind'].lower()}/{o['metadata']['name']}" for o in objects
                 if o["kind"] != "LocalQueue"]  # fmt: skip
        cluster.kubectl("delete", *names, "--wait=false", check=False)
