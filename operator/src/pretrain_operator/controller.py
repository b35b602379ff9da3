"""Executes reconcile plans: reads what the indexes observed, asks `reconcile.plan` what to do,
does it through `kube`, and records status, events and operator metrics. Never raises: any
failure becomes a `ReconcileFailed` condition and the next resync tries again."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from pretrain_operator import children, kube, metrics, naming
from pretrain_operator.api import FinetuneJobSpec, JobStatus, Kind, Phase
from pretrain_operator.children import Job
from pretrain_operator.observe import (
    BaseJobState,
    PodState,
    TrainerMetrics,
    base_job_state,
    parse_metrics,
    pod_state,
    with_saved_checkpoints,
)
from pretrain_operator.reconcile import FAILED, Event, plan, resolve_base, set_condition

EventPoster = Callable[[Mapping[str, Any], str, str, str], None]
CREATION_EXPECTATION_SECONDS = 60.0  # a pod we created and never saw is presumed gone after this


@dataclass
class Settings:
    """Operator settings (command-line flags of `python -m pretrain_operator`)."""

    trainer_image: str = "pretrain-operator/trainer:0.1.0"
    """Image of the node pods unless a job's spec.template.image says otherwise."""
    resync_seconds: float = 5.0
    """How often every job is reconciled even when nothing was observed to change."""


SETTINGS = Settings()  # `python -m pretrain_operator` fills it from its flags before start


@dataclass
class Controller:
    api: kube.Api
    settings: Settings
    post_event: EventPoster
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("pretrain_operator"))
    _locks: defaultdict[str, asyncio.Lock] = field(
        default_factory=lambda: defaultdict(asyncio.Lock)
    )
    _static_applied: dict[str, int] = field(default_factory=dict)  # uid -> generation
    _seen_phase: dict[str, str] = field(default_factory=dict)  # uid -> phase, for metrics
    _missing_apis: dict[str, list[str]] = field(default_factory=dict)  # uid -> messages
    # Watches lag behind our own writes. Like controller-runtime's expectations, remember what we
    # did until the indexes show it, so a lagging view never double-counts a restart.
    _written: dict[str, JobStatus] = field(default_factory=dict)  # job uid -> status we wrote
    _created: dict[str, dict[str, tuple[str, float]]] = field(
        default_factory=lambda: defaultdict(dict)
    )  # job uid -> pod name -> (pod uid, when)
    _deleted: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))  # pod uids
    # Disrupted pods as their deletion event last showed them, until a plan has seen them: a
    # pod evicted and deleted within one watch batch is never in the index as terminating.
    _gone: defaultdict[str, dict[str, PodState]] = field(
        default_factory=lambda: defaultdict(dict)
    )  # job uid -> pod uid -> last state
    _wake_ups: dict[str, asyncio.TimerHandle] = field(default_factory=dict)  # job uid -> timer
    _wake_up_tasks: set[asyncio.Future[None]] = field(default_factory=set)  # keep them referenced

    async def reconcile(
        self,
        kind: Kind,
        body: Mapping[str, Any],
        pods: Sequence[Mapping[str, Any]],
        base: Mapping[str, Any] | None = None,
    ) -> float | None:
        """Reconcile one job; return in how many seconds it wants another look by itself (a
        backoff ends), None when only a change or the resync needs to bring it back."""
        uid = body["metadata"]["uid"]
        async with self._locks[uid]:
            with metrics.RECONCILE_SECONDS.labels(kind.kind).time():
                try:
                    return await self._reconcile(kind, body, pods, base)
                except Exception as error:  # the operator must survive any input
                    if kube.namespace_terminating(error):
                        return None
                    metrics.RECONCILE_ERRORS.labels(kind.kind).inc()
                    self.logger.exception("reconcile of %s failed", body["metadata"]["name"])
                    await self._record_failure(kind, body, error)
                    return None

    def pod_deleted(self, job_uid: str, pod: Mapping[str, Any]) -> None:
        """A child pod's deletion event: keep its last state for the next plan if it was
        disrupted (the one thing about a vanished pod the plan cannot see otherwise)."""
        try:
            state = pod_state(dict(pod))
        except (KeyError, TypeError, ValueError):
            return  # not a pod we can read; it counts as lost, as before
        if state.disrupted:
            self._gone[job_uid][state.uid] = state

    def wake_up_later(self, uid: str, delay: float, wake: Callable[[], Awaitable[None]]) -> None:
        """Run `wake` (a reconcile of job `uid`) in `delay` seconds, so that a backoff ends on
        time rather than at the next resync; one pending wake-up per job, the latest wins."""
        pending = self._wake_ups.pop(uid, None)
        if pending is not None:
            pending.cancel()

        def fire() -> None:
            self._wake_ups.pop(uid, None)
            task = asyncio.ensure_future(wake())
            self._wake_up_tasks.add(task)
            task.add_done_callback(self._wake_up_tasks.discard)

        self._wake_ups[uid] = asyncio.get_running_loop().call_later(max(delay, 0.0), fire)

    async def _reconcile(
        self,
        kind: Kind,
        body: Mapping[str, Any],
        pods: Sequence[Mapping[str, Any]],
        base_body: Mapping[str, Any] | None,
    ) -> float | None:
        meta = body["metadata"]
        namespace, name, generation = meta["namespace"], meta["name"], meta.get("generation", 1)
        now = datetime.datetime.now(datetime.UTC)
        # We are the only writer of status: our last write is newer than a lagging watch.
        current = self._written.get(meta["uid"]) or _status(body)
        try:
            spec = kind.spec.model_validate(body.get("spec") or {})
        except ValidationError as error:
            await self._invalid_spec(kind, body, current, generation, error, now)
            return None

        base = base_job_state(dict(base_body)) if base_body is not None else None
        job = self._job(kind, body, spec, base)
        if self._static_applied.get(meta["uid"]) != generation:
            self._missing_apis[meta["uid"]] = await self._apply_static(job)
            self._static_applied[meta["uid"]] = generation

        states = self._expected(meta["uid"], [pod_state(dict(p)) for p in pods])
        gone = dict(self._gone.get(meta["uid"], {}))
        absent = await self._missing_secrets(job, states)
        result = plan(job, current, generation, states, now, await self._metrics(states), base,
                      list(gone.values()), absent)  # fmt: skip

        by_name = {p.name: p for p in states}
        for pod in result.delete_pods:
            await kube.delete_pod(self.api, namespace, pod)
            self._deleted[meta["uid"]].add(by_name[pod].uid)
            metrics.PODS_DELETED.labels(kind.kind).inc()
        for manifest in result.create:
            created = await kube.create(self.api, manifest)
            if created is None:
                continue
            metrics.PODS_CREATED.labels(kind.kind).inc()
            self._created[meta["uid"]][manifest["metadata"]["name"]] = (created, time.monotonic())
            index = manifest["metadata"]["labels"].get(naming.LABEL_NODE_INDEX)
            if index is not None:
                result.status.pod_uids[index] = created
        for missing in self._missing_apis.get(meta["uid"], []):
            set_condition(result.status, "OptionalChildMissing", True, "ApiNotInstalled",
                          missing, generation, now)  # fmt: skip
        self._observe(kind, body, current, result.status)
        for event in result.events:
            self._post(body, event)
        new_status = result.status.wire()
        if new_status != body.get("status") or current is not self._written.get(meta["uid"]):
            await kube.write_status(self.api, kind, namespace, name, new_status)
        self._written[meta["uid"]] = result.status
        for pod_uid in gone:  # recorded in the status now written
            self._gone[meta["uid"]].pop(pod_uid, None)
        if result.delete_job:
            self.logger.info("deleting %s/%s: ttlSecondsAfterFinished passed", namespace, name)
            await kube.delete_job(self.api, kind, namespace, name)
        return result.requeue_after

    def _expected(self, job_uid: str, observed: list[PodState]) -> list[PodState]:
        """Observed pods, corrected for our own creations and deletions not yet seen."""
        created, deleted = self._created[job_uid], self._deleted[job_uid]
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

    def _job(
        self,
        kind: Kind,
        body: Mapping[str, Any],
        spec: Any,
        base: BaseJobState | None,
    ) -> Job:
        meta = body["metadata"]
        checkpoint, claim = "", ""
        if isinstance(spec, FinetuneJobSpec):
            checkpoint, _, _ = resolve_base(spec, base, meta["namespace"])
            if base is not None and spec.base.pretrain_job and checkpoint.startswith("pvc://"):
                claim = base.claim
                # pvc://CLAIM/path/step-N is mounted read-only at /base/path/step-N.
                checkpoint = f"{naming.BASE_MOUNT}/{checkpoint.split('/', 3)[3]}"
        return Job(kind, meta["name"], meta["namespace"], meta["uid"], spec,
                   self.settings.trainer_image, checkpoint, claim)  # fmt: skip

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

    async def _metrics(self, pods: list[PodState]) -> TrainerMetrics | None:
        """A finished worker's final values (its termination message: a last scrape may be a
        checkpoint behind), else the first ready node pod's endpoint (step and loss are global,
        any rank reports them), with the checkpoint that pods stopped by SIGTERM saved (their
        termination messages say which step)."""
        nodes = [p for p in pods if p.role == naming.ROLE_NODE and p.message]
        reports = [parse_metrics(p.message) for p in nodes if p.exit_code == 0]
        final = next((r for r in reports if r.step is not None), None)
        if final is not None:
            return final
        stopped = [parse_metrics(p.message) for p in nodes
                   if p.exit_code == naming.EXIT_TERMINATED]  # fmt: skip
        ready = sorted(
            (p for p in pods if p.role == naming.ROLE_NODE and p.ready and p.ip),
            key=lambda p: p.index or 0,
        )
        text = await kube.scrape_metrics(self.api, ready[0].ip) if ready else None
        live = parse_metrics(text) if text is not None else None
        return with_saved_checkpoints(live, stopped)

    async def _invalid_spec(
        self,
        kind: Kind,
        body: Mapping[str, Any],
        status: JobStatus,
        generation: int,
        error: ValidationError,
        now: datetime.datetime,
    ) -> None:
        """A spec the API server let through but the models refuse (say, CRDs out of date)."""
        first = error.errors()[0]
        where = "spec." + ".".join(str(part) for part in first["loc"])
        message = f"{where}: {first['msg']}"
        status.phase = Phase.FAILED
        set_condition(status, FAILED, True, "InvalidSpec", message, generation, now)
        self._post(body, Event("Warning", "InvalidSpec", message))
        meta = body["metadata"]
        await kube.write_status(self.api, kind, meta["namespace"], meta["name"], status.wire())

    async def _record_failure(self, kind: Kind, body: Mapping[str, Any], error: Exception) -> None:
        """Say on the job why reconciling failed; if even that fails, the log has it."""
        meta = body["metadata"]
        status = _status(body)
        set_condition(status, "ReconcileFailed", True, type(error).__name__,
                      str(error)[:1024], meta.get("generation", 1),
                      datetime.datetime.now(datetime.UTC))  # fmt: skip
        try:
            await kube.write_status(self.api, kind, meta["namespace"], meta["name"], status.wire())
        except Exception:
            self.logger.exception("could not record the failure on %s", meta["name"])

    def _post(self, body: Mapping[str, Any], event: Event) -> None:
        try:
            self.post_event(body, event.type, event.reason, event.message)
        except Exception:
            self.logger.exception("could not post event %s", event.reason)

    def _observe(
        self, kind: Kind, body: Mapping[str, Any], before: JobStatus, after: JobStatus
    ) -> None:
        """Operator metrics: jobs by phase, restarts, disruptions, resizes, time to Running."""
        uid = body["metadata"]["uid"]
        old_phase = self._seen_phase.get(uid)
        if old_phase != after.phase.value:
            if old_phase:
                metrics.JOBS.labels(kind.kind, old_phase).dec()
            metrics.JOBS.labels(kind.kind, after.phase.value).inc()
            self._seen_phase[uid] = after.phase.value
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

    def forget(self, uid: str, kind: Kind) -> None:
        """The job is gone: drop what the controller remembered of it."""
        self._static_applied.pop(uid, None)
        self._missing_apis.pop(uid, None)
        self._locks.pop(uid, None)
        self._written.pop(uid, None)
        self._created.pop(uid, None)
        self._deleted.pop(uid, None)
        self._gone.pop(uid, None)
        wake_up = self._wake_ups.pop(uid, None)
        if wake_up is not None:
            wake_up.cancel()
        phase = self._seen_phase.pop(uid, None)
        if phase:
            metrics.JOBS.labels(kind.kind, phase).dec()


def _status(body: Mapping[str, Any]) -> JobStatus:
    try:
        return JobStatus.model_validate(body.get("status") or {})
    except ValidationError:
        return JobStatus()  # a status we cannot read is rebuilt from observation
