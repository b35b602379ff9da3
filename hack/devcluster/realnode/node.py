"""One real node: containerd (under tini, which reaps the shims it orphans) and a kubelet,
started in the background from a directory that holds its state, and killed like a machine.
The containerd root (images and unpacked layers) is one of the stores of stores.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from devcluster import tools
from devcluster.controlplane import log_tail
from devcluster.pki import Pki, client_certificate
from devcluster.realnode import cgroups, images, network, processes, services, stores
from devcluster.realnode.addresses import SLOTS, node_ip
from devcluster.realnode.containerd import ContainerdPaths, config
from devcluster.realnode.kubeletconfig import KubeletSettings, kubeconfig, kubelet_config


class NodeError(RuntimeError):
    """A node's containerd or kubelet failed to start; the message names its log."""


@dataclass
class NodeState:
    """What finding and killing the node again needs (state.json in its directory)."""

    name: str
    slot: int
    store: int
    containerd_pid: int = 0
    kubelet_pid: int = 0


@dataclass(frozen=True, slots=True)
class NodeLayout:
    directory: Path
    store_root: Path

    @property
    def containerd(self) -> ContainerdPaths:
        return ContainerdPaths(root=self.store_root, state=self.directory / "containerd")

    @property
    def kubelet_root(self) -> Path:
        return self.directory / "kubelet"

    @property
    def state_file(self) -> Path:
        return self.directory / "state.json"

    def log(self, component: str) -> Path:
        return self.directory / f"{component}.log"


def _wait(
    ready: Callable[[], bool], what: str, log: Path, pid: int, marker: str, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not processes.alive(pid, marker):
            raise NodeError(f"{what} exited during start-up; see {log}:\n{log_tail(log)}")
        if ready():
            return
        time.sleep(0.2)
    raise NodeError(f"{what} was not ready in {timeout:.0f}s; see {log}:\n{log_tail(log)}")


class RealNode:
    """A node named `name` whose files live in `directory`."""

    def __init__(self, name: str, directory: Path) -> None:
        self.name = name
        self.directory = directory.resolve()

    def layout(self, state: NodeState) -> NodeLayout:
        return NodeLayout(self.directory, stores.root(state.store))

    def load(self) -> NodeState | None:
        try:
            return NodeState(**json.loads((self.directory / "state.json").read_text()))
        except FileNotFoundError:
            return None

    def _save(self, state: NodeState) -> None:
        (self.directory / "state.json").write_text(json.dumps(asdict(state), indent=2))

    # ---- start -----------------------------------------------------------------------------

    def start_runtime(self, binaries: tools.Binaries) -> NodeState:
        """Claim an address and an image store, and start containerd: images can be imported
        into it before the kubelet starts."""
        self.directory.mkdir(parents=True, exist_ok=True)
        slot = SLOTS.take(f"node {self.name} ({self.directory})")
        store = stores.claims().take(f"node {self.name}")
        state = NodeState(self.name, slot, store)
        self._save(state)
        layout = self.layout(state)
        paths = layout.containerd
        shutil.rmtree(paths.state, ignore_errors=True)
        paths.cni_conf_dir.mkdir(parents=True)
        layout.store_root.mkdir(parents=True, exist_ok=True)
        (paths.cni_conf_dir / "10-devcluster.conflist").write_text(
            network.cni_config(slot, str(self.directory / "cni-ipam"))
        )
        paths.config.write_text(config(paths, pause_image_name(binaries)))
        network.add_address(node_ip(slot))
        self._start_containerd(state)
        name = pause_image_name(binaries)
        source = images.file_id(binaries.pause)
        if not images.present(paths, name, source):
            archive = self.directory / "pause.tar"
            images.single_binary_archive(binaries.pause, name, archive)
            self.import_image(state, archive, name, source)
            archive.unlink()
        return state

    def _start_containerd(self, state: NodeState) -> None:
        layout = self.layout(state)
        paths = layout.containerd
        processes.launch(["tini", "-s", "-g", "--", "containerd", "--config", str(paths.config)],
                         layout.log("containerd"), self.directory)  # fmt: skip
        # containerd itself, not its tini, is what must live (and what holds the store's lock).
        state.containerd_pid = processes.named(str(paths.config), "containerd")
        self._save(state)
        SLOTS.hand_to(state.slot, state.containerd_pid, f"node {self.name}")
        stores.claims().hand_to(state.store, state.containerd_pid, f"node {self.name}")
        _wait(lambda: _answers(paths), "containerd", layout.log("containerd"),
              state.containerd_pid, str(paths.config), timeout=60)  # fmt: skip

    def import_image(self, state: NodeState, archive: Path, name: str, source_id: str) -> None:
        images.import_archive(self.layout(state).containerd, archive, name, source_id)
        stores.record(self.layout(state).store_root, name, source_id)

    def share_store(self, state: NodeState) -> list[int]:
        """Copy this node's store (before its kubelet starts) to the free shared stores that
        lack an image it has, with its containerd stopped for the copy; the stores copied to."""
        source = self.layout(state).store_root
        targets = stores.lacking(stores.recorded(source), stores.SHARED_STORES, state.store)
        owner = f"a copy of store {state.store} for node {self.name}"
        taken = [n for n in targets if stores.claims().take_number(n, owner)]
        if not taken:
            return []
        config_file = str(self.layout(state).containerd.config)
        # This process holds the node's address and store while its containerd is down.
        SLOTS.hand_to(state.slot, os.getpid(), f"node {self.name}")
        stores.claims().hand_to(state.store, os.getpid(), f"node {self.name}")
        processes.stop(state.containerd_pid, config_file, grace=30)
        for pid in processes.mentioning(config_file):  # its tini
            processes.stop(pid, config_file, grace=10)
        try:
            for number in taken:
                stores.copy(source, stores.root(number))
        finally:
            for number in taken:
                stores.claims().give_back(number)
            self._start_containerd(state)
        return taken

    def start_kubelet(self, state: NodeState, binaries: tools.Binaries, server: str, pki: Pki,
                      dns: str, labels: dict[str, str],
                      ports: tuple[int, int]) -> None:  # fmt: skip
        layout = self.layout(state)
        certificates = self.directory / "pki"
        cert, key = certificates / "kubelet-client.crt", certificates / "kubelet-client.key"
        client_certificate(pki, cert, key, f"system:node:{self.name}", "system:nodes")
        (self.directory / "kubeconfig").write_text(kubeconfig(server, pki.ca_cert, cert, key))
        services.route_kubernetes_service(state.slot, server)  # the node's pods' API server
        cgroup_root = f"devcluster-{state.slot}"
        cgroups.kill_and_remove(cgroup_root)  # a node killed earlier in this slot
        cgroups.create(cgroup_root)
        settings = KubeletSettings(
            address=node_ip(state.slot), port=ports[0], healthz_port=ports[1],
            cgroup_root=f"/{cgroup_root}", runtime_endpoint=layout.containerd.endpoint,
            client_ca=pki.ca_cert, dns=dns,
        )  # fmt: skip
        settings_file = self.directory / "kubelet.yaml"
        document = kubelet_config(settings)
        document["podLogsDir"] = str(self.directory / "pod-logs")
        settings_file.write_text(yaml.safe_dump(document))
        label_flag = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        state.kubelet_pid = processes.launch(
            [str(binaries.kubelet), f"--config={settings_file}",
             f"--kubeconfig={self.directory / 'kubeconfig'}",
             f"--root-dir={layout.kubelet_root}", f"--cert-dir={certificates}",
             f"--hostname-override={self.name}", f"--node-ip={node_ip(state.slot)}",
             f"--node-labels={label_flag}"],
            layout.log("kubelet"), self.directory,
        )  # fmt: skip
        self._save(state)
        health = f"http://127.0.0.1:{ports[1]}/healthz"
        _wait(lambda: processes.http_ok(health), "kubelet", layout.log("kubelet"),
              state.kubelet_pid, str(settings_file), timeout=60)  # fmt: skip

    # ---- stop ------------------------------------------------------------------------------

    def kill(self) -> None:
        """The machine dies: kubelet, containerd, shims and every container process are killed,
        mounts undone, the address and image store freed. The Node object stays (NotReady once
        the node controller notices), as after a real crash; idempotent."""
        state = self.load()
        if state is None:
            return
        layout = self.layout(state)
        paths = layout.containerd
        processes.stop(state.kubelet_pid, str(self.directory / "kubelet.yaml"), 0,
                       signal.SIGKILL)  # fmt: skip
        processes.stop(state.containerd_pid, str(paths.config), 0, signal.SIGKILL)
        # tini puts containerd in a process group of its own, and the shims start sessions of
        # their own: find them by what their command lines name.
        for marker in (str(paths.config), str(paths.socket)):
            for pid in processes.mentioning(marker):
                processes.stop(pid, marker, 0, signal.SIGKILL)
        cgroups.kill_and_remove(f"devcluster-{state.slot}")
        processes.unmount_under(self.directory, layout.store_root)
        services.withdraw_kubernetes_service(state.slot)
        network.remove_address(node_ip(state.slot))
        SLOTS.give_back(state.slot)
        stores.claims().give_back(state.store)
        layout.state_file.unlink(missing_ok=True)

    def running(self) -> bool:
        state = self.load()
        return state is not None and processes.alive(
            state.kubelet_pid, str(self.directory / "kubelet.yaml")
        )


def pause_image_name(binaries: tools.Binaries) -> str:
    return f"localhost/devcluster/pause:{images.file_id(binaries.pause)}"


def _answers(paths: ContainerdPaths) -> bool:
    result = subprocess.run(["ctr", "--address", str(paths.socket), "version"],
                            capture_output=True, timeout=10)  # fmt: skip
    return result.returncode == 0
