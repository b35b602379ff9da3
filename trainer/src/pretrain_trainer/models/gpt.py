"""gpt: a decoder-only transformer (GPT-2), next-token prediction with tied embeddings."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pretrain_trainer.models.core import (
    Stack,
    TransformerConfig,
    attention_mask,
    init_weights,
    scale_residual_projections,
)


@dataclass(kw_only=True, slots=True)
class GPTConfig(TransformerConfig):
    vocab_size: int
    """Tokens in the vocabulary."""
    max_positions: int = 1024
    """Longest sequence (learned absolute positions)."""


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.positions = nn.Embedding(config.max_positions, config.hidden_size)
        self.dropout = nn.Dropout(config.dropout)
        self.stack = Stack(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.lm_head.weight = self.embed.weight  # tied, as GPT-2
        init_weights(self)
        scale_residual_projections(self.stack, config.layers)

    def forward(
        self, input_ids: torch.Tensor, documents: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits (B, T, vocab). `documents` keeps attention inside each packed document."""
        length = input_ids.shape[1]
        if length > self.config.max_positions:
            raise ValueError(f"sequence of {length} tokens exceeds {self.config.max_positions}")
        positions = torch.arange(length, device=input_ids.device)
        x = self.dropout(self.embed(input_ids) + self.positions(positions))
        mask = attention_mask(documents=documents, causal=True)
        return self.lm_head(self.stack(x, mask, causal=True))
