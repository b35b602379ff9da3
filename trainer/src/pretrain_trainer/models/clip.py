"""clip: an image encoder (ViT) and a text encoder (causal transformer) projected into one space,
with a learned temperature (Radford et al., 2021)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pretrain_trainer.models.core import Stack, TransformerConfig, init_weights
from pretrain_trainer.models.vit import ViT, ViTConfig


@dataclass(kw_only=True, slots=True)
class TextEncoderConfig(TransformerConfig):
    vocab_size: int
    """Tokens in the vocabulary."""
    max_positions: int = 77
    """Context length."""


@dataclass(kw_only=True, slots=True)
class CLIPConfig:
    vision: ViTConfig
    text: TextEncoderConfig
    embed_size: int = 512
    """Width of the joint embedding space."""
    temperature: float = 0.07
    """Initial temperature; the model learns log(1/temperature), capped at log(100)."""


class TextEncoder(nn.Module):
    def __init__(self, config: TextEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.positions = nn.Parameter(torch.zeros(1, config.max_positions, config.hidden_size))
        self.stack = Stack(config)
        init_weights(self)
        nn.init.normal_(self.positions, std=0.01)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The feature at each caption's last real token ([EOS]), as CLIP."""
        x = self.embed(tokens) + self.positions[:, : tokens.shape[1]]
        hidden = self.stack(x, causal=True)
        return hidden[torch.arange(tokens.shape[0], device=tokens.device), lengths - 1]


class CLIP(nn.Module):
    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        self.config = config
        self.vision = ViT(config.vision)
        self.text = TextEncoder(config.text)
        self.image_projection = nn.Linear(config.vision.hidden_size, config.embed_size, bias=False)
        self.text_projection = nn.Linear(config.text.hidden_size, config.embed_size, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / config.temperature)))
        for projection in (self.image_projection, self.text_projection):
            nn.init.normal_(projection.weight, std=projection.in_features**-0.5)

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_projection(self.vision(images)[:, 0]), dim=-1)

    def embed_texts(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_projection(self.text(tokens, lengths)), dim=-1)

    def forward(
        self, images: torch.Tensor, tokens: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        """Image-to-text logits (B, B): scaled cosine similarities."""
        scale = self.logit_scale.clamp(max=math.log(100)).exp()
        return scale * self.embed_images(images) @ self.embed_texts(tokens, lengths).T
