"""The one launch definition of the trainer under torch elastic, used by the node pods the
operator creates and by `pretrain run --nproc N` on one machine: the same torchrun, the same
entry point, only the rendezvous differs."""

from __future__ import annotations

TRAINER_MODULE = "pretrain_trainer"
MAX_LOCAL_RESTARTS = 3  # torchrun restarts its workers this often before the pod fails
# What torchrun's environment needs. By default the agent of rank 0 lends its workers a store
# that lives on across rendezvous rounds, with no prefix per round: after a node is lost, the
# workers of the next round read the dead workers' addresses and fail to connect (and if node 0
# was the one lost, the store is gone). Without sharing, each round's rank 0 starts a new store.
ENVIRONMENT = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}


def trainer_arguments(config: str, output: str | None = None) -> list[str]:
    """What torchrun runs in every worker process."""
    arguments = ["-m", TRAINER_MODULE, "train", f"--config={config}"]
    if output:
        arguments.append(f"--output={output}")
    return arguments


def torchrun_command(
    *,
    min_nodes: int,
    max_nodes: int,
    processes_per_node: int,
    rendezvous_endpoint: str,
    rendezvous_id: str,
    config: str,
    output: str | None = None,
) -> list[str]:
    return [
        "torchrun",
        f"--nnodes={min_nodes}:{max_nodes}",
        f"--nproc-per-node={processes_per_node}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={rendezvous_endpoint}",
        f"--rdzv-id={rendezvous_id}",
        f"--max-restarts={MAX_LOCAL_RESTARTS}",
        *trainer_arguments(config, output),
    ]
