"""t5: an encoder-decoder (Raffel et al., 2020) on the shared core: a shared embedding, a
pre-norm encoder, a decoder with cross-attention, and an output layer tied to the embedding.

Positions are learned absolute embeddings rather than T5's relative attention bias, and norms
are LayerNorm rather than RMSNorm: the shared core keeps one attention path (SDPA) for every
family. T5-base's shape (12+12 blocks, 768 wide, 12 heads, MLP 3072) is the `base` preset.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pretrain_trainer.models.core import Stack, TransformerConfig, attention_mask, init_weights


@dataclass(kw_only=True, slots=True)
class T5Config(TransformerConfig):
    vocab_size: int
    """Tokens in the vocabulary (sentinels included)."""
    decoder_layers: int
    """Decoder blocks (`layers` is the encoder's)."""
    max_positions: int = 512
    """Longest input or target."""


class T5(nn.Module):
    def __init__(self, config: T5Config) -> None:
        super().__init__()
        self.config = config
        width = config.hidden_size
        self.embed = nn.Embedding(config.vocab_size, width)
        self.encoder_positions = nn.Embedding(config.max_positions, width)
        self.decoder_positions = nn.Embedding(config.max_positions, width)
        self.encoder = Stack(config)
        decoder_config = TransformerConfig(
            hidden_size=width, layers=config.decoder_layers, heads=config.heads,
            intermediate_size=config.intermediate_size, dropout=config.dropout,
            activation=config.activation, norm_eps=config.norm_eps,
        )  # fmt: skip
        self.decoder = Stack(decoder_config, cross=True)
        self.dropout = nn.Dropout(config.dropout)
        init_weights(self)

    def _embed(self, ids: torch.Tensor, positions: nn.Embedding) -> torch.Tensor:
        where = torch.arange(ids.shape[1], device=ids.device)
        return self.dropout(self.embed(ids) + positions(where))

    def forward(
        self, input_ids: torch.Tensor, padding: torch.Tensor, decoder_ids: torch.Tensor
    ) -> torch.Tensor:
        """Logits (B, T_target, vocab) of the decoder, teacher-forced with `decoder_ids`."""
        memory = self.encoder(self._embed(input_ids, self.encoder_positions),
                              attention_mask(padding=padding))  # fmt: skip
        cross = padding[:, None, None, :].expand(-1, 1, decoder_ids.shape[1], -1)
        hidden = self.decoder(self._embed(decoder_ids, self.decoder_positions), causal=True,
                              memory=memory, memory_mask=cross)  # fmt: skip
        # Tied output layer, scaled as in T5 (the embedding serves both ends).
        return (hidden * self.config.hidden_size**-0.5) @ self.embed.weight.T
