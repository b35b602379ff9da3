"""The process group under torch elastic: NCCL on GPUs, gloo on CPU, XLA on TPU (when torch_xla
is installed), and the share of a step's samples each rank trains on."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from pretrain_operator.api.common import AcceleratorType, JobSpecBase
from pretrain_trainer.errors import ConfigurationError


@dataclass(frozen=True, slots=True)
class Runtime:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def start(spec: JobSpecBase) -> Runtime:
    """Join the process group torchrun prepared (RANK/WORLD_SIZE set), or run alone."""
    accelerator = spec.resources.accelerator
    tpu = accelerator is not None and accelerator.type == AcceleratorType.GOOGLE_TPU
    if tpu and importlib.util.find_spec("torch_xla") is None:
        raise ConfigurationError(
            "spec.resources.accelerator.type: google.com/tpu needs torch_xla in the trainer "
            "image, and it is not installed"
        )
    if "RANK" not in os.environ:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return Runtime(device=device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        # gloo beside NCCL: background checkpoint writes need a CPU backend.
        device, backend = torch.device("cuda", local_rank), "cpu:gloo,cuda:nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return Runtime(dist.get_rank(), dist.get_world_size(), local_rank, device)


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def share(count: int, runtime: Runtime) -> range:
    """The positions in [0, count) this rank takes: contiguous, as equal as possible."""
    start_at = count * runtime.rank // runtime.world_size
    return range(start_at, count * (runtime.rank + 1) // runtime.world_size)


def all_sum(values: list[float], runtime: Runtime) -> list[float]:
    """Sum floats over all ranks (float64, so counts stay exact)."""
    if not runtime.distributed:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=runtime.device)
    dist.all_reduce(tensor)
    return [float(v) for v in tensor.tolist()]
