"""Executes reconcile plans: reads what the indexes observed, asks `reconcile.plan` what to do,
does it through `kube`, and records status, events and operator metrics. Never raises: any
failure becomes a `ReconcileFailed` condition and a retry with a growing delay.

What it remembers of a job between reconciles is one `JobRecord`, dropped with the job."""

from __future__ import annotations

import dataclasses
import datetime
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from pretrain_operator import children, kube, metrics, naming, queueing
from pretrain_operator.api import JobStatus, Kind, Phase
from pretrain_operator.api.status import FINISHED_PHASES
from pretrain_operator.children import Job
from pretrain_operator.observe import (
    PodState,
    TrainerMetrics,
    base_job_state,
    parse_metrics,
    pod_state,
    with_saved_checkpoints,
)
from pretrain_operator.queueing import Placement, WorkloadState
from pretrain_operator.reconcile import (
    ADMITTED,
    Event,
    Plan,
    Queue,
    invalid_spec,
    job_of,
    parse_timestamp,
    plan,
    set_condition,
    timestamp,
)
from pretrain_operator.workqueue import Outcome

EventPoster = Callable[[dict[str, Any], str, str, str], Awaitable[None]]
CREATION_EXPECTATION_SECONDS = 60.0  # a pod we created and never saw is presumed gone after this


@dataclass
class Settings:
    """Operator settings (command-line flags of `python -m pretrain_operator`)."""

    trainer_image: str = "pretrain-operator/trainer:0.1.0"
    """Image of the node pods unless a job's spec.template.image says otherwise."""
    progress_seconds: float = 30.0
    """How often a Running job's trainer is scraped for status.progress (and status written)."""
    workers: int = 4
    """Reconciles running at once (never two of one job)."""


SETTINGS = Settings()  # `python -m pretrain_operator` fills it from its flags before start


@dataclass
class JobRecord:
    """What the controller remembers of one job between reconciles."""

    generation: int = 0  # of the last reconcile
    static_generation: int | None = None  # whose static children were applied
    missing_apis: list[str] = field(default_factory=list)
    phase: str = ""  # as counted in the jobs-by-phase gauge
    # Watches lag behind our own writes. Like controller-runtime's expectations, remember what we
    # did until the indexes show it, so a lagging view never double-counts a restart.
    written: JobStatus | None = None  # the status the last plan made (the next one's start)
    written_wire: dict[str, Any] | None = None  # what is on the job since our last write
    created: dict[str, tuple[str, float]] = field(default_factory=dict)  # pod -> (uid, when)
    deleted: set[str] = field(default_factory=set)  # pod uids
    # Pods as their deletion event last showed them, when that says what nothing else will (a
    # disruption, a termination message: the step a SIGTERM saved), until a plan has seen them:
    # a pod that stops and is deleted within one batch of events is never seen terminating.
    gone: dict[str, PodState] = field(default_factory=dict)  # pod uid -> last state
    pods: dict[str, PodState] = field(default_factory=dict)  # pod uid -> as last seen
    scraped_at: float | None = None  # monotonic time of the last progress scrape
    # An admitted Workload's flavors, and the placements read from their ResourceFlavors.
    placements: tuple[str, dict[str, Placement]] = field(default_factory=lambda: ("", {}))


@dataclass
class Controller:
    api: kube.Api
    settings: Settings
    post_event: EventPoster
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("pretrain_operator"))
    records: dict[str, JobRecord] = field(default_factory=dict)  # job uid -> record

    async def reconcile(
        self,
        kind: Kind,
        body: Mapping[str, Any],
        pods: Sequence[PodState],
        base: Mapping[str, Any] | None = None,
        workload: WorkloadState | None = None,
    ) -> Outcome:
        """Reconcile one job (the queue runs one at a time per job); the outcome says when it
        wants another look by itself, or that it failed and should be retried. `workload`: the
        job's Kueue Workload as the index holds it."""
        with metrics.RECONCILE_SECONDS.labels(kind.kind).time():
            try:
                return Outcome(
                    requeue_after=await self._reconcile(kind, body, pods, base, workload)
                )
            except Exception as error:  # the operator must survive any input
                if kube.namespace_terminating(error):
                    return Outcome()
                metrics.RECONCILE_ERRORS.labels(kind.kind).inc()
                self.logger.exception("reconcile of %s failed", body["metadata"]["name"])
                await self._record_failure(kind, body, error)
                return Outcome(failed=True)

    def job_changed(self, body: Mapping[str, Any]) -> bool:
        """Whether a watch event of a job needs a reconcile: not the echo of our own status
        write (the same generation, the status we wrote), which is most of them."""
        meta = body["metadata"]
        record = self.records.get(meta["uid"])
        return (
            record is None
            or meta.get("generation", 1) != record.generation
            or bool(meta.get("deletionTimestamp"))
            or body.get("status") != record.written_wire
        )

    def pod_changed(self, job_uid: str, event: str, pod: Mapping[str, Any]) -> bool:
        """Whether a child pod's watch event changes what a plan sees (most do not: a new
        resourceVersion, a kubelet heartbeat on a condition). A deletion that was a disruption,
        or whose container left a termination message, keeps the pod's last state for the next
        plan (what the plan cannot learn of a vanished pod otherwise)."""
        try:
            state = pod_state(dict(pod))
        except (KeyError, TypeError, ValueError):
            return True  # not a pod we can read; it counts as lost, as before
        record = self.records.get(job_uid)
        if record is None:
            return True
        if event == "DELETED":
            record.pods.pop(state.uid, None)
            if state.disrupted or state.message:
                record.gone[state.uid] = state
            return True
        if record.pods.get(state.uid) == state:
            return False
        record.pods[state.uid] = state
        return True

    async def _reconcile(
        self,
        kind: Kind,
        body: Mapping[str, Any],
        pods: Sequence[PodState],
        base_body: Mapping[str, Any] | None,
        workload: WorkloadState | None,
    ) -> float | None:
        meta = body["metadata"]
        generation = meta.get("generation", 1)
        record = self.records.setdefault(meta["uid"], JobRecord())
        record.generation = generation
        now = datetime.datetime.now(datetime.UTC)
        # We are the only writer of status: our last write is newer than a lagging watch.
        current = record.written or _status(body)
        try:
            spec = kind.spec.model_validate(body.get("spec") or {})
        except ValidationError as error:
            await self._execute(kind, body, record, invalid_spec(current, generation, error, now))
            return None

        base = base_job_state(dict(base_body)) if base_body is not None else None
        job = job_of(kind, body, spec, base, self.settings.trainer_image)
        if record.static_generation != generation:
            record.missing_apis = await self._apply_static(job)
            record.static_generation = generation

        states = self._expected(record, list(pods))
        gone = dict(record.gone)
        absent = await self._missing_secrets(job, states)
        seen = {p.uid for p in states}
        scraped = await self._metrics(
            record, states + [p for p in gone.values() if p.uid not in seen]
        )
        queue = await self._queue(job, body, record, workload)
        result = plan(job, current, generation, states, now, scraped, base, list(gone.values()),
                      absent, record.missing_apis, queue)  # fmt: skip
        await self._execute(kind, body, record, result, {p.name: p for p in states})
        for pod_uid in gone:  # recorded in the status now written
            record.gone.pop(pod_uid, None)
        return _earliest(result.requeue_after, self._next_look(record, result.status))

    async def _execute(
        self,
        kind: Kind,
        body: Mapping[str, Any],
        record: JobRecord,
        result: Plan,
        pods: Mapping[str, PodState] | None = None,
    ) -> None:
        """Do what the plan says; write the status only when it differs from the last written
        (so a job where nothing changes costs no write at all)."""
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        for pod in result.delete_pods:
            await kube.delete_pod(self.api, namespace, pod)
            if pods and pod in pods:
                record.deleted.add(pods[pod].uid)
            metrics.PODS_DELETED.labels(kind.kind).inc()
        for manifest in result.create:
            created = await kube.create(self.api, manifest)
            if created is None or manifest["kind"] != "Pod":  # a Workload is no pod to expect
                continue
            metrics.PODS_CREATED.labels(kind.kind).inc()
            record.created[manifest["metadata"]["name"]] = (created, time.monotonic())
            index = manifest["metadata"]["labels"].get(naming.LABEL_NODE_INDEX)
            if index is not None:  # the uid exists only now: the plan cannot know it
                result.status.pod_uids[index] = created
        if result.finish_workload is not None:
            workload, condition = result.finish_workload
            reference = {"apiVersion": queueing.WORKLOAD_API, "kind": "Workload",
                         "metadata": {"name": workload, "namespace": namespace}}  # fmt: skip
            await kube.apply_status_condition(self.api, reference, condition)
        if result.release_workload is not None:
            state = result.release_workload
            reference = {"apiVersion": queueing.WORKLOAD_API, "kind": "Workload",
                         "metadata": {"name": state.name, "namespace": namespace}}  # fmt: skip
            patch = queueing.release(state, timestamp(datetime.datetime.now(datetime.UTC)))
            await kube.patch_status(self.api, reference, patch)
        self._observe(kind, body, record, record.written or _status(body), result.status)
        for event in result.events:
            await self._post(body, event)
        wire = result.status.wire()
        last = record.written_wire if record.written_wire is not None else body.get("status")
        if wire != last:
            await kube.write_status(self.api, kind, namespace, name, wire)
        record.written, record.written_wire = result.status, wire
        if result.delete_job:
            self.logger.info("deleting %s/%s: ttlSecondsAfterFinished passed", namespace, name)
            await kube.delete_job(self.api, kind, namespace, name)

    def _next_look(self, record: JobRecord, status: JobStatus) -> float | None:
        """When the controller itself wants to look again (the plan's own reasons aside): the
        next progress scrape of a Running job; a pod it created that no watch event has shown
        yet (presumed gone once its expectation expires)."""
        now = time.monotonic()
        looks = [CREATION_EXPECTATION_SECONDS - (now - when) for _, when in record.created.values()]
        if status.phase == Phase.RUNNING:
            since = now - record.scraped_at if record.scraped_at is not None else 0.0
            looks.append(self.settings.progress_seconds - since)
        return min((max(look, 0.0) for look in looks), default=None)

    def _expected(self, record: JobRecord, observed: list[PodState]) -> list[PodState]:
        """Observed pods, corrected for our own creations and deletions not yet seen."""
        created, deleted = record.created, record.deleted
        seen_uids = {p.uid for p in observed}
        deleted &= seen_uids  # forget deletions the index has caught up with
        states = [dataclasses.replace(p, deleting=True) if p.uid in deleted else p
                  for p in observed]  # fmt: skip
        names = {p.name for p in observed}
        for pod_name, (uid, when) in list(created.items()):
            if pod_name in names or time.monotonic() - when > CREATION_EXPECTATION_SECONDS:
                del created[pod_name]
                continue
            role = naming.ROLE_RENDEZVOUS if pod_name.endswith("-rdzv") else naming.ROLE_NODE
            index = int(pod_name.rsplit("-", 1)[1]) if role == naming.ROLE_NODE else None
            states.append(PodState(pod_name, uid, role, index, "Pending", False, False))
        return states

    async def _queue(
        self, job: Job, body: Mapping[str, Any], record: JobRecord, workload: WorkloadState | None
    ) -> Queue | None:
        """What Kueue says of a job with a queue (None for one without): whether Kueue is
        there at all (asked only while the job has no Workload), and where each admitted pod
        set runs (its flavors' ResourceFlavors, read once per admission)."""
        name = queueing.queue_name(job, dict(body["metadata"].get("labels") or {}))
        if not name:
            return None
        if workload is None:
            if not await kube.served(self.api, queueing.WORKLOAD_API, "workloads"):
                return Queue(name, None, installed=False)
            labels = dict(body["metadata"].get("labels") or {})
            chosen = queueing.priority_class(job, labels)
            if chosen is None:
                return Queue(name, None)
            found = await kube.read_cluster_object(self.api, chosen.api_version, chosen.plural,
                                                   chosen.name)  # fmt: skip
            if found is None:
                problem = f"{chosen.field}: {chosen.kind} {chosen.name} not found"
                return Queue(name, None, problem=problem)
            priority = queueing.Priority(chosen, int(found.get("value", 0)))
            return Queue(name, None, priority=priority)
        if not workload.admitted:
            return Queue(name, workload)
        admission = repr(sorted(workload.flavors.items()))
        if record.placements[0] != admission:
            names = {f for flavors in workload.flavors.values() for f in flavors.values()}
            found = {f: await kube.read_cluster_object(self.api, queueing.WORKLOAD_API,
                                                       "resourceflavors", f) or {}
                     for f in sorted(names)}  # fmt: skip
            record.placements = (
                admission,
                {
                    pod_set: queueing.placement(flavors, found)
                    for pod_set, flavors in workload.flavors.items()
                },
            )
        return Queue(name, workload, record.placements[1])

    async def _missing_secrets(self, job: Job, pods: list[PodState]) -> list[str]:
        """The secretRefs that name no Secret, checked while no node pod is active (pods are
        about to be made; running ones hold what they read)."""
        if any(p.role == naming.ROLE_NODE and p.active for p in pods):
            return []
        return [f"{field}: Secret {name} not found in namespace {job.namespace}"
                for field, name in children.secret_refs(job.spec)
                if not await kube.secret_exists(self.api, job.namespace, name)]  # fmt: skip

    async def _apply_static(self, job: Job) -> list[str]:
        """Create the long-lived children, or bring those that exist up to the spec (the
        ConfigMap new pods read, the budget's and the PodGroup's replicas.min after a resize);
        return what could not be made for lack of an API."""
        missing = []
        for manifest in children.static_children(job):
            try:
                created = await kube.create(self.api, manifest)
                if created is None:
                    await kube.update(self.api, manifest)
            except kube.MissingApiError as error:
                # An optional add-on (a gang scheduler's PodGroup) is absent: say so and train on.
                missing.append(f"spec.scheduling: {error}; install it or turn the option off")
        return missing

    async def _metrics(self, record: JobRecord, pods: list[PodState]) -> TrainerMetrics | None:
        """A finished worker's final values (its termination message: a last scrape may be a
        checkpoint behind), else, once per progress interval, the first ready node pod's
        endpoint (step and loss are global, any rank reports them), with the checkpoint that
        pods stopped by SIGTERM saved (their termination messages say which step)."""
        nodes = [p for p in pods if p.role == naming.ROLE_NODE and p.message]
        reports = [parse_metrics(p.message) for p in nodes if p.exit_code == 0]
        final = next((r for r in reports if r.step is not None), None)
        now = time.monotonic()
        if final is not None:
            record.scraped_at = now  # as fresh as a scrape: the next one is not due yet
            return final
        stopped = [parse_metrics(p.message) for p in nodes
                   if p.exit_code == naming.EXIT_TERMINATED]  # fmt: skip
        ready = sorted(
            (p for p in pods if p.role == naming.ROLE_NODE and p.ready and p.ip),
            key=lambda p: p.index or 0,
        )
        live = None
        if not ready:
            record.scraped_at = None  # the first pod to be ready is scraped at once
        elif record.scraped_at is None or now - record.scraped_at >= self.settings.progress_seconds:
            record.scraped_at = now
            text = await kube.scrape_metrics(self.api, ready[0].ip)
            live = parse_metrics(text) if text is not None else None
        return with_saved_checkpoints(live, stopped)

    async def _record_failure(self, kind: Kind, body: Mapping[str, Any], error: Exception) -> None:
        """Say on the job why reconciling failed; if even that fails, the log has it."""
        meta = body["metadata"]
        record = self.records.get(meta["uid"])
        status = (record.written if record and record.written else _status(body)).model_copy(
            deep=True
        )  # the next plan starts from record.written again: a success drops the condition
        set_condition(status, "ReconcileFailed", True, type(error).__name__,
                      str(error)[:1024], meta.get("generation", 1),
                      datetime.datetime.now(datetime.UTC))  # fmt: skip
        try:
            await kube.write_status(self.api, kind, meta["namespace"], meta["name"], status.wire())
        except Exception:
            self.logger.exception("could not record the failure on %s", meta["name"])
            return
        if record is not None:
            record.written_wire = status.wire()

    async def _post(self, body: Mapping[str, Any], event: Event) -> None:
        try:
            await self.post_event(dict(body), event.type, event.reason, event.message)
        except Exception as error:
            if not kube.namespace_terminating(error):  # else the job goes with its namespace
                self.logger.exception("could not post event %s", event.reason)

    def _observe(
        self,
        kind: Kind,
        body: Mapping[str, Any],
        record: JobRecord,
        before: JobStatus,
        after: JobStatus,
    ) -> None:
        """Operator metrics: jobs by phase, restarts, disruptions, resizes, time to Running."""
        if record.phase != after.phase.value:
            if record.phase:
                metrics.JOBS.labels(kind.kind, record.phase).dec()
            metrics.JOBS.labels(kind.kind, after.phase.value).inc()
            record.phase = after.phase.value
        self._observe_queueing(kind, before, after)
        if after.restarts > before.restarts:
            metrics.RESTARTS.labels(kind.kind).inc(after.restarts - before.restarts)
        if after.disruptions > before.disruptions:
            metrics.DISRUPTIONS.labels(kind.kind).inc(after.disruptions - before.disruptions)
        if before.phase == Phase.RUNNING and after.replicas.ready != before.replicas.ready:
            metrics.RESIZES.labels(kind.kind).inc()
        if after.phase == Phase.RUNNING and before.phase != Phase.RUNNING and not before.start_time:
            created = datetime.datetime.strptime(
                body["metadata"]["creationTimestamp"], "%Y-%m-%dT%H:%M:%SZ"
            ).replace(tzinfo=datetime.UTC)
            elapsed = (datetime.datetime.now(datetime.UTC) - created).total_seconds()
            metrics.TIME_TO_RUNNING.labels(kind.kind).observe(max(elapsed, 0.0))

    @staticmethod
    def _observe_queueing(kind: Kind, before: JobStatus, after: JobStatus) -> None:
        """Kueue's admissions and evictions of this job, and the time it waited Queued."""
        queued = Phase.QUEUED
        if before.phase == queued and after.phase not in {queued, *FINISHED_PHASES}:
            metrics.ADMISSIONS.labels(kind.kind).inc()
            since = next((c.last_transition_time for c in before.conditions
                          if c.type == ADMITTED and c.status == "False"), None)  # fmt: skip
            if since:
                elapsed = datetime.datetime.now(datetime.UTC) - parse_timestamp(since)
                metrics.QUEUED_SECONDS.labels(kind.kind).observe(max(elapsed.total_seconds(), 0))
        elif after.phase == queued and before.phase not in {queued, Phase.PENDING}:
            reason = next((c.reason for c in after.conditions if c.type == ADMITTED), "")
            metrics.EVICTIONS.labels(kind.kind, reason).inc()

    def forget(self, uid: str, kind: Kind) -> None:
        """The job is gone: drop what the controller remembered of it."""
        record = self.records.pop(uid, None)
        if record is not None and record.phase:
            metrics.JOBS.labels(kind.kind, record.phase).dec()


def _earliest(*delays: float | None) -> float | None:
    return min((d for d in delays if d is not None), default=None)


def _status(body: Mapping[str, Any]) -> JobStatus:
    try:
        return JobStatus.model_validate(body.get("status") or {})
    except ValidationError:
        return JobStatus()  # a status we cannot read is rebuilt from observation
