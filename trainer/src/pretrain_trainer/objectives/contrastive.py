"""Contrastive (SimCLR, Chen et al. 2020): two random augmentations of each image; the encoder
and a projection head learn to pick an image's other view among all views of the batch
(NT-Xent with `temperature`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pretrain_trainer import rng
from pretrain_trainer.data.images import ImageSample
from pretrain_trainer.objectives.base import Batch, Objective

VIEW_STREAMS = (21, 22)
MIN_CROP_AREA = 0.08
JITTER = 0.4


def augment(image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """SimCLR's recipe on one (C, H, W) image: random resized crop (8-100% of the area, aspect
    3/4-4/3), horizontal flip, brightness and contrast jitter; draws from `generator` only."""
    _, height, width = image.shape

    def draw() -> float:
        return float(torch.rand((), generator=generator))

    area = height * width * (MIN_CROP_AREA + (1 - MIN_CROP_AREA) * draw())
    aspect = (3 / 4) * ((4 / 3) / (3 / 4)) ** draw()
    crop_h = max(1, min(height, round((area / aspect) ** 0.5)))
    crop_w = max(1, min(width, round((area * aspect) ** 0.5)))
    top = int(draw() * (height - crop_h + 1))
    left = int(draw() * (width - crop_w + 1))
    view = image[:, top : top + crop_h, left : left + crop_w].unsqueeze(0)
    view = F.interpolate(view, size=(height, width), mode="bilinear", align_corners=False)[0]
    if draw() < 0.5:
        view = view.flip(-1)
    brightness, contrast = 1 + JITTER * (2 * draw() - 1), 1 + JITTER * (2 * draw() - 1)
    view = (view - view.mean()) * contrast + view.mean() * brightness
    return view.clamp(0, 1)


def nt_xent(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """Sum over the 2N anchors of -log softmax of the positive (views i and i+N pair up)."""
    z = F.normalize(z.float(), dim=-1)
    count = z.shape[0] // 2
    similarity = z @ z.T / temperature
    similarity.fill_diagonal_(float("-inf"))  # an anchor is not its own candidate
    positives = torch.cat([torch.arange(count, 2 * count), torch.arange(count)]).to(z.device)
    return F.cross_entropy(similarity, positives, reduction="sum")


class ContrastiveLearning(Objective):
    def __init__(self, seed: int, temperature: float) -> None:
        self.seed, self.temperature = seed, temperature

    def prepare(self, samples: list[ImageSample], indices: list[int]) -> Batch:
        views = [
            torch.stack([augment(s.image, rng.sample_generator(self.seed, i, stream))
                         for s, i in zip(samples, indices, strict=True)])
            for stream in VIEW_STREAMS
        ]  # fmt: skip
        return {"views": torch.cat(views), "target_count": torch.tensor(2 * len(samples))}

    def loss(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        # Negatives are the other views in this micro-batch (a global all-gather comes with
        # multi-process training).
        return {"loss": nt_xent(model(batch["views"]), self.temperature)}


class ContrastiveModel(nn.Module):
    """An encoder's [CLS] feature through SimCLR's projection head: Linear, BatchNorm, ReLU,
    Linear. The BatchNorm matters: it removes what all images' features share, which at the
    start of training is nearly everything, so that the views can be told apart at all."""

    def __init__(self, encoder: nn.Module, width: int, projection: int = 128) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Sequential(nn.Linear(width, width), nn.BatchNorm1d(width), nn.ReLU(),
                                  nn.Linear(width, projection))  # fmt: skip

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(images)[:, 0])
