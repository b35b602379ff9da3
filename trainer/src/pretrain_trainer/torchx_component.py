"""A TorchX component for the trainer: `torchx run -s SCHEDULER
pretrain_trainer/torchx_component.py:pretrain --config job.yaml` launches the same torchrun
workers the operator's pods run, on any TorchX scheduler (local_cwd, kubernetes, slurm, ...).

Optional (extra `torchx`): TorchX 0.7.0 pins urllib3<1.27, which the Kubernetes client of the
operator cannot share an environment with, so it is installed and tested in a virtualenv of its own.
"""

# No `from __future__ import annotations`: TorchX reads the parameter types at run time.
import torchx.specs as specs


def pretrain(
    config: str,
    output: str = "runs/torchx",
    nnodes: str = "1",
    nproc_per_node: int = 1,
    image: str = "pretrain-operator/trainer:0.1.0",
    rdzv_endpoint: str = "localhost:29500",
) -> specs.AppDef:
    """Train a PretrainJob spec.

    Args:
        config: the PretrainJob manifest (YAML) or the operator's job.json
        output: run directory (metrics.jsonl, checkpoints/, model/)
        nnodes: nodes, or MIN:MAX for an elastic job
        nproc_per_node: worker processes per node (one per GPU)
        image: the trainer image (schedulers that run containers)
        rdzv_endpoint: host:port of the c10d rendezvous
    """
    max_nodes = int(nnodes.split(":")[-1])
    return specs.AppDef(
        name="pretrain",
        roles=[
            specs.Role(
                name="trainer",
                image=image,
                entrypoint="python",
                args=[
                    "-m",
                    "torch.distributed.run",
                    f"--nnodes={nnodes}",
                    f"--nproc-per-node={nproc_per_node}",
                    "--rdzv-backend=c10d",
                    f"--rdzv-endpoint={rdzv_endpoint}",
                    f"--rdzv-id={specs.macros.app_id}",
                    "-m",
                    "pretrain_trainer",
                    "train",
                    f"--config={config}",
                    f"--output={output}",
                ],
                num_replicas=max_nodes,
            )
        ],
    )
