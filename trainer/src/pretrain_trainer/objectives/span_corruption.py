"""SpanCorruption (T5, Raffel et al. 2020): corrupt `noiseDensity` of the tokens in spans of mean
length `meanSpanLength`; each span becomes one sentinel in the input, and the target lists each
sentinel followed by the tokens it hides, then [EOS]. Lengths are fixed per sequence length, so
inputs and targets need no padding (T5's random_spans_noise_mask)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pretrain_trainer import rng
from pretrain_trainer.data.text import TextSample
from pretrain_trainer.objectives.base import Batch, Objective
from pretrain_trainer.tokenizer import SpecialIds

SPANS = 41
DEFAULT_NOISE_DENSITY = 0.15
DEFAULT_MEAN_SPAN_LENGTH = 3.0


def span_counts(length: int, density: float, mean_span: float) -> tuple[int, int]:
    """(noise tokens, spans) for a sequence of `length` tokens."""
    noise = min(max(1, round(length * density)), length - 1)
    spans = max(1, min(round(noise / mean_span), noise, length - noise))
    return noise, spans


def _partition(total: int, parts: int, generator: torch.Generator) -> torch.Tensor:
    """`total` split into `parts` positive lengths, uniformly at random."""
    cuts = torch.randperm(total - 1, generator=generator)[: parts - 1].sort().values + 1
    edges = torch.cat([torch.tensor([0]), cuts, torch.tensor([total])])
    return edges.diff()


def noise_mask(
    length: int, density: float, mean_span: float, generator: torch.Generator
) -> torch.Tensor:
    """A boolean (length,) mask of noise tokens, non-noise first, alternating spans."""
    noise, spans = span_counts(length, density, mean_span)
    noise_lengths = _partition(noise, spans, generator)
    kept_lengths = _partition(length - noise, spans, generator)
    runs = torch.stack([kept_lengths, noise_lengths], dim=1).flatten()
    flags = torch.tensor([False, True]).repeat(spans)
    return torch.repeat_interleave(flags, runs)


class SpanCorruption(Objective):
    def __init__(
        self, seed: int, density: float, mean_span: float, special: SpecialIds, length: int
    ) -> None:
        self.seed, self.density, self.mean_span, self.special = seed, density, mean_span, special
        _, spans = span_counts(length, density, mean_span)
        if spans > len(special.sentinels):
            raise ValueError(f"spec.data.sequenceLength: {length} tokens need {spans} sentinels; "
                             f"at most {len(special.sentinels)} exist")  # fmt: skip

    def corrupt(self, tokens: torch.Tensor, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(input, target) of one sequence: `a b <s0> e <s1>` and `<s0> c d <s1> f [EOS]`."""
        mask = noise_mask(len(tokens), self.density, self.mean_span,
                          rng.sample_generator(self.seed, index, SPANS))  # fmt: skip
        starts = mask & ~F.pad(mask, (1, 0))[:-1]  # the first token of each noise span
        sentinels = torch.tensor(self.special.sentinels)[(starts.cumsum(0) - 1).clamp(min=0)]
        inputs = torch.where(starts, sentinels, tokens)[~mask | starts]
        # Each noise token, preceded by its span's sentinel when it opens the span.
        unused = -1
        pairs = torch.stack([torch.where(starts, sentinels, unused),
                             torch.where(mask, tokens, unused)], dim=1).flatten()  # fmt: skip
        target = torch.cat([pairs[pairs != unused], torch.tensor([self.special.eos])])
        return inputs, target

    def prepare(self, samples: list[TextSample], indices: list[int]) -> Batch:
        pairs = [self.corrupt(s.tokens, i) for s, i in zip(samples, indices, strict=True)]
        inputs = torch.stack([p[0] for p in pairs])
        targets = torch.stack([p[1] for p in pairs])
        decoder_ids = F.pad(targets[:, :-1], (1, 0), value=self.special.pad)  # pad starts
        return {
            "input_ids": inputs, "padding": torch.ones_like(inputs, dtype=torch.bool),
            "decoder_ids": decoder_ids, "labels": targets,
            "target_count": torch.tensor(targets.numel()),
        }  # fmt: skip

    def loss(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        logits = model(batch["input_ids"], batch["padding"], batch["decoder_ids"]).float()
        return {"loss": F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(),
                                        reduction="sum")}  # fmt: skip
