"""One optimizer step, shared by pre-training and fine-tuning: this rank's micro-batches of the
step accumulated, each loss term divided by its target count over the whole step (all
micro-batches of all ranks), so the step does not depend on how it is split."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from pretrain_operator.api.common import Precision, Training
from pretrain_trainer.distributed import Runtime, all_sum
from pretrain_trainer.objectives.base import Batch, Objective


def autocast(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager[Any]:
    if precision == Precision.FP32 or (device.type == "cpu" and precision != Precision.BF16):
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == Precision.BF16 else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def to_device(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def optimizer_step(
    batches: list[Batch],
    objective: Objective,
    forward: nn.Module,
    ddp: nn.parallel.DistributedDataParallel | None,
    parameters: list[nn.Parameter],
    optimizer: torch.optim.Optimizer,
    rate: float,
    training: Training,
    runtime: Runtime,
    device: torch.device,
) -> tuple[float, float]:
    """Accumulate the gradients of `batches`, clip `parameters`, step at learning rate `rate`:
    (this rank's share of the step's loss, the gradient norm). `forward` is the loss module as
    wrapped for training (DDP, FSDP, compiled); `ddp` the DDP module inside it, if any."""
    local_counts = objective.counts(batches)
    keys = sorted(local_counts)
    counts = dict(zip(keys, all_sum([local_counts[k] for k in keys], runtime), strict=True))
    for group in optimizer.param_groups:
        group["lr"] = rate
    optimizer.zero_grad(set_to_none=True)
    loss_total = torch.zeros((), device=device)
    for number, batch in enumerate(batches):
        # DDP averages gradients over ranks; scaling by the world size turns the average back
        # into the sum the global normalisation needs. Only the last micro-batch syncs.
        accumulating = ddp is not None and number < len(batches) - 1
        gradients = ddp.no_sync() if ddp is not None and accumulating else contextlib.nullcontext()
        with gradients, autocast(device, training.precision):
            loss = objective.combine(forward(to_device(batch, device)), counts)
            (loss * runtime.world_size).backward()
        loss_total += loss.detach()
    norm = torch.nn.utils.clip_grad_norm_(parameters, training.gradient_clipping or float("inf"))
    optimizer.step()
    return float(loss_total), float(norm.full_tensor() if isinstance(norm, DTensor) else norm)
