"""Text samples: documents tokenized and packed into sequences of `sequenceLength` tokens.
Documents end with [EOS] and carry document numbers, so attention can stay inside them; a
document belongs to the training or the validation split by a hash of its number."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from tokenizers import Tokenizer

from pretrain_operator.api.pretrain import Data
from pretrain_trainer.data.mixture import Mixture, first_of_each, in_validation, mix_sources
from pretrain_trainer.data.sources import documents

ENCODE_CHUNK = 256


@dataclass(frozen=True, slots=True)
class TextSample:
    tokens: torch.Tensor  # (L,) int64
    documents: torch.Tensor  # (L,) int64, the document each token belongs to


def packed(
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


def split_texts(data: Data, index: int, seed: int, validation: bool) -> Iterator[str]:
    field = f"spec.data.sources[{index}]"
    for number, text in enumerate(documents(data.sources[index], field)):
        if in_validation(seed, number, data.validation_fraction) == validation:
            yield text


def training_samples(
    data: Data, tokenizer: Tokenizer, seed: int, eos: int, start: int = 0
) -> Mixture[TextSample]:
    """The training mixture of every source, resumable at sample `start`."""

    def epoch(index: int) -> Iterator[TextSample]:
        texts = split_texts(data, index, seed, validation=False)
        return packed(texts, tokenizer, data.sequence_length, eos)

    return mix_sources(data, seed, start, epoch)


def validation_samples(
    data: Data, tokenizer: Tokenizer, seed: int, eos: int, limit: int
) -> list[TextSample]:
    """A fixed validation set: the first `limit` held-out sequences of each source, in order."""

    def held_out(index: int) -> Iterator[TextSample]:
        texts = split_texts(data, index, seed, validation=True)
        return packed(texts, tokenizer, data.sequence_length, eos)

    return first_of_each(data, limit, held_out)
