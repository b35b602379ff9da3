"""ImageText (CLIP): matching captions to images within the batch with the symmetric
cross-entropy over scaled cosine similarities; the temperature is learned."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pretrain_trainer.data.images import ImageTextSample
from pretrain_trainer.objectives.base import Batch, Objective


class ImageTextContrastive(Objective):
    def prepare(self, samples: list[ImageTextSample], indices: list[int]) -> Batch:
        return {
            "images": torch.stack([s.image for s in samples]),
            "tokens": torch.stack([s.tokens for s in samples]),
            "lengths": torch.tensor([s.length for s in samples]),
            "target_count": torch.tensor(len(samples)),
        }

    def loss(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        logits = model(batch["images"], batch["tokens"], batch["lengths"]).float()
        truth = torch.arange(logits.shape[0], device=logits.device)
        images_to_texts = F.cross_entropy(logits, truth, reduction="sum")
        texts_to_images = F.cross_entropy(logits.T, truth, reduction="sum")
        return {"loss": (images_to_texts + texts_to_images) / 2}
