"""A pod's status as the kubelet writes it, from what its containers did. Pure functions."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

Manifest = dict[str, Any]
# The kubelet's FallbackToLogsOnError: the tail of the log, at most 80 lines and 2048 bytes.
MESSAGE_LINES, MESSAGE_BYTES = 80, 2048
MESSAGE_FILE_BYTES = 4096  # the kubelet reads this much of terminationMessagePath


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class Terminated:
    exit_code: int
    started_at: str
    finished_at: str
    message: str = ""
    signal: int = 0

    @property
    def reason(self) -> str:
        return "Completed" if self.exit_code == 0 else "Error"

    def manifest(self) -> Manifest:
        state: Manifest = {
            "exitCode": self.exit_code,
            "reason": self.reason,
            "startedAt": self.started_at,
            "finishedAt": self.finished_at,
        }
        if self.message:
            state["message"] = self.message
        if self.signal:
            state["signal"] = self.signal
        return state


@dataclass(slots=True)
class ContainerState:
    """One container's history on this node."""

    name: str
    image: str
    restart_count: int = 0
    started_at: str = ""  # running since (empty: not running)
    waiting_reason: str = "ContainerCreating"
    waiting_message: str = ""
    terminated: Terminated | None = None
    last_terminated: Terminated | None = None
    ready: bool = False

    @property
    def running(self) -> bool:
        return bool(self.started_at) and self.terminated is None

    def manifest(self) -> Manifest:
        if self.terminated is not None:
            state: Manifest = {"terminated": self.terminated.manifest()}
        elif self.started_at:
            state = {"running": {"startedAt": self.started_at}}
        else:
            waiting = {"reason": self.waiting_reason}
            if self.waiting_message:
                waiting["message"] = self.waiting_message
            state = {"waiting": waiting}
        status: Manifest = {
            "name": self.name,
            "image": self.image,
            "imageID": "",
            "containerID": f"local://{self.name}-{self.restart_count}",
            "restartCount": self.restart_count,
            "ready": self.ready and self.running,
            "started": self.running,
            "state": state,
            "lastState": {"terminated": self.last_terminated.manifest()}
            if self.last_terminated
            else {},
        }
        return status


def should_restart(restart_policy: str, exit_code: int) -> bool:
    return restart_policy == "Always" or (restart_policy == "OnFailure" and exit_code != 0)


def phase(restart_policy: str, containers: list[ContainerState], started: bool) -> str:
    """Pending until every container has started once; Succeeded or Failed when all have
    terminated for good (a restartable exit keeps the pod Running)."""
    if not started:
        return "Pending"
    finals = [c.terminated for c in containers]
    if any(t is None for t in finals):
        return "Running"
    codes = [t.exit_code for t in finals if t is not None]
    if all(code == 0 for code in codes):
        return "Succeeded"
    return "Running" if restart_policy in {"Always", "OnFailure"} else "Failed"


def _condition(
    type_: str, value: bool, since: dict[str, tuple[bool, str]], reason: str = ""
) -> Manifest:
    """A condition whose lastTransitionTime moves only when its status does."""
    previous = since.get(type_)
    if previous is None or previous[0] != value:
        since[type_] = (value, now())
    condition: Manifest = {
        "type": type_,
        "status": "True" if value else "False",
        "lastTransitionTime": since[type_][1],
        "lastProbeTime": None,
    }
    if reason and not value:
        condition["reason"] = reason
    return condition


def pod_status(
    *,
    phase_: str,
    pod_ip: str,
    host_ip: str,
    start_time: str,
    containers: list[ContainerState],
    transitions: dict[str, tuple[bool, str]],
    reason: str = "",
    message: str = "",
) -> Manifest:
    """The `status` to patch. `transitions` remembers when each condition last changed."""
    finished = phase_ in {"Succeeded", "Failed"}
    ready = not finished and all(c.ready and c.running for c in containers)
    not_ready = "PodCompleted" if finished else "ContainersNotReady"
    status: Manifest = {
        "phase": phase_,
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "startTime": start_time,
        "conditions": [
            _condition("PodReadyToStartContainers", bool(pod_ip) and not finished, transitions),
            _condition("Initialized", True, transitions),
            _condition("ContainersReady", ready, transitions, not_ready),
            _condition("Ready", ready, transitions, not_ready),
        ],
        "containerStatuses": [c.manifest() for c in containers],
    }
    if pod_ip:
        status["podIP"] = pod_ip
        status["podIPs"] = [{"ip": pod_ip}]
    if reason:
        status["reason"] = reason
    if message:
        status["message"] = message
    return status


def log_tail(text: str) -> str:
    """A failed container's termination message under FallbackToLogsOnError."""
    tail = "\n".join(text.splitlines()[-MESSAGE_LINES:])
    return tail.encode()[-MESSAGE_BYTES:].decode(errors="replace")
