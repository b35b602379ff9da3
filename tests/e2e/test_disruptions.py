"""What real pods do to a job, on real kubelet nodes: a bad configuration found at run time ends
it at once, naming the field; a deleted node pod leaves a checkpoint at the step it was on; an
eviction is a disruption, not a failure; a resize restarts the pods with the new bounds; a pod
that keeps failing restarts the job after ever longer delays. Every step is trained once, with
the loss of the fault-free `pretrain run`."""

from __future__ import annotations

import datetime
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from test_pretrain_job import assert_matches_reference

from devcluster.realnode.pool import RealNodePool
from devcluster.session import ClusterSession
from devcluster.waiting import wait_until
from e2e_support import JobRun, job_manifest, read_records

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.usefixtures("operator")]
GRACE_SECONDS = 120  # the pods' default terminationGracePeriodSeconds


def apply(cluster: ClusterSession, namespace: str, manifest: dict[str, Any],
          checkpoints: Path) -> JobRun:  # fmt: skip
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(manifest))
    name = manifest["metadata"]["name"]
    return JobRun(cluster, namespace, name, checkpoints / name)


def node_pods(run: JobRun) -> list[dict[str, Any]]:
    return [p for p in run.pods() if p["metadata"]["labels"]["pretrain.dev/role"] == "node"]


def started_at(pod: dict[str, Any]) -> datetime.datetime | None:
    for container in pod["status"].get("containerStatuses") or []:
        state = container.get("state") or {}
        since = (state.get("running") or state.get("terminated") or {}).get("startedAt")
        if since:
            return datetime.datetime.fromisoformat(since.replace("Z", "+00:00"))
    return None


def test_a_data_file_missing_at_run_time_fails_the_job_at_once_naming_the_field(
    cluster: ClusterSession, namespace: str, real_nodes: RealNodePool, checkpoints: Path
) -> None:
    real_nodes.add()
    manifest = job_manifest("missing", real_nodes.selector,
                            replicas={"min": 1, "max": 1})  # fmt: skip
    manifest["spec"]["data"]["sources"] = [{"uri": "pvc://corpus/no-such-file.jsonl"}]
    run = apply(cluster, namespace, manifest, checkpoints)
    failed = wait_until(lambda: run.status().get("phase") == "Failed" and run.status(),
                        "the job Failed", timeout=300)  # fmt: skip
    [pod] = node_pods(run)
    began = started_at(pod)
    finished = datetime.datetime.fromisoformat(failed["completionTime"].replace("Z", "+00:00"))
    assert began is not None
    print(f"bad configuration: Failed {(finished - began).total_seconds():.0f}s after its pod "
          "started")  # fmt: skip
    assert (finished - began).total_seconds() < 60
    assert failed.get("restarts", 0) == 0
    [condition] = [c for c in failed["conditions"] if c["type"] == "Failed"]
    assert condition["reason"] == "InvalidConfiguration"
    assert "spec.data.sources[0].uri" in condition["message"], condition["message"]
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 78


def test_a_pod_that_keeps_failing_restarts_the_job_after_ever_longer_delays(
    cluster: ClusterSession, namespace: str, real_nodes: RealNodePool, checkpoints: Path
) -> None:
    """A memory limit the workers cannot start in: the kernel kills them (a generic failure, not
    a configuration error), torchrun gives up, and each restart of the job waits longer."""
    real_nodes.add()
    manifest = job_manifest("oom", real_nodes.selector, replicas={"min": 1, "max": 1},
                            resources={"memory": "256Mi"},
                            failurePolicy={"maxRestarts": 2})  # fmt: skip
    run = apply(cluster, namespace, manifest, checkpoints)
    failed = wait_until(lambda: run.status().get("phase") == "Failed" and run.status(),
                        "the job Failed", timeout=400)  # fmt: skip
    assert failed["restarts"] == 3
    [condition] = [c for c in failed["conditions"] if c["type"] == "Failed"]
    assert condition["reason"] == "RestartLimitExceeded"
    assert "oom-node-0 failed with exit code 137 (OOMKilled)" in condition["message"]
    delays = [m.split("; ")[-1] for m in run.events("PodFailed")]
    assert delays == [
        f"restarting the node pod and the rendezvous in {d}s, from the last checkpoint "
        f"(restart {n})"
        for n, d in ((1, 10), (2, 20))
    ], delays


def test_a_deleted_node_pod_leaves_a_checkpoint_at_its_step_and_the_job_resumes_from_it(
    cluster: ClusterSession, namespace: str, real_nodes: RealNodePool, checkpoints: Path,
    reference: Path,
) -> None:  # fmt: skip
    real_nodes.add()
    real_nodes.add()
    # Periodic checkpoints far apart: the only one before the end is the one SIGTERM makes.
    manifest = job_manifest("tiny", real_nodes.selector, replicas={"min": 2, "max": 2})
    manifest["spec"]["checkpoint"]["everySteps"] = 1000
    run = apply(cluster, namespace, manifest, checkpoints)
    run.wait_step(6)
    deleted_at_step = max(r["step"] for r in run.records if "loss" in r)
    deleted = time.monotonic()
    cluster.core.delete_namespaced_pod("tiny-node-1", namespace)
    saved = wait_until(lambda: run.status().get("checkpoint", {}).get("step"),
                       "a checkpoint in status", timeout=GRACE_SECONDS)  # fmt: skip
    print(f"deleted at step {deleted_at_step}: checkpoint of step {saved} in status "
          f"{time.monotonic() - deleted:.1f}s later")  # fmt: skip
    # The step it was on when the signal came (one more may have finished meanwhile).
    assert deleted_at_step <= saved <= deleted_at_step + 2
    assert (run.directory / f"step-{saved:09d}").is_dir()
    run.wait_phase("Succeeded", timeout=600)
    [resumed] = [r for r in run.records if "restart" in r]
    assert resumed["step"] == saved  # from the SIGTERM checkpoint, not from scratch
    assert_matches_reference(run, reference)


def test_an_eviction_is_a_disruption_and_raising_replicas_max_trains_on_three_nodes(
    cluster: ClusterSession, namespace: str, real_nodes: RealNodePool, checkpoints: Path,
    reference: Path,
) -> None:  # fmt: skip
    real_nodes.add()
    real_nodes.add()
    manifest = job_manifest("tiny", real_nodes.selector, replicas={"min": 1, "max": 2},
                            failurePolicy={"maxRestarts": 0})  # fmt: skip
    run = apply(cluster, namespace, manifest, checkpoints)
    run.wait_step(4)
    # What a drain, the descheduler or a preemption does: the Eviction API.
    eviction = client.V1Eviction(metadata=client.V1ObjectMeta(name="tiny-node-1",
                                                              namespace=namespace))  # fmt: skip
    cluster.core.create_namespaced_pod_eviction("tiny-node-1", namespace, eviction)
    wait_until(lambda: run.status().get("disruptions") == 1, "the eviction counted", timeout=120)
    step = max(r["step"] for r in run.records if "loss" in r)
    run.wait_step(step + 2, timeout=300)  # trains on

    resized = max(r["step"] for r in run.records if "loss" in r)
    cluster.kubectl("patch", "ptj", "tiny", "-n", namespace, "--type=merge",
                    "-p", '{"spec": {"replicas": {"max": 3}}}')  # fmt: skip

    def three_with_new_bounds() -> list[dict[str, Any]] | None:
        pods = [p for p in node_pods(run) if p["status"].get("phase") == "Running"
                and "--nnodes=1:3" in p["spec"]["containers"][0]["command"]]  # fmt: skip
        return pods if len(pods) == 3 else None

    wait_until(three_with_new_bounds, "3 node pods running with --nnodes=1:3", timeout=300)
    status = run.wait_phase("Succeeded", timeout=900)
    assert (status["disruptions"], status.get("restarts", 0)) == (1, 0)
    after = [r for r in run.records if "loss" in r and r["step"] > resized + 1]
    assert after, "no step after the resize"
    assert 3 in {r["world_size"] for r in after}, "never trained on 3 nodes"
    # Each step counted once: the job's tokens are the uninterrupted run's.
    expected = [r for r in read_records(reference / "metrics.jsonl") if "loss" in r][-1]
    assert status["progress"]["tokens"] == expected["tokens"]
    assert_matches_reference(run, reference)
