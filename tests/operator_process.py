"""The operator as the tests run it: a real process, from source, authenticated as the chart's
ServiceAccount (a token bound to the chart's ClusterRole), never as cluster admin."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from devcluster.controlplane import free_port
from devcluster.session import ClusterSession
from devcluster.waiting import wait_until

CHART = Path(__file__).resolve().parent.parent / "charts" / "pretrain-operator"
NAMESPACE = "pretrain-system"
RELEASE = "pretrain-operator"


def install_chart(cluster: ClusterSession) -> str:
    """`helm install` the chart (replicas=0: the operator runs here, from source, instead of
    its image); return a token of the ServiceAccount the chart made."""
    installed = subprocess.run(
        [str(cluster.binaries.helm), "upgrade", "--install", RELEASE, str(CHART),
         "--namespace", NAMESPACE, "--create-namespace", "--set", "replicas=0", "--wait"],
        capture_output=True, text=True, env=cluster.env, timeout=180,
    )  # fmt: skip
    if installed.returncode != 0:
        raise RuntimeError(f"helm install failed: {installed.stderr}")
    token = cluster.kubectl("create", "token", RELEASE, "-n", NAMESPACE, "--duration=4h")
    return token.stdout.strip()


def token_kubeconfig(cluster: ClusterSession, token: str, path: Path) -> Path:
    configuration = cluster.api.configuration
    server = {"server": configuration.host, "certificate-authority": configuration.ssl_ca_cert}
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": server}],
        "users": [{"name": "operator", "user": {"token": token}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "operator"}}],
        "current-context": "c",
    }  # fmt: skip
    path.write_text(yaml.safe_dump(document))
    return path


@dataclass
class OperatorProcess:
    kubeconfig: Path
    log: Path
    progress_seconds: float = 2.0  # the tests watch progress closer than users need to
    leader_elect: bool = False
    trainer_image: str = ""  # the node pods' image; empty: the operator's default
    metrics_port: int = field(default_factory=free_port)
    health_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "PYTHONUNBUFFERED": "1"}
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pretrain_operator",
                 f"--metrics-port={self.metrics_port}", f"--health-port={self.health_port}",
                 f"--progress-seconds={self.progress_seconds}",
                 *(["--leader-elect", f"--leader-election-namespace={NAMESPACE}"]
                   if self.leader_elect else []),
                 *([f"--trainer-image={self.trainer_image}"] if self.trainer_image else [])],
                env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        wait_until(self.healthy, "the operator's liveness probe", timeout=60)

    def healthy(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"the operator exited: {self.log.read_text()[-3000:]}")
        try:
            url = f"http://127.0.0.1:{self.health_port}/healthz"
            with urllib.request.urlopen(url, timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())

    def stop(self, kill: bool = False) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        self.process.wait(timeout=30)

    def restart(self, kill: bool = False) -> None:
        self.stop(kill)
        self.start()
