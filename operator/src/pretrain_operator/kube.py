"""All the operator's API calls, async (kubernetes_asyncio): the only module that does I/O
against the API server or the trainer pods."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import aiohttp
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from pretrain_operator import API_GROUP, API_VERSION, naming
from pretrain_operator.api import Kind

Manifest = dict[str, Any]
SCRAPE_TIMEOUT = aiohttp.ClientTimeout(total=2)


@dataclass
class Api:
    """Typed API groups over one connection."""

    api_client: client.ApiClient
    http: aiohttp.ClientSession

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api_client)

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api_client)

    @property
    def policy(self) -> client.PolicyV1Api:
        return client.PolicyV1Api(self.api_client)

    async def close(self) -> None:
        await self.http.close()
        await self.api_client.close()


async def connect() -> Api:
    """In a pod: its ServiceAccount; elsewhere: KUBECONFIG (or ~/.kube/config)."""
    if os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
        config.load_incluster_config()
    else:
        await config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
    return Api(client.ApiClient(), aiohttp.ClientSession(timeout=SCRAPE_TIMEOUT))


class MissingApiError(RuntimeError):
    """The cluster does not serve this kind (its CRD is not installed)."""


def namespace_terminating(error: Exception) -> bool:
    """Creating in a namespace that is being deleted is refused; its jobs go with it."""
    return (
        isinstance(error, ApiException)
        and error.status == 403
        and "because it is being terminated" in str(error.body)
    )


def _conflict(error: ApiException) -> bool:
    return error.status == 409


async def create(api: Api, manifest: Manifest) -> str | None:
    """Create `manifest`; return its uid, or None if it exists already (create-if-absent)."""
    namespace = manifest["metadata"]["namespace"]
    kind = manifest["kind"]
    try:
        if kind == "Pod":
            created = await api.core.create_namespaced_pod(namespace, manifest)
        elif kind == "Service":
            created = await api.core.create_namespaced_service(namespace, manifest)
        elif kind == "ConfigMap":
            created = await api.core.create_namespaced_config_map(namespace, manifest)
        elif kind == "PodDisruptionBudget":
            created = await api.policy.create_namespaced_pod_disruption_budget(namespace, manifest)
        else:  # a custom object, e.g. a PodGroup
            group, version = manifest["apiVersion"].split("/")
            body = await api.custom.create_namespaced_custom_object(
                group, version, namespace, kind.lower() + "s", manifest
            )
            return str(body["metadata"]["uid"])
    except ApiException as error:
        if _conflict(error):
            return None
        if error.status == 404 and kind not in {"Pod", "Service", "ConfigMap"}:
            raise MissingApiError(f"{manifest['apiVersion']} {kind} is not served") from error
        raise
    return str(created.metadata.uid)


async def update(api: Api, manifest: Manifest) -> None:
    """Bring an existing child's content up to `manifest` (a merge patch of what the spec
    decides): the ConfigMap's data, a budget's or PodGroup's spec. Services never change."""
    metadata, kind = manifest["metadata"], manifest["kind"]
    name, namespace = metadata["name"], metadata["namespace"]
    if kind == "ConfigMap":
        await api.core.patch_namespaced_config_map(name, namespace, {"data": manifest["data"]})
    elif kind == "PodDisruptionBudget":
        await api.policy.patch_namespaced_pod_disruption_budget(
            name, namespace, {"spec": manifest["spec"]}
        )
    elif kind != "Service":  # a custom object, e.g. a PodGroup
        group, version = manifest["apiVersion"].split("/")
        try:
            await api.custom.patch_namespaced_custom_object(
                group, version, namespace, kind.lower() + "s", name, {"spec": manifest["spec"]}
            )
        except ApiException as error:
            if error.status == 404:
                raise MissingApiError(f"{manifest['apiVersion']} {kind} is not served") from error
            raise


async def delete_pod(api: Api, namespace: str, name: str) -> None:
    try:
        await api.core.delete_namespaced_pod(name, namespace)
    except ApiException as error:
        if error.status != 404:
            raise


async def secret_exists(api: Api, namespace: str, name: str) -> bool:
    """Whether the Secret is there; its data is read by the API call and dropped unseen."""
    try:
        await api.core.read_namespaced_secret(name, namespace)
    except ApiException as error:
        if error.status == 404:
            return False
        raise
    return True


async def write_status(
    api: Api, kind: Kind, namespace: str, name: str, status: dict[str, Any]
) -> None:
    """Replace the whole status (a merge patch could not drop keys of maps such as podUids)."""
    await api.custom.patch_namespaced_custom_object_status(
        API_GROUP, API_VERSION, namespace, kind.plural, name,
        [{"op": "add", "path": "/status", "value": status}],
    )  # fmt: skip


async def post_event(api: Api, body: Manifest, type_: str, reason: str, message: str) -> None:
    """A core/v1 Event on the job, as `kubectl describe` shows it (kopf.event works only inside
    kopf's per-object tasks; our workers are not one)."""
    meta = body["metadata"]
    now = datetime.datetime.now(datetime.UTC)
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
    await api.core.create_namespaced_event(meta["namespace"], event)


async def delete_job(api: Api, kind: Kind, namespace: str, name: str) -> None:
    try:
        await api.custom.delete_namespaced_custom_object(
            API_GROUP, API_VERSION, namespace, kind.plural, name, propagation_policy="Background"
        )
    except ApiException as error:
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
