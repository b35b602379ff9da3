"""MaskedImage (MAE, He et al. 2022): hide a random `maskRatio` of the patches, encode the visible
ones, reconstruct the pixels; the loss is the mean squared error on masked patches only, against
per-patch normalised pixels (the paper's better-performing target)."""

from __future__ import annotations

import torch
from torch import nn

from pretrain_trainer import rng
from pretrain_trainer.data.images import ImageSample
from pretrain_trainer.models.vit import patchify
from pretrain_trainer.objectives.base import Batch, Objective

NOISE = 11


def visible_patches(seed: int, indices: torch.Tensor, patches: int, ratio: float) -> torch.Tensor:
    """(B, K) indices of the patches each sample keeps, K = patches * (1 - ratio)."""
    keep = max(1, round(patches * (1 - ratio)))
    noise = rng.uniform(seed, indices, patches, NOISE)
    return noise.argsort(dim=1)[:, :keep].sort(dim=1).values


class MaskedImageModeling(Objective):
    def __init__(self, seed: int, ratio: float, patches: int, patch_size: int) -> None:
        self.seed, self.ratio, self.patches, self.patch_size = seed, ratio, patches, patch_size

    def prepare(self, samples: list[ImageSample], indices: list[int]) -> Batch:
        keep = visible_patches(self.seed, torch.tensor(indices), self.patches, self.ratio)
        masked = len(samples) * (self.patches - keep.shape[1])
        return {"images": torch.stack([s.image for s in samples]), "keep": keep,
                "target_count": torch.tensor(masked)}  # fmt: skip

    def loss(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        prediction = model(batch["images"], batch["keep"]).float()
        target = patchify(batch["images"], self.patch_size)
        mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        target = (target - mean) / (var + 1e-6).sqrt()
        per_patch = (prediction - target).pow(2).mean(-1)
        masked = torch.ones_like(per_patch, dtype=torch.bool)
        masked.scatter_(1, batch["keep"], False)
        return {"loss": per_patch[masked].sum()}
