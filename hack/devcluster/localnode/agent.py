"""The local node's agent: registers the Node, keeps its lease, runs the pods bound to it
(`runtime`), reports their status, honours deletions, keeps every pod's hosts file current and
serves logs (`kubeletapi`). On SIGTERM it shuts down as a kubelet with graceful node shutdown
does: the Node turns NotReady and its pods are terminated and reported Failed.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import platform
import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from devcluster.localnode import dns, network, podspec
from devcluster.localnode.informer import Informer
from devcluster.localnode.kubeletapi import KubeletServer
from devcluster.localnode.runtime import PodRuntime

Manifest = dict[str, Any]
log = logging.getLogger(__name__)
LOCAL_NODE_LABEL = "devcluster.pretrain.dev/local-node"
LEASE_NAMESPACE = "kube-node-lease"
LEASE_SECONDS = 40
HEARTBEAT_SECONDS = 10.0
NODE_IP = "127.0.0.1"  # where the API server reaches the kubelet API
READY_MESSAGE = "local node is posting ready status"
SHUTDOWN_REASON = "Terminated"
SHUTDOWN_MESSAGE = "Pod was terminated in response to imminent node shutdown."
STRATEGIC = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"


@dataclass(frozen=True, slots=True)
class NodeConfig:
    name: str
    state_dir: Path
    cpu: str = "4"
    """Advertised to the scheduler; not enforced (pods are processes without cgroup limits)."""
    memory: str = "8Gi"
    pods: int = 20
    labels: dict[str, str] = field(default_factory=dict)
    shutdown_grace: float = 30.0
    """At most this long for a pod's SIGTERM to take effect when the node stops."""
    delete_node_on_exit: bool = False


def _utc(seconds_ago: float = 0.0) -> str:
    moment = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=seconds_ago)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def node_manifest(cfg: NodeConfig, pod_cidr: str, port: int) -> Manifest:
    capacity = {
        "cpu": cfg.cpu,
        "memory": cfg.memory,
        "pods": str(cfg.pods),
        "ephemeral-storage": "100Gi",
    }
    labels = {
        "kubernetes.io/hostname": cfg.name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        LOCAL_NODE_LABEL: "true",
        **cfg.labels,
    }
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": cfg.name, "labels": labels},
        "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]},
        "status": {
            "capacity": capacity,
            "allocatable": capacity,
            "addresses": [{"type": "InternalIP", "address": NODE_IP}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
            "nodeInfo": {
                "architecture": "amd64",
                "operatingSystem": "linux",
                "kubeletVersion": "devcluster-local",
                "containerRuntimeVersion": "local://",
                "kernelVersion": platform.release(),
                "osImage": platform.platform(),
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
                "kubeProxyVersion": "",
            },
            "conditions": node_conditions(
                True, "KubeletReady", "local node is posting ready status"
            ),
        },
    }


def node_conditions(
    ready: bool, reason: str, message: str, transition: bool = True
) -> list[Manifest]:
    """The node's conditions; a heartbeat (transition False) leaves lastTransitionTime alone."""
    now = _utc()
    pressure = [
        {
            "type": kind,
            "status": "False",
            "reason": f"KubeletHasSufficient{short}",
            "message": f"kubelet has sufficient {short.lower()}",
            "lastHeartbeatTime": now,
            "lastTransitionTime": now,
        }
        for kind, short in (
            ("MemoryPressure", "Memory"),
            ("DiskPressure", "Disk"),
            ("PIDPressure", "PID"),
        )
    ]
    conditions = [
        *pressure,
        {
            "type": "Ready",
            "status": "True" if ready else "False",
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": now,
            "lastTransitionTime": now,
        },
    ]
    if not transition:
        for condition in conditions:
            del condition["lastTransitionTime"]
    return conditions


class LocalNode:
    def __init__(self, cfg: NodeConfig, api: client.ApiClient) -> None:
        network.require_root()
        self.cfg = cfg
        self.core = client.CoreV1Api(api)
        self.coordination = client.CoordinationV1Api(api)
        self.venv_bin = str(Path(sys.executable).parent)
        self.pods_dir = cfg.state_dir / "pods"
        self.runtimes: dict[str, PodRuntime] = {}  # by pod uid
        self.hosts: dict[str, str] = {}  # uid -> the hosts file last written
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.pods = Informer(self.core.list_pod_for_all_namespaces, self.wake.set)
        self.services = Informer(self.core.list_service_for_all_namespaces, self.wake.set)
        self.index, self.subnet = network.allocate_node_subnet()
        self.addresses = network.Addresses(self.subnet)
        self.kubelet = KubeletServer(cfg.state_dir, self._log_source)

    # ---- lifecycle -------------------------------------------------------------------------

    def run(self) -> None:
        """Serve until SIGTERM/SIGINT, then shut down gracefully."""
        signal.signal(signal.SIGTERM, lambda *_: self.stopping.set())
        signal.signal(signal.SIGINT, lambda *_: self.stopping.set())
        network.ensure_bridge()
        self.kubelet.start()
        self._register()
        self.pods.start()
        self.services.start()
        heartbeat = threading.Thread(target=self._heartbeat, daemon=True)
        heartbeat.start()
        log.info(
            "node %s ready: pods on %s, kubelet API on 127.0.0.1:%d",
            self.cfg.name,
            self.subnet,
            self.kubelet.port,
        )
        try:
            while not self.stopping.is_set():
                self.wake.wait(1.0)
                self.wake.clear()
                if self.pods.synced.is_set() and self.services.synced.is_set():
                    self._sync()
        finally:
            self._shutdown()

    def _register(self) -> None:
        manifest = node_manifest(self.cfg, str(self.subnet), self.kubelet.port)
        try:
            self.core.create_node(manifest)
        except ApiException as error:
            if error.status != 409:
                raise
            # A node of this name from an earlier run: take it over (its podCIDR is immutable
            # and may differ; pods learn their IPs from their status, not from it).
            self.core.patch_node(
                self.cfg.name,
                {
                    "metadata": {"labels": manifest["metadata"]["labels"]},
                    "spec": {"unschedulable": False},
                },
                _content_type=STRATEGIC,
            )
        self.core.patch_node_status(
            self.cfg.name, {"status": manifest["status"]}, _content_type=STRATEGIC
        )

    def _heartbeat(self) -> None:
        """The node lease (what the node lifecycle controller watches) and the Ready condition."""
        while not self.stopping.is_set():
            try:
                self._renew_lease()
                if not self.stopping.is_set():
                    conditions = node_conditions(
                        True, "KubeletReady", READY_MESSAGE, transition=False
                    )
                    self.core.patch_node_status(
                        self.cfg.name,
                        {"status": {"conditions": conditions}},
                        _content_type=STRATEGIC,
                    )
            except Exception as error:
                log.warning("heartbeat failed: %s", error)
            self.stopping.wait(HEARTBEAT_SECONDS)

    def _renew_lease(self) -> None:
        body = {
            "metadata": {"name": self.cfg.name, "namespace": LEASE_NAMESPACE},
            "spec": {
                "holderIdentity": self.cfg.name,
                "leaseDurationSeconds": LEASE_SECONDS,
                "renewTime": _utc(),
            },
        }
        try:
            self.coordination.patch_namespaced_lease(
                self.cfg.name, LEASE_NAMESPACE, body, _content_type=MERGE
            )
        except ApiException as error:
            if error.status != 404:
                raise
            self.coordination.create_namespaced_lease(LEASE_NAMESPACE, body)

    def _shutdown(self) -> None:
        """Graceful node shutdown: NotReady first (nothing new lands here), then every pod is
        terminated and reported Failed, then the agent leaves."""
        log.info("node %s shutting down", self.cfg.name)
        try:
            # Cordoned as well, as a drain would: nothing new lands here while pods leave.
            self.core.patch_node(
                self.cfg.name, {"spec": {"unschedulable": True}}, _content_type=STRATEGIC
            )
            conditions = node_conditions(False, "KubeletNotReady", "node is shutting down")
            self.core.patch_node_status(
                self.cfg.name, {"status": {"conditions": conditions}}, _content_type=STRATEGIC
            )
        except Exception as error:
            log.warning("could not mark the node NotReady: %s", error)
        for runtime in list(self.runtimes.values()):
            grace = runtime.pod["spec"].get("terminationGracePeriodSeconds", 30)
            runtime.stop(
                min(float(grace), self.cfg.shutdown_grace), SHUTDOWN_REASON, SHUTDOWN_MESSAGE
            )
        for runtime in list(self.runtimes.values()):
            runtime.finished.wait(self.cfg.shutdown_grace + 15)
        self.pods.stop()
        self.services.stop()
        self.kubelet.stop()
        network.release_node_subnet(self.index)
        if self.cfg.delete_node_on_exit:
            try:
                self.core.delete_node(self.cfg.name)
                self.coordination.delete_namespaced_lease(self.cfg.name, LEASE_NAMESPACE)
            except ApiException as error:
                log.warning("could not delete the node: %s", error)

    # ---- pods ------------------------------------------------------------------------------

    def _sync(self) -> None:
        mine = {
            p["metadata"]["uid"]: p
            for p in self.pods.snapshot()
            if (p.get("spec") or {}).get("nodeName") == self.cfg.name
        }
        for uid, pod in mine.items():
            runtime = self.runtimes.get(uid)
            deleting = bool(pod["metadata"].get("deletionTimestamp"))
            if runtime is None:
                if deleting or (pod.get("status") or {}).get("phase") in {"Succeeded", "Failed"}:
                    if deleting:
                        self._delete_pod(pod)
                    continue
                if (pod.get("status") or {}).get("phase") == "Running":
                    self._lost(pod)  # started by an earlier agent that is gone
                    continue
                self._start(pod)
            elif deleting:
                grace = pod["metadata"].get("deletionGracePeriodSeconds", 30)
                runtime.stop(float(grace))
                if runtime.finished.is_set():
                    self._delete_pod(pod)
            else:
                runtime.pod = {**runtime.pod, "metadata": pod["metadata"]}
        for uid in list(self.runtimes):
            if uid not in mine:  # gone from the API server (deleted with grace 0, or finished)
                runtime = self.runtimes[uid]
                runtime.stop(0)
                if runtime.finished.is_set():
                    self.addresses.give_back(runtime.pod_ip)
                    runtime.cleanup()
                    del self.runtimes[uid]
                    self.hosts.pop(uid, None)
        self._write_hosts_files()

    def _start(self, pod: Manifest) -> None:
        uid = pod["metadata"]["uid"]
        directory = (
            self.pods_dir / f"{pod['metadata']['namespace']}_{pod['metadata']['name']}_{uid}"
        )
        directory.mkdir(parents=True, exist_ok=True)
        runtime = PodRuntime(
            pod, directory, self.addresses.take(), NODE_IP, self._prepare, self._report
        )
        self.runtimes[uid] = runtime
        self._write_hosts_files()
        runtime.start()

    def _lost(self, pod: Manifest) -> None:
        """A pod this node ran before the agent restarted: what is left of it is killed (a
        SIGKILLed agent leaves its pods' processes behind) and it is reported lost."""
        uid = pod["metadata"]["uid"]
        for pid in network.namespace_pids(uid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        network.delete_pod_namespace(uid)
        statuses = [
            {
                "name": c["name"],
                "image": c.get("image", ""),
                "imageID": "",
                "ready": False,
                "restartCount": 0,
                "started": False,
                "state": {
                    "terminated": {
                        "exitCode": 137,
                        "reason": "ContainerStatusUnknown",
                        "message": "The container could not be located when the pod was terminated",
                        "finishedAt": _utc(),
                    }
                },
            }
            for c in pod["spec"]["containers"]
        ]
        body = {
            "status": {"phase": "Failed", "reason": "NodeRestarted", "containerStatuses": statuses}
        }
        self._patch_status(pod["metadata"]["namespace"], pod["metadata"]["name"], body)

    def _prepare(self, runtime: PodRuntime) -> list[podspec.Process]:
        """Materialise the volumes (files written under the pod's directory) and translate every
        container. Raises PodSpecError while something it refers to is missing."""
        pod = runtime.pod
        context = podspec.PodContext(
            runtime.pod_ip, runtime.host_ip, {"cpu": self.cfg.cpu, "memory": self.cfg.memory}
        )
        volume_dirs: dict[str, str] = {}
        for spec in pod["spec"].get("volumes") or []:
            volume = podspec.volume(pod, spec, context, self._lookup, self._claim_path, self._token)
            directory = runtime.directory / "volumes" / spec["name"]
            if isinstance(volume, podspec.Files):
                directory.mkdir(parents=True, exist_ok=True)
                for relative, content in volume.files.items():
                    path = directory / relative
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(content)
                    path.chmod(volume.mode)
                volume_dirs[spec["name"]] = str(directory)
            elif volume.memory:
                volume_dirs[spec["name"]] = ""
            elif volume.path:
                Path(volume.path).mkdir(parents=True, exist_ok=True)
                volume_dirs[spec["name"]] = volume.path
            else:
                directory.mkdir(parents=True, exist_ok=True)
                directory.chmod(0o1777)  # an emptyDir any user of the pod may write
                volume_dirs[spec["name"]] = str(directory)
        processes = []
        base = podspec.image_env(pod, self.venv_bin)
        for container in pod["spec"]["containers"]:
            env = podspec.container_env(pod, container, context, self._lookup, base)
            processes.append(
                podspec.Process(
                    argv=podspec.container_argv(container, env),
                    env=env,
                    working_dir=container.get("workingDir", "/"),
                    mounts=podspec.mounts(container, volume_dirs),
                )
            )
        return processes

    def _lookup(self, kind: str, namespace: str, name: str) -> dict[str, bytes] | None:
        try:
            if kind == "ConfigMap":
                found = self.core.read_namespaced_config_map(name, namespace)
                return podspec.decode_config_map(found.data, found.binary_data)
            secret = self.core.read_namespaced_secret(name, namespace)
            return podspec.decode_secret(secret.data)
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def _claim_path(self, namespace: str, claim: str) -> str:
        """A claim is the directory of the volume it is bound to (hostPath or local)."""
        try:
            found = self.core.read_namespaced_persistent_volume_claim(claim, namespace)
        except ApiException as error:
            if error.status == 404:
                raise podspec.PodSpecError(f"persistentVolumeClaim {claim!r} not found") from None
            raise
        if found.status.phase != "Bound" or not found.spec.volume_name:
            raise podspec.PodSpecError(f"persistentVolumeClaim {claim!r} is not bound yet")
        volume = self.core.read_persistent_volume(found.spec.volume_name)
        source = volume.spec.host_path or volume.spec.local
        if source is None:
            raise podspec.PodSpecError(
                f"persistentVolume {found.spec.volume_name!r}: only hostPath "
                "and local volumes can be mounted on a local node"
            )
        return str(source.path)

    def _token(self, namespace: str, account: str, audience: str, seconds: int) -> str:
        request = {
            "spec": {
                "audiences": [audience] if audience else None,
                "expirationSeconds": max(seconds, 600),
            }
        }
        created = self.core.create_namespaced_service_account_token(account, namespace, request)
        return str(created.status.token)

    def _report(self, runtime: PodRuntime) -> None:
        self._patch_status(
            runtime.namespace, runtime.name, {"status": runtime.status()}, runtime.uid
        )
        if runtime.done:
            self.wake.set()  # a deletion waiting for this pod to finish can go on

    def _patch_status(self, namespace: str, name: str, body: Manifest, uid: str = "") -> None:
        if uid:
            body = {**body, "metadata": {"uid": uid}}  # never a newer pod of the same name
        try:
            self.core.patch_namespaced_pod_status(name, namespace, body, _content_type=STRATEGIC)
        except ApiException as error:
            if error.status not in {404, 409, 422}:
                raise

    def _delete_pod(self, pod: Manifest) -> None:
        """The last step of a graceful deletion: the kubelet removes the object (grace 0)."""
        metadata = pod["metadata"]
        try:
            self.core.delete_namespaced_pod(
                metadata["name"],
                metadata["namespace"],
                grace_period_seconds=0,
                body=client.V1DeleteOptions(
                    grace_period_seconds=0,
                    preconditions=client.V1Preconditions(uid=metadata["uid"]),
                ),
            )
        except ApiException as error:
            if error.status not in {404, 409}:
                raise

    def _write_hosts_files(self) -> None:
        pods, services = self.pods.snapshot(), self.services.snapshot()
        for uid, runtime in self.runtimes.items():
            text = dns.hosts_file(runtime.pod, runtime.pod_ip, pods, services)
            if self.hosts.get(uid) != text:
                # In place: the pod's /etc/hosts is a bind mount of this very inode.
                with runtime.hosts_file.open("w") as handle:
                    handle.write(text)
                self.hosts[uid] = text

    def _log_source(self, namespace: str, pod: str, container: str, previous: bool) -> Any:
        runtime = next(
            (r for r in self.runtimes.values() if r.namespace == namespace and r.name == pod), None
        )
        if runtime is None:
            return None, lambda: False
        return runtime.log_path(container, previous), lambda: runtime.running(container)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m devcluster.localnode",
        description="run a local node (root): " + (__doc__ or ""),
    )
    parser.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"), required=False)
    parser.add_argument("--name", required=True, help="the Node's name")
    parser.add_argument("--state-dir", type=Path, required=True, help="pods' files and logs")
    parser.add_argument("--cpu", default="4", help="advertised CPU capacity (not enforced)")
    parser.add_argument("--memory", default="8Gi", help="advertised memory (not enforced)")
    parser.add_argument("--label", action="append", default=[], help="KEY=VALUE node label")
    parser.add_argument("--shutdown-grace", type=float, default=30.0)
    parser.add_argument("--delete-node-on-exit", action="store_true")
    args = parser.parse_args(argv)
    if not args.kubeconfig:
        parser.error("--kubeconfig (or KUBECONFIG) is required")
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s {args.name} %(levelname)s %(message)s"
    )
    labels = dict(label.split("=", 1) for label in args.label)
    cfg = NodeConfig(
        args.name,
        args.state_dir.resolve(),
        args.cpu,
        args.memory,
        labels=labels,
        shutdown_grace=args.shutdown_grace,
        delete_node_on_exit=args.delete_node_on_exit,
    )
    try:
        node = LocalNode(cfg, config.new_client_from_config(config_file=args.kubeconfig))
    except network.NetworkError as error:
        print(f"local node: {error}", file=sys.stderr)
        return 1
    node.run()
    return 0
