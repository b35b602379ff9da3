"""A tiny elastic PretrainJob run through the operator on real kubelet nodes, and what the e2e tests
read back: the trainer's metrics.jsonl and exported model on the checkpoint claim."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devcluster.session import ClusterSession
from devcluster.waiting import wait_until

# MaskedLM on a Byte tokenizer (a trained vocabulary differs between processes), a global
# batch that 1, 2 and 3 workers split evenly: the loss of a step is the same for any world size.
MAX_STEPS, CHECKPOINT_EVERY = 24, 4
RELATIVE_TOLERANCE = 1e-4


def job_manifest(name: str, node_selector: dict[str, str], **spec: Any) -> dict[str, Any]:
    manifest: dict[str, Any] = {
        "apiVersion": "pretrain.dev/v1alpha1",
        "kind": "PretrainJob",
        "metadata": {"name": name},
        "spec": {
            "objective": {"type": "MaskedLM"},
            "model": {"family": "bert", "size": "tiny"},
            "tokenizer": {"type": "Byte"},
            "data": {
                "sources": [{"uri": "pvc://corpus/python-docs.jsonl"}],
                "sequenceLength": 32,
                "validationFraction": 0.05,
            },
            "training": {
                "globalBatchSize": 12,
                "microBatchSize": 2,
                "maxSteps": MAX_STEPS,
                "precision": "fp32",
                "optimizer": {"learningRate": 1.0e-3},
                "seed": 7,
            },
            "checkpoint": {
                "storage": {"persistentVolumeClaim": "checkpoints"},
                "everySteps": CHECKPOINT_EVERY,
            },
            "replicas": {"min": 2, "max": 3},
            # No CPU: a real kubelet enforces a CPU limit as a CFS quota (slower steps), and two
            # 2-core nodes must hold the 3 node pods and the rendezvous, also with one node lost.
            # Memory holds torchrun's agent and its worker, each with torch imported.
            "resources": {"memory": "2Gi"},
            # The operator mounts the claim `corpus` where pvc://corpus/... is read.
            "template": {"nodeSelector": node_selector},
        },
    }
    manifest["spec"].update(spec)
    return manifest


def read_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip().endswith("}")]


def step_losses(records: list[dict[str, Any]]) -> dict[int, float]:
    """The loss of every step; a step trained again after a resume reports its last value."""
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def relative_difference(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


@dataclass
class JobRun:
    """One PretrainJob in a namespace, and its directory on the checkpoint claim."""

    cluster: ClusterSession
    namespace: str
    name: str
    directory: Path  # the job's checkpoint directory: metrics.jsonl, step-N/, model/

    @property
    def records(self) -> list[dict[str, Any]]:
        return read_records(self.directory / "metrics.jsonl")

    def status(self) -> dict[str, Any]:
        body = self.cluster.kubectl("get", "ptj", self.name, "-n", self.namespace, "-o", "json")
        return dict(json.loads(body.stdout).get("status") or {})

    def wait_phase(self, phase: str, timeout: float = 300) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            status = self.status()
            assert status.get("phase") != "Failed", f"the job failed: {status}"
            return status if status.get("phase") == phase else None

        return wait_until(
            reached, f"PretrainJob {self.name} {phase}", timeout=timeout, interval=1.0
        )

    def wait_step(self, step: int, timeout: float = 300) -> None:
        wait_until(
            lambda: max(step_losses(self.records), default=0) >= step,
            f"step {step} in metrics.jsonl",
            timeout=timeout,
            interval=0.2,
        )

    def mark(self) -> tuple[float, int]:
        """Now, and how many records metrics.jsonl holds: where a fault starts."""
        return time.monotonic(), len(self.records)

    def seconds_to_next_step(self, mark: tuple[float, int], timeout: float = 300) -> float:
        """From `mark` (a fault) until the trainer completes a step again."""
        started, seen = mark
        wait_until(
            lambda: any("loss" in r for r in self.records[seen:]),
            "a step completed after the fault",
            timeout=timeout,
            interval=0.2,
        )
        return time.monotonic() - started

    def events(self, reason: str) -> list[str]:
        """The messages of the job's Events with that reason, oldest first."""
        body = self.cluster.kubectl(
            "get", "events", "-n", self.namespace, "-o", "json", "--field-selector",
            f"involvedObject.name={self.name},reason={reason}",
        )  # fmt: skip
        items = json.loads(body.stdout)["items"]
        items.sort(key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
        return [str(e["message"]) for e in items]

    def pods(self) -> list[dict[str, Any]]:
        selector = f"pretrain.dev/job-name={self.name}"
        body = self.cluster.kubectl(
            "get", "pods", "-n", self.namespace, "-l", selector, "-o", "json"
        )
        return list(json.loads(body.stdout)["items"])
