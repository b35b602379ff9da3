"""vit: the Vision Transformer (Dosovitskiy et al.), and the MAE decoder (He et al.) that
reconstructs masked patches from the encoder's view of the visible ones."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pretrain_trainer.models.core import Stack, TransformerConfig, init_weights


@dataclass(kw_only=True, slots=True)
class ViTConfig(TransformerConfig):
    image_size: int = 224
    """Side of the (square) input image, pixels."""
    patch_size: int = 16
    """Side of a patch, pixels; image_size must divide by it."""
    channels: int = 3
    """Input channels."""
    patch_bias: bool = True
    """Bias in the patch projection (ViT: yes; CLIP: no)."""
    pre_norm: bool = False
    """A LayerNorm before the blocks (CLIP's ln_pre)."""

    def __post_init__(self) -> None:
        TransformerConfig.__post_init__(self)
        if self.image_size % self.patch_size:
            raise ValueError(f"imageSize {self.image_size} must be divisible by patchSize "
                             f"{self.patch_size}")  # fmt: skip

    @property
    def patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def vit_config(**shape: int | float | bool) -> dict[str, object]:
    """ViT's fixed choices: pre-norm blocks, exact GELU, LayerNorm eps 1e-6."""
    return {"norm_first": True, "activation": "gelu", "norm_eps": 1e-6, **shape}


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, patches, patch*patch*C), row-major patches."""
    batch, channels, height, width = images.shape
    x = images.reshape(batch, channels, height // patch, patch, width // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(batch, -1, patch * patch * channels)


class ViT(nn.Module):
    """Patch embedding, [CLS], learned positions, a pre-norm stack. Given `keep` (B, K) patch
    indices, it encodes only those patches (MAE's encoder sees the visible 25%)."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = config
        width = config.hidden_size
        self.patch_embed = nn.Conv2d(config.channels, width, config.patch_size,
                                     stride=config.patch_size, bias=config.patch_bias)  # fmt: skip
        self.cls = nn.Parameter(torch.zeros(1, 1, width))
        self.positions = nn.Parameter(torch.zeros(1, config.patches + 1, width))
        self.pre_norm = nn.LayerNorm(width, eps=config.norm_eps) if config.pre_norm else None
        self.dropout = nn.Dropout(config.dropout)
        self.stack = Stack(config)
        init_weights(self)
        nn.init.normal_(self.positions, std=0.02)
        nn.init.normal_(self.cls, std=0.02)

    def forward(self, images: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states (B, 1 + patches or 1 + K, width); position 0 is [CLS]."""
        x = self.patch_embed(images).flatten(2).transpose(1, 2) + self.positions[:, 1:]
        if keep is not None:
            x = torch.gather(x, 1, keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        cls = (self.cls + self.positions[:, :1]).expand(x.shape[0], -1, -1)
        x = self.dropout(torch.cat([cls, x], dim=1))
        if self.pre_norm is not None:
            x = self.pre_norm(x)
        return self.stack(x)


@dataclass(kw_only=True, slots=True)
class MAEConfig:
    encoder: ViTConfig
    decoder: TransformerConfig


class MaskedAutoencoder(nn.Module):
    """MAE: the ViT encodes visible patches; a light decoder fills in mask tokens and predicts the
    pixels of every patch (the loss looks at the masked ones)."""

    def __init__(self, config: MAEConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = ViT(config.encoder)
        patches = config.encoder.patches
        width = config.decoder.hidden_size
        self.decoder_embed = nn.Linear(config.encoder.hidden_size, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.decoder_positions = nn.Parameter(torch.zeros(1, patches + 1, width))
        self.decoder = Stack(config.decoder)
        pixels = config.encoder.patch_size**2 * config.encoder.channels
        self.predict = nn.Linear(width, pixels)
        init_weights(self.decoder)
        for parameter in (self.mask_token, self.decoder_positions):
            nn.init.normal_(parameter, std=0.02)

    def forward(self, images: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Predicted pixels (B, patches, patch*patch*C) for every patch."""
        latent = self.decoder_embed(self.encoder(images, keep))
        batch, patches = images.shape[0], self.config.encoder.patches
        tokens = self.mask_token.expand(batch, patches, -1).clone()
        tokens.scatter_(1, keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]), latent[:, 1:])
        x = torch.cat([latent[:, :1], tokens], dim=1) + self.decoder_positions
        return self.predict(self.decoder(x)[:, 1:])
