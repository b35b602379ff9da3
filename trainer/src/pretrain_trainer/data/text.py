"""Text samples: documents tokenized, packed into sequences of `sequenceLength` tokens (documents
end with [EOS] and carry document numbers so attention can stay inside them), split into train
and validation by document, shuffled in a bounded buffer, and mixed across sources by weight.

Order is a function of (seed, global sample index): sample i of the mixture is drawn from the
source that hash(seed, i) picks, and each source's stream is deterministic. Resuming at sample i
replays the picks (cheap) and skips each source ahead (streaming, no state to save but i).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from tokenizers import Tokenizer

from pretrain_operator.api.pretrain import Data
from pretrain_trainer import rng
from pretrain_trainer.data.sources import documents

VALIDATION_STREAM, SHUFFLE_STREAM, MIX_STREAM = 101, 102, 103
SHUFFLE_BUFFER = 256
ENCODE_CHUNK = 256


@dataclass(frozen=True, slots=True)
class TextSample:
    tokens: torch.Tensor  # (L,) int64
    documents: torch.Tensor  # (L,) int64, the document each token belongs to


def _in_validation(seed: int, document: int, fraction: float) -> bool:
    draw = rng.uniform(seed, torch.tensor([document]), 1, VALIDATION_STREAM)
    return bool(draw.item() < fraction)


def _packed(
    texts: Iterator[str], tokenizer: Tokenizer, length: int, eos: int
) -> Iterator[TextSample]:
    """Concatenate documents (each ending in [EOS]) and cut every `length` tokens."""
    tokens: list[int] = []
    owners: list[int] = []
    document = 0
    while True:
        chunk = [text for _, text in zip(range(ENCODE_CHUNK), texts, strict=False)]
        if not chunk:
            return
        for encoding in tokenizer.encode_batch(chunk, add_special_tokens=False):
            ids = [*encoding.ids, eos]
            tokens.extend(ids)
            owners.extend([document] * len(ids))
            document += 1
        while len(tokens) >= length:
            yield TextSample(torch.tensor(tokens[:length]), torch.tensor(owners[:length]))
            del tokens[:length], owners[:length]


class SourceStream:
    """The packed samples of one source, for one split, repeated epoch after epoch."""

    def __init__(
        self, data: Data, index: int, tokenizer: Tokenizer, seed: int, eos: int, validation: bool
    ) -> None:
        self.source = data.sources[index]
        self.field = f"spec.data.sources[{index}]"
        self.data, self.tokenizer, self.seed, self.eos = data, tokenizer, seed, eos
        self.validation = validation

    def _texts(self) -> Iterator[str]:
        fraction = self.data.validation_fraction
        for number, text in enumerate(documents(self.source, self.field)):
            if _in_validation(self.seed, number, fraction) == self.validation:
                yield text

    def epoch(self) -> Iterator[TextSample]:
        return _packed(self._texts(), self.tokenizer, self.data.sequence_length, self.eos)

    def shuffled(self) -> Iterator[TextSample]:
        """Endless, shuffled within a bounded buffer (deterministic: seeded per draw)."""
        epoch = 0
        draws = 0
        while True:
            buffer: list[TextSample] = []
            produced = False
            for sample in self.epoch():
                produced = True
                buffer.append(sample)
                if len(buffer) >= SHUFFLE_BUFFER:
                    yield buffer.pop(self._pick(epoch, draws, len(buffer)))
                    draws += 1
            while buffer:
                yield buffer.pop(self._pick(epoch, draws, len(buffer)))
                draws += 1
            if not produced:
                split = "validation" if self.validation else "training"
                raise ValueError(
                    f"{self.field}: no {split} sample of spec.data.sequenceLength "
                    f"{self.data.sequence_length} tokens; add data or shorten sequences"
                )
            epoch += 1

    def _pick(self, epoch: int, draw: int, size: int) -> int:
        value = rng.integers(self.seed + epoch, torch.tensor([draw]), 1, SHUFFLE_STREAM, size)
        return int(value.item())


def source_choices(data: Data, seed: int, start: int, count: int) -> list[int]:
    """Which source each global sample index in [start, start+count) comes from."""
    weights = torch.tensor([s.weight for s in data.sources], dtype=torch.float64)
    bounds = (weights.cumsum(0) / weights.sum()).to(torch.float32)
    draws = rng.uniform(seed, torch.arange(start, start + count), 1, MIX_STREAM).squeeze(1)
    picks = torch.searchsorted(bounds, draws, right=True).clamp_(max=len(data.sources) - 1)
    return [int(p) for p in picks]


class TrainingSamples:
    """The mixture, as an iterator of (global sample index, sample), resumable at any index."""

    def __init__(self, data: Data, tokenizer: Tokenizer, seed: int, eos: int, start: int = 0):
        self.data, self.seed = data, seed
        self.streams = [
            SourceStream(data, i, tokenizer, seed, eos, validation=False).shuffled()
            for i in range(len(data.sources))
        ]
        self.position = start
        if start:  # replay the source picks, then skip each source ahead
            for source in source_choices(data, seed, 0, start):
                next(self.streams[source])

    def take(self, count: int) -> tuple[list[int], list[TextSample]]:
        indices = list(range(self.position, self.position + count))
        picks = source_choices(self.data, self.seed, self.position, count)
        self.position += count
        return indices, [next(self.streams[source]) for source in picks]


def validation_samples(
    data: Data, tokenizer: Tokenizer, seed: int, eos: int, limit: int
) -> Sequence[TextSample]:
    """A fixed validation set: the first `limit` held-out sequences of each source, in order."""
    samples: list[TextSample] = []
    for index in range(len(data.sources)):
        stream = SourceStream(data, index, tokenizer, seed, eos, validation=True).epoch()
        samples.extend(sample for _, sample in zip(range(limit), stream, strict=False))
    return samples
