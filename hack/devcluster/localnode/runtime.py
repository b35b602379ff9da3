"""The processes of one pod: its namespace, volumes and containers, restarts by the pod's
restartPolicy, readiness probes, and termination with a grace period. One thread per pod; the
agent reads `status()` and asks for `stop()`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from devcluster.localnode import dns, network, podspec, podstatus
from devcluster.localnode.podstatus import ContainerState, Terminated

Manifest = dict[str, Any]
log = logging.getLogger(__name__)
RESTART_BACKOFF = (1.0, 2.0, 5.0, 10.0)  # seconds before the 1st, 2nd, ... restart


class PodRuntime:
    """One pod on this node, from namespace creation to teardown."""

    def __init__(
        self,
        pod: Manifest,
        directory: Path,
        pod_ip: str,
        host_ip: str,
        prepare: Callable[[PodRuntime], list[podspec.Process]],
        on_change: Callable[[PodRuntime], None],
    ) -> None:
        self.pod = pod
        self.uid: str = pod["metadata"]["uid"]
        self.namespace: str = pod["metadata"]["namespace"]
        self.name: str = pod["metadata"]["name"]
        self.directory = directory
        self.pod_ip = pod_ip
        self.host_ip = host_ip
        self.restart_policy: str = pod["spec"].get("restartPolicy", "Always")
        self.containers = [
            ContainerState(c["name"], c.get("image", "")) for c in pod["spec"]["containers"]
        ]
        self.transitions: dict[str, tuple[bool, str]] = {}
        self.start_time = podstatus.now()
        self.started = False
        self.reason = self.message = ""
        self.done = False  # every process is gone; the next report is the final one
        self.finished = threading.Event()  # ... and it was made
        self._prepare, self._on_change = prepare, on_change
        self._stop: float | None = None  # grace seconds once a stop is asked for
        self._stop_reason = ("", "")
        self._wake = threading.Event()
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        self._thread = threading.Thread(target=self._run, name=f"pod-{self.name}", daemon=True)

    # ---- what the agent calls --------------------------------------------------------------

    @property
    def hosts_file(self) -> Path:
        return self.directory / "hosts"

    def log_path(self, container: str, previous: bool = False) -> Path | None:
        state = next((c for c in self.containers if c.name == container), None)
        if state is None:
            return None
        attempt = state.restart_count - 1 if previous else state.restart_count
        return self.directory / "logs" / container / f"{attempt}.log" if attempt >= 0 else None

    def running(self, container: str) -> bool:
        return any(c.name == container and c.running for c in self.containers)

    def start(self) -> None:
        self._thread.start()

    def stop(self, grace: float, reason: str = "", message: str = "") -> None:
        """Terminate: SIGTERM to every process of the pod, SIGKILL after `grace` seconds."""
        if self._stop is None or grace < self._stop:
            self._stop = max(grace, 0.0)
            self._stop_reason = (reason, message)
        self._wake.set()

    def phase(self) -> str:
        return podstatus.phase(self.restart_policy, self.containers, self.started)

    def status(self) -> Manifest:
        return podstatus.pod_status(
            phase_=self.phase(),
            pod_ip=self.pod_ip,
            host_ip=self.host_ip,
            start_time=self.start_time,
            containers=self.containers,
            transitions=self.transitions,
            reason=self.reason,
            message=self.message,
        )

    # ---- the pod's thread ------------------------------------------------------------------

    def _run(self) -> None:
        try:
            processes = self._prepare_until_ready()
            if processes is not None:
                network.create_pod_namespace(self.uid, self.pod_ip)
                for container, process in zip(self.containers, processes, strict=True):
                    self._launch(container, process)
                self.started = True
                self._changed()
                self._supervise(processes)
        except Exception as error:  # never leave a pod silently stuck: say why on the pod
            log.exception("pod %s/%s failed on this node", self.namespace, self.name)
            self.reason, self.message = "LocalNodeError", f"{type(error).__name__}: {error}"
            for container in self.containers:
                if container.terminated is None:
                    container.terminated = Terminated(
                        128, container.started_at or podstatus.now(), podstatus.now(), str(error)
                    )
            self.started = True
        finally:
            self._kill_all(0 if self._stop is None else self._stop)
            network.delete_pod_namespace(self.uid)
            if self._stop is not None and self._stop_reason[0]:
                self.reason, self.message = self._stop_reason
            self.done = True
            self._changed()  # the final status, before anyone may remove the pod
            self.finished.set()

    def _changed(self) -> None:
        try:
            self._on_change(self)
        except Exception:
            log.exception("reporting the status of %s/%s", self.namespace, self.name)

    def _prepare_until_ready(self) -> list[podspec.Process] | None:
        """Volumes and environment; a missing ConfigMap or key waits (and is retried), as the
        kubelet's CreateContainerConfigError does."""
        while self._stop is None:
            try:
                return self._prepare(self)
            except podspec.PodSpecError as error:
                for container in self.containers:
                    container.waiting_reason = "CreateContainerConfigError"
                    container.waiting_message = str(error)
                self._changed()
                self._wake.wait(2.0)
                self._wake.clear()
        return None

    def _launch(self, container: ContainerState, process: podspec.Process) -> None:
        directory = self.directory / "containers" / container.name
        directory.mkdir(parents=True, exist_ok=True)
        spec = directory / "sandbox.json"
        resolv_conf = self.directory / "resolv.conf"
        resolv_conf.write_text(dns.resolv_conf(self.namespace))
        # The container's termination message file, as the kubelet mounts it.
        message_file = directory / "termination-log"
        message_file.write_text("")
        message_path = self._container_spec(container.name).get(
            "terminationMessagePath", "/dev/termination-log"
        )
        message_mount = {"source": str(message_file), "target": message_path, "read_only": False}
        document = {
            **asdict(process),
            "mounts": [*asdict(process)["mounts"], message_mount],
            "hostname": self._hostname(),
            "hosts": str(self.hosts_file),
            "resolv.conf": str(resolv_conf),
            # The "image" is the checkout (its virtualenv and the editable sources): a volume
            # mounted over a directory that holds it (an emptyDir at /tmp) must not hide it.
            "keep": [str(Path(sys.prefix).parent)],
        }
        spec.write_text(json.dumps(document))
        log_file = self.directory / "logs" / container.name / f"{container.restart_count}.log"
        log_file.parent.mkdir(parents=True, exist_ok=True)
        command = [
            "ip",
            "netns",
            "exec",
            network.namespace_name(self.uid),
            "unshare",
            "--mount",
            "--uts",
            "--propagation",
            "private",
            sys.executable,
            "-m",
            "devcluster.localnode.sandbox",
            str(spec),
        ]
        with log_file.open("ab") as output:
            self._processes[container.name] = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        container.started_at, container.terminated = podstatus.now(), None
        container.waiting_reason = container.waiting_message = ""
        container.ready = False

    def _hostname(self) -> str:
        return str(self.pod["spec"].get("hostname") or self.name)[:63]

    def _supervise(self, processes: list[podspec.Process]) -> None:
        specs = dict(zip((c.name for c in self.containers), processes, strict=True))
        restart_at: dict[str, float] = {}
        probes = {c["name"]: c.get("readinessProbe") for c in self.pod["spec"]["containers"]}
        next_probe: dict[str, float] = {}
        while self._stop is None:
            changed = False
            for container in self.containers:
                process = self._processes.get(container.name)
                if container.running and process is not None and process.poll() is not None:
                    self._record_exit(container, process)
                    self._kill_container_tree(process.pid)
                    changed = True
                    if podstatus.should_restart(
                        self.restart_policy,
                        container.terminated.exit_code if container.terminated else 0,
                    ):
                        delay = RESTART_BACKOFF[min(container.restart_count, 3)]
                        restart_at[container.name] = time.monotonic() + delay
                if container.name in restart_at and time.monotonic() >= restart_at[container.name]:
                    del restart_at[container.name]
                    container.last_terminated = container.terminated
                    container.restart_count += 1
                    self._launch(container, specs[container.name])
                    changed = True
                if container.running:
                    changed |= self._probe(container, probes.get(container.name), next_probe)
            if changed:
                self._changed()
            if self.phase() in {"Succeeded", "Failed"}:
                return
            self._wake.wait(0.2)
            self._wake.clear()
        self._changed()

    def _probe(
        self, container: ContainerState, probe: Manifest | None, next_probe: dict[str, float]
    ) -> bool:
        """Readiness: tcpSocket and httpGet probes from the host (as the kubelet probes from the
        node); a container without a probe is ready once running."""
        if not probe:
            changed, container.ready = not container.ready, True
            return changed
        due = next_probe.get(container.name, time.monotonic() + probe.get("initialDelaySeconds", 0))
        if time.monotonic() < due:
            next_probe.setdefault(container.name, due)
            return False
        next_probe[container.name] = time.monotonic() + probe.get("periodSeconds", 10)
        ready = _probe_once(self.pod_ip, probe)
        changed, container.ready = ready != container.ready, ready
        return changed

    def _container_spec(self, name: str) -> dict[str, Any]:
        return dict(next(c for c in self.pod["spec"]["containers"] if c["name"] == name))

    def _record_exit(self, container: ContainerState, process: subprocess.Popen[bytes]) -> None:
        code = process.returncode
        signal_number = -code if code < 0 else 0
        exit_code = 128 + signal_number if signal_number else code
        message_file = self.directory / "containers" / container.name / "termination-log"
        written = message_file.read_bytes() if message_file.exists() else b""
        message = written[: podstatus.MESSAGE_FILE_BYTES].decode(errors="replace")
        policy = self._container_spec(container.name).get("terminationMessagePolicy", "File")
        log_file = self.log_path(container.name)
        fallback = exit_code != 0 and policy == "FallbackToLogsOnError" and not message.strip()
        if fallback and log_file and log_file.exists():
            message = podstatus.log_tail(log_file.read_text(errors="replace"))
        container.terminated = Terminated(
            exit_code, container.started_at, podstatus.now(), message, signal_number
        )
        container.started_at = ""
        container.ready = False

    def _kill_container_tree(self, pid: int) -> None:
        """What a container leaves behind when its first process exits dies with it (its pid
        namespace would end): every process of the pod that no other running container started
        (torchrun's workers have sessions of their own and outlive their parent)."""
        others = [
            p.pid
            for name, p in self._processes.items()
            if p.pid != pid and any(c.name == name and c.running for c in self.containers)
        ]
        for orphan in network.namespace_pids(self.uid):
            if not any(orphan == other or _descends_from(orphan, other) for other in others):
                _signal(orphan, signal.SIGKILL)

    def _kill_all(self, grace: float) -> None:
        """SIGTERM to every process of the pod, whatever its session; SIGKILL after `grace`."""
        pids = network.namespace_pids(self.uid)
        for pid in pids:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while pids and time.monotonic() < deadline:
            self._reap()
            pids = network.namespace_pids(self.uid)
            time.sleep(0.1)
        for pid in network.namespace_pids(self.uid):
            _signal(pid, signal.SIGKILL)
        for container in self.containers:
            process = self._processes.get(container.name)
            if process is not None and container.running:
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
                self._record_exit(container, process)
            elif container.terminated is None:  # never started
                container.terminated = Terminated(
                    137 if self._stop is not None else 128, podstatus.now(), podstatus.now()
                )

    def _reap(self) -> None:
        for process in self._processes.values():
            process.poll()

    def cleanup(self) -> None:
        """The pod is gone from the API server: its files go too."""
        shutil.rmtree(self.directory, ignore_errors=True)


def _probe_once(pod_ip: str, probe: Manifest) -> bool:
    timeout = float(probe.get("timeoutSeconds", 1))
    try:
        if "tcpSocket" in probe:
            with socket.create_connection((pod_ip, int(probe["tcpSocket"]["port"])), timeout):
                return True
        if "httpGet" in probe:
            get = probe["httpGet"]
            url = f"http://{pod_ip}:{get['port']}{get.get('path', '/')}"
            with urllib.request.urlopen(url, timeout=timeout) as response:
                return 200 <= int(response.status) < 400
    except OSError:
        return False
    # exec and grpc probes are not run here: the container counts as ready (logged once).
    log.warning("probe %s is not supported on a local node; treating it as passing", sorted(probe))
    return True


def _signal(pid: int, number: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, number)


def _descends_from(pid: int, ancestor: int) -> bool:
    """Whether `ancestor` is on pid's parent chain."""
    while pid > 1:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        pid = int(stat.rsplit(")", 1)[1].split()[1])
        if pid == ancestor:
            return True
    return False
