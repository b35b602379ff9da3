"""One real node: containerd (under tini, which reaps the shims it orphans) and a kubelet,
started in the background from a directory that holds its state, and killed like a machine.

The containerd root (images and unpacked layers) is one of a few stores kept in the project's
cache and taken in turn, so the 6 GB trainer image is imported once per store, not once per run.
"""

from __future__ import annotations

import json
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
from devcluster.realnode import cgroups, images, network, processes
from devcluster.realnode.addresses import SLOTS, node_ip
from devcluster.realnode.claims import Claims
from devcluster.realnode.containerd import ContainerdPaths, config
from devcluster.realnode.kubeletconfig import KubeletSettings, kubeconfig, kubelet_config


class NodeError(RuntimeError):
    """A node's containerd or kubelet failed to start; the message names its log."""


def image_stores() -> Claims:
    return Claims(tools.cache_dir() / "containerd" / "claims", "store", range(8))


def store_root(number: int) -> Path:
    return tools.cache_dir() / "containerd" / f"store-{number}"


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
        return NodeLayout(self.directory, store_root(state.store))

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
        store = image_stores().take(f"node {self.name}")
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
        processes.launch(["tini", "-s", "-g", "--", "containerd", "--config", str(paths.config)],
                         layout.log("containerd"), self.directory)  # fmt: skip
        # containerd itself, not its tini, is what must live (and what holds the store's lock).
        state.containerd_pid = processes.named(str(paths.config), "containerd")
        self._save(state)
        SLOTS.hand_to(slot, state.containerd_pid, f"node {self.name}")
        image_stores().hand_to(store, state.containerd_pid, f"node {self.name}")
        _wait(lambda: _answers(paths), "containerd", layout.log("containerd"),
              state.containerd_pid, str(paths.config), timeout=60)  # fmt: skip
        archive = self.directory / "pause.tar"
        name = pause_image_name(binaries)
        source = images.file_id(binaries.pause)
        if not images.present(paths, name, source):
            images.single_binary_archive(binaries.pause, name, archive)
            images.import_archive(paths, archive, name, source)
            archive.unlink()
        return state

    def start_kubelet(self, state: NodeState, binaries: tools.Binaries, server: str, pki: Pki,
                      dns: str, labels: dict[str, str],
                      ports: tuple[int, int]) -> None:  # fmt: skip
        layout = self.layout(state)
        certificates = self.directory / "pki"
        cert, key = certificates / "kubelet-client.crt", certificates / "kubelet-client.key"
        client_certificate(pki, cert, key, f"system:node:{self.name}", "system:nodes")
        (self.directory / "kubeconfig").write_text(kubeconfig(server, pki.ca_cert, cert, key))
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
        network.remove_address(node_ip(state.slot))
        SLOTS.give_back(state.slot)
        image_stores().give_back(state.store)
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
