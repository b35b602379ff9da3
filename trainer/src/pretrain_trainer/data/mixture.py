"""Deterministic order for any kind of sample: each source's items (for one split) are shuffled
in a bounded buffer, repeated epoch after epoch, and sources are mixed by weight.

Sample i of the mixture comes from the source that hash(seed, i) picks, so the order is a
function of (seed, global sample index). Resuming at sample i replays the picks (cheap integer
work) and skips each source ahead: nothing but i needs to be saved in a checkpoint.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Generic, TypeVar

import torch

from pretrain_operator.api.pretrain import Data
from pretrain_trainer import rng

T = TypeVar("T")
VALIDATION_STREAM, SHUFFLE_STREAM, MIX_STREAM = 101, 102, 103
SHUFFLE_BUFFER = 256


def in_validation(seed: int, item: int, fraction: float) -> bool:
    """Whether item number `item` of a source is held out (decided by hash, streaming-friendly)."""
    return bool(rng.uniform(seed, torch.tensor([item]), 1, VALIDATION_STREAM).item() < fraction)


def shuffled(epoch: Callable[[], Iterator[T]], seed: int, field: str) -> Iterator[T]:
    """Endless: every epoch of `epoch()`, shuffled within a bounded buffer (seeded per draw)."""
    number, draws = 0, 0

    def pick(size: int) -> int:
        value = rng.integers(seed + number, torch.tensor([draws]), 1, SHUFFLE_STREAM, size)
        return int(value.item())

    while True:
        buffer: list[T] = []
        produced = False
        for item in epoch():
            produced = True
            buffer.append(item)
            if len(buffer) >= SHUFFLE_BUFFER:
                yield buffer.pop(pick(len(buffer)))
                draws += 1
        while buffer:
            yield buffer.pop(pick(len(buffer)))
            draws += 1
        if not produced:
            raise ValueError(f"{field}: no training sample; add data or shorten sequences")
        number += 1


def source_choices(weights: Sequence[float], seed: int, start: int, count: int) -> list[int]:
    """Which source each global sample index in [start, start+count) comes from."""
    weight = torch.tensor(list(weights), dtype=torch.float64)
    bounds = (weight.cumsum(0) / weight.sum()).to(torch.float32)
    draws = rng.uniform(seed, torch.arange(start, start + count), 1, MIX_STREAM).squeeze(1)
    picks = torch.searchsorted(bounds, draws, right=True).clamp_(max=len(weights) - 1)
    return [int(p) for p in picks]


class Mixture(Generic[T]):
    """Training samples as (global indices, samples), resumable at any sample index."""

    def __init__(
        self, streams: Sequence[Iterator[T]], weights: Sequence[float], seed: int, start: int = 0
    ) -> None:
        self.streams, self.weights, self.seed = list(streams), list(weights), seed
        self.position = start
        for source in source_choices(self.weights, seed, 0, start):
            next(self.streams[source])

    def take(self, count: int) -> tuple[list[int], list[T]]:
        indices = list(range(self.position, self.position + count))
        picks = source_choices(self.weights, self.seed, self.position, count)
        self.position += count
        return indices, [next(self.streams[source]) for source in picks]


def mix_sources(
    data: Data, seed: int, start: int, epoch: Callable[[int], Iterator[T]]
) -> Mixture[T]:
    """The training mixture of every source: `epoch(i)` yields source i's training items once."""
    streams = [
        shuffled(functools.partial(epoch, index), seed, f"spec.data.sources[{index}]")
        for index in range(len(data.sources))
    ]
    return Mixture(streams, [source.weight for source in data.sources], seed, start)


def first_of_each(data: Data, limit: int, held_out: Callable[[int], Iterator[T]]) -> list[T]:
    """A fixed validation set: the first `limit` held-out items of each source, in order."""
    return [item for index in range(len(data.sources))
            for _, item in zip(range(limit), held_out(index), strict=False)]  # fmt: skip
