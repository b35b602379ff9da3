"""Task heads on a base network, suited to its family: mean pooling over the real tokens for
encoders (bert, electra, t5: a masked-LM pre-training gives [CLS] no summary role, and
sentence-transformers checkpoints such as all-MiniLM are trained for mean pooling), the last real
token for decoders, the image encoder's [CLS] for ViT and CLIP; a per-token linear layer for
token classification; the base's own LM head for CausalLM.

`features` is what the head reads; a batch that carries cached `features` (LinearProbe) skips
the base altogether."""

from __future__ import annotations

import torch
from torch import nn

from pretrain_operator.api.finetune import TaskType
from pretrain_operator.api.pretrain import ModelFamily
from pretrain_trainer.models.bert import Bert
from pretrain_trainer.models.core import attention_mask
from pretrain_trainer.models.electra import Electra
from pretrain_trainer.models.gpt import GPT
from pretrain_trainer.models.t5 import T5
from pretrain_trainer.models.vit import ViT
from pretrain_trainer.objectives.base import Batch


def width_of(network: nn.Module) -> int:
    if isinstance(network, Electra):
        return network.config.discriminator.hidden_size
    config = getattr(network, "config", None)
    size = getattr(config, "hidden_size", None)
    if not isinstance(size, int):
        raise TypeError(f"no hidden size on {type(network).__name__}")
    return size


def hidden_states(network: nn.Module, ids: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
    """(B, T, width) of a text network; `padding` (B, T) is True on real tokens."""
    if isinstance(network, Bert):
        return network(ids, padding=padding)
    mask = attention_mask(padding=padding)
    if isinstance(network, Electra):
        return network.discriminator(network.embeddings(ids), mask)
    if isinstance(network, T5):
        return network.encoder(network._embed(ids, network.encoder_positions), mask)
    if isinstance(network, GPT):
        # Right padding under a causal mask: real tokens never see the padding after them.
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = network.dropout(network.embed(ids) + network.positions(positions))
        return network.stack(x, None, causal=True)
    raise TypeError(f"{type(network).__name__} is not a text network")


class TaskModel(nn.Module):
    """`network` (the base) and `head`; forward gives logits: (B, labels) for sequence and
    image classification, (B, T, labels) for tokens, (B, T, vocab) for CausalLM."""

    def __init__(self, network: nn.Module, family: ModelFamily, task: TaskType, labels: int):
        super().__init__()
        self.network, self.family, self.task = network, family, task
        self.head: nn.Module
        if task == TaskType.CAUSAL_LM:
            self.head = nn.Identity()  # GPT's tied LM head is part of the network
        else:
            self.head = nn.Linear(width_of(network), labels)
            nn.init.normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

    def features(self, batch: Batch) -> torch.Tensor:
        """What the head reads: (B, width), or (B, T, width) for token classification."""
        if self.task == TaskType.IMAGE_CLASSIFICATION:
            assert isinstance(self.network, ViT)
            return self.network(batch["images"])[:, 0]
        ids, padding = batch["input_ids"], batch["padding"]
        hidden = hidden_states(self.network, ids, padding)
        if self.task == TaskType.TOKEN_CLASSIFICATION:
            return hidden
        if isinstance(self.network, GPT):
            last = padding.long().sum(1) - 1
            return hidden[torch.arange(ids.shape[0], device=ids.device), last]
        weights = padding.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)

    def forward(self, batch: Batch) -> torch.Tensor:
        if self.task == TaskType.CAUSAL_LM:
            assert isinstance(self.network, GPT)
            return self.network(batch["input_ids"])
        if "features" in batch:
            return self.head(batch["features"])
        return self.head(self.features(batch))
