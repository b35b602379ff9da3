"""The operator against the real API server, scheduler and garbage collector, with kwok GPU nodes
standing in for machines. It runs as the chart's ServiceAccount, so every test here also proves
that the chart's RBAC is enough."""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from api_cases import pretrain_job
from devcluster.nodes import NodePool, NodeShape, finish_pod
from devcluster.session import ClusterSession
from devcluster.volumes import create_bound_claim
from devcluster.waiting import wait_until
from operator_process import OperatorProcess

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("operator")]

GROUP, VERSION = "pretrain.dev", "v1alpha1"
JOB_LABEL = "pretrain.dev/job-name"


class Jobs:
    """The custom objects API, as the admin (the test), for one namespace."""

    def __init__(self, cluster: ClusterSession, namespace: str) -> None:
        self.api = client.CustomObjectsApi(cluster.api)
        self.core = cluster.core
        self.namespace = namespace

    def create(self, manifest: dict[str, Any]) -> None:
        plural = manifest["kind"].lower() + "s"
        self.api.create_namespaced_custom_object(GROUP, VERSION, self.namespace, plural, manifest)

    def get(self, name: str, plural: str = "pretrainjobs") -> dict[str, Any]:
        body: dict[str, Any] = self.api.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, plural, name
        )
        return body

    def status(self, name: str, plural: str = "pretrainjobs") -> dict[str, Any]:
        return dict(self.get(name, plural).get("status") or {})

    def patch(self, name: str, spec: dict[str, Any], plural: str = "pretrainjobs") -> None:
        self.api.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, plural, name, {"spec": spec}
        )

    def pods(self, job: str) -> dict[str, client.V1Pod]:
        listed = self.core.list_namespaced_pod(self.namespace, label_selector=f"{JOB_LABEL}={job}")
        return {p.metadata.name: p for p in listed.items}

    def wait_phase(self, name: str, phase: str, plural: str = "pretrainjobs") -> dict[str, Any]:
        def in_phase() -> dict[str, Any] | None:
            status = self.status(name, plural)
            return status if status.get("phase") == phase else None

        return wait_until(in_phase, f"{name} in phase {phase}")

    def events(self, name: str) -> list[str]:
        listed = self.core.list_namespaced_event(
            self.namespace, field_selector=f"involvedObject.name={name}"
        )
        return [f"{e.reason}: {e.message}" for e in listed.items]


@pytest.fixture
def jobs(cluster: ClusterSession, namespace: str) -> Jobs:
    return Jobs(cluster, namespace)


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == type_)


def test_elastic_job_runs_on_the_nodes_there_are_and_replaces_failed_pods(
    jobs: Jobs, node_pool: NodePool
) -> None:
    for _ in range(3):
        node_pool.add(NodeShape(gpus=8))
    jobs.create(pretrain_job("elastic", node_pool, min_nodes=2, max_nodes=4))

    def three_ready_and_one_unschedulable() -> dict[str, Any] | None:
        # The scheduler's verdict on the fourth pod may reach the operator after the third pod's
        # readiness: the status converges on both.
        status = jobs.status("elastic")
        scheduled = [c for c in status.get("conditions", []) if c["type"] == "Scheduled"]
        if status.get("replicas", {}).get("ready") == 3 and scheduled:
            return status
        return None

    status = wait_until(three_ready_and_one_unschedulable, "3 ready node pods, 1 unschedulable")
    pods = jobs.pods("elastic")
    node_pods = {n: p for n, p in pods.items() if n.startswith("elastic-node-")}
    assert sorted(node_pods) == [f"elastic-node-{i}" for i in range(4)]
    assert "elastic-rdzv" in pods  # the rendezvous lives outside the workers
    pending = [p for p in node_pods.values() if p.status.phase == "Pending"]
    assert len(pending) == 1
    scheduled = next(c for c in pending[0].status.conditions if c.type == "PodScheduled")
    assert "Insufficient nvidia.com/gpu" in scheduled.message
    assert status["phase"] == "Running"
    assert status["nodes"] == "3/4"
    assert status["worldSize"] == 24
    assert status["replicas"] == {"desired": 4, "ready": 3, "pending": 1, "failed": 0}
    assert "Insufficient nvidia.com/gpu" in condition(status, "Scheduled")["message"]

    command = node_pods["elastic-node-0"].spec.containers[0].command
    assert "--nnodes=2:4" in command
    assert "--rdzv-endpoint=elastic-rdzv:29400" in command
    assert node_pods["elastic-node-0"].spec.containers[0].resources.limits == {
        "nvidia.com/gpu": "8"
    }

    node_pool.add(NodeShape(gpus=8))  # capacity appears: the pending pod joins
    wait_until(lambda: jobs.status("elastic")["replicas"]["ready"] == 4, "4 ready node pods")

    victim = jobs.pods("elastic")["elastic-node-1"]
    finish_pod(jobs.core, jobs.namespace, "elastic-node-1", "Failed", exit_code=1)
    wait_until(lambda: jobs.status("elastic").get("restarts") == 1, "restarts == 1")
    replacement = wait_until(
        lambda: (
            (p := jobs.pods("elastic").get("elastic-node-1"))
            and p.metadata.uid != victim.metadata.uid
            and p
        ),
        "a replacement for elastic-node-1",
    )
    assert replacement.status.phase in {"Pending", "Running"}
    wait_until(lambda: jobs.status("elastic")["replicas"]["ready"] == 4, "4 ready again")
    assert jobs.status("elastic")["restarts"] == 1  # counted once, not once per observation
    events = jobs.events("elastic")
    assert any(e.startswith("PodFailed: pod elastic-node-1") for e in events)
    assert any(e.startswith("Running: phase Running") for e in events)  # phase changes too


def test_exhausting_max_restarts_fails_the_job_naming_the_pod(
    jobs: Jobs, node_pool: NodePool
) -> None:
    node_pool.add(NodeShape(gpus=8))
    jobs.create(pretrain_job("fragile", node_pool, failurePolicy={"maxRestarts": 1}))
    jobs.wait_phase("fragile", "Running")

    finish_pod(jobs.core, jobs.namespace, "fragile-node-0", "Failed", exit_code=137)
    wait_until(lambda: jobs.status("fragile").get("restarts") == 1, "first restart")
    jobs.wait_phase("fragile", "Running")
    finish_pod(jobs.core, jobs.namespace, "fragile-node-0", "Failed", exit_code=139)

    status = jobs.wait_phase("fragile", "Failed")
    failed = condition(status, "Failed")
    assert failed["status"] == "True"
    assert failed["reason"] == "RestartLimitExceeded"
    assert "fragile-node-0" in failed["message"]
    assert "exit code 139" in failed["message"]
    assert status["completionTime"]


def test_a_bad_configuration_exit_code_fails_at_once(jobs: Jobs, node_pool: NodePool) -> None:
    node_pool.add(NodeShape(gpus=8))
    jobs.create(pretrain_job("misconfigured", node_pool))
    jobs.wait_phase("misconfigured", "Running")

    finish_pod(jobs.core, jobs.namespace, "misconfigured-node-0", "Failed", exit_code=78)

    status = jobs.wait_phase("misconfigured", "Failed")
    assert condition(status, "Failed")["reason"] == "InvalidConfiguration"
    assert status.get("restarts", 0) == 0


def test_suspend_deletes_the_pods_and_resume_brings_them_back(
    jobs: Jobs, node_pool: NodePool
) -> None:
    node_pool.add(NodeShape(gpus=8))
    node_pool.add(NodeShape(gpus=8))
    jobs.create(pretrain_job("pausable", node_pool, min_nodes=2, max_nodes=2))
    jobs.wait_phase("pausable", "Running")

    jobs.patch("pausable", {"suspend": True})
    jobs.wait_phase("pausable", "Suspended")
    wait_until(lambda: not jobs.pods("pausable"), "no pods while suspended")
    config = jobs.core.read_namespaced_config_map("pausable-config", jobs.namespace)
    assert "pausable" in config.data["job.json"]  # what a resume needs is kept

    jobs.patch("pausable", {"suspend": False})
    status = jobs.wait_phase("pausable", "Running")
    assert status.get("restarts", 0) == 0  # suspending is not a failure
    assert condition(status, "Suspended")["status"] == "False"


def test_finished_job_is_deleted_after_its_ttl(jobs: Jobs, node_pool: NodePool) -> None:
    node_pool.add(NodeShape(gpus=8))
    jobs.create(pretrain_job("shortlived", node_pool, ttlSecondsAfterFinished=3))
    jobs.wait_phase("shortlived", "Running")

    finish_pod(jobs.core, jobs.namespace, "shortlived-node-0", "Succeeded")
    status = jobs.wait_phase("shortlived", "Succeeded")
    assert condition(status, "Succeeded")["status"] == "True"

    def gone() -> bool:
        try:
            jobs.get("shortlived")
        except ApiException as error:
            return bool(error.status == 404)
        return False

    wait_until(gone, "the job deleted by its TTL", timeout=60)


def test_deleting_the_job_removes_every_child(jobs: Jobs, node_pool: NodePool) -> None:
    node_pool.add(NodeShape(gpus=8))
    jobs.create(pretrain_job("doomed", node_pool, scheduling={"disruptionBudget": True}))
    jobs.wait_phase("doomed", "Running")
    assert jobs.core.read_namespaced_service("doomed", jobs.namespace).spec.cluster_ip == "None"
    policy = client.PolicyV1Api(jobs.api.api_client)
    assert policy.read_namespaced_pod_disruption_budget("doomed", jobs.namespace)

    jobs.api.delete_namespaced_custom_object(
        GROUP, VERSION, jobs.namespace, "pretrainjobs", "doomed"
    )

    def children_left() -> list[str]:
        left = [f"pod/{name}" for name in jobs.pods("doomed")]
        for kind, items in (
            ("service", jobs.core.list_namespaced_service(jobs.namespace).items),
            ("configmap", jobs.core.list_namespaced_config_map(jobs.namespace).items),
            ("pdb", policy.list_namespaced_pod_disruption_budget(jobs.namespace).items),
        ):
            left += [f"{kind}/{i.metadata.name}" for i in items if "doomed" in i.metadata.name]
        return left

    wait_until(lambda: not children_left() or None, "garbage collection of every child")


class FakeTrainerMetrics:
    """What a trainer's metrics endpoint serves, bound to a simulated pod's loopback IP.

    kwok pods run no process; this stands in for the trainer's Prometheus endpoint so that the
    operator's reading of it is tested here (the real trainer serves it in the end-to-end tests).
    """

    def __init__(self, ip: str) -> None:
        self.text = ""
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = owner.text.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((ip, 9400), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def trainer_metrics(ip: str) -> Iterator[FakeTrainerMetrics]:
    fake = FakeTrainerMetrics(ip)
    try:
        yield fake
    finally:
        fake.close()


def test_finetune_job_waits_for_its_pretrain_job_and_starts_from_its_checkpoint(
    jobs: Jobs, node_pool: NodePool, tmp_path: Path
) -> None:
    node_pool.add(NodeShape(gpus=8))
    finetune = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FinetuneJob",
        "metadata": {"name": "classify"},
        "spec": {
            "base": {"pretrainJob": "base-model"},
            "task": {"type": "SequenceClassification", "numLabels": 2},
            "data": {"train": {"uri": "file:///data/train.jsonl"}},
            "training": {"maxSteps": 10, "globalBatchSize": 8, "microBatchSize": 8},
            "template": {"nodeSelector": node_pool.selector},
        },
    }
    jobs.create(finetune)
    waiting = wait_until(
        lambda: (s := jobs.status("classify", "finetunejobs")).get("conditions") and s,
        "the FinetuneJob's first status",
    )
    assert waiting["phase"] == "Pending"
    assert condition(waiting, "WaitingForBase")["reason"] == "BaseNotFound"
    assert "spec.base.pretrainJob" in condition(waiting, "WaitingForBase")["message"]

    create_bound_claim(jobs.core, jobs.namespace, "ckpt", str(tmp_path / "ckpt"))
    storage = {"storage": {"persistentVolumeClaim": "ckpt", "path": "runs/base"}}
    jobs.create(pretrain_job("base-model", node_pool, checkpoint=storage))
    jobs.wait_phase("base-model", "Running")
    ip = jobs.pods("base-model")["base-model-node-0"].status.pod_ip
    with trainer_metrics(ip) as trainer:
        trainer.text = (
            "pretrain_train_step 120\npretrain_train_loss 2.5\npretrain_tokens_total 61440\n"
            "pretrain_tokens_per_second 1000.5\npretrain_checkpoint_last_step 100\n"
        )
        progress = wait_until(
            lambda: (s := jobs.status("base-model"))["progress"].get("step") == 120 and s,
            "the trainer's progress in status",
        )
        assert progress["progress"]["loss"] == 2.5
        assert progress["checkpoint"] == {"step": 100, "uri": "pvc://ckpt/runs/base/step-000000100"}
        assert condition(jobs.status("classify", "finetunejobs"), "WaitingForBase")["reason"] == (
            "BaseNotFinished"
        )
    # A trainer that stops answering is not a failure; the last progress stays.
    assert jobs.status("base-model")["progress"]["step"] == 120

    finish_pod(jobs.core, jobs.namespace, "base-model-node-0", "Succeeded")
    jobs.wait_phase("base-model", "Succeeded")
    status = jobs.wait_phase("classify", "Running", "finetunejobs")
    assert status["base"]["resolvedCheckpoint"] == "pvc://ckpt/runs/base/step-000000100"
    pod = jobs.pods("classify")["classify-node-0"]
    env = {e.name: e.value for e in pod.spec.containers[0].env}
    assert env["PRETRAIN_BASE_CHECKPOINT"] == "/base/runs/base/step-000000100"
    base_volume = next(v for v in pod.spec.volumes if v.name == "base")
    assert base_volume.persistent_volume_claim.claim_name == "ckpt"
    assert base_volume.persistent_volume_claim.read_only
    mount = next(m for m in pod.spec.containers[0].volume_mounts if m.name == "base")
    assert mount.read_only


def test_restarted_operator_converges_without_duplicates_or_lost_status(
    jobs: Jobs, node_pool: NodePool, operator: OperatorProcess
) -> None:
    node_pool.add(NodeShape(gpus=8))
    node_pool.add(NodeShape(gpus=8))
    jobs.create(pretrain_job("steady", node_pool, min_nodes=1, max_nodes=3))
    wait_until(lambda: len(jobs.pods("steady")) >= 2, "the first pods")
    operator.restart(kill=True)  # in the middle of reconciling: SIGKILL, no goodbye

    wait_until(lambda: jobs.status("steady").get("replicas", {}).get("ready") == 2, "2 ready")
    finish_pod(jobs.core, jobs.namespace, "steady-node-0", "Failed", exit_code=1)
    wait_until(lambda: jobs.status("steady").get("restarts") == 1, "one restart")
    operator.restart(kill=True)

    wait_until(lambda: jobs.status("steady")["replicas"]["ready"] == 2, "2 ready after restart")
    # steady-node-0 comes back once its backoff (kept in status across the restart) has passed.
    expected = ["steady-node-0", "steady-node-1", "steady-node-2", "steady-rdzv"]
    wait_until(lambda: sorted(jobs.pods("steady")) == expected, "every pod, none twice")
    # The status follows the pods within the operator's batch of pod events.
    status = jobs.wait_phase("steady", "Running")
    assert sorted(jobs.pods("steady")) == expected
    assert status["restarts"] == 1  # neither lost nor counted twice
    assert status["startTime"]


def test_operator_exports_its_metrics(operator: OperatorProcess) -> None:
    text = operator.metrics()
    for name in (
        "pretrain_operator_reconcile_duration_seconds_bucket",
        "pretrain_operator_pods_created_total",
        "pretrain_operator_jobs",
    ):
        assert name in text


def test_gang_scheduling_without_a_podgroup_api_is_a_condition_not_a_crash(
    jobs: Jobs, node_pool: NodePool
) -> None:
    node_pool.add(NodeShape(gpus=8))
    jobs.create(pretrain_job("gang", node_pool, scheduling={"gang": True}))
    status = jobs.wait_phase("gang", "Running")
    missing = condition(status, "OptionalChildMissing")
    assert "spec.scheduling" in missing["message"]
    assert "PodGroup" in missing["message"]
    assert not [c for c in status["conditions"] if c["type"] == "ReconcileFailed"]


def node_pods(jobs: Jobs, job: str) -> dict[str, client.V1Pod]:
    return {n: p for n, p in jobs.pods(job).items() if n.startswith(f"{job}-node-")}


def replaced(jobs: Jobs, job: str, name: str, old_uid: str, timeout: float = 60) -> client.V1Pod:
    """The pod that took the place of pod `name` (of `job`) with uid `old_uid`."""
    pod: client.V1Pod = wait_until(
        lambda: (p := jobs.pods(job).get(name)) and p.metadata.uid != old_uid and p,
        f"a replacement for {name}",
        timeout=timeout,
    )
    return pod


def test_a_crash_looping_pod_is_recreated_after_ever_longer_delays(
    jobs: Jobs, node_pool: NodePool
) -> None:
    """10 s, then 20 s (the whole sequence, its cap and its reset are unit-tested)."""
    node_pool.add(NodeShape(gpus=8))
    jobs.create(pretrain_job("crashy", node_pool))
    jobs.wait_phase("crashy", "Running")

    for restart, delay in enumerate((10, 20), start=1):
        victim = jobs.pods("crashy")["crashy-node-0"]
        failed_at = time.time()
        finish_pod(jobs.core, jobs.namespace, "crashy-node-0", "Failed", exit_code=1)
        replacement = replaced(
            jobs, "crashy", "crashy-node-0", victim.metadata.uid, timeout=delay + 30
        )
        waited = replacement.metadata.creation_timestamp.timestamp() - failed_at
        # Not before the delay (creationTimestamp has whole seconds), and not much after it.
        assert delay - 1 <= waited <= delay + 8, f"restart {restart}: {waited:.1f}s"
        jobs.wait_phase("crashy", "Running")

    status = jobs.status("crashy")
    assert status["restarts"] == 2
    assert status["backoff"]["failures"] == 2  # the next failure would wait 40 s
    events = jobs.events("crashy")
    for restart, delay in enumerate((10, 20), start=1):
        expected = f"in {delay}s, from the last checkpoint (restart {restart})"
        assert any(e.startswith("PodFailed: pod crashy-node-0") and expected in e
                   for e in events), (expected, events)  # fmt: skip


def evict(core: client.CoreV1Api, namespace: str, name: str) -> None:
    """What `kubectl drain` does to each pod: the Eviction API, which honours budgets."""
    meta = client.V1ObjectMeta(name=name, namespace=namespace)
    core.create_namespaced_pod_eviction(name, namespace, client.V1Eviction(metadata=meta))


def budget_counted(policy: client.PolicyV1Api, namespace: str, name: str, healthy: int) -> bool:
    """The disruption controller has counted the budget's pods (before, it refuses anyway)."""
    budget = policy.read_namespaced_pod_disruption_budget(name, namespace)
    status = budget.status
    return bool(
        status
        and status.observed_generation == budget.metadata.generation
        and status.current_healthy == healthy
    )


def test_an_evicted_pod_is_a_disruption_not_a_restart_and_the_rendezvous_is_protected(
    jobs: Jobs, node_pool: NodePool
) -> None:
    node_pool.add(NodeShape(gpus=8))
    node_pool.add(NodeShape(gpus=8))
    jobs.create(pretrain_job("evictable", node_pool, min_nodes=1, max_nodes=2,
                             scheduling={"disruptionBudget": True},
                             failurePolicy={"maxRestarts": 0}))  # fmt: skip
    wait_until(lambda: jobs.status("evictable").get("replicas", {}).get("ready") == 2, "2 ready")
    policy = client.PolicyV1Api(jobs.api.api_client)
    wait_until(lambda: budget_counted(policy, jobs.namespace, "evictable", 2), "budget counted")
    wait_until(lambda: budget_counted(policy, jobs.namespace, "evictable-rdzv", 1),
               "rendezvous budget counted")  # fmt: skip

    # The rendezvous pod's own budget refuses to let it go while it serves.
    with pytest.raises(ApiException) as refused:
        evict(jobs.core, jobs.namespace, "evictable-rdzv")
    assert refused.value.status == 429
    assert "disruption budget" in str(refused.value.body)

    # A node pod may go (2 ready, at least 1 must stay): a disruption, not one of the zero
    # restarts this job may have.
    victim = jobs.pods("evictable")["evictable-node-1"]
    evict(jobs.core, jobs.namespace, "evictable-node-1")
    status = wait_until(lambda: (s := jobs.status("evictable")).get("disruptions") == 1 and s,
                        "disruptions == 1")  # fmt: skip
    replaced(jobs, "evictable", "evictable-node-1", victim.metadata.uid, timeout=15)  # no backoff
    wait_until(lambda: jobs.status("evictable")["replicas"]["ready"] == 2, "2 ready again")
    status = jobs.status("evictable")
    assert status["phase"] == "Running"
    assert status.get("restarts", 0) == 0
    assert "backoff" not in status
    events = jobs.events("evictable")
    disrupted = [e for e in events if e.startswith("PodDisrupted: pod evictable-node-1")]
    assert len(disrupted) == 1
    assert "EvictionByEvictionAPI" in disrupted[0]


def test_a_failed_rendezvous_pod_is_recreated_alone(jobs: Jobs, node_pool: NodePool) -> None:
    node_pool.add(NodeShape(gpus=8))
    node_pool.add(NodeShape(gpus=8))
    jobs.create(pretrain_job("store", node_pool, min_nodes=2, max_nodes=2))
    wait_until(lambda: jobs.status("store").get("replicas", {}).get("ready") == 2, "2 ready")
    workers = {n: p.metadata.uid for n, p in node_pods(jobs, "store").items()}
    rendezvous = jobs.pods("store")["store-rdzv"]

    finish_pod(jobs.core, jobs.namespace, "store-rdzv", "Failed", exit_code=1)
    replaced(jobs, "store", "store-rdzv", rendezvous.metadata.uid)
    wait_until(lambda: jobs.pods("store")["store-rdzv"].status.phase == "Running", "rdzv back")

    assert {n: p.metadata.uid for n, p in node_pods(jobs, "store").items()} == workers
    status = jobs.status("store")
    assert (status.get("restarts", 0), status.get("disruptions", 0)) == (0, 0)
    assert status["phase"] == "Running"


def nnodes(pod: client.V1Pod) -> list[str]:
    return [a for a in pod.spec.containers[0].command if a.startswith("--nnodes=")]


def resized_to(jobs: Jobs, job: str, bounds: str, count: int) -> dict[str, client.V1Pod] | None:
    """The node pods once there are `count`, all ready and started with --nnodes=`bounds`."""
    pods = node_pods(jobs, job)
    ready = [p for p in pods.values() if p.status.phase == "Running" and not
             p.metadata.deletion_timestamp and nnodes(p) == [f"--nnodes={bounds}"]]  # fmt: skip
    return pods if len(pods) == len(ready) == count else None


def test_resizing_a_running_job_restarts_its_pods_with_the_new_bounds(
    jobs: Jobs, node_pool: NodePool
) -> None:
    for _ in range(3):
        node_pool.add(NodeShape(gpus=8))
    jobs.create(pretrain_job("growing", node_pool, min_nodes=1, max_nodes=2,
                             scheduling={"disruptionBudget": True}))  # fmt: skip
    before = wait_until(lambda: resized_to(jobs, "growing", "1:2", 2), "2 pods with 1:2")
    policy = client.PolicyV1Api(jobs.api.api_client)
    assert (
        policy.read_namespaced_pod_disruption_budget("growing", jobs.namespace).spec.min_available
        == 1
    )

    jobs.patch("growing", {"replicas": {"min": 2, "max": 3}})
    after = wait_until(lambda: resized_to(jobs, "growing", "2:3", 3), "3 pods with --nnodes=2:3")
    assert not {p.metadata.uid for p in before.values()} & {p.metadata.uid for p in after.values()}
    for pod in after.values():
        assert pod.metadata.annotations["pretrain.dev/replicas"] == "2:3"
    wait_until(lambda: jobs.status("growing")["replicas"]["ready"] == 3, "3 ready")
    status = jobs.status("growing")
    assert status["phase"] == "Running"
    assert (status.get("restarts", 0), status.get("disruptions", 0)) == (0, 0)
    assert any(e.startswith("Resized: spec.replicas changed from 1:2 to 2:3")
               for e in jobs.events("growing"))  # fmt: skip
    budget = policy.read_namespaced_pod_disruption_budget("growing", jobs.namespace)
    assert budget.spec.min_available == 2
    config = jobs.core.read_namespaced_config_map("growing-config", jobs.namespace)
    assert json.loads(config.data["job.json"])["spec"]["replicas"] == {"min": 2, "max": 3}

    # `kubectl scale ptj/growing --replicas=2` sets replicas.max through the scale subresource.
    scale = {"spec": {"replicas": 2}}
    jobs.api.patch_namespaced_custom_object_scale(GROUP, VERSION, jobs.namespace, "pretrainjobs",
                                                  "growing", scale)  # fmt: skip
    wait_until(lambda: resized_to(jobs, "growing", "2:2", 2), "2 pods with --nnodes=2:2")
    # Below replicas.min the API server refuses, naming the field.
    with pytest.raises(ApiException) as refused:
        jobs.api.patch_namespaced_custom_object_scale(
            GROUP, VERSION, jobs.namespace, "pretrainjobs", "growing", {"spec": {"replicas": 1}}
        )
    assert refused.value.status == 422
    assert "replicas.min" in str(refused.value.body)
    assert jobs.status("growing").get("restarts", 0) == 0


def test_a_missing_secret_is_a_condition_and_no_secret_value_leaves_the_secret(
    jobs: Jobs, node_pool: NodePool, operator: OperatorProcess
) -> None:
    node_pool.add(NodeShape(gpus=8))
    secret_value = "wJalrXUtnFEMI-not-a-real-secret-" + str(time.time_ns())
    data = {"sources": [{"uri": "s3://corpus/en/"}], "secretRef": {"name": "bucket"}}
    storage = {"uri": "s3://checkpoints/credentialed", "secretRef": {"name": "bucket"}}
    jobs.create(pretrain_job("credentialed", node_pool, data=data,
                             checkpoint={"storage": storage}))  # fmt: skip

    def waiting() -> dict[str, Any] | None:
        status = jobs.status("credentialed")
        found = [c for c in status.get("conditions", []) if c["type"] == "WaitingForCredentials"]
        return found[0] if found and found[0]["status"] == "True" else None

    held = wait_until(waiting, "the WaitingForCredentials condition")
    assert held["message"] == (
        f"spec.data.secretRef: Secret bucket not found in namespace {jobs.namespace}; "
        f"spec.checkpoint.storage.secretRef: Secret bucket not found in namespace {jobs.namespace}"
    )
    assert jobs.status("credentialed")["phase"] == "Pending"
    assert jobs.pods("credentialed") == {}  # nothing starts that would fail to read it

    jobs.core.create_namespaced_secret(jobs.namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(name="bucket"),
        string_data={"AWS_ACCESS_KEY_ID": "reader", "AWS_SECRET_ACCESS_KEY": secret_value},
    ))  # fmt: skip
    jobs.wait_phase("credentialed", "Running")
    pod = jobs.pods("credentialed")["credentialed-node-0"]
    assert [ref.secret_ref.name for ref in pod.spec.containers[0].env_from] == ["bucket"]
    assert condition(jobs.status("credentialed"), "WaitingForCredentials")["status"] == "False"

    config_maps = jobs.core.list_namespaced_config_map(jobs.namespace).items
    said = [json.dumps(jobs.get("credentialed")), *jobs.events("credentialed"),
            *(json.dumps(cm.data) for cm in config_maps), operator.log.read_text(),
            json.dumps(client.ApiClient().sanitize_for_serialization(pod))]  # fmt: skip
    assert not [text for text in said if secret_value in text]


def leads(process: OperatorProcess) -> bool:
    return 'pretrain_operator_leader_election_master_status{name="pretrain-operator"} 1.0' in (
        process.metrics()
    )


def test_a_standby_takes_over_from_a_killed_leader_and_nothing_is_done_twice(
    jobs: Jobs, node_pool: NodePool, operator: OperatorProcess, tmp_path: Path
) -> None:
    """Two operators with leader election; the leader is SIGKILLed while jobs are created."""
    operator.stop()  # the session's operator runs without election: it waits meanwhile
    pair = [OperatorProcess(operator.kubeconfig, tmp_path / f"{name}.log", leader_elect=True,
                            trainer_image=operator.trainer_image)
            for name in ("first", "second")]  # fmt: skip
    added: dict[str, int] = {}
    watcher = watch.Watch()

    def count_creations() -> None:  # every pod creation, from the API server's own stream
        # watcher.stop() at the end cuts the stream mid-chunk; a stream cut earlier would leave
        # pods uncounted, which the count of 12 below catches.
        with contextlib.suppress(urllib3.exceptions.ProtocolError):
            for event in watcher.stream(jobs.core.list_namespaced_pod, jobs.namespace,
                                        timeout_seconds=600):  # fmt: skip
                if event["type"] == "ADDED":
                    name = event["object"].metadata.name
                    added[name] = added.get(name, 0) + 1

    try:
        first, second = pair
        first.start()
        wait_until(lambda: leads(first), "the first operator to lead")
        second.start()
        node_pool.add(NodeShape(gpus=8))
        small: dict[str, Any] = {
            "resources": {"accelerator": {"type": "nvidia.com/gpu", "count": 1}}
        }
        counter = threading.Thread(target=count_creations, daemon=True)
        counter.start()
        for index in range(3):
            jobs.create(pretrain_job(f"ha-{index}", node_pool, **small))
        assert not leads(second)  # a standby does nothing
        wait_until(lambda: len(jobs.pods("ha-0")) == 2, "the leader at work")
        first.stop(kill=True)
        killed = time.monotonic()
        for index in range(3, 6):
            jobs.create(pretrain_job(f"ha-{index}", node_pool, **small))
        wait_until(lambda: leads(second), "the standby to take over", timeout=30)
        took_over = time.monotonic() - killed
        assert took_over < 20, f"took over after {took_over:.1f} s"
        for index in range(6):
            jobs.wait_phase(f"ha-{index}", "Running")
            status = jobs.status(f"ha-{index}")
            assert status.get("restarts", 0) == 0, status  # a takeover is no failure of a job
            assert status.get("disruptions", 0) == 0, status
        time.sleep(2)  # the counter's stream catches up
        twice = {name: n for name, n in added.items() if n > 1}
        assert not twice, f"created more than once: {twice}"
        assert len(added) == 12  # a node pod and a rendezvous per job
    finally:
        watcher.stop()
        for process in pair:
            process.stop()
        operator.start()


def reconciles(operator: OperatorProcess) -> float:
    prefix = 'pretrain_operator_reconcile_duration_seconds_count{kind="PretrainJob"} '
    line = next(li for li in operator.metrics().splitlines() if li.startswith(prefix))
    return float(line.removeprefix(prefix))


def test_running_jobs_where_nothing_changes_get_no_status_write(
    jobs: Jobs, node_pool: NodePool, operator: OperatorProcess
) -> None:
    """kwok's pods serve no trainer metrics: once Running, nothing about these jobs changes, so
    the operator looks at them once per progress interval and writes nothing."""
    node_pool.add(NodeShape(gpus=8))
    small: dict[str, Any] = {"resources": {"accelerator": {"type": "nvidia.com/gpu", "count": 1}}}
    names = [f"quiet-{index}" for index in range(4)]
    for name in names:
        jobs.create(pretrain_job(name, node_pool, **small))
    for name in names:
        jobs.wait_phase(name, "Running")
    time.sleep(2)  # the last writes on the way to Running land
    listed = jobs.api.list_namespaced_custom_object(GROUP, VERSION, jobs.namespace, "pretrainjobs")
    looked = reconciles(operator)
    writes = []
    window = 12
    for event in watch.Watch().stream(
        jobs.api.list_namespaced_custom_object, GROUP, VERSION, jobs.namespace, "pretrainjobs",
        resource_version=listed["metadata"]["resourceVersion"], timeout_seconds=window,
    ):  # fmt: skip
        writes.append(event["type"])
    looked = reconciles(operator) - looked
    assert writes == []  # not one PATCH of status (nor anything else) in 12 s
    # The counter is the operator's: earlier tests' jobs (their namespaces going) count too.
    everywhere = jobs.api.list_cluster_custom_object(GROUP, VERSION, "pretrainjobs")["items"]
    interval = operator.progress_seconds
    assert looked <= len(everywhere) * (window / interval + 1)  # the progress looks, no more
