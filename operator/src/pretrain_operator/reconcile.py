"""Level-based reconciliation as a pure function: (job, its status, observed pods, base job,
trainer metrics, now) -> what to create, what to delete, the new status and the events to post.

Nothing here talks to the API server, so every phase transition is unit-tested without a cluster;
`pretrain_operator.controller` executes the plan.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from pretrain_operator import children, naming, queueing
from pretrain_operator.api import FinetuneJobSpec, JobStatus, Kind, Phase
from pretrain_operator.api.status import (
    FINISHED_PHASES,
    Backoff,
    BaseStatus,
    CheckpointStatus,
    Condition,
    EvaluationStatus,
    ReplicaStatus,
)
from pretrain_operator.children import Job, Manifest
from pretrain_operator.observe import BaseJobState, PodState, TrainerMetrics

# Condition types (kubectl wait --for=condition=Succeeded ptj/NAME).
RUNNING, SUCCEEDED, FAILED, SUSPENDED, SCHEDULED, WAITING_FOR_BASE = (
    "Running", "Succeeded", "Failed", "Suspended", "Scheduled", "WaitingForBase",
)  # fmt: skip
WAITING_FOR_CREDENTIALS = "WaitingForCredentials"
ADMITTED = "Admitted"  # by Kueue, for a job with a queue (queueing.py)
OPTIONAL_CHILD_MISSING = "OptionalChildMissing"
# Secrets are not watched (the operator may not list them): a job waiting for one looks again.
CREDENTIALS_RECHECK_SECONDS = 10.0

# Recreating failed node pods waits 10 s, doubling per consecutive failure up to 5 min, as a
# Job's pod failure backoff and the kubelet's CrashLoopBackOff do. The delay is forgotten after
# 10 min of training without a failure (the kubelet's figure too: twice the cap): measured from
# Running with at least replicas.min pods ready, since an elastic job may never get all of
# replicas.max and must still earn its way back to quick retries.
BACKOFF_INITIAL_SECONDS = 10
BACKOFF_MAX_SECONDS = 300
BACKOFF_RESET_SECONDS = 600


@dataclass
class Event:
    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass
class Plan:
    """What to do for one job now."""

    status: JobStatus
    create: list[Manifest] = field(default_factory=list)
    delete_pods: list[str] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    delete_job: bool = False
    # The condition that tells Kueue the job is done (its Workload's quota is free again).
    finish_workload: tuple[str, dict[str, Any]] | None = None  # (its name, the condition)
    # An evicted Workload whose pods are gone: its quota is given back (queueing.release).
    release_workload: queueing.WorkloadState | None = None
    # Seconds until the plan changes by itself though nothing is observed to (a backoff ends,
    # the TTL expires, a Secret may have been made); None: only a change brings the job back.
    requeue_after: float | None = None


def timestamp(now: datetime.datetime) -> str:
    return now.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_timestamp(value: str) -> datetime.datetime:
    return datetime.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)


def backoff_delay(failures: int) -> int:
    """Seconds before recreating a pod after `failures` consecutive failures (1 = the first)."""
    doublings = min(max(failures - 1, 0), 16)  # 10 s x 2^16 is far past the cap already
    return min(BACKOFF_INITIAL_SECONDS << doublings, BACKOFF_MAX_SECONDS)


def _delay_recreation(status: JobStatus, index: int, now: datetime.datetime) -> int:
    """Hold node `index` back after its pod failed; return the seconds it waits.

    A failure seen while a delay is still running joins it instead of doubling it: when one
    rank crashes, torch elastic often takes the others down within seconds, and that is one
    failure of the job, not eight."""
    backoff = status.backoff
    if backoff and backoff.indexes and backoff.recreate_after:
        remaining = (parse_timestamp(backoff.recreate_after) - now).total_seconds()
        if remaining > 0:
            backoff.indexes = sorted({*backoff.indexes, index})
            return math.ceil(remaining)
    failures = (backoff.failures if backoff else 0) + 1
    delay = backoff_delay(failures)
    # Whole seconds (the status's resolution), rounded up: never earlier than the delay says.
    rounded_up = now.replace(microsecond=0) + datetime.timedelta(seconds=now.microsecond > 0)
    after = rounded_up + datetime.timedelta(seconds=delay)
    waiting = backoff.indexes if backoff else []
    status.backoff = Backoff(failures=failures, delay_seconds=delay,
                             recreate_after=timestamp(after),
                             indexes=sorted({*waiting, index}))  # fmt: skip
    return delay


def _held_back(status: JobStatus, index: int, now: datetime.datetime) -> bool:
    """Whether node `index` waits for the backoff of an earlier failure."""
    backoff = status.backoff
    if not backoff or index not in backoff.indexes or not backoff.recreate_after:
        return False
    return now < parse_timestamp(backoff.recreate_after)


def _released(status: JobStatus, index: int) -> None:
    if status.backoff and index in status.backoff.indexes:
        status.backoff.indexes.remove(index)


def _seconds_until_release(status: JobStatus, now: datetime.datetime) -> float | None:
    """When held-back pods may be created; None once they may (an index still waiting then
    waits for its old pod to vanish, which is an event of its own)."""
    backoff = status.backoff
    if not backoff or not backoff.indexes or not backoff.recreate_after:
        return None
    remaining = (parse_timestamp(backoff.recreate_after) - now).total_seconds()
    return remaining if remaining > 0 else None


def _forget_backoff_after_healthy_training(status: JobStatus, now: datetime.datetime) -> None:
    backoff = status.backoff
    if not backoff or backoff.indexes or status.phase != Phase.RUNNING:
        return
    running = next((c for c in status.conditions if c.type == RUNNING), None)
    since = [parse_timestamp(t) for t in (backoff.recreate_after,
             running.last_transition_time if running else None) if t]  # fmt: skip
    if not since or (now - max(since)).total_seconds() >= BACKOFF_RESET_SECONDS:
        status.backoff = None


def set_condition(
    status: JobStatus,
    type_: str,
    value: bool,
    reason: str,
    message: str,
    generation: int,
    now: datetime.datetime,
) -> None:
    """Upsert a condition; its transition time moves only when its status does."""
    wanted = "True" if value else "False"
    for condition in status.conditions:
        if condition.type == type_:
            if condition.status != wanted:
                condition.last_transition_time = timestamp(now)
            condition.status, condition.reason, condition.message = wanted, reason, message
            condition.observed_generation = generation
            return
    status.conditions.append(
        Condition(
            type=type_,
            status=wanted,
            reason=reason,
            message=message,
            last_transition_time=timestamp(now),
            observed_generation=generation,
        )
    )


def _finish(
    plan: Plan, phase: Phase, reason: str, message: str, generation: int, now: datetime.datetime
) -> None:
    status = plan.status
    status.phase = phase
    status.completion_time = status.completion_time or timestamp(now)
    set_condition(status, SUCCEEDED, phase == Phase.SUCCEEDED, reason, message, generation, now)
    set_condition(status, FAILED, phase == Phase.FAILED, reason, message, generation, now)
    set_condition(status, RUNNING, False, reason, message, generation, now)
    plan.events.append(Event("Normal" if phase == Phase.SUCCEEDED else "Warning", reason, message))


def _ttl(job: Job, plan: Plan, now: datetime.datetime) -> None:
    ttl = job.spec.ttl_seconds_after_finished
    if ttl is None or not plan.status.completion_time:
        return
    expires = parse_timestamp(plan.status.completion_time) + datetime.timedelta(seconds=ttl)
    plan.delete_job = now >= expires
    if not plan.delete_job:
        plan.requeue_after = (expires - now).total_seconds()


def job_of(
    kind: Kind, body: Mapping[str, Any], spec: Any, base: BaseJobState | None, image: str
) -> Job:
    """The job as the children are made from it; a FinetuneJob's base resolved to the
    checkpoint its pods read (a base on a claim is mounted read-only)."""
    meta = body["metadata"]
    checkpoint, claim = "", ""
    if isinstance(spec, FinetuneJobSpec):
        checkpoint, _, _ = resolve_base(spec, base, meta["namespace"])
        if base is not None and spec.base.pretrain_job and checkpoint.startswith("pvc://"):
            claim = base.claim
            # pvc://CLAIM/path/step-N is mounted read-only at /base/path/step-N.
            checkpoint = f"{naming.BASE_MOUNT}/{checkpoint.split('/', 3)[3]}"
    return Job(kind, meta["name"], meta["namespace"], meta["uid"], spec, image, checkpoint,
               claim)  # fmt: skip


def invalid_spec(
    current: JobStatus, generation: int, error: ValidationError, now: datetime.datetime
) -> Plan:
    """A spec the API server let through but the models refuse (say, CRDs out of date): the
    job fails, naming the field."""
    status = current.model_copy(deep=True)
    first = error.errors()[0]
    where = "spec." + ".".join(str(part) for part in first["loc"])
    message = f"{where}: {first['msg']}"
    result = Plan(status=status)
    if status.phase != Phase.FAILED:
        result.events.append(Event("Warning", "InvalidSpec", message))
    status.phase = Phase.FAILED
    set_condition(status, FAILED, True, "InvalidSpec", message, generation, now)
    return result


def resolve_base(
    spec: FinetuneJobSpec, base: BaseJobState | None, namespace: str
) -> tuple[str, str, str]:
    """(checkpoint, problem reason, message) for a FinetuneJob's base; checkpoint '' = not yet."""
    if spec.base.checkpoint:
        return spec.base.checkpoint.uri, "", ""
    if spec.base.hugging_face:
        return spec.base.hugging_face.uri, "", ""
    name = spec.base.pretrain_job
    if base is None or not base.found:
        return (
            "",
            "BaseNotFound",
            (
                f"spec.base.pretrainJob: PretrainJob {name} not found in namespace {namespace}; "
                "waiting for it to be created"
            ),
        )
    if base.phase == Phase.FAILED:
        return "", "BaseFailed", f"spec.base.pretrainJob: PretrainJob {name} failed"
    if base.phase != Phase.SUCCEEDED:
        return (
            "",
            "BaseNotFinished",
            (
                f"waiting for PretrainJob {name} to succeed (phase {base.phase}, "
                f"last validated checkpoint at step {base.checkpoint_step})"
            ),
        )
    if not base.checkpoint_uri:
        return (
            "",
            "BaseHasNoCheckpoint",
            (f"spec.base.pretrainJob: PretrainJob {name} succeeded without a validated checkpoint"),
        )
    return base.checkpoint_uri, "", ""


def _progress(status: JobStatus, metrics: TrainerMetrics | None, job: Job) -> None:
    """Fold the trainer's report into status; without one, the last progress stays."""
    progress = status.progress
    training = job.spec.training
    progress.total_steps = training.max_steps
    if metrics is None:
        return
    if metrics.step is not None:
        progress.step = metrics.step
    if metrics.tokens is not None:
        progress.tokens = metrics.tokens
    progress.loss = metrics.loss if metrics.loss is not None else progress.loss
    if metrics.tokens_per_second is not None:
        progress.tokens_per_second = metrics.tokens_per_second
    if metrics.mfu is not None:
        progress.mfu = metrics.mfu
    if metrics.evaluation and isinstance(job.spec, FinetuneJobSpec):
        step = metrics.evaluation_step if metrics.evaluation_step is not None else progress.step
        status.evaluation = EvaluationStatus(step=step, metrics=dict(metrics.evaluation))
    if metrics.checkpoint_step:
        status.checkpoint = CheckpointStatus(
            step=metrics.checkpoint_step,
            uri=f"{checkpoint_root(job)}/{naming.checkpoint_step_dir(metrics.checkpoint_step)}",
        )


def _waiting_for_credentials(
    status: JobStatus, missing: Sequence[str], idle: bool, generation: int,
    now: datetime.datetime, result: Plan,
) -> bool:  # fmt: skip
    """No pod starts while a Secret it would read is missing (it would sit in
    CreateContainerConfigError): the job waits, saying which field names what."""
    waiting = bool(missing) and idle
    known = any(c.type == WAITING_FOR_CREDENTIALS for c in status.conditions)
    if not waiting:
        if known:
            set_condition(status, WAITING_FOR_CREDENTIALS, False, "SecretsFound", "",
                          generation, now)  # fmt: skip
        return False
    message = "; ".join(missing)
    before = next((c for c in status.conditions if c.type == WAITING_FOR_CREDENTIALS), None)
    if before is None or before.status != "True" or before.message != message:
        result.events.append(Event("Warning", "SecretNotFound", message))
    set_condition(status, WAITING_FOR_CREDENTIALS, True, "SecretNotFound", message, generation,
                  now)  # fmt: skip
    status.phase = Phase.PENDING
    result.requeue_after = CREDENTIALS_RECHECK_SECONDS
    return True


def checkpoint_root(job: Job) -> str:
    """Where the job's checkpoints are, as a URI others (a FinetuneJob) can resolve."""
    storage = job.spec.checkpoint.storage
    if storage and storage.uri:
        return storage.uri.rstrip("/")
    if storage and storage.persistent_volume_claim:
        path = (storage.path or job.name).strip("/")
        return f"pvc://{storage.persistent_volume_claim}/{path}"
    return ""


def plan(
    job: Job,
    current: JobStatus,
    generation: int,
    pods: list[PodState],
    now: datetime.datetime,
    metrics: TrainerMetrics | None = None,
    base: BaseJobState | None = None,
    gone: Sequence[PodState] = (),
    missing_secrets: Sequence[str] = (),
    missing_apis: Sequence[str] = (),
    queue: Queue | None = None,
) -> Plan:
    """`gone`: the last states of pods deleted since the last plan, as their deletion events
    carried them (a pod evicted and deleted at once may never be seen terminating).
    `missing_secrets`: what a secretRef names that is not there, one line per field.
    `missing_apis`: the optional children that could not be made for lack of their API.
    `queue`: for a job with a Kueue queue, its Workload as observed."""
    if queue is not None:
        job = queueing.at_minimum(job)
    result = _plan(job, current, generation, pods, now, metrics, base, gone, missing_secrets,
                   missing_apis, queue)  # fmt: skip
    workload = queue.workload if queue is not None else None
    if workload is not None and not workload.finished and result.status.phase in FINISHED_PHASES:
        succeeded = result.status.phase == Phase.SUCCEEDED
        reason = next((c for c in result.status.conditions
                       if c.type == (SUCCEEDED if succeeded else FAILED)), None)  # fmt: skip
        condition = queueing.finished_condition(succeeded, reason.message if reason else "",
                                                timestamp(now))  # fmt: skip
        result.finish_workload = (workload.name, condition)
    return result


@dataclass(frozen=True, slots=True)
class Queue:
    """What Kueue says of a job with a queue: its LocalQueue, its Workload (None until made),
    where each admitted pod set runs, and whether Kueue is installed at all."""

    name: str
    workload: queueing.WorkloadState | None
    placements: Mapping[str, queueing.Placement] = field(default_factory=dict)
    installed: bool = True
    priority: queueing.Priority | None = None
    # Why the Workload cannot be made yet (its priority class does not exist), naming the field.
    problem: str = ""


def _plan(
    job: Job,
    current: JobStatus,
    generation: int,
    pods: list[PodState],
    now: datetime.datetime,
    metrics: TrainerMetrics | None,
    base: BaseJobState | None,
    gone: Sequence[PodState],
    missing_secrets: Sequence[str],
    missing_apis: Sequence[str],
    queue: Queue | None,
) -> Plan:
    status = current.model_copy(deep=True)
    status.observed_generation = generation
    status.selector = children.node_selector_string(job)
    result = Plan(status=status)
    for missing in missing_apis:  # an optional add-on (a gang scheduler) is absent: train on
        set_condition(status, OPTIONAL_CHILD_MISSING, True, "ApiNotInstalled", missing,
                      generation, now)  # fmt: skip
    replicas = job.spec.replicas
    node_pods = {p.index: p for p in pods if p.role == naming.ROLE_NODE and p.index is not None}
    rendezvous = next((p for p in pods if p.role == naming.ROLE_RENDEZVOUS), None)
    active = [p for p in node_pods.values() if p.active]
    _progress(status, metrics, job)

    if status.phase in FINISHED_PHASES:
        result.delete_pods = [p.name for p in pods if p.active]
        _ttl(job, result, now)
        _summarise(status, node_pods, replicas.max, job)
        return result

    if isinstance(job.spec, FinetuneJobSpec):
        checkpoint, problem, message = resolve_base(job.spec, base, job.namespace)
        waiting = not checkpoint
        set_condition(status, WAITING_FOR_BASE, waiting, problem or "BaseResolved",
                      message or f"starting from {checkpoint}", generation, now)  # fmt: skip
        if problem == "BaseFailed" or problem == "BaseHasNoCheckpoint":
            _finish(result, Phase.FAILED, problem, message, generation, now)
            return result
        if waiting:
            status.phase = Phase.PENDING
            return result
        status.base = BaseStatus(resolved_checkpoint=checkpoint)
        status.evaluation = status.evaluation or EvaluationStatus()

    if job.spec.suspend:
        result.delete_pods = [p.name for p in pods if not p.deleting]
        if status.phase != Phase.SUSPENDED:
            result.events.append(Event("Normal", "Suspended", "pods deleted; checkpoints kept"))
        status.phase = Phase.SUSPENDED
        set_condition(status, SUSPENDED, True, "Suspended", "spec.suspend is true", generation, now)
        set_condition(status, RUNNING, False, "Suspended", "spec.suspend is true", generation, now)
        status.pod_uids = {}  # pods deleted on purpose are not losses
        status.backoff = None  # nor failures: a resume starts afresh
        _summarise(status, node_pods, replicas.max, job)
        return result
    set_condition(status, SUSPENDED, False, "Resumed", "", generation, now)
    if queue is not None and not _admitted(result, job, queue, pods, generation, now):
        _summarise(status, node_pods, replicas.max, job)
        return result
    if _waiting_for_credentials(status, missing_secrets, not active, generation, now, result):
        return result

    # Pods started with other --nnodes bounds than spec.replicas says: a resize (see _resize).
    wanted = naming.replica_bounds(replicas.min, replicas.max)
    outdated = {i: p for i, p in node_pods.items() if p.bounds and p.bounds != wanted}

    # A node pod that exited 0 means torchrun finished: the training is complete (not one
    # stopped for a resize, whatever it exited with).
    done = next((p for i, p in node_pods.items() if p.completed and i not in outdated), None)
    if done is not None:
        _finish(result, Phase.SUCCEEDED, "TrainingComplete",
                f"training finished ({done.name} exited 0)", generation, now)  # fmt: skip
        result.delete_pods = [p.name for p in pods if p.active]
        _summarise(status, node_pods, replicas.max, job)
        return result

    if outdated:
        _resize(result, outdated, wanted)
    if status.backoff:  # a scale-down leaves no pod to wait for at the indexes it removed
        status.backoff.indexes = [i for i in status.backoff.indexes if i < replicas.max]

    restarted = False
    failed: list[PodState] = []
    for index, pod in sorted(node_pods.items()):
        key = str(index)
        if index in outdated:  # being replaced for the resize (or removed, if index >= max)
            continue
        if index >= replicas.max:  # scaled down: remove, not a loss
            if not pod.deleting:
                result.delete_pods.append(pod.name)
            status.pod_uids.pop(key, None)
            continue
        if pod.disrupted:
            _disrupted(result, pod, key)
            continue
        if pod.deleting:  # going away: a loss only if it was ours (its uid is recorded)
            continue
        if pod.failed:
            failed.append(pod)
        else:
            status.pod_uids.setdefault(key, pod.uid)  # adopt pods created before a crash
    if failed:
        bad = next((p for p in failed if p.exit_code == naming.EXIT_BAD_CONFIGURATION), None)
        if bad is not None:
            _finish(result, Phase.FAILED, "InvalidConfiguration",
                    f"pod {bad.name} exited with code {bad.exit_code} (bad configuration): "
                    f"{bad.message or bad.reason}", generation, now)  # fmt: skip
            result.delete_pods = [p.name for p in pods if p.active]
            return result
        restarted = True
        if not _restart_gang(result, job, failed, node_pods, rendezvous, now):
            _finish(result, Phase.FAILED, "RestartLimitExceeded",
                    f"{_failure(failed)}; {status.restarts} restarts exceed "
                    f"failurePolicy.maxRestarts {job.spec.failure_policy.max_restarts}",
                    generation, now)  # fmt: skip
            result.delete_pods = [p.name for p in pods if p.active]
            return result

    last_states = {p.uid: p for p in gone if p.role == naming.ROLE_NODE}
    # After a restart the old store is closed: no pod may meet the others there (a pod stuck
    # terminating elsewhere, on an unreachable node, does not hold the others back).
    closed_store = restarted or bool(rendezvous and rendezvous.deleting)
    for index in range(replicas.max):
        key = str(index)
        if index in node_pods:
            continue
        last = last_states.get(status.pod_uids.get(key) or "")
        if last is not None and last.disrupted:
            _count_disruption(result, last, key)
        elif status.pod_uids.get(key):
            restarted = True
            status.restarts += 1
            name = naming.node_pod_name(job.name, index)
            result.events.append(Event("Warning", "PodLost",
                f"pod {name} disappeared (deleted, evicted or its node was lost); "
                f"recreating it (restart {status.restarts})"))  # fmt: skip
            status.pod_uids[key] = ""
        # A resize starts the new pods once every old one is gone: agents with other bounds
        # must not meet in one rendezvous, and the old ones are still saving their checkpoint.
        if outdated or closed_store or _held_back(status, index, now):
            continue
        result.create.append(children.node_pod(job, index))
        _released(status, index)
    if status.restarts > job.spec.failure_policy.max_restarts:
        _finish(result, Phase.FAILED, "RestartLimitExceeded",
                f"{status.restarts} restarts exceed failurePolicy.maxRestarts "
                f"{job.spec.failure_policy.max_restarts}", generation, now)  # fmt: skip
        result.create, result.delete_pods = [], [p.name for p in pods if p.active]
        return result
    result.requeue_after = _seconds_until_release(status, now)

    if rendezvous is None:
        result.create.insert(0, children.rendezvous_pod(job))
    elif (rendezvous.phase in {"Failed", "Succeeded"} and not rendezvous.deleting
          and rendezvous.name not in result.delete_pods):  # fmt: skip
        result.delete_pods.append(rendezvous.name)  # recreated once gone

    deleted = set(result.delete_pods)  # by this plan (a resize, a restart): not training on
    active = [p for p in active if p.name not in deleted]
    ready = sum(1 for p in active if p.ready and p.phase == "Running")
    scheduled = [p for p in active if p.node]
    unschedulable = next((p.unschedulable for p in active if p.unschedulable), "")
    previous = status.phase
    if ready >= replicas.min:
        status.phase = Phase.RUNNING
        status.start_time = status.start_time or timestamp(now)
        set_condition(status, RUNNING, True, "EnoughNodesReady",
                      f"{ready} of {replicas.max} node pods ready (minimum {replicas.min})",
                      generation, now)  # fmt: skip
    else:
        message = f"{ready} of {replicas.min} required node pods ready"
        if outdated:
            message += f"; resizing to --nnodes={wanted}"
        if unschedulable:
            message += f"; the scheduler says: {unschedulable}"
        if restarted or previous in {Phase.RUNNING, Phase.RESTARTING}:
            status.phase = Phase.RESTARTING
        elif scheduled:
            status.phase = Phase.STARTING
        else:
            status.phase = Phase.PENDING
        set_condition(status, RUNNING, False, f"{status.phase.value}", message, generation, now)
    if unschedulable:
        set_condition(status, SCHEDULED, False, "Unschedulable", unschedulable, generation, now)
    elif active and len(scheduled) == len(active) == replicas.max:
        set_condition(status, SCHEDULED, True, "AllScheduled",
                      f"{replicas.max} node pods scheduled", generation, now)  # fmt: skip
    if status.phase != previous:
        result.events.append(Event("Normal", status.phase.value, _phase_message(status)))
    _forget_backoff_after_healthy_training(status, now)
    _summarise(status, node_pods, replicas.max, job)
    if queue is not None:
        result.create = [queueing.place(m, queue.placements.get(queueing.pod_set_of(m),
                                                                queueing.Placement()))
                         for m in result.create]  # fmt: skip
    return result


def _admitted(
    result: Plan, job: Job, queue: Queue, pods: list[PodState], generation: int,
    now: datetime.datetime,
) -> bool:  # fmt: skip
    """Whether Kueue has admitted the job; if not, the plan holds it Queued: its Workload is
    made if missing, and pods of an admission Kueue took back (an eviction) are deleted, which
    sends them SIGTERM: they finish the step, save a checkpoint and exit 143, as for a
    suspend. None of it counts as a restart."""
    status = result.status
    workload = queue.workload
    if not queue.installed:
        message = (f"spec.scheduling.queueName: LocalQueue {queue.name} needs Kueue, but the "
                   f"cluster serves no {queueing.WORKLOAD_API} Workload; install Kueue or "
                   "remove the queue")  # fmt: skip
        reason = "KueueNotInstalled"
    elif queue.problem:
        message, reason = queue.problem, "PriorityClassNotFound"
    elif workload is None:
        result.create.append(queueing.workload(job, queue.name, queue.priority))
        message, reason = f"waiting in LocalQueue {queue.name}", "Queued"
    elif workload.admitted:
        message = f"admitted by Kueue through LocalQueue {queue.name}"
        set_condition(status, ADMITTED, True, "Admitted", message, generation, now)
        return True
    else:
        reason = workload.evicted or "Queued"
        message = f"LocalQueue {queue.name}: {workload.waiting}"
        if workload.evicted and workload.reserved and not pods:
            # Every pod has gone: they saved their checkpoint on SIGTERM (or ran out of grace).
            result.release_workload = workload
    leaving = [p.name for p in pods if not p.deleting]
    result.delete_pods = leaving
    if status.phase != Phase.QUEUED:
        why = f"{reason}: {message}"
        result.events.append(Event("Warning" if leaving or not queue.installed else "Normal",
                                   "Queued" if queue.installed else reason, why))  # fmt: skip
    status.phase = Phase.QUEUED
    set_condition(status, ADMITTED, False, reason, message, generation, now)
    set_condition(status, RUNNING, False, reason, message, generation, now)
    status.pod_uids = {}  # pods deleted on purpose are not losses
    status.backoff = None
    return False


def _failure(failed: Sequence[PodState]) -> str:
    first, *others = failed
    why = f"pod {first.name} failed with exit code {first.exit_code} ({first.reason or 'Error'})"
    return why + (f" (and {', '.join(p.name for p in others)})" if others else "")


def _restart_gang(
    plan: Plan,
    job: Job,
    failed: Sequence[PodState],
    node_pods: dict[int, PodState],
    rendezvous: PodState | None,
    now: datetime.datetime,
) -> bool:
    """Node pods failed: restart every node pod and the rendezvous, once the backoff is over, as
    one restart of the job (False: the restart budget is spent).

    Not only the failed pod: torchrun that exits on its workers' failure closes the rendezvous
    for good (torch/distributed/launcher/api.py shuts the handler down on every exit but a
    signal), so the other nodes fail at their next round and a replacement could never join.
    A fresh store and a fresh gang resume together from the last checkpoint, which torch elastic
    would make every worker do anyway."""
    status = plan.status
    status.restarts += 1
    if status.restarts > job.spec.failure_policy.max_restarts:
        return False
    replicas = job.spec.replicas.max
    delay = max(_delay_recreation(status, index, now) for index in range(replicas))
    for index, pod in node_pods.items():
        if index >= replicas or pod.name in plan.delete_pods:  # scaled down, resized: going
            continue
        status.pod_uids[str(index)] = ""  # deleted on purpose: their absence is no loss
        if not pod.deleting:  # failed ones too: with restartPolicy Never, nobody else will
            plan.delete_pods.append(pod.name)
    if rendezvous is not None and not rendezvous.deleting:
        plan.delete_pods.append(rendezvous.name)
    gang = "the node pod" if replicas == 1 else f"all {replicas} node pods"
    plan.events.append(Event("Warning", "PodFailed",
        f"{_failure(failed)}; restarting {gang} and the rendezvous in {delay}s, from the last "
        f"checkpoint (restart {status.restarts})"))  # fmt: skip
    return True


def _disrupted(plan: Plan, pod: PodState, key: str) -> None:
    """A pod the cluster takes away (eviction, preemption, drain, taint, lost node): recreated
    once gone, without a backoff."""
    _count_disruption(plan, pod, key)
    if pod.failed:  # evicted by the kubelet: Failed, and nobody else deletes it
        plan.delete_pods.append(pod.name)


def _count_disruption(plan: Plan, pod: PodState, key: str) -> None:
    """Once per pod in status.disruptions, never as a restart: its pod_uids entry is cleared,
    so that its disappearance later is not counted as a loss."""
    status = plan.status
    if status.pod_uids.get(key) == "":
        return
    status.disruptions += 1
    status.pod_uids[key] = ""
    plan.events.append(Event("Warning", "PodDisrupted",
        f"pod {pod.name} disrupted ({pod.disruption}); recreating it, not counted as a "
        f"restart (disruption {status.disruptions})"))  # fmt: skip


def _resize(plan: Plan, outdated: dict[int, PodState], wanted: str) -> None:
    """spec.replicas changed: restart every node pod with the new --nnodes.

    torch elastic keeps min_nodes and max_nodes in each agent, not in the shared rendezvous
    state, and each agent closes a round by its own bounds: a new agent with a higher max next
    to old ones is either shut out of the round or keeps the others restarting. So all node
    pods stop together (SIGTERM: the trainer saves a checkpoint at the step it is on) and come
    back with the new bounds. Neither a restart nor a disruption."""
    status = plan.status
    leaving = [p for p in outdated.values() if not p.deleting]
    for index in outdated:
        status.pod_uids.pop(str(index), None)  # deleted on purpose: not a loss
    plan.delete_pods += [p.name for p in leaving]
    if leaving:
        before = sorted({p.bounds for p in outdated.values()})
        plan.events.append(Event("Normal", "Resized",
            f"spec.replicas changed from {', '.join(before)} to {wanted} (MIN:MAX): restarting "
            f"the node pods together with --nnodes={wanted}; they save a checkpoint on SIGTERM "
            "and resume from it"))  # fmt: skip


def _phase_message(status: JobStatus) -> str:
    condition = next((c for c in status.conditions if c.type == RUNNING), None)
    return f"phase {status.phase.value}" + (f": {condition.message}" if condition else "")


def _summarise(status: JobStatus, node_pods: dict[int, PodState], desired: int, job: Job) -> None:
    pods = [p for i, p in node_pods.items() if i < desired and not p.deleting]
    ready = sum(1 for p in pods if p.ready and p.phase == "Running")
    status.replicas = ReplicaStatus(
        desired=desired,
        ready=ready,
        pending=sum(1 for p in pods if p.phase == "Pending"),
        failed=sum(1 for p in pods if p.phase == "Failed"),
    )
    status.nodes = f"{ready}/{desired}"
    running = status.phase == Phase.RUNNING
    status.world_size = ready * children.processes_per_node(job) if running else 0
