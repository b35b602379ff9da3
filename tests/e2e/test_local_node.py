"""Pods really run on local nodes: environment, ConfigMap volume, cluster DNS between pods on two
nodes, exit codes, `kubectl logs`, deletion with a grace period, restarts."""

from __future__ import annotations

import subprocess
import time
from typing import Any

import pytest

from devcluster.localnode import network
from devcluster.localnode.pool import LocalNodePool
from devcluster.session import ClusterSession
from devcluster.waiting import wait_until

pytestmark = pytest.mark.cluster
RESTRICTED_POD = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "seccompProfile": {"type": "RuntimeDefault"},
}
RESTRICTED_CONTAINER = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
SERVER = """
import http.server, os, socket
print(socket.gethostname(), socket.getfqdn(), os.environ["GREETING"], os.environ["POD_IP"],
      open("/etc/settings/greeting").read(), flush=True)
http.server.HTTPServer(("0.0.0.0", 8080), http.server.SimpleHTTPRequestHandler).serve_forever()
"""
CLIENT = """
import sys, urllib.request
for name in ("server.web", "web", "server.web.{ns}.svc.cluster.local"):
    print(name, urllib.request.urlopen(f"http://{{name}}:8080/", timeout=5).status, flush=True)
sys.exit(3)
"""


def pod(name: str, node: str, command: list[str], **spec: Any) -> dict[str, Any]:
    container = {"name": "main", "image": "python:3.11", "command": command,
                 "securityContext": RESTRICTED_CONTAINER}  # fmt: skip
    container.update(spec.pop("container", {}))
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": spec.pop("labels", {})},
        "spec": {"nodeName": node, "securityContext": RESTRICTED_POD, "containers": [container],
                 **spec},
    }  # fmt: skip


def phase(cluster: ClusterSession, namespace: str, name: str) -> str:
    return str(cluster.core.read_namespaced_pod(name, namespace).status.phase)


def test_pods_on_two_nodes_find_each_other_by_cluster_dns_names(
    cluster: ClusterSession, namespace: str, local_nodes: LocalNodePool
) -> None:
    first, second = local_nodes.add(), local_nodes.add()
    core = cluster.core
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "settings"},
                                                  "data": {"greeting": "hello"}})  # fmt: skip
    core.create_namespaced_service(namespace, {
        "metadata": {"name": "web"},
        "spec": {"clusterIP": "None", "selector": {"app": "web"}, "ports": [{"port": 8080}]},
    })  # fmt: skip
    server = pod(
        "server", first, ["python", "-c", SERVER], labels={"app": "web"}, hostname="server",
        subdomain="web", volumes=[{"name": "settings", "configMap": {"name": "settings"}}],
        container={
            "env": [{"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "settings",
                                                                           "key": "greeting"}}},
                    {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
            "volumeMounts": [{"name": "settings", "mountPath": "/etc/settings", "readOnly": True}],
            "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
        },
    )  # fmt: skip
    core.create_namespaced_pod(namespace, server)
    ready = lambda: any(  # noqa: E731
        c.type == "Ready" and c.status == "True"
        for c in core.read_namespaced_pod("server", namespace).status.conditions or []
    )
    wait_until(ready, "the server pod Ready (its TCP readiness probe)", timeout=60)
    server_ip = core.read_namespaced_pod("server", namespace).status.pod_ip

    client = pod("client", second, ["python", "-c", CLIENT.format(ns=namespace)],
                 restartPolicy="Never")  # fmt: skip
    core.create_namespaced_pod(namespace, client)
    wait_until(lambda: phase(cluster, namespace, "client") == "Failed", "the client to exit 3")
    status = core.read_namespaced_pod("client", namespace).status
    assert status.container_statuses[0].state.terminated.exit_code == 3
    assert status.pod_ip != server_ip  # a pod IP of its own, on another node's range

    logs = cluster.kubectl("logs", "-n", namespace, "client").stdout
    assert logs.splitlines()[:3] == [
        "server.web 200",
        "web 200",
        f"server.web.{namespace}.svc.cluster.local 200",
    ]
    fqdn = f"server.web.{namespace}.svc.cluster.local"
    first_line = cluster.kubectl("logs", "-n", namespace, "server").stdout.splitlines()[0]
    assert first_line == f"server {fqdn} hello {server_ip} hello"


def test_deletion_sends_sigterm_to_the_whole_tree_then_sigkill_after_the_grace_period(
    cluster: ClusterSession, namespace: str, local_nodes: LocalNodePool
) -> None:
    node = local_nodes.add()
    # Ignores SIGTERM; its child starts a session of its own (as torchrun's workers do).
    stubborn = "trap 'echo TERM' TERM; (setsid sleep 600 &); while true; do sleep 0.1; done"
    core = cluster.core
    core.create_namespaced_pod(namespace, pod("stubborn", node, ["sh", "-c", stubborn],
                                              terminationGracePeriodSeconds=3))  # fmt: skip
    wait_until(lambda: phase(cluster, namespace, "stubborn") == "Running", "the pod Running")
    uid = core.read_namespaced_pod("stubborn", namespace).metadata.uid
    wait_until(lambda: len(network.namespace_pids(uid)) >= 3, "the pod's processes")

    started = time.monotonic()
    core.delete_namespaced_pod("stubborn", namespace)
    gone = lambda: not core.list_namespaced_pod(namespace).items  # noqa: E731
    wait_until(gone, "the pod object removed by the node", timeout=30)
    took = time.monotonic() - started
    assert 2.5 < took < 15, f"deletion took {took:.1f}s with a 3s grace period"
    assert network.namespace_pids(uid) == []  # the setsid'd sleep too
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert network.namespace_name(uid) not in listed


def test_a_failing_container_restarts_under_on_failure_and_logs_of_the_previous_run_remain(
    cluster: ClusterSession, namespace: str, local_nodes: LocalNodePool
) -> None:
    node = local_nodes.add()
    # Fails twice, then succeeds: the count lives in an emptyDir, which survives restarts.
    script = ("n=$(cat /scratch/n 2>/dev/null || echo 0); echo run $n; echo $((n+1)) > /scratch/n; "
              "[ $n -ge 2 ]")  # fmt: skip
    cluster.core.create_namespaced_pod(namespace, pod(
        "flaky", node, ["sh", "-c", script], restartPolicy="OnFailure",
        volumes=[{"name": "work", "emptyDir": {}}],
        container={"volumeMounts": [{"name": "work", "mountPath": "/scratch"}]},
    ))  # fmt: skip
    wait_until(lambda: phase(cluster, namespace, "flaky") == "Succeeded", "success on the 3rd run",
               timeout=60)  # fmt: skip
    [status] = cluster.core.read_namespaced_pod("flaky", namespace).status.container_statuses
    assert status.restart_count == 2
    assert status.last_state.terminated.exit_code == 1
    assert cluster.kubectl("logs", "-n", namespace, "flaky").stdout == "run 2\n"
    assert cluster.kubectl("logs", "-n", namespace, "flaky", "--previous").stdout == "run 1\n"
