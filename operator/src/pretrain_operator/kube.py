"""All the operator's API calls, async (over `restclient`): the only module that does I/O
against the API server or the trainer pods."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

import aiohttp

from pretrain_operator import API_GROUP, API_VERSION, naming
from pretrain_operator.api import Kind
from pretrain_operator.restclient import (
    APPLY_PATCH,
    JSON_PATCH,
    MERGE_PATCH,
    ApiError,
    RestClient,
    collection,
)

Manifest = dict[str, Any]
SCRAPE_TIMEOUT = aiohttp.ClientTimeout(total=2)
# The core kinds the operator creates, by their plural (other kinds: the kind in lower case + s).
CORE_KINDS = {"Pod": "pods", "Service": "services", "ConfigMap": "configmaps"}


@dataclass
class Api:
    """The API server, and a session of its own for the trainers' metrics endpoints."""

    rest: RestClient
    http: aiohttp.ClientSession

    async def close(self) -> None:
        await self.http.close()
        await self.rest.close()


async def connect() -> Api:
    """In a pod: its ServiceAccount; elsewhere: KUBECONFIG (or ~/.kube/config)."""
    return Api(RestClient.connect(), aiohttp.ClientSession(timeout=SCRAPE_TIMEOUT))


class MissingApiError(RuntimeError):
    """The cluster does not serve this kind (its CRD is not installed)."""


def namespace_terminating(error: Exception) -> bool:
    """Creating in a namespace that is being deleted is refused; its jobs go with it."""
    return (
        isinstance(error, ApiError)
        and error.status == 403
        and "because it is being terminated" in error.body
    )


def _not_served(manifest: Manifest) -> MissingApiError:
    return MissingApiError(f"{manifest['apiVersion']} {manifest['kind']} is not served")


def _path(manifest: Manifest) -> str:
    """The collection `manifest` belongs to."""
    kind, api_version = manifest["kind"], manifest["apiVersion"]
    plural = CORE_KINDS.get(kind, kind.lower() + "s")  # PodDisruptionBudget, PodGroup, ...
    return collection(api_version, manifest["metadata"]["namespace"], plural)


async def create(api: Api, manifest: Manifest) -> str | None:
    """Create `manifest`; return its uid, or None if it exists already (create-if-absent)."""
    try:
        created = await api.rest.request("POST", _path(manifest), manifest)
    except ApiError as error:
        if error.status == 409:
            return None
        if error.status == 404 and manifest["kind"] not in CORE_KINDS:
            raise _not_served(manifest) from error
        raise
    return str(created["metadata"]["uid"])


async def update(api: Api, manifest: Manifest) -> None:
    """Bring an existing child's content up to `manifest` (a merge patch of what the spec
    decides): the ConfigMap's data, a budget's or PodGroup's spec. Services never change."""
    kind = manifest["kind"]
    if kind == "Service":
        return
    change = {"data": manifest["data"]} if kind == "ConfigMap" else {"spec": manifest["spec"]}
    path = f"{_path(manifest)}/{manifest['metadata']['name']}"
    try:
        await api.rest.request("PATCH", path, change, content_type=MERGE_PATCH)
    except ApiError as error:
        if error.status == 404 and kind not in CORE_KINDS:
            raise _not_served(manifest) from error
        raise


async def delete_pod(api: Api, namespace: str, name: str) -> None:
    try:
        await api.rest.request("DELETE", f"{collection('v1', namespace, 'pods')}/{name}")
    except ApiError as error:
        if error.status != 404:
            raise


async def secret_exists(api: Api, namespace: str, name: str) -> bool:
    """Whether the Secret is there; its data is read by the API call and dropped unseen."""
    try:
        await api.rest.request("GET", f"{collection('v1', namespace, 'secrets')}/{name}")
    except ApiError as error:
        if error.status == 404:
            return False
        raise
    return True


def _job_path(kind: Kind, namespace: str, name: str) -> str:
    return f"{collection(f'{API_GROUP}/{API_VERSION}', namespace, kind.plural)}/{name}"


async def write_status(
    api: Api, kind: Kind, namespace: str, name: str, status: dict[str, Any]
) -> None:
    """Replace the whole status (a merge patch could not drop keys of maps such as podUids)."""
    await api.rest.request("PATCH", f"{_job_path(kind, namespace, name)}/status",
                           [{"op": "add", "path": "/status", "value": status}],
                           content_type=JSON_PATCH)  # fmt: skip


async def post_event(api: Api, body: Manifest, type_: str, reason: str, message: str) -> None:
    """A core/v1 Event on the job, as `kubectl describe` shows it (kopf.event works only inside
    kopf's per-object tasks; our workers are not one)."""
    meta = body["metadata"]
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    event = {
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": body.get("apiVersion"), "kind": body.get("kind"),
            "name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"],
        },
        "type": type_, "reason": reason, "message": message[:1024], "count": 1,
        "firstTimestamp": now, "lastTimestamp": now,
        "source": {"component": "pretrain-operator"},
        "reportingComponent": "pretrain-operator",
    }  # fmt: skip
    await api.rest.request("POST", collection("v1", meta["namespace"], "events"), event)


async def delete_job(api: Api, kind: Kind, namespace: str, name: str) -> None:
    try:
        await api.rest.request("DELETE", _job_path(kind, namespace, name),
                               {"propagationPolicy": "Background"})  # fmt: skip
    except ApiError as error:
        if error.status != 404:
            raise


async def scrape_metrics(api: Api, pod_ip: str) -> str | None:
    """The trainer's metrics text, or None when it does not answer (never an error)."""
    url = f"http://{pod_ip}:{naming.METRICS_PORT}/metrics"
    try:
        async with api.http.get(url) as response:
            if response.status != 200:
                return None
            return await response.text()
    except (TimeoutError, aiohttp.ClientError, OSError):
        return None


async def served(api: Api, api_version: str, plural: str) -> bool:
    """Whether the cluster serves `plural` in `api_version` (a CRD that may not be installed)."""
    try:
        listed = await api.rest.request("GET", f"/apis/{api_version}")
    except ApiError as error:
        if error.status == 404:
            return False
        raise
    return any(r.get("name") == plural for r in listed.get("resources") or [])


async def read_cluster_object(
    api: Api, api_version: str, plural: str, name: str
) -> Manifest | None:
    """A cluster-scoped object (a Kueue ResourceFlavor), or None if there is none."""
    try:
        return await api.rest.request("GET", f"/apis/{api_version}/{plural}/{name}")
    except ApiError as error:
        if error.status == 404:
            return None
        raise


async def apply_status_condition(
    api: Api, manifest: Manifest, condition: dict[str, Any], manager: str = "pretrain-operator"
) -> None:
    """Set one condition of an object's status by server-side apply: conditions are a map
    keyed by type, so the others (another controller's, Kueue's) stay as they are."""
    meta = manifest["metadata"]
    body = {"apiVersion": manifest["apiVersion"], "kind": manifest["kind"],
            "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
            "status": {"conditions": [condition]}}  # fmt: skip
    path = f"{_path(manifest)}/{meta['name']}/status?fieldManager={manager}&force=true"
    try:
        await api.rest.request("PATCH", path, body, content_type=APPLY_PATCH)
    except ApiError as error:
        if error.status != 404:  # gone already: nothing holds its quota
            raise


async def patch_status(api: Api, manifest: Manifest, patch: dict[str, Any]) -> None:
    """A JSON merge patch of an object's status (a conflict, 409, if `patch` names a
    resourceVersion that is no longer the object's: the next reconcile tries again)."""
    meta = manifest["metadata"]
    path = f"{_path(manifest)}/{meta['name']}/status"
    try:
        await api.rest.request("PATCH", path, patch, content_type=MERGE_PATCH)
    except ApiError as error:
        if error.status != 404:
            raise
