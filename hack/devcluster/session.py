"""A handle on the cluster that tests (and tools) talk to: an existing one named by KUBECONFIG
(kind included), or a local control plane started for the occasion.

On an existing cluster a kwok process is started beside it, so simulated GPU/TPU nodes work there
too; a cluster from `make cluster-up` already runs one and gets no second.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from kubernetes import client, config

from devcluster import tools
from devcluster.controlplane import LocalCluster, is_running, kwok_command


class KubectlError(RuntimeError):
    """kubectl exited non-zero; the message carries its stderr."""


@dataclass
class ClusterSession:
    """Clients and command-line access for one cluster."""

    kubeconfig: Path
    binaries: tools.Binaries
    local: bool  # the control plane was started here and is ours (versions are the pinned ones)
    api: client.ApiClient = field(init=False)

    def __post_init__(self) -> None:
        self.api = config.new_client_from_config(config_file=str(self.kubeconfig))

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    def client_for_token(self, token: str) -> client.ApiClient:
        """A client that authenticates with `token` alone (no admin certificate)."""
        admin = self.api.configuration
        configuration = client.Configuration()
        configuration.host = admin.host
        configuration.ssl_ca_cert = admin.ssl_ca_cert
        configuration.verify_ssl = admin.verify_ssl
        # The key is the auth scheme's name (BearerToken), not the header's: under any other key
        # the client sends no token at all, and every request is anonymous.
        configuration.api_key = {"BearerToken": token}
        configuration.api_key_prefix = {"BearerToken": "Bearer"}
        return client.ApiClient(configuration)

    @property
    def env(self) -> dict[str, str]:
        """Environment for subprocesses: this cluster's KUBECONFIG, our kubectl/helm on PATH."""
        path = ":".join([*self.binaries.path_entries, os.environ.get("PATH", "")])
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig), "PATH": path}

    def kubectl(
        self, *args: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(self.binaries.kubectl), *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=120,
        )
        if check and result.returncode != 0:
            raise KubectlError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def wait_established(self, *names: str, timeout: float = 60) -> None:
        """Wait until the CRDs are Established. `kubectl wait` alone fails at once on a CRD the
        API server has not given a status yet ("status.conditions accessor error"), which a
        loaded machine shows right after the apply."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.kubectl("wait", "--for=condition=Established", "--timeout=10s", *names,
                                  check=False)  # fmt: skip
            if result.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise KubectlError(f"CRDs {' '.join(names)} not Established within "
                                   f"{timeout:.0f} s: {result.stderr.strip()}")  # fmt: skip
            time.sleep(0.5)


@contextmanager
def open_session(work_dir: Path) -> Iterator[ClusterSession]:
    """Yield a session on $KUBECONFIG if set, else on a fresh local control plane in `work_dir`."""
    binaries = tools.ensure_all()
    external = os.environ.get("KUBECONFIG")
    if external:
        kubeconfig = Path(external).resolve()
        kwok = None
        # A cluster from `make cluster-up` runs its own kwok already.
        if not is_running(kubeconfig.parent):
            log = (work_dir / "kwok.log").open("ab")
            kwok = subprocess.Popen(
                kwok_command(binaries, kubeconfig), stdout=log, stderr=subprocess.STDOUT
            )
        try:
            yield ClusterSession(kubeconfig, binaries, local=False)
        finally:
            if kwok is not None:
                kwok.terminate()
                kwok.wait(timeout=10)
        return
    cluster = LocalCluster(work_dir / "cluster", binaries)
    cluster.start()
    try:
        yield ClusterSession(cluster.kubeconfig, binaries, local=True)
    finally:
        cluster.stop()
