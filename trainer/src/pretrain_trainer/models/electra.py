"""electra: a small generator (a masked LM) and a discriminator that tells replaced tokens from
original ones (Clark et al., 2020). They share the token and position embeddings; the generator
works at a smaller width through a projection, as in the paper's released models."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pretrain_trainer.models.bert import BertConfig, BertEmbeddings
from pretrain_trainer.models.core import Stack, TransformerConfig, attention_mask, init_weights


@dataclass(kw_only=True, slots=True)
class ElectraConfig:
    discriminator: BertConfig
    generator: TransformerConfig


def generator_shape(hidden: int, heads: int, intermediate: int) -> dict[str, int]:
    """A quarter of the discriminator's width (the paper found 1/4 to 1/2 best)."""
    width = max(64, hidden // 4)
    return {"hidden_size": width, "heads": max(1, min(heads, width // 64)),
            "intermediate_size": max(256, intermediate // 4)}  # fmt: skip


class Electra(nn.Module):
    def __init__(self, config: ElectraConfig) -> None:
        super().__init__()
        self.config = config
        width = config.discriminator.hidden_size
        small = config.generator.hidden_size
        self.embeddings = BertEmbeddings(config.discriminator)
        # Generator: shared embeddings projected down, its own stack, an MLM head tied back to them.
        self.generator_in = nn.Linear(width, small)
        self.generator = Stack(config.generator)
        self.generator_out = nn.Linear(small, width)
        self.generator_norm = nn.LayerNorm(width, eps=config.discriminator.norm_eps)
        self.generator_bias = nn.Parameter(torch.zeros(config.discriminator.vocab_size))
        # Discriminator: the full encoder and a per-token binary head.
        self.discriminator = Stack(config.discriminator)
        self.discriminator_head = nn.Sequential(nn.Linear(width, width), nn.GELU(),
                                                nn.Linear(width, 1))  # fmt: skip
        init_weights(self)

    def generator_logits(self, input_ids: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        hidden = self.generator(self.generator_in(self.embeddings(input_ids)),
                                attention_mask(padding=padding))  # fmt: skip
        x = self.generator_norm(F.gelu(self.generator_out(hidden)))
        return x @ self.embeddings.words.weight.T + self.generator_bias

    def discriminator_logits(self, input_ids: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        hidden = self.discriminator(self.embeddings(input_ids), attention_mask(padding=padding))
        return self.discriminator_head(hidden).squeeze(-1)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The discriminator's hidden states: what fine-tuning builds on."""
        return self.discriminator(self.embeddings(input_ids))
