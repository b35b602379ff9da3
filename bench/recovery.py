"""Recovery: on real kubelet nodes (pods run from the trainer image), the time from killing a
node pod of a running PretrainJob to its next completed step, broken into where it goes, against
the same job's cold start (applied to first step) in the same run.

The job has a fixed size (2 nodes, min = max), so the survivor waits for the replacement and
every phase lies on the path. The clocks are this machine's: the pods' events as a watch
receives them, the restart line the trainer writes to metrics.jsonl, the step lines' times.

    detection        kill -> the API reports the pod Failed (the kubelet)
    replacement      Failed -> its replacement created (the operator deletes and recreates)
    pod start        created -> its container running (scheduler, kubelet)
    rendezvous       running -> the new workers started (torchrun, the c10d round, the spawn)
    worker start-up  -> the checkpoint load begins (imports, process group, model)
    checkpoint load  -> the checkpoint restored
    first step       -> the first step after it completed (data pipeline, the step)
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import yaml
from kubernetes import watch
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import ProtocolError

from bench.stats import median
from devcluster.realnode.cgroups import pod_processes
from devcluster.system import LocalSystem, local_system
from devcluster.waiting import wait_until

PHASES = ["detection", "replacement", "pod start", "rendezvous", "worker start-up",
          "checkpoint load", "first step"]  # fmt: skip
JOB = "recovery"
CHECKPOINT_EVERY = 5


@dataclass(frozen=True, slots=True)
class PodEvent:
    """A pod as one watch event showed it, and when it arrived."""

    time: float
    type: str  # ADDED, MODIFIED, DELETED
    name: str
    uid: str
    phase: str
    running: bool
    deleting: bool


def pod_event(received: float, kind: str, pod: Any) -> PodEvent:
    statuses = pod.status.container_statuses or []
    return PodEvent(
        time=received, type=kind, name=pod.metadata.name, uid=pod.metadata.uid,
        phase=pod.status.phase or "", running=any(s.state.running for s in statuses),
        deleting=pod.metadata.deletion_timestamp is not None or kind == "DELETED",
    )  # fmt: skip


Restart = dict[str, float]  # a restart line's times (metrics.jsonl)


def first_step_after(killed: float, records: list[dict[str, Any]]) -> tuple[Restart, float] | None:
    """The restart line of the workers that took over after `killed` (the last before the first
    step they completed, should a round have failed on the way) and that step's time."""
    restart = None
    for record in records:
        if "restart" in record and record["restart"]["process_started"] > killed:
            restart = record["restart"]
        elif restart and "loss" in record:
            return restart, float(record["time"])
    return None


def breakdown(killed: float, victim: str, victim_uid: str, events: list[PodEvent],
              records: list[dict[str, Any]]) -> dict[str, float]:  # fmt: skip
    """Seconds per phase of one recovery (PHASES, then `total`): pure, from the timeline."""
    failed = next(e.time for e in events if e.uid == victim_uid and e.phase == "Failed")
    # The pod of that name the operator created after the kill (an earlier recovery made
    # others under the same name).
    earlier = {e.uid for e in events if e.time <= killed}
    replacement = [e for e in events if e.name == victim and e.uid not in earlier]
    created = min(e.time for e in replacement)
    running = next(e.time for e in replacement if e.running)
    found = first_step_after(killed, records)
    assert found is not None, "no step completed after the kill"
    restart, step = found
    marks = [killed, failed, created, running, restart["process_started"],
             restart["restore_started"], restart["restored"], step]  # fmt: skip
    phases = {name: end - start for name, (start, end) in zip(PHASES, pairwise(marks), strict=True)}
    return {**phases, "total": step - killed}


def job_manifest(node_selector: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "pretrain.dev/v1alpha1", "kind": "PretrainJob",
        "metadata": {"name": JOB},
        "spec": {
            "objective": {"type": "MaskedLM"}, "model": {"family": "bert", "size": "tiny"},
            "tokenizer": {"type": "Byte"},
            "data": {"sources": [{"uri": "pvc://corpus/python-docs.jsonl"}],
                     "sequenceLength": 64, "validationFraction": 0.05},
            "training": {"globalBatchSize": 16, "microBatchSize": 8, "maxSteps": 100000,
                         "precision": "fp32"},
            "checkpoint": {"storage": {"persistentVolumeClaim": "checkpoints"},
                           "everySteps": CHECKPOINT_EVERY},
            "replicas": {"min": 2, "max": 2},
            "resources": {"cpu": "1", "memory": "2Gi"},
            "template": {"nodeSelector": node_selector},
        },
    }  # fmt: skip


class PodWatch:
    """Every event of the namespace's pods, timed as it arrives, in a thread. A watch the API
    server ends is started again; the events it replays arrive later than the first copies,
    and every phase reads the first."""

    def __init__(self, system: LocalSystem) -> None:
        self.events: list[PodEvent] = []
        self._watch = watch.Watch()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(system,), daemon=True)
        self._thread.start()

    def _run(self, system: LocalSystem) -> None:
        while not self._stopped.is_set():
            with contextlib.suppress(ProtocolError, ApiException):
                for event in self._watch.stream(system.session.core.list_namespaced_pod,
                                                system.namespace):  # fmt: skip
                    self.events.append(pod_event(time.time(), event["type"], event["object"]))

    def stop(self) -> None:
        self._stopped.set()
        self._watch.stop()


def records(system: LocalSystem) -> list[dict[str, Any]]:
    path = system.checkpoints / JOB / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line) for line in lines if line.endswith("}")]


def last_step(system: LocalSystem) -> int:
    return max((r["step"] for r in records(system) if "loss" in r), default=0)


def kill(system: LocalSystem, name: str) -> tuple[float, str]:
    """SIGKILL every process of the pod's container (a crash: the pod turns Failed); (when, its
    uid)."""
    pod = system.session.core.read_namespaced_pod(name, system.namespace)
    pids = pod_processes(pod.metadata.uid)
    killed = time.time()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return killed, pod.metadata.uid


@contextlib.contextmanager
def running_job(system: LocalSystem) -> Iterator[float]:
    """Apply the job; yield when it was applied; delete it afterwards."""
    document = yaml.safe_dump(job_manifest(system.nodes.selector))
    applied = time.time()
    system.session.kubectl("apply", "-n", system.namespace, "-f", "-", stdin=document)
    try:
        yield applied
    finally:
        system.session.kubectl("delete", "ptj", JOB, "-n", system.namespace, "--wait=false")


def recover_once(system: LocalSystem, pods: PodWatch, victim: str) -> dict[str, float]:
    """Kill `victim` mid-interval (two steps past a checkpoint, as a failure would come) and
    time the recovery."""
    target = (last_step(system) // CHECKPOINT_EVERY + 1) * CHECKPOINT_EVERY + 2
    wait_until(lambda: last_step(system) >= target, f"step {target}", timeout=600)
    killed, uid = kill(system, victim)
    wait_until(lambda: first_step_after(killed, records(system)),
               "the first step after the kill", timeout=600)  # fmt: skip
    return breakdown(killed, victim, uid, list(pods.events), records(system))


def measure(runs: int = 3) -> dict[str, Any]:
    victim = f"{JOB}-node-1"
    with tempfile.TemporaryDirectory(prefix="bench-recovery-") as work, \
            local_system(Path(work), nodes=2, namespace="bench") as system, \
            running_job(system) as applied:  # fmt: skip
        pods = PodWatch(system)
        wait_until(lambda: last_step(system) >= 1, "the first step", timeout=600)
        cold_start = next(r["time"] for r in records(system) if "loss" in r) - applied
        recoveries = [recover_once(system, pods, victim) for _ in range(runs)]
        pods.stop()
    phases = {name: round(median([r[name] for r in recoveries]), 2) for name in [*PHASES, "total"]}
    ratio = phases["total"] / cold_start
    summary = (f"kill to next step {phases['total']:.1f} s (median of {runs}), "
               f"{ratio:.2f} of a cold start ({cold_start:.1f} s): "
               + ", ".join(f"{name} {phases[name]:.1f}" for name in PHASES))  # fmt: skip
    return {"cold_start_seconds": round(cold_start, 2), "phases": phases, "ratio": ratio,
            "recoveries": recoveries, "summary": summary}  # fmt: skip
