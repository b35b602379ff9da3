"""Preempted with its work kept, on real kubelet nodes and the local cluster's Kueue: a queued
PretrainJob preempted mid-run, between periodic checkpoints, by a higher-priority job saves a
checkpoint at the step it is on before its pods go, waits Queued (not Failed, not restarted)
while the preemptor runs, and resumes from that step when Kueue admits it again: every step
trained once, the loss curve and the model those of the uninterrupted `pretrain run`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_disruptions import GRACE_SECONDS, apply
from test_pretrain_job import assert_matches_reference

from devcluster.nodes import NodePool, NodeShape, finish_pod
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
    reference: Path, node_pool: NodePool,
) -> None:  # fmt: skip
    """The preemptor runs on a kwok node (what it trains does not matter here) and is made to
    finish there."""
    real_nodes.add()
    real_nodes.add()
    node_pool.add(NodeShape())
    objects = queues(namespace)
    cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(objects))
    try:
        victim = job_manifest("tiny", real_nodes.selector, replicas={"min": 2, "max": 2},
                              scheduling={"queueName": "nodes"})  # fmt: skip
        victim["metadata"]["labels"] = {"kueue.x-k8s.io/priority-class": f"research-{namespace}"}
        victim["spec"]["checkpoint"]["everySteps"] = 1000  # only the preemption's checkpoint
        run = apply(cluster, namespace, victim, checkpoints)
        run.wait_step(6)

        urgent = job_manifest("urgent", node_pool.selector, replicas={"min": 1, "max": 1},
                              scheduling={"queueName": "nodes"})  # fmt: skip
        urgent["metadata"]["labels"] = {
            "kueue.x-k8s.io/priority-class": f"production-{namespace}"}  # fmt: skip
        preempted_at = max(r["step"] for r in run.records if "loss" in r)
        started = time.monotonic()
        preemptor = apply(cluster, namespace, urgent, checkpoints)

        queued = run.wait_phase("Queued", timeout=GRACE_SECONDS)  # its pods just got SIGTERM
        signalled_at = max(r["step"] for r in run.records if "loss" in r)
        admitted = next(c for c in queued["conditions"] if c["type"] == "Admitted")
        assert admitted["reason"] == "Preempted", admitted
        saved = wait_until(lambda: run.status().get("checkpoint", {}).get("step"),
                           "the checkpoint in status", timeout=GRACE_SECONDS)  # fmt: skip
        # The step it was on when the signal came (one more may have finished meanwhile), later
        # than when the preemptor was made: Kueue and the operator act within a few steps.
        assert preempted_at <= saved
        assert abs(saved - signalled_at) <= 2
        assert (run.directory / f"step-{saved:09d}").is_dir()
        preemptor.wait_phase("Running", timeout=GRACE_SECONDS)
        print(f"preemptor made at step {preempted_at}, pods signalled at {signalled_at}: "
              f"checkpoint of step {saved}, preemptor "
              f"Running {time.monotonic() - started:.1f}s after it was created")  # fmt: skip
        assert run.pods() == []  # its quota went to the preemptor with its pods

        finish_pod(cluster.core, namespace, "urgent-node-0", "Succeeded", exit_code=0)
        preemptor.wait_phase("Succeeded", timeout=60)
        done = run.wait_phase("Succeeded", timeout=600)
        assert done.get("restarts", 0) == 0  # a preemption is neither a failure nor a loss
        [resumed] = [r for r in run.records if "restart" in r]
        assert resumed["step"] == saved  # from the preemption's checkpoint, not from scratch
        assert_matches_reference(run, reference)
    finally:
        names = [f"{o['kind'].lower()}/{o['metadata']['name']}" for o in objects
                 if o["kind"] != "LocalQueue"]  # fmt: skip
        cluster.kubectl("delete", *names, "--wait=false", check=False)
