"""The local control plane is a real Kubernetes: API server, scheduler, controllers, admission,
RBAC and ServiceAccount tokens all behave as on a cluster, and kwok nodes carry accelerators."""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from devcluster.nodes import NodePool, NodeShape, finish_pod
from devcluster.session import ClusterSession
from devcluster.tools import KUBERNETES_VERSION
from devcluster.waiting import wait_until

pytestmark = pytest.mark.cluster

RESTRICTED_CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def pod_manifest(
    name: str,
    limits: dict[str, str] | None = None,
    node_selector: dict[str, str] | None = None,
    security: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "nodeSelector": node_selector or {},
            "containers": [
                {
                    "name": "trainer",
                    "image": "registry.invalid/trainer:test",
                    "resources": {"limits": limits or {}},
                    "securityContext": security or RESTRICTED_CONTAINER_SECURITY,
                }
            ],
        },
    }


def pod_status(cluster: ClusterSession, namespace: str, name: str) -> client.V1PodStatus:
    status: client.V1PodStatus = cluster.core.read_namespaced_pod(name, namespace).status
    return status


def phase_is(cluster: ClusterSession, namespace: str, name: str, phase: str) -> Callable[[], bool]:
    return lambda: pod_status(cluster, namespace, name).phase == phase


def test_api_server_is_ready_and_serves_the_pinned_version(cluster: ClusterSession) -> None:
    assert cluster.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"
    version = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert version["clientVersion"]["gitVersion"] == KUBERNETES_VERSION
    if cluster.local:
        assert version["serverVersion"]["gitVersion"] == KUBERNETES_VERSION


def test_crd_and_custom_object_round_trip(cluster: ClusterSession, namespace: str) -> None:
    group, plural = f"t{secrets.token_hex(3)}.devcluster.test", "widgets"
    crd_name = f"{plural}.{group}"
    crd: dict[str, Any] = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": crd_name},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": plural, "singular": "widget", "kind": "Widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "properties": {
                                        "size": {"type": "integer", "minimum": 1},
                                        "colour": {"type": "string", "default": "blue"},
                                    },
                                }
                            },
                        }
                    },
                }
            ],
        },
    }
    extensions = client.ApiextensionsV1Api(cluster.api)
    extensions.create_custom_resource_definition(crd)
    try:
        wait_until(
            lambda: any(
                c.type == "Established" and c.status == "True"
                for c in extensions.read_custom_resource_definition(crd_name).status.conditions
                or []
            ),
            "CRD Established",
        )
        objects = client.CustomObjectsApi(cluster.api)
        body = {"apiVersion": f"{group}/v1", "kind": "Widget", "metadata": {"name": "w"}}
        wait_until(
            lambda: _created(
                lambda: objects.create_namespaced_custom_object(
                    group, "v1", namespace, plural, {**body, "spec": {"size": 3}}
                )
            ),
            "the new resource to be served",
        )
        stored = objects.get_namespaced_custom_object(group, "v1", namespace, plural, "w")
        assert stored["spec"] == {"size": 3, "colour": "blue"}  # the schema default applied

        with pytest.raises(ApiException) as refused:
            objects.create_namespaced_custom_object(
                group,
                "v1",
                namespace,
                plural,
                {**body, "metadata": {"name": "bad"}, "spec": {"size": 0}},
            )
        assert refused.value.status == 422
        assert "spec.size" in str(refused.value.body)
    finally:
        extensions.delete_custom_resource_definition(crd_name)


def _created(create: Callable[[], object]) -> bool:
    try:
        create()
    except ApiException as error:
        if error.status == 404:  # discovery of a just-established CRD can lag a moment
            return False
        raise
    return True


def test_gpu_pod_is_scheduled_onto_a_gpu_node_and_runs(
    cluster: ClusterSession, namespace: str, node_pool: NodePool
) -> None:
    cpu_only = node_pool.add(NodeShape(gpus=0))
    gpu = node_pool.add(NodeShape(gpus=8))
    gpu_pod = pod_manifest("gpu", {"nvidia.com/gpu": "1"}, node_selector=node_pool.selector)
    cluster.core.create_namespaced_pod(namespace, gpu_pod)

    wait_until(phase_is(cluster, namespace, "gpu", "Running"), "the GPU pod Running")
    pod = cluster.core.read_namespaced_pod("gpu", namespace)
    assert pod.spec.node_name == gpu != cpu_only
    assert pod.status.pod_ip.startswith("127.")  # simulated pods never get routable addresses
    # ServiceAccount admission mounted the API token, as for any pod on a real cluster.
    assert pod.spec.service_account_name == "default"
    assert any(v.name.startswith("kube-api-access-") for v in pod.spec.volumes)


def test_pod_asking_for_more_gpus_than_any_node_has_stays_pending(
    cluster: ClusterSession, namespace: str, node_pool: NodePool
) -> None:
    node_pool.add(NodeShape(gpus=8))
    huge = pod_manifest("huge", {"nvidia.com/gpu": "64"}, node_selector=node_pool.selector)
    cluster.core.create_namespaced_pod(namespace, huge)

    def unschedulable() -> client.V1PodCondition | None:
        conditions = pod_status(cluster, namespace, "huge").conditions or []
        return next((c for c in conditions if c.type == "PodScheduled"), None)

    condition = wait_until(unschedulable, "the scheduler's verdict")
    assert condition.status == "False"
    assert condition.reason == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in condition.message
    assert pod_status(cluster, namespace, "huge").phase == "Pending"


def test_tpu_pod_lands_on_the_tpu_slice_with_matching_topology(
    cluster: ClusterSession, namespace: str, node_pool: NodePool
) -> None:
    node_pool.add(NodeShape(tpu_chips=4, tpu_topology="2x4"))
    tpu = node_pool.add(NodeShape(tpu_chips=4, tpu_topology="2x2"))
    selector = {
        **node_pool.selector,
        "cloud.google.com/gke-tpu-accelerator": "tpu-v5-lite-podslice",
        "cloud.google.com/gke-tpu-topology": "2x2",
    }
    cluster.core.create_namespaced_pod(
        namespace, pod_manifest("tpu", {"google.com/tpu": "4"}, node_selector=selector)
    )
    wait_until(phase_is(cluster, namespace, "tpu", "Running"), "the TPU pod Running")
    assert cluster.core.read_namespaced_pod("tpu", namespace).spec.node_name == tpu


@pytest.mark.parametrize(("phase", "exit_code"), [("Failed", 137), ("Succeeded", 0)])
def test_simulated_pod_terminates_on_demand_with_its_exit_code(
    cluster: ClusterSession,
    namespace: str,
    node_pool: NodePool,
    phase: str,
    exit_code: int,
) -> None:
    node_pool.add(NodeShape(gpus=8))
    worker = pod_manifest("worker", {"nvidia.com/gpu": "8"}, node_selector=node_pool.selector)
    cluster.core.create_namespaced_pod(namespace, worker)
    wait_until(phase_is(cluster, namespace, "worker", "Running"), "the pod Running")

    finish_pod(cluster.core, namespace, "worker", phase, exit_code)

    wait_until(phase_is(cluster, namespace, "worker", phase), f"the pod {phase}")
    (container,) = pod_status(cluster, namespace, "worker").container_statuses
    assert container.state.terminated.exit_code == exit_code


def test_deleting_an_owner_deletes_its_dependents(cluster: ClusterSession, namespace: str) -> None:
    core = cluster.core
    owner = core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
    reference = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": "owner",
        "uid": owner.metadata.uid,
    }
    for name in ("child-a", "child-b"):
        core.create_namespaced_config_map(
            namespace, {"metadata": {"name": name, "ownerReferences": [reference]}}
        )
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "bystander"}})

    core.delete_namespaced_config_map("owner", namespace, propagation_policy="Background")

    def remaining() -> set[str]:
        return {cm.metadata.name for cm in core.list_namespaced_config_map(namespace).items}

    wait_until(lambda: "child-a" not in remaining() and "child-b" not in remaining(), "GC")
    assert "bystander" in remaining()


def _token(cluster: ClusterSession, namespace: str, service_account: str) -> str:
    request = {"spec": {"expirationSeconds": 600}}
    response = cluster.core.create_namespaced_service_account_token(
        service_account, namespace, request
    )
    return str(response.status.token)


def test_rbac_is_enforced_for_service_account_tokens(
    cluster: ClusterSession, namespace: str
) -> None:
    core = cluster.core
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "reader"}})
    as_reader = client.CoreV1Api(cluster.client_for_token(_token(cluster, namespace, "reader")))

    with pytest.raises(ApiException) as refused:
        as_reader.list_namespaced_pod(namespace)
    assert refused.value.status == 403

    rbac = client.RbacAuthorizationV1Api(cluster.api)
    rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "pod-reader"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}],
        },
    )
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "reader-reads-pods"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "pod-reader",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
        },
    )

    assert wait_until(lambda: _allowed(lambda: as_reader.list_namespaced_pod(namespace)), "RBAC")
    with pytest.raises(ApiException) as still_refused:
        as_reader.create_namespaced_config_map(namespace, {"metadata": {"name": "nope"}})
    assert still_refused.value.status == 403
    with pytest.raises(ApiException) as other_namespace:
        as_reader.list_namespaced_pod("default")
    assert other_namespace.value.status == 403


def _allowed(call: Callable[[], object]) -> bool:
    try:
        call()
    except ApiException as error:
        if error.status == 403:  # the authorizer's cache of new bindings can lag a moment
            return False
        raise
    return True


def test_controller_manager_signs_service_account_token_secrets(
    cluster: ClusterSession, namespace: str
) -> None:
    core = cluster.core
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "robot"}})
    core.create_namespaced_secret(
        namespace,
        {
            "metadata": {
                "name": "robot-token",
                "annotations": {"kubernetes.io/service-account.name": "robot"},
            },
            "type": "kubernetes.io/service-account-token",
        },
    )

    def signed_token() -> str | None:
        data = core.read_namespaced_secret("robot-token", namespace).data or {}
        return base64.b64decode(data["token"]).decode() if "token" in data else None

    token = wait_until(signed_token, "the token controller to fill the Secret")
    review = client.AuthenticationV1Api(cluster.api).create_token_review({"spec": {"token": token}})
    assert review.status.authenticated
    assert review.status.user.username == f"system:serviceaccount:{namespace}:robot"


def test_restricted_namespace_refuses_a_privileged_pod(
    cluster: ClusterSession, namespace: str
) -> None:
    privileged = pod_manifest("root", security={"privileged": True, "runAsUser": 0})
    with pytest.raises(ApiException) as refused:
        cluster.core.create_namespaced_pod(namespace, privileged)
    assert refused.value.status == 403
    message = json.loads(refused.value.body)["message"]
    assert 'violates PodSecurity "restricted:latest"' in message
    assert "privileged" in message

    cluster.core.create_namespaced_pod(namespace, pod_manifest("compliant"))  # accepted
