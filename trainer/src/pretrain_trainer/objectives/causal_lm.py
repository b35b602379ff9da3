"""CausalLM (GPT): predict each next token. Packed documents attend only within themselves, and
the first token of a document is never a target of the previous document's last token."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pretrain_trainer.data.text import TextSample
from pretrain_trainer.objectives.base import Batch, Objective


class CausalLanguageModeling(Objective):
    def prepare(self, samples: list[TextSample], indices: list[int]) -> Batch:
        tokens = torch.stack([s.tokens for s in samples])
        owners = torch.stack([s.documents for s in samples])
        inputs, targets = tokens[:, :-1], tokens[:, 1:].clone()
        crossing = owners[:, 1:] != owners[:, :-1]  # the next token opens another document
        targets[crossing] = -100
        return {
            "input_ids": inputs,
            "documents": owners[:, :-1],
            "labels": targets,
            "target_count": (targets != -100).sum(),
        }

    def loss(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        logits = model(batch["input_ids"], documents=batch["documents"])
        labels = batch["labels"]
        total = F.cross_entropy(
            logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum"
        )
        return {"loss": total}
