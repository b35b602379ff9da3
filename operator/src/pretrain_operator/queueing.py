"""A queued job's Kueue Workload, and what Kueue's answer means for its pods: pure functions.

A job with a queue (spec.scheduling.queueName, or the job's kueue.x-k8s.io/queue-name label)
is one of Kueue's external frameworks (`integrations.externalFrameworks`): the operator, not
Kueue, creates and owns its Workload, as Kueue's own integrations (batch/job, JobSet, Kubeflow)
do for theirs. The Workload has two pod sets: the node pods (replicas.min of them: Kueue v0.17
admits a fixed count, so an elastic job is admitted at its minimum and runs there) and the
rendezvous pod, so the quota covers every pod the job runs. No pod exists until Kueue admits
the Workload; the pods then carry the node labels and tolerations of the admitted flavors.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from pretrain_operator import children, naming
from pretrain_operator.children import Job, Manifest

KUEUE_GROUP = "kueue.x-k8s.io"
WORKLOAD_API = f"{KUEUE_GROUP}/v1beta2"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
PRIORITY_CLASS_LABEL = "kueue.x-k8s.io/priority-class"
NODE_POD_SET = "node"
RENDEZVOUS_POD_SET = "rendezvous"


def queue_name(job: Job, labels: dict[str, str]) -> str:
    """The LocalQueue the job waits in ("" if none): the spec's, else the label's."""
    return job.spec.scheduling.queue_name or labels.get(QUEUE_LABEL, "")


def at_minimum(job: Job) -> Job:
    """The job as Kueue admits it: replicas.max lowered to replicas.min (queueing.py says
    why), so its pods start with --nnodes=MIN:MIN."""
    replicas = job.spec.replicas
    if replicas.max == replicas.min:
        return job
    spec = job.spec.model_copy(
        update={"replicas": replicas.model_copy(update={"max": replicas.min})}
    )
    return dataclasses.replace(job, spec=spec)


def workload_name(job: Job) -> str:
    """One Workload per job; the kind is in the name, since a PretrainJob and a FinetuneJob
    may share one."""
    return f"{job.kind.singular}-{job.name}"


def _pod_set(name: str, count: int, pod: Manifest) -> dict[str, Any]:
    spec = pod["spec"]
    kept = ("containers", "initContainers", "nodeSelector", "tolerations", "affinity",
            "priorityClassName", "schedulerName", "restartPolicy")  # fmt: skip
    template_spec = {key: copy.deepcopy(spec[key]) for key in kept if key in spec}
    # Kueue sizes a pod set from the containers' requests: the rest of a container is noise.
    template_spec["containers"] = [
        {"name": c["name"], "image": c.get("image", ""), "resources": c.get("resources", {})}
        for c in spec["containers"]
    ]
    template_spec.pop("initContainers", None)
    return {"name": name, "count": count, "template": {"spec": template_spec}}


@dataclass(frozen=True, slots=True)
class PriorityClass:
    """The class that gives a job's Workload its priority, as Kueue's integrations choose it: a
    WorkloadPriorityClass named by the job's kueue.x-k8s.io/priority-class label, else the
    pods' PriorityClass (spec.template.priorityClassName)."""

    api_version: str
    plural: str
    kind: str
    name: str
    field: str  # where the job names it, for an error

    @property
    def group(self) -> str:
        return self.api_version.split("/")[0]


@dataclass(frozen=True, slots=True)
class Priority:
    of: PriorityClass
    value: int


def priority_class(job: Job, labels: dict[str, str]) -> PriorityClass | None:
    """None: no class, priority 0."""
    named = labels.get(PRIORITY_CLASS_LABEL)
    if named:
        return PriorityClass(WORKLOAD_API, "workloadpriorityclasses", "WorkloadPriorityClass",
                             named, f"label {PRIORITY_CLASS_LABEL}")  # fmt: skip
    if job.spec.template.priority_class_name:
        return PriorityClass("scheduling.k8s.io/v1", "priorityclasses", "PriorityClass",
                             job.spec.template.priority_class_name,
                             "spec.template.priorityClassName")  # fmt: skip
    return None


def workload(job: Job, queue: str, priority: Priority | None = None) -> Manifest:
    """The job's Workload: owned by the job (as its controller), in `queue`."""
    spec: dict[str, Any] = {
        "queueName": queue,
        "podSets": [
            _pod_set(NODE_POD_SET, job.spec.replicas.min, children.node_pod(job, 0)),
            _pod_set(RENDEZVOUS_POD_SET, 1, children.rendezvous_pod(job)),
        ],
    }
    if priority is not None:
        spec["priorityClassRef"] = {"group": priority.of.group, "kind": priority.of.kind,
                                    "name": priority.of.name}  # fmt: skip
        spec["priority"] = priority.value
    return {
        "apiVersion": WORKLOAD_API,
        "kind": "Workload",
        "metadata": job.metadata(workload_name(job)),
        "spec": spec,
    }


@dataclass(frozen=True, slots=True)
class Placement:
    """Where an admitted pod set runs: the admitted flavors' node labels and tolerations."""

    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class WorkloadState:
    """What a plan needs of a job's Workload."""

    name: str
    admitted: bool
    finished: bool
    # Why it is not admitted (Kueue's QuotaReserved or Evicted message), "" once admitted.
    waiting: str = ""
    evicted: str = ""  # the Evicted condition's reason ("Preempted", ...) while it holds
    evicted_message: str = ""
    # Per pod set, the admitted flavor of each resource (status.admission).
    flavors: dict[str, dict[str, str]] = field(default_factory=dict)
    reserved: bool = False  # QuotaReserved: Kueue still counts the job's quota as used
    resource_version: str = ""
    conditions: tuple[dict[str, Any], ...] = ()  # as Kueue wrote them (a release rewrites them)


def _conditions(body: Manifest) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (body.get("status") or {}).get("conditions") or []}


def workload_state(body: Manifest) -> WorkloadState:
    conditions = _conditions(body)

    def true(kind: str) -> bool:
        return conditions.get(kind, {}).get("status") == "True"

    admission = (body.get("status") or {}).get("admission") or {}
    flavors = {a["name"]: dict(a.get("flavors") or {})
               for a in admission.get("podSetAssignments") or []}  # fmt: skip
    evicted = conditions.get("Evicted", {}) if true("Evicted") else {}
    admitted = true("Admitted") and not evicted
    waiting = ""
    if not admitted:
        reserved = conditions.get("QuotaReserved", {})
        waiting = evicted.get("message") or reserved.get("message") or "waiting for Kueue"
    return WorkloadState(
        name=body["metadata"]["name"], admitted=admitted, finished=true("Finished"),
        waiting=waiting, evicted=evicted.get("reason", ""),
        evicted_message=evicted.get("message", ""), flavors=flavors,
        reserved=true("QuotaReserved"),
        resource_version=str(body["metadata"].get("resourceVersion", "")),
        conditions=tuple(conditions.values()),
    )  # fmt: skip


# Evictions after which Kueue's own integrations mark a Workload Requeued (it queues again).
REQUEUED_AFTER = frozenset({"Preempted", "NodeFailures"})


def release(state: WorkloadState, now: str) -> dict[str, Any]:
    """The status patch (a JSON merge patch, guarded by the resourceVersion) that gives an
    evicted Workload's quota back once its pods are gone, as Kueue's integrations do for their
    jobs: no admission, QuotaReserved and Admitted false, and Requeued saying why."""

    def condition(kind: str, status: bool, reason: str) -> dict[str, Any]:
        return {"type": kind, "status": "True" if status else "False", "reason": reason,
                "message": state.evicted_message[:32768], "lastTransitionTime": now}  # fmt: skip

    replaced = {
        "QuotaReserved": condition("QuotaReserved", False, "Pending"),
        "Admitted": condition("Admitted", False, "NoReservation"),
        "Requeued": condition("Requeued", state.evicted in REQUEUED_AFTER, state.evicted),
    }
    kept = [c for c in state.conditions if c["type"] not in replaced]
    return {
        "metadata": {"resourceVersion": state.resource_version},
        "status": {"admission": None, "conditions": kept + list(replaced.values())},
    }


def placement(flavor_names: dict[str, str], flavors: dict[str, Manifest]) -> Placement:
    """The node labels and tolerations of the ResourceFlavors a pod set was admitted with
    (`flavors`: the ResourceFlavors by name), as Kueue's integrations apply them to pods."""
    selector: dict[str, str] = {}
    tolerations: list[dict[str, Any]] = []
    for name in sorted(set(flavor_names.values())):
        spec = (flavors.get(name) or {}).get("spec") or {}
        selector.update(spec.get("nodeLabels") or {})
        tolerations += [t for t in spec.get("tolerations") or [] if t not in tolerations]
    return Placement(selector, tolerations)


def place(pod: Manifest, where: Placement) -> Manifest:
    """`pod` with the admitted flavors' node labels and tolerations added."""
    spec = pod["spec"]
    if where.node_selector:
        spec["nodeSelector"] = {**(spec.get("nodeSelector") or {}), **where.node_selector}
    if where.tolerations:
        existing = spec.get("tolerations") or []
        spec["tolerations"] = existing + [t for t in where.tolerations if t not in existing]
    return pod


def pod_set_of(pod: Manifest) -> str:
    role = pod["metadata"]["labels"].get(naming.LABEL_ROLE)
    return RENDEZVOUS_POD_SET if role == naming.ROLE_RENDEZVOUS else NODE_POD_SET


def finished_condition(succeeded: bool, message: str, now: str) -> dict[str, Any]:
    """The Workload condition that tells Kueue the job is done and its quota free."""
    return {"type": "Finished", "status": "True",
            "reason": "Succeeded" if succeeded else "Failed",
            "message": message[:32768], "lastTransitionTime": now}  # fmt: skip
