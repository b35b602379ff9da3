"""What every objective provides: turning samples into model inputs (randomness drawn from
(seed, global sample index) only), and its loss as sums over targets, one per loss term.

The trainer divides each term's sum by the number of its targets in the whole step (all
micro-batches, later all ranks) and weighs the terms: the loss of a step does not depend on how
the step was split. Most objectives have one term; ELECTRA has two (generator, discriminator).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from torch import nn

Batch = dict[str, torch.Tensor]


class Objective(ABC):
    """One pre-training objective over one model family."""

    # term name -> (weight, the batch entry that counts its targets)
    TERMS: ClassVar[dict[str, tuple[float, str]]] = {"loss": (1.0, "target_count")}

    @property
    def terms(self) -> dict[str, tuple[float, str]]:
        return self.TERMS

    @abstractmethod
    def prepare(self, samples: list[Any], indices: list[int]) -> Batch:
        """Model inputs, targets and target counts for samples with these global indices."""

    @abstractmethod
    def loss(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        """The sum of per-target losses of each term over the batch."""

    def counts(self, batches: list[Batch]) -> dict[str, float]:
        """Targets of each count entry over a whole step, known before any forward pass."""
        keys = {key for _, key in self.terms.values()}
        return {key: max(1.0, float(sum(int(b[key]) for b in batches))) for key in keys}

    def combine(self, sums: dict[str, torch.Tensor], counts: dict[str, float]) -> torch.Tensor:
        """The step's loss: each term's sum over its global target count, weighted."""
        total = torch.zeros((), device=next(iter(sums.values())).device)
        for name, (weight, key) in self.terms.items():
            total = total + weight * sums[name].float() / counts[key]
        return total
