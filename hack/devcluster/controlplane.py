"""A real Kubernetes control plane on this machine: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, kwok for simulated nodes and Kueue (kueue.py), each a background process.

Everything a cluster keeps lives under one directory (certificates, etcd data, logs, kubeconfig,
`state.json` with the process ids and ports), so `up` and `down` can run from different processes
(`make cluster-up` / `make cluster-down`) and several clusters can run side by side.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from devcluster import kueue
from devcluster import pki as pki_module
from devcluster.tools import Binaries

SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"
# kwok pod IPs stay in the loopback range: nothing that dials a simulated pod leaves this machine.
POD_CIDR = "127.200.0.1/16"
FAKE_NODE_ANNOTATION = "kwok.x-k8s.io/node"
STAGES_FILE = Path(__file__).with_name("kwok-stages.yaml")
KUEUE_STARTS = 3


class ControlPlaneError(RuntimeError):
    """A component failed to start or become ready; the message names it and its log."""


@dataclass(slots=True)
class State:
    """What `down` needs to find the processes again, persisted as state.json."""

    ports: dict[str, int] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_kubeconfig(path: Path, server: str, pki: pki_module.Pki) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "devcluster",
                "cluster": {"server": server, "certificate-authority": str(pki.ca_cert)},
            }
        ],
        "users": [
            {
                "name": "admin",
                "user": {
                    "client-certificate": str(pki.admin_cert),
                    "client-key": str(pki.admin_key),
                },
            }
        ],
        "contexts": [{"name": "devcluster", "context": {"cluster": "devcluster", "user": "admin"}}],
        "current-context": "devcluster",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)


class LocalCluster:
    """A control plane rooted at `directory`. `start()` returns once every component is ready."""

    def __init__(self, directory: Path, binaries: Binaries) -> None:
        self.directory = directory.resolve()
        self.binaries = binaries
        self.pki = pki_module.Pki(self.directory / "pki")
        self.kubeconfig = self.directory / "kubeconfig"
        self.logs = self.directory / "logs"
        self.state_file = self.directory / "state.json"

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self, timeout: float = 180.0) -> None:
        if self.is_running():
            raise ControlPlaneError(
                f"a cluster is already running in {self.directory}; stop it first"
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        state = State(
            ports={
                name: free_port()
                for name in (
                    "etcd",
                    "etcd-peer",
                    "apiserver",
                    "controller-manager",
                    "scheduler",
                    "kueue-webhook",
                    "kueue-health",
                    "kueue-metrics",
                )
            }
        )
        self._save(state)
        pki_module.create(self.pki.directory, SERVICE_IP)
        server = f"https://127.0.0.1:{state.ports['apiserver']}"
        write_kubeconfig(self.kubeconfig, server, self.pki)
        deadline = time.monotonic() + timeout
        try:
            self._launch(state, "etcd", self._etcd_command(state))
            self._wait(state, "etcd", deadline, lambda: self._etcd_healthy(state))
            self._launch(state, "kube-apiserver", self._apiserver_command(state))
            self._wait(state, "kube-apiserver", deadline, lambda: self._get(server + "/readyz"))
            self._launch(state, "kube-controller-manager", self._controller_manager_command(state))
            self._launch(state, "kube-scheduler", self._scheduler_command(state))
            self._launch(state, "kwok", kwok_command(self.binaries, self.kubeconfig))
            # The ServiceAccount controller creating `default` proves the controller-manager
            # runs its controllers, not merely that its process is alive.
            self._wait(
                state,
                "kube-controller-manager",
                deadline,
                lambda: self._get(server + "/api/v1/namespaces/default/serviceaccounts/default"),
            )
            scheduler = f"https://127.0.0.1:{state.ports['scheduler']}/healthz"
            self._wait(state, "kube-scheduler", deadline, lambda: self._get(scheduler, tls=False))
            self._start_kueue(state, server, deadline)
        except BaseException:
            self.stop()
            raise

    def stop(self, grace: float = 10.0) -> None:
        """Stop every component (newest first) and keep the logs; idempotent."""
        state = self._load()
        for name, pid in reversed(list(state.pids.items())):
            _terminate(pid, self.directory, grace)
            state.pids.pop(name)
        self._save(state)
        self.state_file.unlink(missing_ok=True)

    def is_running(self) -> bool:
        return is_running(self.directory)

    def _start_kueue(self, state: State, server: str, deadline: float) -> None:
        """Kueue's CRDs, its controller manager, and then its webhooks (the API server would
        refuse Kueue's objects while their webhooks did not answer)."""
        kubectl = [str(self.binaries.kubectl), f"--kubeconfig={self.kubeconfig}"]
        manifests = self.binaries.kueue.parent
        kueue.install_crds(kubectl, manifests)
        # Kueue maps its kinds once, at start, from discovery, which lags behind the CRDs.
        wanted = kueue.crd_plurals(manifests)
        group = f"{server}/apis/{kueue.API_VERSION}"
        self._wait(state, "kube-apiserver", deadline,
                   lambda: wanted <= self._resources(group))  # fmt: skip
        certificates = self.directory / "kueue-certs"  # the names controller-runtime reads
        kueue.place_certificates(self.pki.serving_cert, self.pki.serving_key, certificates)
        settings = self.directory / "kueue.yaml"
        settings.write_text(kueue.configuration(state.ports["kueue-webhook"],
                            state.ports["kueue-health"], state.ports["kueue-metrics"],
                            certificates))  # fmt: skip
        command = [
            str(self.binaries.kueue), f"--config={settings}", f"--kubeconfig={self.kubeconfig}",
            f"--feature-gates={kueue.FEATURE_GATES}",
        ]  # fmt: skip
        ready = f"http://127.0.0.1:{state.ports['kueue-health']}/readyz"
        for attempt in range(KUEUE_STARTS):
            self._launch(state, "kueue", command)
            try:
                self._wait(state, "kueue", deadline, lambda: self._get(ready, tls=False))
                break
            except ControlPlaneError:
                # Kueue exits when a kind it maps is not yet in every server's discovery.
                if attempt + 1 == KUEUE_STARTS or _owned_alive(state.pids["kueue"], self.directory):
                    raise
                state.pids.pop("kueue")
        bundle = base64.b64encode(self.pki.ca_cert.read_bytes()).decode()
        url = f"https://127.0.0.1:{state.ports['kueue-webhook']}"
        kueue.install_webhooks(kubectl, manifests, url, bundle)

    # ---- commands --------------------------------------------------------------------------

    def _etcd_command(self, state: State) -> list[str]:
        client = f"http://127.0.0.1:{state.ports['etcd']}"
        peer = f"http://127.0.0.1:{state.ports['etcd-peer']}"
        return [
            str(self.binaries.etcd),
            "--name=default",
            f"--data-dir={self.directory / 'etcd'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=default={peer}",
            "--log-level=warn",
            # Test clusters are disposable; fsync on every write only makes them slow.
            "--unsafe-no-fsync",
        ]

    def _apiserver_command(self, state: State) -> list[str]:
        return [
            str(self.binaries.kube_apiserver),
            f"--etcd-servers=http://127.0.0.1:{state.ports['etcd']}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            # The endpoint reconciler refuses loopback addresses; nothing here dials the
            # `kubernetes` Service IP (there is no kube-proxy), so it is not needed.
            "--endpoint-reconciler-type=none",
            f"--secure-port={state.ports['apiserver']}",
            f"--tls-cert-file={self.pki.serving_cert}",
            f"--tls-private-key-file={self.pki.serving_key}",
            f"--client-ca-file={self.pki.ca_cert}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={self.pki.service_account_pub}",
            f"--service-account-signing-key-file={self.pki.service_account_key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NamespaceLifecycle,LimitRanger,ServiceAccount,"
            "PodSecurity,Priority,DefaultTolerationSeconds,ResourceQuota,"
            "MutatingAdmissionWebhook,ValidatingAdmissionWebhook",
            "--allow-privileged=true",
            "--profiling=false",
            # Real nodes: the API server reaches a kubelet (logs, exec, port-forward) at its
            # InternalIP, as the admin (kubelets trust this cluster's CA).
            "--kubelet-preferred-address-types=InternalIP,Hostname",
            f"--kubelet-client-certificate={self.pki.admin_cert}",
            f"--kubelet-client-key={self.pki.admin_key}",
        ]

    def _component_auth(self) -> list[str]:
        kubeconfig = str(self.kubeconfig)
        return [
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            "--leader-elect=false",
        ]

    def _controller_manager_command(self, state: State) -> list[str]:
        return [
            str(self.binaries.kube_controller_manager),
            *self._component_auth(),
            f"--secure-port={state.ports['controller-manager']}",
            f"--service-account-private-key-file={self.pki.service_account_key}",
            f"--root-ca-file={self.pki.ca_cert}",
            f"--cluster-signing-cert-file={self.pki.ca_cert}",
            f"--cluster-signing-key-file={self.pki.ca_key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--cluster-name=devcluster",
            "--controllers=*",
        ]

    def _scheduler_command(self, state: State) -> list[str]:
        return [
            str(self.binaries.kube_scheduler),
            *self._component_auth(),
            f"--secure-port={state.ports['scheduler']}",
        ]

    # ---- process plumbing ------------------------------------------------------------------

    def _launch(self, state: State, name: str, command: list[str]) -> None:
        log = (self.logs / f"{name}.log").open("ab")
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.directory,
            start_new_session=True,  # survives the `make cluster-up` that started it
        )
        log.close()
        state.pids[name] = process.pid
        self._save(state)

    def _wait(self, state: State, name: str, deadline: float, ready: Callable[[], bool]) -> None:
        while time.monotonic() < deadline:
            for component, pid in state.pids.items():
                if not _owned_alive(pid, self.directory):
                    raise ControlPlaneError(
                        f"{component} exited during start-up; see {self.logs / component}.log:\n"
                        + log_tail(self.logs / f"{component}.log")
                    )
            if ready():
                return
            time.sleep(0.25)
        raise ControlPlaneError(
            f"{name} was not ready in time; see {self.logs / name}.log:\n"
            + log_tail(self.logs / f"{name}.log")
        )

    def _resources(self, url: str) -> set[str]:
        """The resources a group version's discovery document lists (none while it is not
        served)."""
        context = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        context.load_cert_chain(str(self.pki.admin_cert), str(self.pki.admin_key))
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as response:
                listed = json.loads(response.read())
        except (urllib.error.URLError, ConnectionError, TimeoutError, ssl.SSLError, ValueError):
            return set()
        return {str(r.get("name")) for r in listed.get("resources") or []}

    def _etcd_healthy(self, state: State) -> bool:
        return self._get(f"http://127.0.0.1:{state.ports['etcd']}/health", tls=False)

    def _get(self, url: str, tls: bool = True) -> bool:
        """True when `url` answers 200, as the admin (tls) or anonymously without verification."""
        if tls:
            context = ssl.create_default_context(cafile=str(self.pki.ca_cert))
            context.load_cert_chain(str(self.pki.admin_cert), str(self.pki.admin_key))
        else:
            context = ssl._create_unverified_context()
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, ConnectionError, TimeoutError, ssl.SSLError):
            return False

    def _save(self, state: State) -> None:
        self.state_file.write_text(json.dumps(asdict(state), indent=2))

    def _load(self) -> State:
        return _load_state(self.directory)


def kwok_command(binaries: Binaries, kubeconfig: Path) -> list[str]:
    """kwok manages only nodes annotated as fake, so real (local) nodes can join later."""
    return [
        str(binaries.kwok),
        f"--kubeconfig={kubeconfig}",
        f"--config={STAGES_FILE}",
        "--manage-all-nodes=false",
        f"--manage-nodes-with-annotation-selector={FAKE_NODE_ANNOTATION}=fake",
        f"--cidr={POD_CIDR}",
        f"--node-ip={POD_CIDR.split('/')[0]}",
        "--node-lease-duration-seconds=40",
    ]


def is_running(directory: Path) -> bool:
    """Whether any component of the cluster kept in `directory` is alive."""
    directory = directory.resolve()
    return any(_owned_alive(pid, directory) for pid in _load_state(directory).pids.values())


def _load_state(directory: Path) -> State:
    try:
        return State(**json.loads((directory / "state.json").read_text()))
    except FileNotFoundError:
        return State()


def _owned_alive(pid: int, directory: Path) -> bool:
    """The process lives and is one of ours (a recycled pid of another program is not)."""
    try:
        cwd = Path(f"/proc/{pid}/cwd").resolve()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, PermissionError, ProcessLookupError):
        return False
    zombie = stat.rsplit(")", 1)[1].split()[0] == "Z"
    return cwd == directory and not zombie


def _terminate(pid: int, directory: Path, grace: float) -> None:
    if not _owned_alive(pid, directory):
        return
    os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        _reap(pid)
        if not _owned_alive(pid, directory):
            return
        time.sleep(0.1)
    os.killpg(pid, signal.SIGKILL)
    _reap(pid)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):  # not our child: its parent (or init) reaps it
        os.waitpid(pid, os.WNOHANG)


def log_tail(path: Path, lines: int = 15) -> str:
    """The last lines of a component's log, for an error that names it."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"
