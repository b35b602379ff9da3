"""Real nodes labelled with a pool of their own, so pods selecting `selector` run there: for the
e2e tests, `make demo`, the recovery benchmark and `make cluster-up NODES=N`. One CoreDNS serves
the pool's pods; the images given are imported into each node before its kubelet starts."""

from __future__ import annotations

import contextlib
import secrets
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from devcluster import tools
from devcluster.controlplane import free_port
from devcluster.nodes import NODE_POOL_LABEL, node_ready
from devcluster.pki import Pki
from devcluster.realnode import images
from devcluster.realnode.dns import ClusterDns
from devcluster.realnode.node import RealNode
from devcluster.waiting import wait_until


@dataclass(frozen=True, slots=True)
class Image:
    """An image of buildah's storage (`make image`), imported under its own name, e.g.
    localhost/pretrain-operator/trainer:test: what the pods' `image` says."""

    name: str
    storage_driver: str = "overlay"


@dataclass
class RealNodePool:
    """`cluster_dir` is the local control plane's directory (its PKI signs the kubelets'
    certificates)."""

    kubeconfig: Path
    directory: Path
    core: client.CoreV1Api
    cluster_dir: Path
    images: tuple[Image, ...] = ()
    name: str = field(default_factory=lambda: f"real-{secrets.token_hex(3)}")
    nodes: dict[str, RealNode] = field(default_factory=dict)
    _dns: ClusterDns | None = None
    _archives: dict[str, Path] = field(default_factory=dict)
    _scratch: Path | None = None

    @property
    def selector(self) -> dict[str, str]:
        return {NODE_POOL_LABEL: self.name}

    def log(self, node: str, component: str = "kubelet") -> Path:
        return self.directory / node / f"{component}.log"

    def add(self, node: str | None = None) -> str:
        """Start a node and return its name once it is Ready and schedulable."""
        binaries = tools.ensure_all()
        node = node or f"{self.name}-{len(self.nodes)}"
        dns = self._cluster_dns(binaries)
        real = RealNode(node, self.directory / node)
        self.nodes[node] = real
        try:
            state = real.start_runtime(binaries)
            paths = real.layout(state).containerd
            imported = False
            for image in self.images:
                source_id = images.buildah_image_id(image.name, image.storage_driver)
                if not images.present(paths, image.name, source_id):
                    real.import_image(state, self._archive(image), image.name, source_id)
                    imported = True
            if imported:  # the next nodes' stores become copies of this one, not imports
                started = time.monotonic()
                copied = real.share_store(state)
                if copied:
                    print(f"image store {state.store} copied to {', '.join(map(str, copied))} "
                          f"in {time.monotonic() - started:.0f} s", file=sys.stderr)  # fmt: skip
            pki = Pki(self.cluster_dir / "pki")
            ports = (free_port(), free_port())  # the kubelet's API and its healthz
            real.start_kubelet(state, binaries, self._server(), pki, dns,
                               {NODE_POOL_LABEL: self.name}, ports)  # fmt: skip
            wait_until(lambda: self._ready(node), f"node {node} Ready", timeout=90)
        except BaseException:
            real.kill()
            raise
        return node

    def _ready(self, node: str) -> bool:
        if not self.nodes[node].running():
            raise RuntimeError(f"the kubelet of {node} exited; see {self.log(node)}")
        try:
            return node_ready(self.core, node)
        except ApiException:
            return False

    def _cluster_dns(self, binaries: tools.Binaries) -> str:
        """The pool's CoreDNS, started with its first node (or found, started by an earlier
        `devcluster up`)."""
        if self._dns is None:
            self._dns = ClusterDns.load(self.directory / "dns")
            if not self._dns.running():
                self._dns.start(binaries, self.kubeconfig)
        return self._dns.address

    def _server(self) -> str:
        config = yaml.safe_load(self.kubeconfig.read_text())
        return str(config["clusters"][0]["cluster"]["server"])

    def _archive(self, image: Image) -> Path:
        """The image exported once per pool, for every node that lacks it."""
        if image.name not in self._archives:
            if self._scratch is None:
                self._scratch = Path(tempfile.mkdtemp(prefix="images-", dir=self.directory))
            self._archives[image.name] = images.export_buildah_image(
                image.name, image.name, image.storage_driver, self._scratch
            )
        return self._archives[image.name]

    def stop(self, node: str) -> None:
        """The node's machine dies (everything on it killed); its Node object stays and turns
        NotReady, as after a crash. `remove` deletes it as a cloud's node controller would."""
        self.nodes.pop(node).kill()

    def remove(self, node: str) -> None:
        with contextlib.suppress(ApiException):
            self.core.delete_node(node)

    def close(self) -> None:
        for node in list(self.nodes):
            self.stop(node)
        if self._dns is not None:
            self._dns.stop()
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
        for listed in self.core.list_node(label_selector=f"{NODE_POOL_LABEL}={self.name}").items:
            with contextlib.suppress(ApiException):
                self.core.delete_node(listed.metadata.name)


def stop_all(directory: Path) -> list[str]:
    """Kill every node and the DNS server that pools kept under `directory` (from any process:
    `make cluster-down`); the names of the nodes killed."""
    killed = []
    for state in sorted(directory.glob("*/state.json")):
        if state.parent.name == "dns":
            continue
        RealNode(state.parent.name, state.parent).kill()
        killed.append(state.parent.name)
    ClusterDns.load(directory / "dns").stop()
    return killed
