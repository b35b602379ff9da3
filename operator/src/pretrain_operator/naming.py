"""Names, labels and ports shared by the operator's children and the trainer (one place each)."""

from __future__ import annotations

LABEL_JOB = "pretrain.dev/job-name"
LABEL_KIND = "pretrain.dev/job-kind"
LABEL_ROLE = "pretrain.dev/role"
LABEL_NODE_INDEX = "pretrain.dev/node-index"
# On every node pod: the elastic bounds "MIN:MAX" its torchrun was started with (`--nnodes`).
ANNOTATION_REPLICAS = "pretrain.dev/replicas"
ROLE_NODE = "node"
ROLE_RENDEZVOUS = "rendezvous"

RENDEZVOUS_PORT = 29400
METRICS_PORT = 9400
CONFIG_MOUNT = "/etc/pretrain"
CONFIG_FILE = "job.json"
CHECKPOINT_MOUNT = "/checkpoints"
CREDENTIALS_MOUNT = "/var/run/secrets/pretrain"  # a secretRef's files, under its name
BASE_MOUNT = "/base"
CLAIMS_MOUNT = "/mnt/pvc"  # pvc://CLAIM/path is read at CLAIMS_MOUNT/CLAIM/path
TRAINER_CONTAINER = "trainer"

# Exit codes of the trainer that the operator acts on (sysexits.h EX_CONFIG for bad input).
EXIT_BAD_CONFIGURATION = 78
EXIT_TERMINATED = 143  # 128 + SIGTERM: stopped on request after saving a checkpoint


def replica_bounds(min_nodes: int, max_nodes: int) -> str:
    """The value of ANNOTATION_REPLICAS (and of torchrun's --nnodes)."""
    return f"{min_nodes}:{max_nodes}"


def config_map_name(job: str) -> str:
    return f"{job}-config"


def service_name(job: str) -> str:
    """Headless Service of the node pods: `<job>-node-<i>.<job>` resolves to pod i."""
    return job


def rendezvous_name(job: str) -> str:
    """The rendezvous pod and its Service."""
    return f"{job}-rdzv"


def node_pod_name(job: str, index: int) -> str:
    return f"{job}-node-{index}"


def checkpoint_step_dir(step: int) -> str:
    """The directory of one complete checkpoint under the job's checkpoint root."""
    return f"step-{step:09d}"
