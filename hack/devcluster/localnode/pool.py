"""Local nodes as background processes, for tests, `make demo` and `devcluster node`: start
some, stop one (graceful node shutdown) or kill it, and clean up."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from devcluster.nodes import NODE_POOL_LABEL, node_ready
from devcluster.waiting import wait_until


@dataclass
class LocalNodePool:
    """Local nodes labelled with a pool of their own, so pods selecting `selector` run here."""

    kubeconfig: Path
    directory: Path
    core: client.CoreV1Api
    name: str = field(default_factory=lambda: f"local-{secrets.token_hex(3)}")
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def selector(self) -> dict[str, str]:
        return {NODE_POOL_LABEL: self.name}

    def log(self, node: str) -> Path:
        return self.directory / f"{node}.log"

    def add(self, node: str | None = None, cpu: str = "4", memory: str = "8Gi") -> str:
        """Start a node and return its name once it is Ready and schedulable."""
        node = node or f"{self.name}-{len(self.processes)}"
        self.directory.mkdir(parents=True, exist_ok=True)
        with self.log(node).open("ab") as log:
            self.processes[node] = subprocess.Popen(
                [sys.executable, "-m", "devcluster.localnode", f"--kubeconfig={self.kubeconfig}",
                 f"--name={node}", f"--state-dir={self.directory / node}", f"--cpu={cpu}",
                 f"--memory={memory}", f"--label={NODE_POOL_LABEL}={self.name}"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        wait_until(lambda: self._ready(node), f"local node {node} Ready", timeout=60)
        return node

    def _ready(self, node: str) -> bool:
        process = self.processes[node]
        if process.poll() is not None:
            raise RuntimeError(f"local node {node} exited: {self.log(node).read_text()[-2000:]}")
        try:
            return node_ready(self.core, node)
        except ApiException:
            return False

    def stop(self, node: str, timeout: float = 90.0) -> None:
        """Graceful node shutdown: its pods are terminated and reported Failed; the Node stays,
        NotReady and cordoned (`close` deletes it)."""
        process = self.processes.pop(node)
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def close(self) -> None:
        for node in list(self.processes):
            self.stop(node)
        for node in self.core.list_node(label_selector=f"{NODE_POOL_LABEL}={self.name}").items:
            with contextlib.suppress(ApiException):
                self.core.delete_node(node.metadata.name)
