"""The one launch definition of the trainer under torch elastic, used by the node pods the
operator creates and by `pretrain run --nproc N` on one machine: the same torchrun, the same
entry point, only the rendezvous differs (and a node pod runs torchrun under the node
supervisor, `pretrain_trainer.node`)."""

from __future__ import annotations

TRAINER_MODULE = "pretrain_trainer"
NODE_MODULE = "pretrain_trainer.node"  # the node supervisor, PID 1 of a node pod
MAX_LOCAL_RESTARTS = 3  # torchrun restarts its workers this often before the pod fails
# What torchrun's environment needs. By default the agent of rank 0 lends its workers a store
# that lives on across rendezvous rounds, with no prefix per round: after a node is lost, the
# workers of the next round read the dead workers' addresses and fail to connect (and if node 0
# was the one lost, the store is gone). Without sharing, each round's rank 0 starts a new store.
# OpenMP threads that wait for work sleep instead of spinning: where a node's cores are shared
# (pods beside each other, CPU limits below the cores torch sees), spinning threads take the
# cores the working ones need. Three 2-thread torch processes on 2 cores trained 3.5 times slower
# in all than one alone when spinning, and faster than one alone when passive; alone, passive
# costs about 1 % (`spec.template.env` can set OMP_WAIT_POLICY=ACTIVE on a node of its own).
ENVIRONMENT = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1", "OMP_WAIT_POLICY": "PASSIVE"}


def trainer_arguments(config: str, output: str | None = None) -> list[str]:
    """What torchrun runs in every worker process."""
    arguments = ["-m", TRAINER_MODULE, "train", f"--config={config}"]
    if output:
        arguments.append(f"--output={output}")
    return arguments


def torchrun_arguments(
    *,
    min_nodes: int,
    max_nodes: int,
    processes_per_node: int,
    rendezvous_endpoint: str,
    rendezvous_id: str,
    config: str,
    output: str | None = None,
) -> list[str]:
    """torchrun's arguments: the elastic launch, then the worker's entry point."""
    return [
        f"--nnodes={min_nodes}:{max_nodes}",
        f"--nproc-per-node={processes_per_node}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={rendezvous_endpoint}",
        f"--rdzv-id={rendezvous_id}",
        f"--max-restarts={MAX_LOCAL_RESTARTS}",
        *trainer_arguments(config, output),
    ]


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
    """Plain torchrun, as `pretrain run --nproc N` runs it on one machine."""
    return ["torchrun", *torchrun_arguments(
        min_nodes=min_nodes, max_nodes=max_nodes, processes_per_node=processes_per_node,
        rendezvous_endpoint=rendezvous_endpoint, rendezvous_id=rendezvous_id, config=config,
        output=output,
    )]  # fmt: skip


def node_command(grace_seconds: int, torchrun: list[str]) -> list[str]:
    """What a node pod runs: torchrun under the node supervisor, PID 1 of the pod (it fails the
    pod at once on a configuration error, and gives the workers the pod's grace period, less a
    margin, to save on SIGTERM)."""
    return ["python", "-m", NODE_MODULE, f"--grace-seconds={grace_seconds}", "--", *torchrun]
