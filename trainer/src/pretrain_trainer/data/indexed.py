"""Random access to prepared token shards: sample i of the training mixture is computed from
(seed, i), never reached by iteration, so resuming at step N costs what starting does, and a rank
reads only the samples it trains on.

- A source's documents fall into the training or the validation split by the same hash of their
  number as raw text sources (mixture.in_validation). Each split is the concatenation of its
  documents, cut into windows of `sequenceLength` tokens: window k is what the in-loop packing
  path yields k-th for the same documents, tokens and document numbers alike.
- Epoch e of a source visits its N training windows in a seeded permutation of N (a Feistel
  network with cycle walking: any index maps in O(1), nothing of size N is stored).
- Sources are mixed in blocks of BLOCK samples: each block holds every source its share of
  the weights (largest remainder, at least 1), in a seeded order. The k-th sample of a source
  is then found from i in O(BLOCK), and the mix is exact per block, not only on average.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, overload

import numpy as np
import torch

from pretrain_operator.api.pretrain import Data
from pretrain_trainer import rng
from pretrain_trainer.data import shards
from pretrain_trainer.data.mixture import MIX_STREAM, VALIDATION_STREAM
from pretrain_trainer.data.sources import DataError, resolve
from pretrain_trainer.data.text import TextSample
from pretrain_trainer.storage import Location

BLOCK = 4096
FEISTEL_ROUNDS = 4
MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


class TokenSource:
    """The token sequence of one prepared directory: its manifest, its index, and its shards,
    memory-mapped when local and read by byte range from an object store."""

    def __init__(self, uri: str, field: str) -> None:
        self.uri, self.field = uri, field
        self.directory = Location.of(resolve(uri))
        manifest = shards.read_manifest(self.directory)
        if manifest is None:
            raise DataError(
                f"{field}.uri: {uri} has no {shards.MANIFEST}: it was never prepared or its "
                "preparation did not finish; run `pretrain prepare`"
            )
        self.manifest = manifest
        self.dtype = np.dtype(manifest.dtype)
        raw = (self.directory / shards.INDEX).fs.cat_file((self.directory / shards.INDEX).path)
        self.starts = np.frombuffer(raw, "<u8").astype(np.int64)
        if len(self.starts) != manifest.documents + 1 or self.starts[-1] != manifest.tokens:
            raise DataError(
                f"{field}.uri: {uri}/{shards.INDEX} does not match the manifest "
                f"({len(self.starts) - 1} documents, not {manifest.documents})"
            )
        self.shard_starts = np.cumsum([0] + [s.tokens for s in manifest.shards])
        self._opened: dict[int, Callable[[int, int], np.ndarray]] = {}

    @property
    def tokenizer_json(self) -> str:
        return (self.directory / shards.TOKENIZER).read_text()

    def read(self, start: int, end: int) -> np.ndarray:
        """Tokens [start, end) of the source's sequence (within one document, so one shard)."""
        number = int(np.searchsorted(self.shard_starts, start, side="right")) - 1
        base = int(self.shard_starts[number])
        return self._shard(number)(start - base, end - base)

    def _shard(self, number: int) -> Callable[[int, int], np.ndarray]:
        if number not in self._opened:
            self._opened[number] = self._open(self.manifest.shards[number])
        return self._opened[number]

    def _open(self, entry: shards.ShardEntry) -> Callable[[int, int], np.ndarray]:
        """A reader of the shard's tokens, once its size, header (and, locally, its SHA-256)
        match the manifest: a corrupted shard is named, never trained on."""
        where = self.directory / entry.file
        name = f"{self.field}.uri: {self.uri}: {entry.file}"
        try:
            size = int(where.fs.size(where.path))
        except FileNotFoundError:
            raise DataError(f"{name} is missing") from None
        if size != entry.bytes:
            raise DataError(f"{name} has {size} bytes, the manifest says {entry.bytes}")
        width = self.dtype.itemsize
        if where.local:
            mapped = np.memmap(where.path, np.uint8, "r")
            if shards.sha256(mapped.data) != entry.sha256:
                raise DataError(f"{name}: its SHA-256 does not match the manifest (corrupted)")
            header = bytes(mapped[: shards.HEADER.size])
            ids = mapped[shards.HEADER.size : shards.HEADER.size + entry.tokens * width]
            tokens = ids.view(self.dtype)
            reader = functools.partial(_slice, tokens)
        else:  # range reads: a shard is never downloaded whole
            header = bytes(where.fs.cat_file(where.path, 0, shards.HEADER.size))
            reader = functools.partial(_ranged, where, self.dtype)
        stored = shards.decode_header(header, name)
        if stored != (width, entry.tokens, entry.documents):
            raise DataError(f"{name}: its header {stored} does not match the manifest")
        return reader


def _slice(tokens: np.ndarray, start: int, end: int) -> np.ndarray:
    return np.asarray(tokens[start:end], dtype=np.int64)


def _ranged(where: Location, dtype: np.dtype[Any], start: int, end: int) -> np.ndarray:
    first = shards.HEADER.size + start * dtype.itemsize
    data = where.fs.cat_file(where.path, first, shards.HEADER.size + end * dtype.itemsize)
    return np.frombuffer(data, dtype).astype(np.int64)


def held_out(seed: int, documents: int, fraction: float) -> np.ndarray:
    """Which documents are in the validation split: mixture.in_validation, vectorised."""
    if documents == 0:
        return np.zeros(0, bool)
    draws = rng.uniform(seed, torch.arange(documents), 1, VALIDATION_STREAM)[:, 0]
    return (draws.double() < fraction).numpy()


class Split:
    """One split of a source as windows of `length` tokens of its documents' concatenation."""

    def __init__(self, source: TokenSource, documents: np.ndarray, length: int) -> None:
        self.source, self.documents, self.length = source, documents, length
        sizes = source.starts[documents + 1] - source.starts[documents]
        self.ends = np.cumsum(sizes)  # where each of the split's documents ends in the split
        self.windows = int(self.ends[-1]) // length if len(documents) else 0

    def window(self, k: int) -> TextSample:
        first, last = k * self.length, (k + 1) * self.length
        j = int(np.searchsorted(self.ends, first, side="right"))
        tokens, owners = [], []
        position = first
        while position < last:
            begin = int(self.ends[j - 1]) if j else 0
            end = min(last, int(self.ends[j]))
            start = int(self.source.starts[self.documents[j]])
            tokens.append(self.source.read(start + position - begin, start + end - begin))
            owners.append(np.full(end - position, j, np.int64))
            position, j = end, j + 1
        return TextSample(torch.from_numpy(np.concatenate(tokens)),
                          torch.from_numpy(np.concatenate(owners)))  # fmt: skip


def splits(source: TokenSource, seed: int, fraction: float, length: int) -> tuple[Split, Split]:
    """(training, validation) of a source."""
    held = held_out(seed, source.manifest.documents, fraction)
    return (Split(source, np.flatnonzero(~held), length),
            Split(source, np.flatnonzero(held), length))  # fmt: skip


def _mix64(value: int) -> int:
    """splitmix64's finalizer on Python ints (one index at a time: no tensor overhead)."""
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & MASK64
    return value ^ (value >> 31)


def permuted(index: int, size: int, key: int) -> int:
    """Where `index` (< size) lands in a seeded permutation of range(size)."""
    bits = max(2, (size - 1).bit_length())
    bits += bits % 2
    half, mask = bits // 2, (1 << (bits // 2)) - 1
    value = index
    while True:  # cycle walking: the domain is under 4 x size, so a few steps on average
        left, right = value >> half, value & mask
        for round_ in range(FEISTEL_ROUNDS):
            mixed = _mix64((key * FEISTEL_ROUNDS + round_) * GOLDEN + right & MASK64)
            left, right = right, left ^ (mixed & mask)
        value = (left << half) | right
        if value < size:
            return value


def quotas(weights: Sequence[float], block: int = BLOCK) -> list[int]:
    """Each source's samples per block: its share by largest remainder, at least one."""
    exact = [w / sum(weights) * block for w in weights]
    counts = [max(1, math.floor(e)) for e in exact]
    by_remainder = sorted(range(len(weights)), key=lambda s: (counts[s] - exact[s], s))
    for s in by_remainder[: max(0, block - sum(counts))]:
        counts[s] += 1
    while sum(counts) > block:  # the ones raised to 1 are paid for by the largest
        counts[counts.index(max(counts))] -= 1
    return counts


class IndexedMixture:
    """Training samples as (global indices, samples), where the samples are computed only when
    looked at: a rank that takes the global batch reads its own share and nothing else."""

    def __init__(
        self,
        splits: Sequence[Split],
        weights: Sequence[float],
        seed: int,
        start: int = 0,
        field: str = "spec.data.sources",
    ) -> None:
        for index, split in enumerate(splits):
            if split.windows == 0:
                raise DataError(f"{field}[{index}]: no training sample of {split.length} tokens; "
                                "add data or shorten sequences")  # fmt: skip
        self.splits, self.seed, self.position = list(splits), seed, start
        self.quotas = quotas(weights)
        self._layout = np.repeat(np.arange(len(splits)), self.quotas)
        self._positions: list[int] = []
        self._pool: ThreadPoolExecutor | None = None
        self._next: tuple[int, Future[dict[int, TextSample]]] | None = None

    @functools.lru_cache(maxsize=4)  # noqa: B019 - one mixture per run; blocks are reused
    def _block(self, number: int) -> tuple[np.ndarray, np.ndarray]:
        """The source of each position of a block, and its rank among that source's."""
        keys = rng.hash64(self.seed, torch.tensor([number]), torch.arange(BLOCK), MIX_STREAM)
        sources = np.empty(BLOCK, np.int64)
        sources[np.argsort(keys.numpy(), kind="stable")] = self._layout
        ranks = np.empty(BLOCK, np.int64)
        for source in range(len(self.splits)):
            where = np.flatnonzero(sources == source)
            ranks[where] = np.arange(len(where))
        return sources, ranks

    def sample(self, index: int) -> TextSample:
        block, offset = divmod(index, BLOCK)
        sources, ranks = self._block(block)
        source = int(sources[offset])
        k = block * self.quotas[source] + int(ranks[offset])
        split = self.splits[source]
        epoch, within = divmod(k, split.windows)
        key = rng_key(self.seed, source, epoch)
        return split.window(permuted(within, split.windows, key))

    def read_ahead(self, positions: Sequence[int]) -> None:
        """From now on, while a step trains, a background thread computes the samples at these
        positions of the next `take` (this rank's share): the loop finds them ready."""
        self._positions = list(positions)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="read-ahead")

    def _read(self, start: int) -> dict[int, TextSample]:
        return {start + p: self.sample(start + p) for p in self._positions}

    def take(self, count: int) -> tuple[list[int], LazySamples]:
        indices = list(range(self.position, self.position + count))
        ready: dict[int, TextSample] = {}
        if self._pool is not None:
            if self._next is None or self._next[0] != self.position:
                self._next = (self.position, self._pool.submit(self._read, self.position))
            ready = self._next[1].result()
            following = self.position + count
            self._next = (following, self._pool.submit(self._read, following))
        self.position += count
        return indices, LazySamples(lambda i: ready[i] if i in ready else self.sample(i), indices)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)


def rng_key(seed: int, source: int, epoch: int) -> int:
    return seed * 1_000_003 + source * 65_537 + epoch


@dataclass(frozen=True)
class LazySamples(Sequence[TextSample]):
    """The samples of `indices`, each computed when first indexed."""

    compute: Callable[[int], TextSample]
    indices: list[int]

    def __len__(self) -> int:
        return len(self.indices)

    @overload
    def __getitem__(self, item: int) -> TextSample: ...
    @overload
    def __getitem__(self, item: slice) -> Sequence[TextSample]: ...
    def __getitem__(self, item: int | slice) -> TextSample | Sequence[TextSample]:
        if isinstance(item, slice):
            return [self.compute(i) for i in self.indices[item]]
        return self.compute(self.indices[item])


def token_sources(data: Data) -> list[TokenSource]:
    sources = [TokenSource(s.uri, f"spec.data.sources[{i}]") for i, s in enumerate(data.sources)]
    first = sources[0].manifest.tokenizer_sha256
    for source in sources[1:]:
        if source.manifest.tokenizer_sha256 != first:
            raise DataError(f"{source.field}.uri: {source.uri} was prepared with another "
                            f"tokenizer than {sources[0].uri}; prepare them together")  # fmt: skip
    return sources


def training_samples(data: Data, sources: list[TokenSource], seed: int, start: int = 0
                     ) -> IndexedMixture:  # fmt: skip
    """The training mixture of prepared sources, from sample `start` on: O(1) in `start`."""
    training = [splits(s, seed, data.validation_fraction, data.sequence_length)[0]
                for s in sources]  # fmt: skip
    return IndexedMixture(training, [s.weight for s in data.sources], seed, start)


def validation_samples(data: Data, sources: list[TokenSource], seed: int, limit: int
                       ) -> list[TextSample]:  # fmt: skip
    """The first `limit` held-out windows of each source, in order (as text.validation_samples)."""
    held = [splits(s, seed, data.validation_fraction, data.sequence_length)[1] for s in sources]
    return [split.window(k) for split in held for k in range(min(limit, split.windows))]
