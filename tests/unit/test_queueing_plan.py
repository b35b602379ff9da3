"""A queued job's plan (reconcile.plan with a Queue) and its Workload (queueing.py): Queued with
no pod until Kueue admits it, pods placed on the admitted flavors, pods of a taken-back
admission deleted without counting a restart, quota given back when the job ends."""

from __future__ import annotations

from typing import Any

from test_reconcile import NOW, created_names, node, pretrain, rendezvous

from pretrain_operator import queueing
from pretrain_operator.api import JobStatus, Phase
from pretrain_operator.queueing import Placement, WorkloadState
from pretrain_operator.reconcile import Queue, plan

ADMITTED = WorkloadState("pretrainjob-j", admitted=True, finished=False,
                         flavors={"node": {"nvidia.com/gpu": "h100"}})  # fmt: skip
NO_QUOTA = "couldn't assign flavors to pod set node: insufficient quota"
WAITING = WorkloadState("pretrainjob-j", admitted=False, finished=False, waiting=NO_QUOTA)


def condition(status: JobStatus, kind: str) -> Any:
    return next(c for c in status.conditions if c.type == kind)


def test_a_job_without_its_workload_makes_it_and_no_pod() -> None:
    result = plan(pretrain(), JobStatus(), 1, [], NOW, queue=Queue("team-a", None))
    [workload] = result.create
    assert workload["kind"] == "Workload"
    assert workload["spec"]["queueName"] == "team-a"
    assert result.status.phase == Phase.QUEUED
    assert condition(result.status, "Admitted").reason == "Queued"


def test_the_workload_asks_for_min_node_pods_and_the_rendezvous() -> None:
    workload = queueing.workload(queueing.at_minimum(pretrain()), "team-a")
    node_set, rendezvous_set = workload["spec"]["podSets"]
    assert (node_set["name"], node_set["count"]) == ("node", 2)  # replicas 2..4
    [container] = node_set["template"]["spec"]["containers"]
    assert container["resources"]["requests"] == {"nvidia.com/gpu": "8"}
    assert (rendezvous_set["name"], rendezvous_set["count"]) == ("rendezvous", 1)
    owner = workload["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["controller"]) == ("PretrainJob", True)


def test_waiting_for_admission_is_queued_with_kueues_reason() -> None:
    result = plan(pretrain(), JobStatus(), 1, [], NOW, queue=Queue("team-a", WAITING))
    assert result.create == []
    assert result.status.phase == Phase.QUEUED
    admitted = condition(result.status, "Admitted")
    assert admitted.status == "False"
    assert admitted.message == f"LocalQueue team-a: {WAITING.waiting}"


def test_once_admitted_min_pods_start_on_the_admitted_flavor() -> None:
    h100 = Placement(
        {"gpu": "h100"}, [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]
    )
    queue = Queue("team-a", ADMITTED, {"node": h100})
    result = plan(pretrain(), JobStatus(), 1, [], NOW, queue=queue)
    assert created_names(result) == ["j-rdzv", "j-node-0", "j-node-1"]  # min, not max
    node_pod = result.create[1]
    assert node_pod["spec"]["nodeSelector"]["gpu"] == "h100"
    assert node_pod["spec"]["tolerations"][-1]["key"] == "gpu"
    assert "--nnodes=2:2" in " ".join(node_pod["spec"]["containers"][0]["command"])
    assert "gpu" not in (result.create[0]["spec"].get("nodeSelector") or {})  # its own set
    assert condition(result.status, "Admitted").status == "True"


def test_an_admission_taken_back_deletes_the_pods_without_a_restart() -> None:
    pods = [node(0), node(1), rendezvous()]
    status = JobStatus(phase=Phase.RUNNING, pod_uids={"0": "pod-0", "1": "pod-1"})
    preempted = WorkloadState("pretrainjob-j", admitted=False, finished=False,
                              waiting="Preempted to accommodate a higher priority Workload",
                              evicted="Preempted")  # fmt: skip
    result = plan(pretrain(), status, 1, pods, NOW, queue=Queue("team-a", preempted))
    assert sorted(result.delete_pods) == ["j-node-0", "j-node-1", "j-rdzv"]
    assert result.status.phase == Phase.QUEUED
    assert result.status.restarts == 0
    assert result.status.pod_uids == {}
    assert condition(result.status, "Admitted").reason == "Preempted"
    assert [e.reason for e in result.events] == ["Queued"]


def test_without_kueue_the_queue_is_a_condition_naming_the_field_and_no_pod() -> None:
    result = plan(pretrain(), JobStatus(), 1, [], NOW, queue=Queue("team-a", None, installed=False))
    assert result.create == []
    assert result.status.phase == Phase.QUEUED
    admitted = condition(result.status, "Admitted")
    assert admitted.reason == "KueueNotInstalled"
    assert admitted.message.startswith("spec.scheduling.queueName: LocalQueue team-a needs Kueue")


def test_a_finished_job_marks_its_workload_finished() -> None:
    done = node(0, "Succeeded", False, exit_code=0)
    result = plan(pretrain(), JobStatus(phase=Phase.RUNNING), 1, [done, node(1), rendezvous()],
                  NOW, queue=Queue("team-a", ADMITTED))  # fmt: skip
    assert result.status.phase == Phase.SUCCEEDED
    assert result.finish_workload is not None
    name, finished = result.finish_workload
    assert name == "pretrainjob-j"
    assert (finished["type"], finished["status"], finished["reason"]) == (
        "Finished",
        "True",
        "Succeeded",
    )
    again = plan(pretrain(), result.status, 1, [], NOW, queue=Queue(
        "team-a", WorkloadState("pretrainjob-j", admitted=True, finished=True)))  # fmt: skip
    assert again.finish_workload is None  # said once


def test_kueues_answers_are_read_from_the_workload() -> None:
    body = {
        "metadata": {"name": "pretrainjob-j"},
        "status": {
            "conditions": [
                {"type": "QuotaReserved", "status": "True", "message": "Quota reserved"},
                {"type": "Admitted", "status": "True", "message": "Admitted"},
                {"type": "Evicted", "status": "True", "reason": "Preempted",
                 "message": "Preempted to accommodate a workload (UID: u) due to prioritization"},
            ],
            "admission": {"clusterQueue": "q", "podSetAssignments": [
                {"name": "node", "flavors": {"nvidia.com/gpu": "h100"}, "count": 2}]},
        },
    }  # fmt: skip
    state = queueing.workload_state(body)
    assert not state.admitted  # evicted: its pods must go, though Admitted is still True
    assert state.evicted == "Preempted"
    assert "prioritization" in state.waiting
    assert state.flavors == {"node": {"nvidia.com/gpu": "h100"}}
    flavor = {"spec": {"nodeLabels": {"gpu": "h100"},
                       "tolerations": [{"key": "gpu", "operator": "Exists"}]}}  # fmt: skip
    assert queueing.placement({"nvidia.com/gpu": "h100"}, {"h100": flavor}) == Placement(
        {"gpu": "h100"}, [{"key": "gpu", "operator": "Exists"}])  # fmt: skip


def test_an_evicted_workload_is_released_once_its_pods_are_gone() -> None:
    conditions = (
        {"type": "QuotaReserved", "status": "True", "reason": "QuotaReserved"},
        {"type": "Admitted", "status": "True", "reason": "Admitted"},
        {"type": "Evicted", "status": "True", "reason": "Preempted", "message": "by a higher one"},
    )
    evicted = WorkloadState("pretrainjob-j", admitted=False, finished=False,
                            waiting="by a higher one", evicted="Preempted",
                            evicted_message="by a higher one", reserved=True,
                            resource_version="42", conditions=conditions)  # fmt: skip
    terminating = [node(0, deleting=True), rendezvous(deleting=True)]
    still = plan(pretrain(), JobStatus(phase=Phase.QUEUED), 1, terminating, NOW,
                 queue=Queue("team-a", evicted))  # fmt: skip
    assert still.release_workload is None  # saving their checkpoints: the quota is still theirs
    gone = plan(pretrain(), still.status, 1, [], NOW, queue=Queue("team-a", evicted))
    assert gone.release_workload == evicted
    patch = queueing.release(evicted, "2026-11-27T12:00:00Z")
    assert patch["metadata"] == {"resourceVersion": "42"}  # not over a newer answer of Kueue's
    assert patch["status"]["admission"] is None
    kinds = {c["type"]: c for c in patch["status"]["conditions"]}
    assert kinds["QuotaReserved"]["status"] == "False"
    assert kinds["Admitted"]["status"] == "False"
    assert (kinds["Requeued"]["status"], kinds["Requeued"]["reason"]) == ("True", "Preempted")
    assert kinds["Evicted"] == conditions[2]  # Kueue's own, kept


def test_the_priority_comes_from_the_kueue_label_before_the_pods_class() -> None:
    job = pretrain(template={"priorityClassName": "pods-high"})
    chosen = queueing.priority_class(job, {"kueue.x-k8s.io/priority-class": "production"})
    assert chosen is not None
    assert (chosen.kind, chosen.name) == ("WorkloadPriorityClass", "production")
    fallback = queueing.priority_class(job, {})
    assert fallback is not None
    assert (fallback.group, fallback.kind, fallback.name) == (
        "scheduling.k8s.io", "PriorityClass", "pods-high")  # fmt: skip
    assert queueing.priority_class(pretrain(), {}) is None
    workload = queueing.workload(job, "q", queueing.Priority(chosen, 1000))
    assert workload["spec"]["priority"] == 1000
    reference = {"group": "kueue.x-k8s.io", "kind": "WorkloadPriorityClass", "name": "production"}
    assert workload["spec"]["priorityClassRef"] == reference


def test_a_missing_priority_class_holds_the_job_naming_the_label() -> None:
    problem = "label kueue.x-k8s.io/priority-class: WorkloadPriorityClass gold not found"
    result = plan(pretrain(), JobStatus(), 1, [], NOW, queue=Queue("q", None, problem=problem))
    assert result.create == []
    assert condition(result.status, "Admitted").message == problem
