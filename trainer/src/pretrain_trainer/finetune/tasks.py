"""The loss of each task in the trainer's Objective form (sums over targets, counted per step),
so the loop normalises fine-tuning steps like pre-training ones whatever the world size."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pretrain_operator.api.finetune import TaskType
from pretrain_trainer.finetune.data import IGNORE, Example
from pretrain_trainer.objectives.base import Batch, Objective


def _pad(tensors: list[torch.Tensor], value: int | float) -> torch.Tensor:
    return nn.utils.rnn.pad_sequence(tensors, batch_first=True, padding_value=value)


class TaskObjective(Objective):
    """Cross-entropy over classes, tokens or response tokens."""

    def __init__(self, task: TaskType, pad: int) -> None:
        self.task, self.pad = task, pad

    @property
    def per_token(self) -> bool:
        return self.task in {TaskType.TOKEN_CLASSIFICATION, TaskType.CAUSAL_LM}

    def prepare(self, samples: list[Example], indices: list[int]) -> Batch:
        del indices  # no randomness: the inputs are what the records say
        inputs = [s.inputs for s in samples]
        batch: Batch = {}
        if inputs[0].dtype.is_floating_point and inputs[0].dim() == 3:
            batch["images"] = torch.stack(inputs)  # (3, H, W) each
        elif inputs[0].dtype.is_floating_point:  # cached features: (width,) or (tokens, width)
            batch["features"] = _pad(inputs, 0.0) if inputs[0].dim() == 2 else torch.stack(inputs)
        else:
            batch["input_ids"] = _pad(inputs, self.pad)
            lengths = torch.tensor([len(i) for i in inputs])
            batch["padding"] = torch.arange(batch["input_ids"].shape[1]) < lengths[:, None]
        targets = [s.target for s in samples]
        batch["targets"] = _pad(targets, IGNORE) if self.per_token else torch.stack(targets)
        counted = self.shifted(batch["targets"]) if self.per_token else batch["targets"]
        batch["target_count"] = (counted != IGNORE).sum()
        return batch

    def shifted(self, targets: torch.Tensor) -> torch.Tensor:
        """CausalLM predicts token t+1 at position t."""
        return targets[:, 1:] if self.task == TaskType.CAUSAL_LM else targets

    def aligned(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(logits, targets) flattened to one prediction per row."""
        if self.task == TaskType.CAUSAL_LM:
            logits, targets = logits[:, :-1], targets[:, 1:]
        return logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)

    def loss(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        logits, targets = self.aligned(model(batch), batch["targets"])
        return {"loss": F.cross_entropy(logits.float(), targets, ignore_index=IGNORE,
                                        reduction="sum")}  # fmt: skip
