"""Every call the plugin makes to the API server (the synchronous `kubernetes` client)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from pretrain_operator import API_GROUP, API_VERSION
from pretrain_operator.api.resources import KINDS, Kind
from pretrain_operator.naming import (
    LABEL_JOB,
    LABEL_KIND,
    LABEL_NODE_INDEX,
    LABEL_ROLE,
    ROLE_NODE,
    TRAINER_CONTAINER,
)


class PluginError(Exception):
    """A failure to report in one line (missing job, no such rank, API error)."""


def kind_named(name: str) -> Kind:
    """`PretrainJob`, `pretrainjobs`, `ptj`, ... -> the Kind."""
    wanted = name.lower()
    for kind in KINDS:
        if wanted in {kind.kind.lower(), kind.plural, kind.singular, kind.short_name}:
            return kind
    choices = ", ".join(k.kind for k in KINDS)
    raise PluginError(f"--kind: {name!r} is not one of {choices} (or their short names)")


@dataclass
class Cluster:
    api: client.ApiClient
    namespace: str

    @classmethod
    def connect(cls, kubeconfig: str | None, context: str | None, namespace: str | None
                ) -> Cluster:  # fmt: skip
        """The kubeconfig's current (or named) context; its namespace unless -n is given."""
        try:
            api = config.new_client_from_config(config_file=kubeconfig, context=context)
            contexts, current = config.list_kube_config_contexts(config_file=kubeconfig)
        except (config.ConfigException, OSError) as error:
            raise PluginError(f"kubeconfig: {error}") from error
        if namespace is None:
            chosen = next((c for c in contexts if c["name"] == context), current) if context \
                else current  # fmt: skip
            namespace = (chosen or {}).get("context", {}).get("namespace") or "default"
        return cls(api, namespace)

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    def get_job(self, name: str, kind: Kind | None = None) -> dict[str, Any]:
        """The job named `name`, of `kind` or of whichever kind has one (both: ambiguous)."""
        found = []
        for candidate in [kind] if kind else list(KINDS):
            try:
                found.append(self.custom.get_namespaced_custom_object(
                    API_GROUP, API_VERSION, self.namespace, candidate.plural, name))  # fmt: skip
            except ApiException as error:
                if error.status != 404:
                    raise PluginError(_api_message(error)) from error
        if not found:
            kinds = kind.kind if kind else " or ".join(k.kind for k in KINDS)
            raise PluginError(f"no {kinds} named {name!r} in namespace {self.namespace!r}")
        if len(found) > 1:
            raise PluginError(f"both a PretrainJob and a FinetuneJob are named {name!r} in "
                              f"namespace {self.namespace!r}; choose one with --kind")  # fmt: skip
        return dict(found[0])

    def list_jobs(self, all_namespaces: bool = False) -> list[dict[str, Any]]:
        jobs: list[dict[str, Any]] = []
        for kind in KINDS:
            try:
                if all_namespaces:
                    listed = self.custom.list_cluster_custom_object(
                        API_GROUP, API_VERSION, kind.plural
                    )
                else:
                    listed = self.custom.list_namespaced_custom_object(
                        API_GROUP, API_VERSION, self.namespace, kind.plural
                    )
            except ApiException as error:
                raise PluginError(_api_message(error)) from error
            for item in listed["items"]:
                item.setdefault("kind", kind.kind)  # lists may leave it out of their items
                jobs.append(item)
        return sorted(jobs, key=lambda j: (j["metadata"].get("namespace", ""),
                                           j["metadata"]["name"], j["kind"]))  # fmt: skip

    def set_suspend(self, job: dict[str, Any], suspend: bool) -> None:
        kind = kind_named(job["kind"])
        try:
            self.custom.patch_namespaced_custom_object(
                API_GROUP, API_VERSION, self.namespace, kind.plural, job["metadata"]["name"],
                {"spec": {"suspend": suspend}})  # fmt: skip
        except ApiException as error:
            raise PluginError(_api_message(error)) from error

    def node_pods(self, job: dict[str, Any]) -> dict[int, Any]:
        """The job's node pods by rank (node index)."""
        selector = (f"{LABEL_JOB}={job['metadata']['name']},{LABEL_KIND}={job['kind']},"
                    f"{LABEL_ROLE}={ROLE_NODE}")  # fmt: skip
        try:
            pods = self.core.list_namespaced_pod(self.namespace, label_selector=selector).items
        except ApiException as error:
            raise PluginError(_api_message(error)) from error
        return {int(p.metadata.labels[LABEL_NODE_INDEX]): p for p in pods
                if (p.metadata.labels or {}).get(LABEL_NODE_INDEX, "").isdigit()}  # fmt: skip

    def logs(self, pod: str, follow: bool, tail: int | None) -> Iterator[str]:
        """The trainer container's log, line by line (until the pod ends when following)."""
        try:
            response = self.core.read_namespaced_pod_log(
                pod, self.namespace, container=TRAINER_CONTAINER, follow=follow,
                tail_lines=tail, _preload_content=False)  # fmt: skip
        except ApiException as error:
            raise PluginError(f"cannot read the log of pod {pod}: {_api_message(error)}") \
                from error  # fmt: skip
        try:
            pending = b""
            for chunk in response.stream(amt=65536, decode_content=True):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    yield line.decode(errors="replace")
            if pending:
                yield pending.decode(errors="replace")
        finally:
            response.release_conn()


def _api_message(error: ApiException) -> str:
    """The API server's own message (its Status body) rather than the client's dump."""
    import json

    try:
        body = json.loads(error.body or "{}")
    except ValueError:
        body = {}
    return str(body.get("message") or f"{error.status} {error.reason}")
