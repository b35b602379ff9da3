"""`pretrain prepare`: tokenize a PretrainJob's text sources once into token shards (shards.py),
with worker processes and a progress bar. Source i goes to OUTPUT/source-i, which a job then
names with `format: tokens`.

Re-running with the same inputs (the same files, sizes and versions, the same tokenizer settings)
finds the manifest and writes nothing. Any other run first deletes the manifest, so a run killed
half-way leaves a directory that readers refuse and the next run redoes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from pretrain_operator.api.pretrain import DataFormat, PretrainJobSpec
from pretrain_trainer.data import shards
from pretrain_trainer.data.sources import DataError, documents, list_files, resolve
from pretrain_trainer.storage import Location, object_version

CHUNK_DOCUMENTS = 512  # documents per task sent to a worker
SOURCE_DIRECTORY = "source-{index}"

Progress = Callable[[int, int], None]  # (documents, tokens) done since the last call


@dataclass(frozen=True)
class Prepared:
    uri: str  # what a job's `format: tokens` source names
    directory: Location
    manifest: shards.Manifest
    reused: bool  # the manifest was there with the same inputs: nothing written


def fingerprint(
    spec: PretrainJobSpec, file_lists: list[list[dict[str, Any]]], shard_tokens: int
) -> str:
    """What the shards are a function of: every source's files (name, size, version), formats and
    fields, the tokenizer settings and the shard size. Weights and sequence length are not:
    shards serve any."""
    record = {
        "version": shards.VERSION,
        "shard_tokens": shard_tokens,
        "tokenizer": spec.tokenizer.model_dump(mode="json"),
        "sources": [{"format": s.format.value, "field": s.field, "files": files}
                    for s, files in zip(spec.data.sources, file_lists, strict=True)],
    }  # fmt: skip
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def describe_files(uri: str, field: str) -> list[dict[str, Any]]:
    files = []
    for url in list_files(uri, field):
        where = Location.of(url)
        info = where.fs.info(where.path)
        stamp = object_version(info) or str(info.get("mtime", ""))
        files.append({"url": url, "size": int(info.get("size") or 0), "version": stamp})
    return files


def prepare(
    spec: PretrainJobSpec,
    output: str,
    workers: int | None = None,
    shard_tokens: int = shards.DEFAULT_SHARD_TOKENS,
    progress: Progress | None = None,
) -> list[Prepared]:
    """Prepare every source of `spec` under `output`; what each directory holds."""
    for index, source in enumerate(spec.data.sources):
        if source.format in (DataFormat.IMAGE_FOLDER, DataFormat.TOKENS):
            raise DataError(f"spec.data.sources[{index}].format: {source.format.value} sources "
                            "are not text to tokenize")  # fmt: skip
    file_lists = [describe_files(s.uri, f"spec.data.sources[{i}].uri")
                  for i, s in enumerate(spec.data.sources)]  # fmt: skip
    inputs = fingerprint(spec, file_lists, shard_tokens)
    root = Location.of(resolve(output))
    names = [SOURCE_DIRECTORY.format(index=i) for i in range(len(spec.data.sources))]
    base = output.rstrip("/") if "://" in output else f"file://{root.path}"
    uris = [f"{base}/{name}" for name in names]
    targets = [root / name for name in names]
    found = [shards.read_manifest(t) for t in targets]
    if all(m is not None and m.inputs == inputs for m in found):
        return [Prepared(u, t, m, True) for u, t, m in zip(uris, targets, found, strict=True) if m]
    from pretrain_trainer.train import job_tokenizer  # torch: not needed by a rerun's check

    tokenizer = job_tokenizer(spec)
    prepared = []
    for index, (source, target) in enumerate(zip(spec.data.sources, targets, strict=True)):
        texts = documents(source, f"spec.data.sources[{index}]")
        manifest = write_source(texts, tokenizer, target, inputs, workers, shard_tokens, progress)
        prepared.append(Prepared(uris[index], target, manifest, False))
    return prepared


def write_source(
    texts: Iterable[str],
    tokenizer: Tokenizer,
    target: Location,
    inputs: str,
    workers: int | None,
    shard_tokens: int,
    progress: Progress | None = None,
) -> shards.Manifest:
    """Tokenize `texts` in order into shards under `target`; its manifest, written last."""
    with contextlib.suppress(FileNotFoundError):
        target.fs.rm_file((target / shards.MANIFEST).path)  # from now on: unfinished
    vocab = tokenizer.get_vocab_size()
    dtype = shards.token_dtype(vocab)
    text = tokenizer.to_str()
    (target / shards.TOKENIZER).write_text(text)
    manifest = shards.Manifest(dtype.str, vocab, shards.sha256(text.encode()), inputs)
    ids_held: list[np.ndarray] = []  # of the shard being filled
    sizes_held: list[np.ndarray] = []
    all_sizes: list[np.ndarray] = []
    held = 0
    for ids, sizes in encoded_chunks(texts, text, workers):
        all_sizes.append(sizes)
        if progress:
            progress(len(sizes), len(ids))
        while len(sizes):
            ends = np.cumsum(sizes)
            fit = int(np.searchsorted(ends, shard_tokens - held, side="right"))
            fit = fit or (0 if held else 1)  # a document longer than a shard is one alone
            if fit:  # held in the shard's dtype: 2 bytes a token where the vocabulary allows
                ids_held.append(ids[: ends[fit - 1]].astype(dtype))
                sizes_held.append(sizes[:fit])
                held += int(ends[fit - 1])
                ids, sizes = ids[ends[fit - 1] :], sizes[fit:]
            if len(sizes) or held >= shard_tokens:  # the next document does not fit
                _flush(target, manifest, ids_held, sizes_held, dtype)
                ids_held, sizes_held, held = [], [], 0
    if ids_held:
        _flush(target, manifest, ids_held, sizes_held, dtype)
    lengths = np.concatenate(all_sizes) if all_sizes else np.zeros(0, np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)]).astype("<u8")
    (target / shards.INDEX).fs.pipe_file((target / shards.INDEX).path, starts.tobytes())
    _remove_stale_shards(target, len(manifest.shards))
    (target / shards.MANIFEST).write_text(manifest.to_json())
    return manifest


def _flush(
    target: Location,
    manifest: shards.Manifest,
    pending: list[np.ndarray],
    lengths: list[np.ndarray],
    dtype: np.dtype[Any],
) -> None:
    tokens = np.concatenate(pending).astype(dtype)
    sizes = np.concatenate(lengths)
    boundaries = np.concatenate([[0], np.cumsum(sizes)])
    data = shards.encode_shard(tokens, boundaries)
    name = shards.shard_name(len(manifest.shards))
    target.fs.pipe_file((target / name).path, data)
    manifest.shards.append(shards.ShardEntry(name, len(tokens), len(sizes), len(data),
                                             shards.sha256(data)))  # fmt: skip


def _remove_stale_shards(target: Location, count: int) -> None:
    """Shards of an earlier, longer preparation, past the last one of this one."""
    for name in target.files():
        if name.startswith("shard-") and name.endswith(".bin") and int(name[6:11]) >= count:
            target.fs.rm_file((target / name).path)


# Worker processes: each holds the tokenizer and encodes chunks of documents in order.
_worker_tokenizer: Tokenizer | None = None


def _start_worker(tokenizer_json: str) -> None:
    global _worker_tokenizer
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core per worker process
    _worker_tokenizer = Tokenizer.from_str(tokenizer_json)


def encode_chunk(texts: list[str], tokenizer: Tokenizer | None = None) -> tuple[np.ndarray, ...]:
    """The ids of `texts`, each document followed by [EOS], concatenated; and each one's length."""
    tokenizer = tokenizer or _worker_tokenizer
    assert tokenizer is not None
    eos = tokenizer.token_to_id("[EOS]")
    encodings = tokenizer.encode_batch(texts, add_special_tokens=False)
    sizes = np.fromiter((len(e.ids) + 1 for e in encodings), np.int64, len(encodings))
    ids = np.concatenate([np.array([*e.ids, eos], np.int64) for e in encodings])
    return ids, sizes


def _chunks(texts: Iterable[str]) -> Iterator[list[str]]:
    chunk: list[str] = []
    for text in texts:
        chunk.append(text)
        if len(chunk) == CHUNK_DOCUMENTS:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def encoded_chunks(
    texts: Iterable[str], tokenizer_json: str, workers: int | None
) -> Iterator[tuple[np.ndarray, ...]]:
    """encode_chunk over the chunks of `texts`, in order; with more than one worker, in worker
    processes with at most two chunks per worker in flight (memory stays bounded)."""
    workers = workers or os.cpu_count() or 1
    if workers == 1:
        tokenizer = Tokenizer.from_str(tokenizer_json)
        yield from (encode_chunk(chunk, tokenizer) for chunk in _chunks(texts))
        return
    # spawn: the parent may hold torch's threads, which a forked child would inherit locked
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, context, initializer=_start_worker,
                             initargs=(tokenizer_json,)) as pool:  # fmt: skip
        flight: deque[Future[tuple[np.ndarray, ...]]] = deque()
        for chunk in _chunks(texts):
            flight.append(pool.submit(encode_chunk, chunk))
            if len(flight) >= 2 * workers:
                yield flight.popleft().result()
        while flight:
            yield flight.popleft().result()
