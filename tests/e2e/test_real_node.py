"""Pods really run on real kubelet nodes (containerd, runc) from the trainer image, as the
restricted Pod Security Standard has them (uid 1000, read-only root, no capabilities): the
environment and a ConfigMap volume, cluster DNS between pods on two nodes, exit codes and the
termination message, `kubectl logs` and `exec`, deletion with a grace period, restarts."""

from __future__ import annotations

import time
from typing import Any

import pytest

from devcluster.realnode.cgroups import pod_processes
from devcluster.realnode.pool import RealNodePool
from devcluster.session import ClusterSession
from devcluster.waiting import wait_until

pytestmark = pytest.mark.cluster
RESTRICTED_POD = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "seccompProfile": {"type": "RuntimeDefault"},
}
RESTRICTED_CONTAINER = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                        "readOnlyRootFilesystem": True}  # fmt: skip
SERVER = """
import http.server, os, socket
print(socket.gethostname(), socket.getfqdn(), os.environ["GREETING"], os.environ["POD_IP"],
      open("/etc/settings/greeting").read(), os.getuid(), flush=True)
try:
    open("/written", "w")
except OSError as error:
    print("root", error.strerror, flush=True)
http.server.HTTPServer(("0.0.0.0", 8080), http.server.SimpleHTTPRequestHandler).serve_forever()
"""
# A failed lookup is retried for 30 s, as a client on a real cluster does: a headless Service's
# names come and go with its pods' readiness and CoreDNS's view of the EndpointSlices. On the
# busy 2-core CI machine one run got EAI_AGAIN for the first name, another NXDOMAIN for the
# third after the first two had answered. A name that never resolves still fails the test.
CLIENT = """
import socket, sys, time, urllib.error, urllib.request
def get(name):
    for attempt in range(10):
        try:
            return urllib.request.urlopen(f"http://{{name}}:8080/", timeout=5).status
        except urllib.error.URLError as error:
            lookup = getattr(error.reason, "errno", None) in (socket.EAI_AGAIN, socket.EAI_NONAME)
            if not lookup or attempt == 9:
                raise
            print(name, "not resolved yet:", error.reason, flush=True)
            time.sleep(3)
for name in ("server.web", "web", "server.web.{ns}.svc.cluster.local"):
    print(name, get(name), flush=True)
open("/dev/termination-log", "w").write("done: 3 names")
sys.exit(3)
"""


def pod(name: str, node: str, image: str, command: list[str], **spec: Any) -> dict[str, Any]:
    container = {"name": "main", "image": image, "command": command,
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
    cluster: ClusterSession, namespace: str, real_nodes: RealNodePool, trainer_image: str
) -> None:
    first, second = real_nodes.add(), real_nodes.add()
    core = cluster.core
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "settings"},
                                                  "data": {"greeting": "hello"}})  # fmt: skip
    core.create_namespaced_service(namespace, {
        "metadata": {"name": "web"},
        "spec": {"clusterIP": "None", "selector": {"app": "web"}, "ports": [{"port": 8080}]},
    })  # fmt: skip
    server = pod(
        "server", first, trainer_image, ["python", "-c", SERVER], labels={"app": "web"},
        hostname="server", subdomain="web",
        volumes=[{"name": "settings", "configMap": {"name": "settings"}}],
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
    wait_until(ready, "the server pod Ready (its TCP readiness probe)", timeout=90)
    server_ip = core.read_namespaced_pod("server", namespace).status.pod_ip

    client = pod("client", second, trainer_image,
                 ["python", "-c", CLIENT.format(ns=namespace)], restartPolicy="Never")  # fmt: skip
    core.create_namespaced_pod(namespace, client)
    wait_until(lambda: phase(cluster, namespace, "client") == "Failed", "the client to exit 3",
               timeout=90)  # fmt: skip
    status = core.read_namespaced_pod("client", namespace).status
    terminated = status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.message) == (3, "done: 3 names")
    assert status.pod_ip != server_ip  # a pod IP of its own, on another node's range

    logs = cluster.kubectl("logs", "-n", namespace, "client").stdout
    answered = [line for line in logs.splitlines() if "not resolved yet" not in line]
    assert answered[:3] == [
        "server.web 200",
        "web 200",
        f"server.web.{namespace}.svc.cluster.local 200",
    ]
    fqdn = f"server.web.{namespace}.svc.cluster.local"
    lines = cluster.kubectl("logs", "-n", namespace, "server").stdout.splitlines()
    assert lines[:2] == [f"server {fqdn} hello {server_ip} hello 1000",
                         "root Read-only file system"]  # fmt: skip
    whoami = cluster.kubectl("exec", "-n", namespace, "server", "--", "id", "-u").stdout
    assert whoami.strip() == "1000"


def test_deletion_sends_sigterm_to_pid_1_then_sigkill_after_the_grace_period(
    cluster: ClusterSession, namespace: str, real_nodes: RealNodePool, trainer_image: str
) -> None:
    node = real_nodes.add()
    # Ignores SIGTERM; its child starts a session of its own (as torchrun's workers do).
    stubborn = "trap 'echo TERM' TERM; (setsid sleep 600 &); while true; do sleep 0.1; done"
    core = cluster.core
    core.create_namespaced_pod(namespace, pod("stubborn", node, trainer_image,
                                              ["sh", "-c", stubborn],
                                              terminationGracePeriodSeconds=3))  # fmt: skip
    wait_until(lambda: phase(cluster, namespace, "stubborn") == "Running", "the pod Running",
               timeout=90)  # fmt: skip
    uid = core.read_namespaced_pod("stubborn", namespace).metadata.uid
    wait_until(lambda: len(pod_processes(uid)) >= 3, "the pod's processes")

    started = time.monotonic()
    core.delete_namespaced_pod("stubborn", namespace)
    gone = lambda: not core.list_namespaced_pod(namespace).items  # noqa: E731
    wait_until(gone, "the pod object removed by the kubelet", timeout=30)
    took = time.monotonic() - started
    assert 2.5 < took < 15, f"deletion took {took:.1f}s with a 3s grace period"
    assert pod_processes(uid) == set()  # the setsid'd sleep too: its PID namespace is gone


def test_a_failing_container_restarts_under_on_failure_and_logs_of_the_previous_run_remain(
    cluster: ClusterSession, namespace: str, real_nodes: RealNodePool, trainer_image: str
) -> None:
    node = real_nodes.add()
    # Fails twice, then runs on: the count lives in an emptyDir, which survives restarts.
    script = ("n=$(cat /scratch/n 2>/dev/null || echo 0); echo run $n; echo $((n+1)) > /scratch/n; "
              "[ $n -ge 2 ] && sleep 600")  # fmt: skip
    cluster.core.create_namespaced_pod(namespace, pod(
        "flaky", node, trainer_image, ["sh", "-c", script], restartPolicy="OnFailure",
        volumes=[{"name": "work", "emptyDir": {}}],
        container={"volumeMounts": [{"name": "work", "mountPath": "/scratch"}]},
    ))  # fmt: skip

    def third_run() -> Any:
        statuses = cluster.core.read_namespaced_pod("flaky", namespace).status.container_statuses
        running = [s for s in statuses or [] if s.restart_count == 2 and s.state.running]
        return running[0] if running else None

    # The kubelet backs off 10 s, then 20 s, between restarts of a crashing container.
    status = wait_until(third_run, "the third run, after two failures", timeout=120)
    assert status.last_state.terminated.exit_code == 1

    # The kubelet keeps the last dead container while the pod lives: `--previous` reads it.
    def logs(*flags: str) -> str:
        return cluster.kubectl("logs", "-n", namespace, "flaky", *flags).stdout

    wait_until(lambda: logs() == "run 2\n", "the third run's log line", timeout=10)
    assert logs("--previous") == "run 1\n"
