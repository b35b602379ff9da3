"""MaskedLM (BERT, Devlin et al. 2019): choose `maskProbability` of the tokens; of those, 80%
become [MASK], 10% a random token, 10% stay; predict the originals at the chosen positions only.
Special tokens and padding are never chosen."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from pretrain_trainer import rng
from pretrain_trainer.data.text import TextSample
from pretrain_trainer.objectives.base import Batch, Objective
from pretrain_trainer.tokenizer import SpecialIds

CHOOSE, REPLACE, RANDOM = 1, 2, 3  # rng streams


@dataclass(frozen=True, slots=True)
class Masking:
    tokens: torch.Tensor  # inputs after replacement
    labels: torch.Tensor  # original token at chosen positions, -100 elsewhere
    chosen: torch.Tensor  # bool


def mask_tokens(
    tokens: torch.Tensor,
    indices: torch.Tensor,
    seed: int,
    probability: float,
    special: SpecialIds,
    vocab_size: int,
) -> Masking:
    """The 80/10/10 procedure, vectorised, with draws keyed by (seed, sample index, position)."""
    length = tokens.shape[1]
    eligible = ~torch.isin(tokens, torch.tensor(special.all))
    chosen = eligible & (rng.uniform(seed, indices, length, CHOOSE) < probability)
    replace = rng.uniform(seed, indices, length, REPLACE)
    random_tokens = rng.integers(seed, indices, length, RANDOM, vocab_size)
    inputs = tokens.clone()
    inputs[chosen & (replace < 0.8)] = special.mask
    randomised = chosen & (replace >= 0.8) & (replace < 0.9)
    inputs[randomised] = random_tokens[randomised]
    labels = torch.where(chosen, tokens, torch.full_like(tokens, -100))
    return Masking(inputs, labels, chosen)


class MaskedLanguageModeling(Objective):
    def __init__(self, seed: int, probability: float, special: SpecialIds, vocab_size: int):
        self.seed, self.probability = seed, probability
        self.special, self.vocab_size = special, vocab_size

    def prepare(self, samples: list[TextSample], indices: list[int]) -> Batch:
        tokens = torch.stack([s.tokens for s in samples])
        tokens[:, 0] = self.special.cls  # BERT's first position is [CLS]
        masking = mask_tokens(tokens, torch.tensor(indices), self.seed, self.probability,
                              self.special, self.vocab_size)  # fmt: skip
        return {
            "input_ids": masking.tokens,
            "labels": masking.labels,
            "target_count": masking.chosen.sum(),
        }

    def loss(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        hidden = model(batch["input_ids"])
        chosen = batch["labels"] != -100
        # The head runs on the chosen positions only (also through a torch.compile wrapper).
        logits = cast(Any, model).mlm_logits(hidden[chosen])
        return {"loss": F.cross_entropy(logits.float(), batch["labels"][chosen], reduction="sum")}
