"""kopf wiring: thin handlers that mark jobs dirty on a work queue, and the workers that reconcile
them from what the indexes hold.

Why one queue fed by thin handlers rather than kopf's per-event handlers (or a daemon per job):
every event of every pod used to run a whole reconcile of its job, and a timer ran one more for
every job. As in controller-runtime, an event now only marks its job dirty; a burst of events is
one reconcile, never two of one job at once, a bounded number of jobs at a time, in arrival
order; a job's pod events within POD_EVENT_BATCH_SECONDS are one burst. The worker reads the
latest job and pods from kopf's indexes when it starts, not the body of the event that queued
it. Jobs come back by themselves only when their plan asks (a backoff ends, a TTL expires, a
Running job's progress is due), not on a timer.

kopf's own event handlers carry no state (no annotations are written for them), so the only
writes to a job are the operator's status.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any, NamedTuple

import kopf

from pretrain_operator import API_GROUP, API_VERSION, kube, naming, queueing
from pretrain_operator.api import FINETUNE_JOB, KINDS, PRETRAIN_JOB, Kind
from pretrain_operator.controller import SETTINGS, Controller
from pretrain_operator.observe import pod_state
from pretrain_operator.workqueue import Outcome, WorkQueue, start_workers

PodKey = tuple[str, str, str]  # (namespace, kind, job name)
INDEXES = ("job_pods", "pretrain_jobs", "finetune_jobs", "job_workloads")  # kopf's names for them
QUEUE_NAME = "jobs"
# A job's pod events within this period are one reconcile, as the Job controller of Kubernetes
# batches them (its syncJobBatchPeriod): pods start, turn ready and stop in bursts, and a queue
# that keeps up would otherwise reconcile once per pod, not once per burst.
POD_EVENT_BATCH_SECONDS = 1.0
logger = logging.getLogger("pretrain_operator")


class JobKey(NamedTuple):
    kind: str  # PretrainJob or FinetuneJob
    namespace: str
    name: str


class NoDiffBase(kopf.DiffBaseStorage):
    """No diff base: this operator has event and index handlers only, no change handlers
    (on.create/update/resume), so kopf's diff of each event against the last handled state
    serves nothing. Its default builds that state for every event of every pod: two deep
    copies of the body and a diff of them."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


def _kind(name: str) -> Kind:
    return PRETRAIN_JOB if name == PRETRAIN_JOB.kind else FINETUNE_JOB


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """A ServiceAccount in a pod, else the kubeconfig (no sync Kubernetes client needed)."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **kwargs: Any) -> None:
    settings.posting.level = logging.WARNING  # kopf's own chatter; ours goes through kube
    settings.watching.server_timeout = 300
    settings.networking.request_timeout = 30
    settings.persistence.diffbase_storage = NoDiffBase()

    api = await kube.connect()

    async def post_event(body: dict[str, Any], type_: str, reason: str, message: str) -> None:
        await kube.post_event(api, body, type_, reason, message)

    controller = Controller(api, SETTINGS, post_event)
    queue: WorkQueue[JobKey] = WorkQueue(QUEUE_NAME)
    # The indexes are live views, filled before any resource handler runs.
    indexes = {name: kwargs[name] for name in INDEXES}

    async def reconcile(key: JobKey) -> Outcome:
        kind = _kind(key.kind)
        jobs = indexes["pretrain_jobs"] if kind is PRETRAIN_JOB else indexes["finetune_jobs"]
        body = _only(jobs, (key.namespace, key.name))
        if body is None:
            return Outcome()  # deleted since it was queued
        pods = list(indexes["job_pods"].get((key.namespace, key.kind, key.name), []))
        workload = _only(indexes["job_workloads"], (key.namespace, key.kind, key.name))
        base = None
        spec = body.get("spec") or {}
        if kind is FINETUNE_JOB and (spec.get("base") or {}).get("pretrainJob"):
            base = _only(indexes["pretrain_jobs"], (key.namespace, spec["base"]["pretrainJob"]))
        return await controller.reconcile(kind, body, pods, base, workload)

    memo.controller, memo.queue = controller, queue
    memo.workers = start_workers(queue, SETTINGS.workers, reconcile, logger)


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    memo.queue.shut_down()
    await asyncio.gather(*memo.workers, return_exceptions=True)
    await memo.controller.api.close()


@kopf.index("pods", labels={naming.LABEL_JOB: kopf.PRESENT})
def job_pods(namespace: str | None, labels: Mapping[str, str], body: kopf.Body, **_: Any) -> Any:
    """Each child pod as the plan sees it, not its body: a pod's parsed JSON (spec, managed
    fields, every condition) costs tens of KiB of Python objects, its PodState a few hundred
    bytes, and an operator holds thousands of pods (controller-runtime's cache transforms
    strip them for the same reason). A pod it cannot read is left out: it counts as lost."""
    try:
        state = pod_state(dict(body))
    except (KeyError, TypeError, ValueError):
        logger.warning(
            "pod %s/%s cannot be read; it counts as lost",
            namespace,
            body.get("metadata", {}).get("name"),
        )
        return None
    return {(namespace, labels.get(naming.LABEL_KIND, ""), labels[naming.LABEL_JOB]): state}


# Kueue's Workloads of queued jobs (queueing.py). Where Kueue is not installed, kopf watches
# nothing here and the index stays empty; it starts watching once the CRD appears.
WORKLOADS = (queueing.KUEUE_GROUP, queueing.WORKLOAD_API.split("/")[1], "workloads")


@kopf.index(*WORKLOADS, labels={naming.LABEL_JOB: kopf.PRESENT})
def job_workloads(
    namespace: str | None, labels: Mapping[str, str], body: kopf.Body, **_: Any
) -> Any:
    try:
        state = queueing.workload_state(dict(body))
    except (KeyError, TypeError, ValueError):
        logger.warning(
            "Workload %s/%s cannot be read", namespace, body.get("metadata", {}).get("name")
        )
        return None
    return {(namespace, labels.get(naming.LABEL_KIND, ""), labels[naming.LABEL_JOB]): state}


@kopf.on.event(*WORKLOADS, labels={naming.LABEL_JOB: kopf.PRESENT})
async def workload_event(
    labels: Mapping[str, str], namespace: str | None, memo: kopf.Memo, **_: Any
) -> None:
    """Kueue admitted, evicted or requeued a job's Workload: look at the job again."""
    if namespace is not None:
        memo.queue.add(JobKey(_kind(labels.get(naming.LABEL_KIND, "")).kind, namespace,
                              labels[naming.LABEL_JOB]))  # fmt: skip


@kopf.index(API_GROUP, API_VERSION, PRETRAIN_JOB.plural)
def pretrain_jobs(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> Any:
    return {(namespace, name): dict(body)}


@kopf.index(API_GROUP, API_VERSION, FINETUNE_JOB.plural)
def finetune_jobs(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> Any:
    return {(namespace, name): dict(body)}


def _only(index: kopf.Index[Any, Any], key: Any) -> Any:
    values = list(index.get(key, []))
    return values[0] if values else None


def _register(kind: Kind) -> None:
    async def job_event(type: str, body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
        """Any event of a job: queue it unless it is the echo of our own status write (async:
        kopf runs plain functions in threads, and the queue belongs to the event loop)."""
        meta = body["metadata"]
        key = JobKey(kind.kind, meta["namespace"], meta["name"])
        controller: Controller = memo.controller
        queue: WorkQueue[JobKey] = memo.queue
        if kind is PRETRAIN_JOB:  # FinetuneJobs waiting for this one as their base
            for dependent in _dependents(kwargs["finetune_jobs"], key):
                queue.add(dependent)
        if type == "DELETED":
            controller.forget(meta["uid"], kind)
            queue.discard(key)
        elif controller.job_changed(body):
            queue.add(key)

    kopf.on.event(API_GROUP, API_VERSION, kind.plural, id=f"{kind.singular}-event")(job_event)


def _dependents(finetune_jobs: kopf.Index[Any, Any], base: JobKey) -> list[JobKey]:
    found = []
    for (namespace, name), bodies in finetune_jobs.items():
        if namespace != base.namespace:
            continue
        for body in bodies:
            if ((body.get("spec") or {}).get("base") or {}).get("pretrainJob") == base.name:
                found.append(JobKey(FINETUNE_JOB.kind, namespace, name))
    return found


for _kind_of_job in KINDS:
    _register(_kind_of_job)


@kopf.on.event("pods", labels={naming.LABEL_JOB: kopf.PRESENT})
async def pod_event(
    type: str,
    body: kopf.Body,
    labels: Mapping[str, str],
    namespace: str | None,
    memo: kopf.Memo,
    **kwargs: Any,
) -> None:
    """A child pod changed: queue its job if the change is one a plan would see."""
    kind = _kind(labels.get(naming.LABEL_KIND, ""))
    jobs = kwargs["pretrain_jobs"] if kind is PRETRAIN_JOB else kwargs["finetune_jobs"]
    job = _only(jobs, (namespace, labels[naming.LABEL_JOB]))
    if job is None or namespace is None:
        return
    controller: Controller = memo.controller
    if controller.pod_changed(job["metadata"]["uid"], type, dict(body)):
        key = JobKey(kind.kind, namespace, labels[naming.LABEL_JOB])
        memo.queue.add_after(key, POD_EVENT_BATCH_SECONDS)
