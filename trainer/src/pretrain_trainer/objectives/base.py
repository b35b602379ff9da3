"""What every objective provides: turning samples into model inputs (with randomness drawn from
(seed, global sample index) only) and a loss as (sum over targets, number of targets), so the
trainer can normalise by the global count of targets whatever the world size."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import nn

Batch = dict[str, torch.Tensor]


class Objective(ABC):
    """One pre-training objective over one model family."""

    @abstractmethod
    def prepare(self, samples: list[Any], indices: list[int]) -> Batch:
        """Model inputs and targets for samples with these global indices (CPU tensors)."""

    @abstractmethod
    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of per-target losses, number of targets) over the batch."""

    @staticmethod
    def targets(batch: Batch) -> int:
        """Number of targets in a prepared batch (known before the forward pass)."""
        return int(batch["target_count"].item())
