"""bert: a post-norm encoder with the BERT embeddings, masked-LM head and pooler."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pretrain_trainer.models.core import Stack, TransformerConfig, attention_mask, init_weights


@dataclass(kw_only=True, slots=True)
class BertConfig(TransformerConfig):
    vocab_size: int
    """Tokens in the vocabulary."""
    max_positions: int = 512
    """Longest sequence (learned absolute positions)."""
    type_vocab_size: int = 2
    """Segment embeddings (sentence A/B)."""


def bert_config(**shape: int | float) -> dict[str, object]:
    """The parts of BERT's shape that are not the preset's: post-norm, exact GELU, eps 1e-12."""
    return {"norm_first": False, "activation": "gelu", "norm_eps": 1e-12, **shape}


class BertEmbeddings(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.words = nn.Embedding(config.vocab_size, config.hidden_size)
        self.positions = nn.Embedding(config.max_positions, config.hidden_size)
        self.token_types = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self, input_ids: torch.Tensor, token_types: torch.Tensor | None = None
    ) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        types = token_types if token_types is not None else torch.zeros_like(input_ids)
        x = self.words(input_ids) + self.positions(positions) + self.token_types(types)
        return self.dropout(self.norm(x))


class Bert(nn.Module):
    """Encoder; `forward` gives hidden states, `mlm_logits` the masked-LM predictions."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.stack = Stack(config)
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size)
        self.mlm_transform = nn.Linear(config.hidden_size, config.hidden_size)
        self.mlm_norm = nn.LayerNorm(config.hidden_size, eps=config.norm_eps)
        self.mlm_bias = nn.Parameter(torch.zeros(config.vocab_size))
        init_weights(self)

    def forward(
        self,
        input_ids: torch.Tensor,
        padding: torch.Tensor | None = None,
        token_types: torch.Tensor | None = None,
    ) -> torch.Tensor:
        mask = attention_mask(padding=padding)
        return self.stack(self.embeddings(input_ids, token_types), mask)

    def pooled(self, hidden: torch.Tensor) -> torch.Tensor:
        """The [CLS] representation through the pooler (BERT's classification input)."""
        return torch.tanh(self.pooler(hidden[:, 0]))

    def mlm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Predictions over the vocabulary; the output matrix is the word embedding (tied)."""
        x = self.mlm_norm(F.gelu(self.mlm_transform(hidden)))
        return x @ self.embeddings.words.weight.T + self.mlm_bias
