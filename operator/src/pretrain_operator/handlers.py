"""kopf wiring: thin handlers that feed the controller what the indexes observed.

Level-based: every job is reconciled on create, on spec change, on operator resume, on every
event of one of its pods, on a resync timer, and when a plan asks to be looked at again (a
backoff ends). Indexes over child pods and over the jobs keep all observation in memory, so a
reconcile costs no list call.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, cast

import kopf

from pretrain_operator import API_GROUP, API_VERSION, kube, naming
from pretrain_operator.api import FINETUNE_JOB, KINDS, PRETRAIN_JOB, Kind
from pretrain_operator.controller import SETTINGS, Controller

JobKey = tuple[str, str]  # (namespace, name)
PodKey = tuple[str, str, str]  # (namespace, kind, job name)
INDEXES = ("job_pods", "pretrain_jobs", "finetune_jobs")  # kopf passes them by these names


def _indexes(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    return {name: kwargs[name] for name in INDEXES}


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """A ServiceAccount in a pod, else the kubeconfig (no sync Kubernetes client needed)."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # Keep kopf's bookkeeping in annotations: the status schema is ours alone.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=API_GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=API_GROUP, key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING  # kopf's own chatter; ours goes through post_event
    settings.watching.server_timeout = 300
    settings.networking.request_timeout = 30

    def post_event(body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        kopf.event(
            kopf.Body(cast(kopf.RawBody, dict(body))), type=type_, reason=reason, message=message
        )

    memo.controller = Controller(await kube.connect(), SETTINGS, post_event)


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    await memo.controller.api.close()


@kopf.index("pods", labels={naming.LABEL_JOB: kopf.PRESENT})
def job_pods(namespace: str | None, labels: Mapping[str, str], body: kopf.Body, **_: Any) -> Any:
    return {(namespace, labels.get(naming.LABEL_KIND, ""), labels[naming.LABEL_JOB]): dict(body)}


@kopf.index(API_GROUP, API_VERSION, PRETRAIN_JOB.plural)
def pretrain_jobs(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> Any:
    return {(namespace, name): dict(body)}


@kopf.index(API_GROUP, API_VERSION, FINETUNE_JOB.plural)
def finetune_jobs(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> Any:
    return {(namespace, name): dict(body)}


def _only(index: kopf.Index[Any, Any], key: Any) -> Any:
    values = list(index.get(key, []))
    return values[0] if values else None


async def _reconcile(
    kind: Kind, body: Mapping[str, Any], memo: kopf.Memo, indexes: Mapping[str, Any]
) -> None:
    """Reconcile one job from what the indexes hold; if its plan asks for another look later,
    come back then with the job as the index holds it by that time."""
    job_pods: kopf.Index[PodKey, dict[str, Any]] = indexes["job_pods"]
    pretrain_jobs: kopf.Index[JobKey, dict[str, Any]] = indexes["pretrain_jobs"]
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    pods = list(job_pods.get((namespace, kind.kind, name), []))
    base = None
    spec = body.get("spec") or {}
    if kind is FINETUNE_JOB and (spec.get("base") or {}).get("pretrainJob"):
        base = _only(pretrain_jobs, (namespace, spec["base"]["pretrainJob"]))
    controller: Controller = memo.controller
    again = await controller.reconcile(kind, body, pods, base)
    if again is None:
        return

    async def wake() -> None:
        jobs = pretrain_jobs if kind is PRETRAIN_JOB else indexes["finetune_jobs"]
        latest = _only(jobs, (namespace, name))
        if latest is not None and latest["metadata"]["uid"] == body["metadata"]["uid"]:
            await _reconcile(kind, latest, memo, indexes)

    controller.wake_up_later(body["metadata"]["uid"], again, wake)


def _register(kind: Kind) -> None:
    async def on_change(body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
        await _reconcile(kind, body, memo, _indexes(kwargs))

    async def on_resync(body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
        await _reconcile(kind, body, memo, _indexes(kwargs))

    def on_delete(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        memo.controller.forget(body["metadata"]["uid"], kind)

    resource = (API_GROUP, API_VERSION, kind.plural)
    kopf.on.resume(*resource, id=f"{kind.singular}-resume")(on_change)
    kopf.on.create(*resource, id=f"{kind.singular}-create")(on_change)
    kopf.on.update(*resource, id=f"{kind.singular}-update", field="spec")(on_change)
    kopf.timer(*resource, id=f"{kind.singular}-resync", interval=SETTINGS.resync_seconds,
               initial_delay=SETTINGS.resync_seconds)(on_resync)  # fmt: skip
    kopf.on.event(*resource, id=f"{kind.singular}-gone",
                  when=lambda type, **_: type == "DELETED")(on_delete)  # fmt: skip


for _kind in KINDS:
    _register(_kind)


@kopf.on.event("pods", labels={naming.LABEL_JOB: kopf.PRESENT})
async def pod_changed(
    type: str,
    body: kopf.Body,
    labels: Mapping[str, str],
    namespace: str | None,
    memo: kopf.Memo,
    **kwargs: Any,
) -> None:
    """A child pod changed: reconcile its job now rather than at the next resync."""
    kind = PRETRAIN_JOB if labels.get(naming.LABEL_KIND) == PRETRAIN_JOB.kind else FINETUNE_JOB
    jobs = kwargs["pretrain_jobs"] if kind is PRETRAIN_JOB else kwargs["finetune_jobs"]
    job = _only(jobs, (namespace, labels[naming.LABEL_JOB]))
    if job is None:
        return
    controller: Controller = memo.controller
    if type == "DELETED":
        controller.pod_deleted(job["metadata"]["uid"], dict(body))
    await _reconcile(kind, job, memo, _indexes(kwargs))
