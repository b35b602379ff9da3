"""ReplacedTokenDetection (ELECTRA, Clark et al. 2020): mask `maskProbability` of the tokens
with [MASK]; the generator predicts them (MLM loss) and its samples replace them; the
discriminator says, for every token, whether it was replaced. Loss: L_MLM + 50 * L_Disc, the
published weighting (`discriminatorWeight`)."""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from pretrain_trainer import rng
from pretrain_trainer.data.text import TextSample
from pretrain_trainer.objectives.base import Batch, Objective
from pretrain_trainer.tokenizer import SpecialIds

CHOOSE, GUMBEL = 31, 32
DEFAULT_DISCRIMINATOR_WEIGHT = 50.0


class ReplacedTokenDetection(Objective):
    def __init__(
        self, seed: int, probability: float, weight: float, special: SpecialIds, vocab_size: int
    ) -> None:
        self.seed, self.probability, self.weight = seed, probability, weight
        self.special, self.vocab_size = special, vocab_size

    @property
    def terms(self) -> dict[str, tuple[float, str]]:
        return {"generator": (1.0, "target_count"), "discriminator": (self.weight, "token_count")}

    def prepare(self, samples: list[TextSample], indices: list[int]) -> Batch:
        tokens = torch.stack([s.tokens for s in samples])
        tokens[:, 0] = self.special.cls
        index = torch.tensor(indices)
        length = tokens.shape[1]
        eligible = ~torch.isin(tokens, torch.tensor(self.special.all))
        chosen = eligible & (rng.uniform(self.seed, index, length, CHOOSE) < self.probability)
        inputs = torch.where(chosen, torch.full_like(tokens, self.special.mask), tokens)
        # Gumbel noise for sampling the generator at each chosen position, keyed by
        # (sample, position): the replacement does not depend on the batch it is in.
        rows, columns = chosen.nonzero(as_tuple=True)
        keys = index[rows] * length + columns
        gumbel = -torch.log(-torch.log(rng.uniform(self.seed, keys, self.vocab_size, GUMBEL)
                                       .clamp(1e-9, 1 - 1e-9)))  # fmt: skip
        padding = tokens != self.special.pad
        return {
            "input_ids": inputs, "original": tokens, "chosen": chosen, "gumbel": gumbel,
            "padding": padding, "target_count": chosen.sum(), "token_count": padding.sum(),
        }  # fmt: skip

    def loss(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        electra = cast(Any, model)
        chosen, original, padding = batch["chosen"], batch["original"], batch["padding"]
        logits = electra.generator_logits(batch["input_ids"], padding)[chosen].float()
        generator_loss = F.cross_entropy(logits, original[chosen], reduction="sum")
        with torch.no_grad():  # sampling is not differentiated through (as in the paper)
            sampled = (logits + batch["gumbel"]).argmax(-1)
        corrupted = original.clone()
        corrupted[chosen] = sampled
        replaced = (corrupted != original).float()  # a correct sample counts as original
        scores = electra.discriminator_logits(corrupted, padding).float()
        discriminator_loss = F.binary_cross_entropy_with_logits(
            scores[padding], replaced[padding], reduction="sum"
        )
        return {"generator": generator_loss, "discriminator": discriminator_loss}
