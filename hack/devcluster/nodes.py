"""Simulated nodes (kwok) with accelerators, and pod faults on demand.

A node created here carries kwok's annotation, so kwok makes it Ready, keeps its lease, and runs
the pods bound to it through the stages in kwok-stages.yaml. Capacity is real to the scheduler:
a pod asking for more `nvidia.com/gpu` than a node has is not placed there.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from kubernetes import client

from devcluster.controlplane import FAKE_NODE_ANNOTATION
from devcluster.waiting import wait_until

GPU_RESOURCE = "nvidia.com/gpu"
TPU_RESOURCE = "google.com/tpu"
NODE_POOL_LABEL = "pretrain.dev/node-pool"
PHASE_ANNOTATION = "kwok.pretrain.dev/phase"
EXIT_CODE_ANNOTATION = "kwok.pretrain.dev/exit-code"


@dataclass(frozen=True, slots=True)
class NodeShape:
    """What one simulated machine offers."""

    cpu: str = "64"
    memory: str = "512Gi"
    pods: int = 110
    gpus: int = 0
    gpu_product: str = "NVIDIA-H100-80GB-HBM3"
    tpu_chips: int = 0
    tpu_accelerator: str = "tpu-v5-lite-podslice"
    tpu_topology: str = "2x2"


def node_manifest(name: str, shape: NodeShape, pool: str = "default") -> dict[str, Any]:
    """A Node object as a kubelet would register it, with the labels GPU/TPU pools carry."""
    capacity: dict[str, str] = {
        "cpu": shape.cpu,
        "memory": shape.memory,
        "pods": str(shape.pods),
    }
    labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "type": "kwok",
        NODE_POOL_LABEL: pool,
    }
    if shape.gpus:
        capacity[GPU_RESOURCE] = str(shape.gpus)
        labels["nvidia.com/gpu.present"] = "true"
        labels["nvidia.com/gpu.product"] = shape.gpu_product
        labels["nvidia.com/gpu.count"] = str(shape.gpus)
    if shape.tpu_chips:
        capacity[TPU_RESOURCE] = str(shape.tpu_chips)
        # The node selectors GKE puts on TPU slices; the operator targets them.
        labels["cloud.google.com/gke-tpu-accelerator"] = shape.tpu_accelerator
        labels["cloud.google.com/gke-tpu-topology"] = shape.tpu_topology
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {FAKE_NODE_ANNOTATION: "fake"},
        },
        "spec": {},
        "status": {"capacity": capacity, "allocatable": capacity},
    }


def create_node(
    core: client.CoreV1Api, name: str, shape: NodeShape, pool: str = "default"
) -> dict[str, Any]:
    manifest = node_manifest(name, shape, pool)
    core.create_node(body=manifest)
    return manifest


def node_ready(core: client.CoreV1Api, name: str) -> bool:
    """Ready, and the node controller has lifted its not-ready taints: pods can land."""
    node = core.read_node(name)
    conditions = node.status.conditions or []
    tainted = any(t.key.startswith("node.kubernetes.io/") for t in node.spec.taints or [])
    return not tainted and any(c.type == "Ready" and c.status == "True" for c in conditions)


class NodePool:
    """Simulated nodes with a pool label of their own, so that pods selecting `selector` land on
    these nodes only, whatever else shares the cluster (tests run side by side)."""

    def __init__(self, core: client.CoreV1Api) -> None:
        self.core = core
        self.name = f"pool-{secrets.token_hex(4)}"
        self.nodes: list[str] = []

    @property
    def selector(self) -> dict[str, str]:
        return {NODE_POOL_LABEL: self.name}

    def add(self, shape: NodeShape | None = None) -> str:
        """Create a node (8 GPUs unless told otherwise) and return its name once Ready."""
        name = f"kwok-{secrets.token_hex(4)}"
        create_node(self.core, name, shape or NodeShape(gpus=8), self.name)
        self.nodes.append(name)
        wait_until(lambda: node_ready(self.core, name), f"node {name} Ready")
        return name

    def delete(self) -> None:
        for name in self.nodes:
            self.core.delete_node(name)
        self.nodes.clear()


def finish_pod(
    core: client.CoreV1Api, namespace: str, name: str, phase: str, exit_code: int | None = None
) -> None:
    """Make a running simulated pod terminate as `phase` (Succeeded or Failed)."""
    if phase not in {"Succeeded", "Failed"}:
        raise ValueError(f"phase must be Succeeded or Failed, not {phase!r}")
    annotations = {PHASE_ANNOTATION: phase}
    if exit_code is not None:
        annotations[EXIT_CODE_ANNOTATION] = str(exit_code)
    core.patch_namespaced_pod(name, namespace, {"metadata": {"annotations": annotations}})
